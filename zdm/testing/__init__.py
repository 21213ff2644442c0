"""Pytest plugin giving zdm tests (and users' CI) real databases to migrate.

Why this exists: a zero-downtime migration runner is only trustworthy if it is
tested against the databases it will run on.  Locking, transactional DDL,
``CREATE INDEX CONCURRENTLY`` and friends behave differently on PostgreSQL and
SQLite, and a mock would happily accept SQL that a real server rejects.  So
every fixture here hands out a *real*, empty, throwaway database.

Finding a PostgreSQL server must work on a laptop, in CI with or without
Docker, and on machines with nothing but the PostgreSQL binaries installed.
:func:`resolve_postgres_server` therefore tries, in order:

1. ``ZDM_TEST_DATABASE_URL`` (explicit: if set it must work, or we fail loudly);
2. a ``testcontainers`` PostgreSQL container, only if a Docker engine answers
   a cheap ping (so a Docker-less machine never hangs here);
3. the local server (``ZDM_TEST_LOCAL_URL``, default
   ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``);
4. a throwaway server made with ``initdb``/``pg_ctl`` in a temp directory.

``ZDM_TEST_POSTGRES_SOURCES`` (comma list of ``env,testcontainers,local,pg_ctl``)
restricts or reorders the sources.  When no server can be had, PostgreSQL tests
are skipped, except when ``CI`` is ``true``/``1``: then they fail, because a
silently skipped database test in CI is a test that never runs.

Every test gets its own database (``zdm_t_<hex>``) on the shared server, which
is dropped afterwards, so tests are isolated and can run under pytest-xdist.

Installing zdm enables this plugin through its ``pytest11`` entry point (named
``zdm``).  Only without that (e.g. ``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``) enable
it with ``-p zdm`` or ``pytest_plugins = ["zdm.testing"]``: pytest refuses to
register the module under both names.

Fixtures (each URL is a fresh, empty database, dropped after the test):

- ``zdm_database_url``: the test runs once per selected backend (ids ``sqlite`` and
  ``postgresql``); choose with ``--zdm-backends postgresql`` or ``ZDM_TEST_BACKENDS``
  (comma list, default ``sqlite,postgresql``);
- ``zdm_postgres_url`` / ``zdm_sqlite_url``: one backend only;
- ``zdm_postgres_server``: the session's server (a ``ServerSource``).

Where PostgreSQL comes from: ``ZDM_TEST_DATABASE_URL`` (a server where the role may CREATE
DATABASE), ``ZDM_TEST_LOCAL_URL`` (the local server to try), ``ZDM_TEST_POSTGRES_SOURCES``
(order of sources), ``CI=true`` (fail instead of skip).

Helpers, for one-line migration tests (a plan is a PlanFile, a dict or a plan file's path):
``assert_reversible(url, plan)``, ``assert_completes(url, plan, expected_columns=...)``,
``assert_within_lock_budget(url, plan, budget_ms)`` and ``assert_alembic_stairway(config)``::

    def test_rename_is_safe(zdm_database_url):
        create_my_tables(zdm_database_url)
        assert_reversible(zdm_database_url, "plans/rename_email.yaml")
        assert_within_lock_budget(zdm_database_url, "plans/rename_email.yaml", budget_ms=200)
"""


from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

try:
    import pytest
except ModuleNotFoundError:  # pytest is no dependency of zdm itself; say what to install
    raise ImportError("zdm.testing (the pytest plugin and its assert_* helpers) needs pytest: "
                      "pip install 'zdm[testing]' (or pytest)") from None

from zdm.testing.assertions import (
    assert_alembic_stairway,
    assert_completes,
    assert_reversible,
    assert_within_lock_budget,
)
from zdm.testing.databases import DeferredDrops, fresh_postgres_database
from zdm.testing.servers import (
    BACKEND_FIXTURES,
    BACKENDS,
    DEFAULT_LOCAL_URL,
    DEFAULT_SOURCE_ORDER,
    ENV_BACKENDS,
    PostgresServerError,
    ServerSource,
    configured_order,
    resolve_postgres_server,
)

__all__ = [
    "DEFAULT_LOCAL_URL",
    "DEFAULT_SOURCE_ORDER",
    "PostgresServerError",
    "ServerSource",
    "assert_alembic_stairway",
    "assert_completes",
    "assert_reversible",
    "assert_within_lock_budget",
    "fresh_postgres_database",
    "resolve_postgres_server",
    "zdm_database_url",
    "zdm_postgres_server",
    "zdm_postgres_url",
    "zdm_sqlite_url",
]

# --------------------------------------------------------------------------- #
# Pytest plugin
# --------------------------------------------------------------------------- #

_SOURCE_KEY = pytest.StashKey[ServerSource]()
_USED_KEY = pytest.StashKey[list[str]]()
_DROPS_KEY = pytest.StashKey[DeferredDrops]()


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def _session_source(config: pytest.Config) -> ServerSource:
    """Resolve once per session; stop the server when the session's config is torn down."""
    source = config.stash.get(_SOURCE_KEY, None)
    if source is None:
        source = resolve_postgres_server()
        config.stash[_SOURCE_KEY] = source
        config.add_cleanup(source.close)
        workeroutput = getattr(
            config, "workeroutput", None
        )  # running as an xdist worker
        if workeroutput is not None:
            workeroutput["zdm_postgres_source"] = source.describe()
    return source


def _session_drops(config: pytest.Config) -> DeferredDrops:
    """The session's background drops of test databases; the session waits for them at its end
    (before the server it resolved is stopped: cleanups run last registered first)."""
    drops = config.stash.get(_DROPS_KEY, None)
    if drops is None:
        drops = config.stash[_DROPS_KEY] = DeferredDrops()
        config.add_cleanup(drops.close)
    return drops


def _selected_backends(config: pytest.Config) -> list[str]:
    raw = (
        config.getoption("zdm_backends", None)
        or os.environ.get(ENV_BACKENDS)
        or ",".join(BACKENDS)
    )
    aliases = {"postgres": "postgresql", "pg": "postgresql", "sqlite3": "sqlite"}
    chosen: list[str] = []
    for part in raw.split(","):
        name = aliases.get(part.strip().lower(), part.strip().lower())
        if not name:
            continue
        if name not in BACKENDS:
            raise pytest.UsageError(
                f"--zdm-backends/{ENV_BACKENDS}: unknown backend {part.strip()!r}; choose from {', '.join(BACKENDS)}"
            )
        if name not in chosen:
            chosen.append(name)
    return chosen


def pytest_addoption(parser: pytest.Parser) -> None:
    """Let a run pick the backends that ``zdm_database_url`` tests run against."""
    group = parser.getgroup("zdm", "zdm database fixtures")
    group.addoption(
        "--zdm-backends",
        dest="zdm_backends",
        default=None,
        help=f"comma list of backends for zdm_database_url (default: ${ENV_BACKENDS} or {','.join(BACKENDS)})",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each ``zdm_database_url`` test once per selected backend (ids ``sqlite``/``postgresql``)."""
    if "zdm_database_url" not in metafunc.fixturenames:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        argnames = marker.args[0] if marker.args else marker.kwargs.get("argnames", "")
        names = argnames.split(",") if isinstance(argnames, str) else list(argnames)
        if "zdm_database_url" in (n.strip() for n in names):
            return  # the test pins its own backends
    backends = _selected_backends(metafunc.config)
    metafunc.parametrize("zdm_database_url", backends, indirect=True, ids=backends)


def pytest_report_header(config: pytest.Config) -> str:
    """Say where PostgreSQL comes from without resolving it (sessions without PG tests stay fast)."""
    source = config.stash.get(_SOURCE_KEY, None)
    if source is not None:
        return f"zdm: PostgreSQL source: {source.describe()}"
    order = ",".join(configured_order())
    return f"zdm: backends {','.join(_selected_backends(config))}; PostgreSQL resolved on first use (order: {order})"


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """Collect from xdist workers which PostgreSQL source each one used."""
    used = getattr(node, "workeroutput", {}).get("zdm_postgres_source")
    config = getattr(node, "config", None)
    if used and config is not None:
        config.stash.setdefault(_USED_KEY, []).append(used)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Report the PostgreSQL source actually used, so CI logs show what was tested."""
    used: list[str] = config.stash.get(_USED_KEY, [])
    source = config.stash.get(_SOURCE_KEY, None)
    if source is not None:
        used.append(source.describe())
    for line in sorted(set(used)):
        terminalreporter.write_line(f"zdm: PostgreSQL source used: {line}")


@pytest.fixture(scope="session")
def zdm_postgres_server(request: pytest.FixtureRequest) -> ServerSource:
    """The session's PostgreSQL server; skips without one, but fails when ``CI`` is set."""
    source = _session_source(request.config)
    if source.url is None:
        if _in_ci():
            pytest.fail(
                f"CI is set, so PostgreSQL tests may not be skipped: {source.reason}",
                pytrace=False,
            )
        pytest.skip(source.reason)
    return source


@pytest.fixture
def zdm_postgres_url(zdm_postgres_server: ServerSource, request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a brand-new PostgreSQL database, dropped after the test (in the background: the
    session waits for the drops at its end)."""
    assert zdm_postgres_server.url is not None
    drops = _session_drops(request.config)
    with fresh_postgres_database(zdm_postgres_server.url, drops=drops) as url:
        yield url
    if drops.errors:  # a database handed over earlier could not be dropped
        failed, drops.errors[:] = list(drops.errors), []
        pytest.fail(f"could not drop test databases: {'; '.join(failed)}", pytrace=False)


@pytest.fixture
def zdm_sqlite_url(tmp_path: Path) -> str:
    """URL of a fresh SQLite file database in the test's tmp_path."""
    return f"sqlite:///{tmp_path / 'zdm.db'}"


@pytest.fixture
def zdm_database_url(request: pytest.FixtureRequest) -> str:
    """A fresh database URL for the backend this test instance was parametrized with."""
    backend = getattr(request, "param", None)
    if backend not in BACKEND_FIXTURES:
        pytest.fail(
            f"zdm_database_url needs a backend parameter ({', '.join(BACKENDS)}), got {backend!r}",
            pytrace=False,
        )
    return str(request.getfixturevalue(BACKEND_FIXTURES[backend]))
