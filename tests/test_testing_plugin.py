"""Tests for the zdm.testing pytest plugin, against real PostgreSQL and SQLite.

The plugin decides whether every other database test in the suite runs at all,
so it gets its own tests: servers must really answer, per-test databases must
really be dropped, and a missing Docker engine must never hang a session.
"""

from __future__ import annotations

import importlib.metadata
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from zdm.testing import (
    DEFAULT_SOURCE_ORDER,
    PostgresServerError,
    ServerSource,
    fresh_postgres_database,
    resolve_postgres_server,
)

pytest_plugins = ["pytester"]


def _scalar(url: str, sql: str, **params: object) -> object:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()
    finally:
        engine.dispose()


def _database_exists(server_url: str, name: str) -> bool:
    found = _scalar(
        server_url, "SELECT count(*) FROM pg_database WHERE datname = :n", n=name
    )
    return found == 1


def _plugin_args() -> list[str]:
    """Load the plugin in pytester runs unless its entry point already does."""
    autoload = not os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    entry_points = importlib.metadata.entry_points(group="pytest11")
    if autoload and any(ep.value == "zdm.testing" for ep in entry_points):
        return []
    return ["-p", "zdm.testing"]


def _unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- #
# PostgreSQL server and per-test databases
# --------------------------------------------------------------------------- #


def test_resolved_server_answers_and_is_recent(
    zdm_postgres_server: ServerSource,
) -> None:
    assert zdm_postgres_server.source in DEFAULT_SOURCE_ORDER
    assert zdm_postgres_server.url is not None
    assert make_url(zdm_postgres_server.url).drivername == "postgresql+psycopg"
    assert _scalar(zdm_postgres_server.url, "SELECT 1") == 1
    version = int(str(_scalar(zdm_postgres_server.url, "SHOW server_version_num")))
    assert version >= 130000, f"PostgreSQL >= 13 required, got {version}"


def test_fresh_databases_are_distinct_and_dropped(
    zdm_postgres_server: ServerSource,
) -> None:
    server = zdm_postgres_server.url
    assert server is not None
    with (
        fresh_postgres_database(server) as first,
        fresh_postgres_database(server) as second,
    ):
        first_name = make_url(first).database
        second_name = make_url(second).database
        assert first_name != second_name
        assert first_name and first_name.startswith("zdm_t_")
        assert _scalar(first, "SELECT current_database()") == first_name
        assert _scalar(second, "SELECT current_database()") == second_name
        assert _database_exists(server, first_name)
        # A connection left open must not keep the database from being dropped.
        leaked = create_engine(first, poolclass=NullPool)
        leaked_conn = leaked.connect()
        leaked_conn.execute(text("CREATE TABLE t (id int)"))
        leaked_conn.commit()
    try:
        assert not _database_exists(server, first_name)
        assert not _database_exists(server, str(second_name))
    finally:
        leaked_conn.invalidate()
        leaked.dispose()


def test_zdm_postgres_url_is_an_empty_private_database(zdm_postgres_url: str) -> None:
    assert str(make_url(zdm_postgres_url).database).startswith("zdm_t_")
    tables = _scalar(
        zdm_postgres_url,
        "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN "
        "('pg_catalog', 'information_schema')",
    )
    assert tables == 0


def test_forced_pg_ctl_throwaway_server() -> None:
    started = time.perf_counter()
    source = resolve_postgres_server(order=("pg_ctl",))
    if source.url is None and "not found" in source.reason:
        pytest.skip(source.reason)
    try:
        assert source.source == "pg_ctl", source.reason
        assert source.url is not None and source.data_dir is not None
        assert time.perf_counter() - started < 30
        assert os.path.isdir(source.data_dir)
        assert _scalar(source.url, "SELECT 1") == 1
        with fresh_postgres_database(source.url) as url:
            assert _scalar(url, "SELECT current_database()") == make_url(url).database
    finally:
        source.close()
    assert not os.path.exists(source.data_dir)
    assert not os.path.exists(os.path.dirname(source.data_dir))
    with pytest.raises(OperationalError):
        _scalar(source.url, "SELECT 1")
    source.close()  # idempotent


@pytest.mark.skipif(
    bool(os.environ.get("DOCKER_HOST")) or os.path.exists("/var/run/docker.sock"),
    reason="a Docker engine may be present here",
)
def test_testcontainers_reported_unavailable_without_docker() -> None:
    started = time.perf_counter()
    source = resolve_postgres_server(order=("testcontainers",))
    elapsed = time.perf_counter() - started
    source.close()
    assert source.source == "none"
    assert "Docker" in source.reason
    assert elapsed < 5, f"Docker detection took {elapsed:.1f}s"


@pytest.mark.parametrize(
    "docker_host",
    ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:1", "tcp://10.255.255.1:2375"],
    ids=["missing-socket", "refused", "unroutable"],
)
def test_unreachable_docker_host_does_not_hang(
    monkeypatch: pytest.MonkeyPatch, docker_host: str
) -> None:
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    started = time.perf_counter()
    source = resolve_postgres_server(order=("testcontainers",))
    elapsed = time.perf_counter() - started
    assert source.url is None and source.source == "none"
    assert "testcontainers:" in source.reason
    assert elapsed < 5, f"Docker detection took {elapsed:.1f}s"


def test_broken_env_url_raises_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"postgresql://postgres:secret@127.0.0.1:{_unused_port()}/postgres"
    monkeypatch.setenv("ZDM_TEST_DATABASE_URL", url)
    with pytest.raises(PostgresServerError, match="ZDM_TEST_DATABASE_URL") as info:
        resolve_postgres_server()
    assert "secret" not in str(info.value)


def test_unknown_source_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown PostgreSQL source"):
        resolve_postgres_server(order=("carrier-pigeon",))


# --------------------------------------------------------------------------- #
# Backend parametrization
# --------------------------------------------------------------------------- #


def test_database_url_variants(
    zdm_database_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    backend = request.node.callspec.params["zdm_database_url"]
    url = make_url(zdm_database_url)
    assert url.get_backend_name() == backend
    assert _scalar(zdm_database_url, "SELECT 1") == 1
    if backend == "sqlite":
        assert url.database == str(tmp_path / "zdm.db")
    else:
        assert str(url.database).startswith("zdm_t_")


def _collected_ids(pytester: pytest.Pytester, *args: str) -> list[str]:
    pytester.makepyfile(
        test_x="""
        import pytest

        def test_any(zdm_database_url):
            pass

        @pytest.mark.parametrize("zdm_database_url", ["sqlite"], indirect=True)
        def test_pinned(zdm_database_url):
            pass
        """
    )
    result = pytester.runpytest_inprocess(
        *_plugin_args(), "--collect-only", "-q", *args
    )
    return [line for line in result.outlines if line.startswith("test_x.py::")]


def test_zdm_database_url_runs_once_per_backend(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ZDM_TEST_BACKENDS", raising=False)
    assert _collected_ids(pytester) == [
        "test_x.py::test_any[sqlite]",
        "test_x.py::test_any[postgresql]",
        "test_x.py::test_pinned[sqlite]",
    ]


def test_backends_option_and_env(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZDM_TEST_BACKENDS", "postgresql")
    assert _collected_ids(pytester)[0] == "test_x.py::test_any[postgresql]"
    assert _collected_ids(pytester, "--zdm-backends=sqlite")[0] == (
        "test_x.py::test_any[sqlite]"
    )
    result = pytester.runpytest_inprocess(*_plugin_args(), "--zdm-backends=oracle")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


@pytest.mark.parametrize("ci", ["", "true"])
def test_missing_server_skips_locally_but_fails_in_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.delenv("ZDM_TEST_DATABASE_URL", raising=False)
    monkeypatch.setenv("ZDM_TEST_POSTGRES_SOURCES", "testcontainers")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    monkeypatch.setenv("CI", ci)
    pytester.makepyfile(
        """
        def test_needs_pg(zdm_postgres_url):
            pass
        """
    )
    result = pytester.runpytest_inprocess(*_plugin_args(), "-rs")
    if ci:
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*CI is set*no PostgreSQL server found*"])
    else:
        result.assert_outcomes(skipped=1)
        result.stdout.fnmatch_lines(["*no PostgreSQL server found*"])
    result.stdout.fnmatch_lines(["zdm: PostgreSQL source used: none*"])


def test_without_pytest_importing_the_helpers_says_what_to_install() -> None:
    """pytest is no dependency of zdm: a plain install gets one clear ImportError, not pytest's."""
    code = ("import sys; sys.modules['pytest'] = None\n"
            "try:\n    from zdm.testing import assert_alembic_stairway\n"
            "except ImportError as exc:\n    print(type(exc).__name__, exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == ("ImportError zdm.testing (the pytest plugin and its assert_* helpers) needs "
                                     "pytest: pip install 'zdm[testing]' (or pytest)"), result.stderr


def test_test_databases_are_dropped_by_the_end_of_the_session_and_commit_without_waiting(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, zdm_postgres_server: ServerSource
) -> None:
    """zdm_postgres_url drops its database in the background: none is left once the session ends."""
    assert zdm_postgres_server.url is not None
    monkeypatch.setenv("ZDM_TEST_DATABASE_URL", zdm_postgres_server.url)
    names = pytester.path / "names.txt"
    pytester.makepyfile(
        f"""
        import pytest
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        @pytest.mark.parametrize("n", range(3))
        def test_uses_pg(zdm_postgres_url, n):
            with open({str(names)!r}, "a") as out:
                out.write(make_url(zdm_postgres_url).database + "\\n")
            engine = create_engine(zdm_postgres_url)
            with engine.connect() as connection:
                assert connection.execute(text("SHOW synchronous_commit")).scalar() == "off"
            engine.dispose()
        """
    )
    result = pytester.runpytest_inprocess(*_plugin_args())
    result.assert_outcomes(passed=3)
    created = names.read_text().split()
    assert len(set(created)) == 3
    assert not [name for name in created if _database_exists(zdm_postgres_server.url, name)]
