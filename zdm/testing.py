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

import atexit
import glob
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

if TYPE_CHECKING:  # imported lazily below: the plugin loads in every pytest session
    from alembic.config import Config as AlembicConfig
    from sqlalchemy.engine import Engine

    from zdm.planfile import PlanFile
    from zdm.rehearse import Rehearsal

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

DEFAULT_SOURCE_ORDER: tuple[str, ...] = ("env", "testcontainers", "local", "pg_ctl")
DEFAULT_LOCAL_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TESTCONTAINERS_IMAGE = "postgres:16-alpine"
DATABASE_PREFIX = "zdm_t_"

ENV_DATABASE_URL = "ZDM_TEST_DATABASE_URL"
ENV_LOCAL_URL = "ZDM_TEST_LOCAL_URL"
ENV_SOURCES = "ZDM_TEST_POSTGRES_SOURCES"
ENV_BACKENDS = "ZDM_TEST_BACKENDS"

BACKENDS: tuple[str, ...] = ("sqlite", "postgresql")
_BACKEND_FIXTURES = {"sqlite": "zdm_sqlite_url", "postgresql": "zdm_postgres_url"}
_PROBE_TIMEOUT = 2.0  # seconds; libpq's connect_timeout minimum is 2


class PostgresServerError(RuntimeError):
    """An explicitly configured PostgreSQL server is unusable.

    Raised instead of skipping because the user asked for that server.
    """


@dataclass
class ServerSource:
    """Where the PostgreSQL test server came from, and how to let go of it.

    ``url`` is ``None`` when no server could be had; ``reason`` then says why
    (and otherwise why earlier sources were passed over).
    """

    url: str | None
    source: str
    reason: str = ""
    data_dir: str | None = None
    _closer: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    @property
    def available(self) -> bool:
        """Whether a usable server was found."""
        return self.url is not None

    @property
    def display_url(self) -> str | None:
        """The URL with its password masked, safe for logs and headers."""
        return (
            None
            if self.url is None
            else make_url(self.url).render_as_string(hide_password=True)
        )

    def describe(self) -> str:
        """One line for the pytest header/summary."""
        if self.url is None:
            return f"none ({self.reason})"
        return f"{self.source} {self.display_url}"

    def close(self) -> None:
        """Stop whatever was started for this source (container, pg_ctl server); idempotent."""
        closer, self._closer = self._closer, None
        if closer is not None:
            closer()


# --------------------------------------------------------------------------- #
# URL helpers and probing
# --------------------------------------------------------------------------- #


def _normalize_postgres_url(raw: str) -> URL:
    """Force the psycopg 3 driver so every source yields the same kind of URL."""
    url = make_url(raw)
    if url.get_backend_name() not in ("postgresql", "postgres"):
        raise ValueError(
            f"not a PostgreSQL URL: {url.render_as_string(hide_password=True)}"
        )
    return url.set(drivername="postgresql+psycopg")


def _url_str(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def _short_error(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _probe(url: str, timeout: float = _PROBE_TIMEOUT) -> str | None:
    """Return ``None`` if ``url`` answers ``SELECT 1`` and may CREATE DATABASE, else why not."""
    engine = create_engine(
        url,
        poolclass=NullPool,
        connect_args={"connect_timeout": max(2, int(timeout + 0.999))},
    )
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            may_create = conn.execute(
                text(
                    "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
                )
            ).scalar()
    except Exception as exc:
        return _short_error(exc)
    finally:
        engine.dispose()
    if not may_create:
        return "connected, but the role may not CREATE DATABASE"
    return None


# --------------------------------------------------------------------------- #
# Sources
# --------------------------------------------------------------------------- #


def _from_env() -> tuple[ServerSource | None, str]:
    raw = os.environ.get(ENV_DATABASE_URL, "").strip()
    if not raw:
        return None, f"{ENV_DATABASE_URL} not set"
    try:
        url = _url_str(_normalize_postgres_url(raw))
    except Exception as exc:
        raise PostgresServerError(
            f"{ENV_DATABASE_URL} is not a usable PostgreSQL URL: {exc}"
        ) from exc
    problem = _probe(url)
    if problem is not None:
        shown = make_url(url).render_as_string(hide_password=True)
        raise PostgresServerError(
            f"{ENV_DATABASE_URL} is set ({shown}) but that server is unusable: {problem}. "
            f"Fix it or unset {ENV_DATABASE_URL} to let zdm find another server."
        )
    return ServerSource(url=url, source="env"), ""


def _docker_unavailable(timeout: float = _PROBE_TIMEOUT) -> str | None:
    """Cheaply check for a Docker engine; return why it is unusable, or ``None``."""
    try:
        import docker
    except ImportError:
        return "docker python package not installed"
    try:
        client = docker.from_env(timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return f"no Docker engine answers ({_short_error(exc)})"
    return None


def _from_testcontainers() -> tuple[ServerSource | None, str]:
    problem = _docker_unavailable()
    if problem is not None:
        return None, problem
    try:
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                from testcontainers.postgres import PostgresContainer
    except ImportError:
        return None, "testcontainers not installed"
    container = PostgresContainer(TESTCONTAINERS_IMAGE, driver="psycopg")
    try:
        container.start()
    except Exception as exc:
        _quietly(container.stop)
        return None, f"container did not start ({_short_error(exc)})"
    url = _url_str(_normalize_postgres_url(container.get_connection_url()))
    problem = _probe(url, timeout=5)
    if problem is not None:
        _quietly(container.stop)
        return None, f"container started but is unusable ({problem})"
    return ServerSource(
        url=url, source="testcontainers", _closer=lambda: _quietly(container.stop)
    ), ""


def _from_local() -> tuple[ServerSource | None, str]:
    raw = os.environ.get(ENV_LOCAL_URL, "").strip() or DEFAULT_LOCAL_URL
    try:
        url = _url_str(_normalize_postgres_url(raw))
    except ValueError as exc:
        return None, f"{ENV_LOCAL_URL}: {exc}"
    problem = _probe(url)
    if problem is not None:
        return None, f"{make_url(url).render_as_string(hide_password=True)}: {problem}"
    return ServerSource(url=url, source="local"), ""


def _find_pg_bindir() -> Path | None:
    """Directory holding pg_ctl and initdb: PATH first, then distro locations (newest first)."""
    found = shutil.which("pg_ctl")
    if found:
        bindir = Path(found).resolve().parent
        if (bindir / "initdb").exists():
            return bindir
    candidates = glob.glob("/usr/lib/postgresql/*/bin/pg_ctl") + glob.glob(
        "/usr/pgsql-*/bin/pg_ctl"
    )

    def version(path: str) -> tuple[int, ...]:
        digits = "".join(ch if ch.isdigit() else " " for ch in path).split()
        return tuple(int(d) for d in digits)

    for pg_ctl in sorted(candidates, key=version, reverse=True):
        bindir = Path(pg_ctl).parent
        if (bindir / "initdb").exists():
            return bindir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unprivileged_user() -> tuple[int, int] | None:
    """initdb refuses to run as root: pick an OS user to run the throwaway server as."""
    import pwd

    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    return None


def _from_pg_ctl() -> tuple[ServerSource | None, str]:
    bindir = _find_pg_bindir()
    if bindir is None:
        return None, "pg_ctl/initdb not found on PATH or in /usr/lib/postgresql/*/bin"
    run_as: dict[str, object] = {}
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        ids = _unprivileged_user()
        if ids is None:
            return (
                None,
                "running as root and no 'postgres'/'nobody' OS user to run initdb as",
            )
        run_as = {"user": ids[0], "group": ids[1], "extra_groups": []}

    workdir = tempfile.mkdtemp(prefix="zdm-pg-")
    data_dir = os.path.join(workdir, "data")
    log_file = os.path.join(workdir, "postgres.log")
    if run_as:
        os.chown(workdir, int(run_as["user"]), int(run_as["group"]))  # type: ignore[call-overload]

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args),
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            **run_as,  # type: ignore[arg-type]
        )

    def remove_workdir() -> None:
        shutil.rmtree(workdir, ignore_errors=True)

    try:
        done = run(
            str(bindir / "initdb"), "-D", data_dir, "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        if done.returncode != 0:
            remove_workdir()
            return None, f"initdb failed: {(done.stderr or done.stdout).strip()[-300:]}"

        started_port: int | None = None
        last_error = ""
        for _attempt in range(3):  # the free port may be taken between check and bind
            port = _free_port()
            options = " ".join(
                shlex.quote(part)
                for part in (
                    "-p", str(port), "-k", workdir,
                    "-c", "listen_addresses=127.0.0.1",
                    "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                )
            )  # fmt: skip
            done = run(str(bindir / "pg_ctl"), "-D", data_dir, "-l", log_file, "-w", "-t", "30",
                       "-o", options, "start")  # fmt: skip
            if done.returncode == 0:
                started_port = port
                break
            last_error = (done.stderr or done.stdout).strip()[-300:]
        if started_port is None:
            remove_workdir()
            return None, f"pg_ctl start failed: {last_error}"
    except (OSError, subprocess.SubprocessError) as exc:
        remove_workdir()
        return None, f"throwaway server failed: {_short_error(exc)}"

    def stop() -> None:
        with suppress(OSError, subprocess.SubprocessError):
            run(
                str(bindir / "pg_ctl"),
                "-D",
                data_dir,
                "-m",
                "immediate",
                "-w",
                "stop",
                timeout=30,
            )
        remove_workdir()

    source = ServerSource(
        url=f"postgresql+psycopg://postgres@127.0.0.1:{started_port}/postgres",
        source="pg_ctl",
        data_dir=data_dir,
    )
    problem = _probe(source.url or "")
    if problem is not None:
        stop()
        return None, f"throwaway server started but is unusable ({problem})"
    # Also stop on interpreter exit, in case the session is torn down abnormally.
    source._closer = stop
    atexit.register(source.close)
    return source, ""


def _quietly(action: Callable[[], object]) -> None:
    with suppress(Exception):
        action()


_SOURCES: dict[str, Callable[[], tuple[ServerSource | None, str]]] = {
    "env": _from_env,
    "testcontainers": _from_testcontainers,
    "local": _from_local,
    "pg_ctl": _from_pg_ctl,
}


def _configured_order() -> tuple[str, ...]:
    raw = os.environ.get(ENV_SOURCES, "").strip()
    if not raw:
        return DEFAULT_SOURCE_ORDER
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def resolve_postgres_server(order: Sequence[str] | None = None) -> ServerSource:
    """Find a PostgreSQL server where tests may CREATE DATABASE.

    Tries ``order`` (default: ``ZDM_TEST_POSTGRES_SOURCES`` or
    :data:`DEFAULT_SOURCE_ORDER`) and stops at the first source that answers.
    Never hangs on a missing Docker engine.  Returns a ``ServerSource`` whose
    ``url`` is ``None`` if nothing worked; raises :class:`PostgresServerError`
    if ``ZDM_TEST_DATABASE_URL`` is set but unusable.  Call ``close()`` when done.
    Uncached: the pytest fixture caches one resolution per session.
    """
    chosen = tuple(order) if order is not None else _configured_order()
    unknown = [name for name in chosen if name not in _SOURCES]
    if unknown:
        raise ValueError(
            f"unknown PostgreSQL source(s) {unknown}; choose from {sorted(_SOURCES)}"
        )
    skipped: list[str] = []
    for name in chosen:
        source, why = _SOURCES[name]()
        if source is not None:
            source.reason = "; ".join(skipped)
            return source
        skipped.append(f"{name}: {why}")
    reason = (
        "no PostgreSQL server found ("
        + ("; ".join(skipped) or "no sources to try")
        + ")"
    )
    return ServerSource(url=None, source="none", reason=reason)


# --------------------------------------------------------------------------- #
# Per-test databases
# --------------------------------------------------------------------------- #


@contextmanager
def fresh_postgres_database(server_url: str) -> Iterator[str]:
    """Create an empty, uniquely named database on ``server_url``; drop it on exit.

    Gives each test full isolation (and xdist safety) without the cost of a
    server per test.  Backends still connected at exit are terminated first.
    """
    server = _normalize_postgres_url(server_url)
    name = f"{DATABASE_PREFIX}{uuid.uuid4().hex[:16]}"
    engine = create_engine(server, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    quoted = engine.dialect.identifier_preparer.quote(name)
    try:
        with engine.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {quoted}"))
        try:
            yield _url_str(server.set(database=name))
        finally:
            with engine.connect() as conn:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )
                force = (
                    " WITH (FORCE)"
                    if (conn.dialect.server_version_info or (0,)) >= (13,)
                    else ""
                )
                conn.execute(text(f"DROP DATABASE IF EXISTS {quoted}{force}"))
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- #
# Pytest plugin
# --------------------------------------------------------------------------- #

_SOURCE_KEY = pytest.StashKey[ServerSource]()
_USED_KEY = pytest.StashKey[list[str]]()


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
    order = ",".join(_configured_order())
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
    used = list(config.stash.get(_USED_KEY, []))
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
def zdm_postgres_url(zdm_postgres_server: ServerSource) -> Iterator[str]:
    """URL of a brand-new PostgreSQL database, dropped after the test."""
    assert zdm_postgres_server.url is not None
    with fresh_postgres_database(zdm_postgres_server.url) as url:
        yield url


@pytest.fixture
def zdm_sqlite_url(tmp_path: Path) -> str:
    """URL of a fresh SQLite file database in the test's tmp_path."""
    return f"sqlite:///{tmp_path / 'zdm.db'}"


@pytest.fixture
def zdm_database_url(request: pytest.FixtureRequest) -> str:
    """A fresh database URL for the backend this test instance was parametrized with."""
    backend = getattr(request, "param", None)
    if backend not in _BACKEND_FIXTURES:
        pytest.fail(
            f"zdm_database_url needs a backend parameter ({', '.join(BACKENDS)}), got {backend!r}",
            pytrace=False,
        )
    return str(request.getfixturevalue(_BACKEND_FIXTURES[backend]))


# --------------------------------------------------------------------------- #
# Helpers: one-line migration checks for a test suite
# --------------------------------------------------------------------------- #

PlanLike = Union["PlanFile", Mapping[str, Any], str, Path]


def _plan_file(plan: PlanLike) -> PlanFile:
    """A PlanFile from a PlanFile, a plan dict, or the path of a YAML/JSON plan file."""
    from zdm import planfile

    if isinstance(plan, planfile.PlanFile):
        return plan
    if isinstance(plan, Mapping):
        return planfile.parse(dict(plan))
    return planfile.load(plan)


@contextmanager
def _engine(url: str) -> Iterator[Engine]:
    from zdm import db

    engine = db.create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def _broken(rehearsal: Rehearsal, kinds: set[str]) -> list[str]:
    return [f"{v.kind}: {v.message}" for v in rehearsal.violations if v.kind in kinds]


def assert_reversible(url: str, plan: PlanLike) -> Rehearsal:
    """``start`` then ``rollback`` gives back the schema and every row (by checksum).

    Leaves the database as it was (plus a ROLLED_BACK record in ``zdm_migrations``).
    Returns the rehearsal, for further checks on its statements.
    """
    __tracebackhide__ = True
    from zdm.rehearse import rehearse

    plan_file = _plan_file(plan)
    with _engine(url) as engine:
        rehearsal = rehearse(engine, plan_file, probes=False, max_rewrite_rows=None)
    problems = _broken(rehearsal, {"failed", "rollback"})
    if problems:
        raise AssertionError(f"plan {plan_file.id!r} is not reversible:\n  " + "\n  ".join(problems))
    return rehearsal


def assert_completes(
    url: str, plan: PlanLike, expected_columns: Iterable[str] | Mapping[str, Iterable[str]] | None = None
) -> None:
    """``start`` then ``complete`` leaves the declared shape and no zdm trigger or function.

    ``expected_columns``: the column names of the plan's table (a list, for a plan on one
    table) or of each table (a mapping). Without it, the shape (names, types, NULL-ability)
    the reference model predicts. Leaves the database completed.
    """
    __tracebackhide__ = True
    from zdm import introspect
    from zdm.dialects import for_connection
    from zdm.rehearse import affected_tables, final_model
    from zdm.runner import Runner, ZdmError

    plan_file = _plan_file(plan)
    with _engine(url) as engine:
        runner = Runner(engine)
        try:
            runner.plan(plan_file)  # an invalid plan fails here, before the model is asked about it
            with engine.connect() as connection:
                tables = affected_tables(connection, plan_file)
                predicted = final_model(plan_file, introspect.read_schema(connection, tables), for_connection(engine))
            runner.start(plan_file)
            runner.complete(plan_file.id)
        except ZdmError as exc:
            raise AssertionError(f"plan {plan_file.id!r} did not complete: {exc}") from None
        with engine.connect() as connection:
            found = introspect.read_schema(connection, tables)
            leftovers = for_connection(connection).zdm_objects(connection)
    problems = [f"zdm objects left behind: {', '.join(leftovers)}"] if leftovers else []
    if expected_columns is None:
        for name in sorted(set(found.tables) | set(predicted.tables)):
            shape = found.tables[name].shape() if name in found.tables else None
            wanted = predicted.tables[name].shape() if name in predicted.tables else None
            if shape != wanted:
                problems.append(f"{name}: columns {shape}, the plan declares {wanted}")
    else:
        expected = _expected_columns(expected_columns, tables)
        for name, columns in expected.items():
            have = set(found.tables[name].columns) if name in found.tables else set()
            if have != columns:
                problems.append(f"{name}: columns {sorted(have)}, expected {sorted(columns)} "
                                f"(missing {sorted(columns - have)}, unexpected {sorted(have - columns)})")
    if problems:
        raise AssertionError(f"plan {plan_file.id!r} completed, but not to the declared shape:\n  "
                             + "\n  ".join(problems))


def _expected_columns(
    expected: Iterable[str] | Mapping[str, Iterable[str]], tables: list[str]
) -> dict[str, set[str]]:
    if isinstance(expected, Mapping):
        return {name: set(columns) for name, columns in expected.items()}
    if isinstance(expected, str) or len(tables) != 1:
        raise TypeError("expected_columns: a list of column names for a plan on one table, "
                        "else a mapping {table: [columns]}")
    return {tables[0]: set(expected)}


def assert_within_lock_budget(url: str, plan: PlanLike, budget_ms: float) -> Rehearsal:
    """No statement of start or rollback holds a lock that blocks writes longer than ``budget_ms``.

    Built on `zdm rehearse`'s tracer: on PostgreSQL the locks come from ``pg_locks``; on SQLite
    every write transaction counts as holding the database write lock. Leaves the database rolled back.
    """
    __tracebackhide__ = True
    from zdm.rehearse import rehearse

    plan_file = _plan_file(plan)
    with _engine(url) as engine:
        rehearsal = rehearse(engine, plan_file, probes=False, lock_budget_ms=budget_ms, max_rewrite_rows=None)
    problems = _broken(rehearsal, {"failed", "lock"})
    if problems:
        raise AssertionError(f"plan {plan_file.id!r} breaks the lock budget of {budget_ms} ms:\n  "
                             + "\n  ".join(problems))
    return rehearsal


def assert_alembic_stairway(config: AlembicConfig | str | Path, url: str | None = None) -> list[str]:
    """Walk every revision in order: upgrade, downgrade one step, upgrade again.

    Each downgrade must give back the schema from before its upgrade, and the second upgrade
    must build the same schema as the first: a revision that only works once, or whose
    downgrade forgets something, fails here rather than on a production rollback.
    ``config`` is an Alembic Config or the path of an alembic.ini; ``url`` (optional) replaces
    its ``sqlalchemy.url``, which the script directory's env.py must use. Run it on an empty
    database (a fixture's) with a linear history (one head). Returns the revision ids checked,
    oldest first. zdm revisions are completed (``-x zdm=complete``, as the next deploy would)
    before the next revision is walked: their plans wait in MIGRATING after an upgrade, and zdm
    runs one plan per table at a time. Without zdm in env.py the extra argument is ignored.
    """
    __tracebackhide__ = True
    from alembic.command import downgrade, upgrade
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    if not isinstance(config, Config):
        config = Config(str(config))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url)
    target = config.get_main_option("sqlalchemy.url")
    if not target:
        raise ValueError("assert_alembic_stairway needs a database: give url= or set sqlalchemy.url")
    revisions = list(reversed(list(ScriptDirectory.from_config(config).walk_revisions("base", "heads"))))
    engine = create_engine(target, poolclass=NullPool)

    def run(what: str, step: Callable[[], object]) -> None:
        __tracebackhide__ = True
        try:
            step()
        except Exception as exc:
            raise AssertionError(f"{what} failed: {_short_error(exc)}") from exc

    try:
        before = _schema_shapes(engine)
        for revision in revisions:
            name = f"revision {revision.revision}"
            run(f"{name}: upgrade", lambda r=revision.revision: upgrade(config, r))
            upgraded = _schema_shapes(engine)
            run(f"{name}: downgrade", lambda: downgrade(config, "-1"))
            _same_schema(before, _schema_shapes(engine), f"{name}: its downgrade")
            run(f"{name}: upgrade after its downgrade", lambda r=revision.revision: upgrade(config, r))
            _same_schema(upgraded, _schema_shapes(engine), f"{name}: upgrading again")
            run(f"{name}: complete", lambda r=revision.revision: upgrade(_with_x(config, "zdm=complete"), r))
            before = _schema_shapes(engine)
    finally:
        engine.dispose()
    return [revision.revision for revision in revisions]


def _with_x(config: AlembicConfig, argument: str) -> AlembicConfig:
    """A copy of ``config`` with one more ``-x`` argument."""
    from argparse import Namespace
    from copy import copy

    extended = copy(config)
    extended.cmd_opts = Namespace(**{**vars(config.cmd_opts or Namespace()),
                                     "x": [*(getattr(config.cmd_opts, "x", None) or []), argument]})
    return extended


def _schema_shapes(engine: Engine) -> dict[str, dict[str, Any]]:
    from zdm.rehearse import table_shape, user_tables

    with engine.connect() as connection:
        return {t: table_shape(connection, t) for t in user_tables(connection) if t != "alembic_version"}


def _same_schema(expected: dict[str, dict[str, Any]], found: dict[str, dict[str, Any]], what: str) -> None:
    __tracebackhide__ = True
    problems = []
    if set(expected) != set(found):
        problems.append(f"tables {sorted(found)}, expected {sorted(expected)}")
    for name in sorted(set(expected) & set(found)):
        for part, value in expected[name].items():
            if found[name][part] != value:
                problems.append(f"{name} {part.replace('_', ' ')}: {found[name][part]}, expected {value}")
    if problems:
        raise AssertionError(f"{what} does not give the schema back:\n  " + "\n  ".join(problems))
