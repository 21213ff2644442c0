"""A throwaway database on the local PostgreSQL server, for the benchmarks.

Benchmarks create big tables and hammer them: they only ever target a server on this machine,
in a database they create and drop themselves, never one that holds someone's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
OUT = Path(__file__).parent / "out"


def server_url(raw: str) -> sa.URL:
    """The server URL, refused unless it is PostgreSQL on this machine."""
    url = sa.make_url(raw)
    if url.get_backend_name() != "postgresql":
        raise SystemExit(f"benchmarks run on PostgreSQL only, not {url.get_backend_name()!r}")
    if (url.host or "localhost") not in LOCAL_HOSTS:
        raise SystemExit(f"benchmarks only target a local server (127.0.0.1), not {url.host!r}")
    return url.set(drivername="postgresql+psycopg")


@contextmanager
def throwaway_database(server: sa.URL, purpose: str) -> Iterator[sa.URL]:
    """CREATE DATABASE zdm_bench_<purpose>_<random>; dropped on the way out, whatever happened."""
    name = f"zdm_bench_{purpose}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    quoted = admin.dialect.identifier_preparer.quote(name)
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {quoted}")
    try:
        yield server.set(database=name)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
        admin.dispose()


def libpq(url: sa.URL) -> str:
    """The URL as psycopg.connect() takes it."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def machine_load() -> dict[str, float]:
    """Load averages and cores: the machine is shared, so every figure says how busy it was."""
    one, five, fifteen = os.getloadavg()
    return {"load_1m": round(one, 2), "load_5m": round(five, 2), "load_15m": round(fifteen, 2),
            "cores": os.cpu_count() or 0}


@contextmanager
def own_server() -> Iterator[sa.URL]:
    """A PostgreSQL server of the benchmark's own (initdb, a free port, default settings but fsync=off),
    for figures no other client of a shared server may disturb: WAL is written server-wide."""
    import shlex
    import shutil
    import subprocess
    import tempfile

    from zdm.testing.servers import _find_pg_bindir, _free_port, _unprivileged_user

    bindir = _find_pg_bindir()
    if bindir is None:
        raise SystemExit("--own-server needs initdb and pg_ctl")
    ids = _unprivileged_user() if os.geteuid() == 0 else None
    workdir = tempfile.mkdtemp(prefix="zdm-bench-")
    if ids is not None:
        os.chown(workdir, *ids)
    data, port = os.path.join(workdir, "data"), _free_port()

    def run(*args: str) -> None:
        subprocess.run(list(args), check=True, capture_output=True, cwd=workdir, user=ids[0] if ids else None,
                       group=ids[1] if ids else None, extra_groups=[] if ids else None)

    try:
        run(str(bindir / "initdb"), "-D", data, "-U", "postgres", "-A", "trust", "--no-sync")
        options = " ".join(shlex.quote(o) for o in ("-p", str(port), "-k", workdir, "-c", "listen_addresses=127.0.0.1",
                                                     "-c", "fsync=off"))
        run(str(bindir / "pg_ctl"), "-D", data, "-l", data + ".log", "-w", "-o", options, "start")
        try:
            yield sa.make_url(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres")
        finally:
            run(str(bindir / "pg_ctl"), "-D", data, "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def fresh_items_table(engine: sa.Engine, rows: int) -> None:
    """``items`` (id, email NOT NULL, note) of ``rows`` rows, vacuumed, analyzed and checkpointed, with
    the functions a previous run's plan left behind dropped (zdm refuses to create a name that is
    taken; their names are zdm's, ``dialects.object_name``, so they are found by prefix)."""
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE IF EXISTS items"))
        for (function,) in connection.execute(sa.text(
                "SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.proname LIKE 'zdm\\_fn\\_%' "
                "AND p.pronamespace = current_schema()::regnamespace")):
            connection.execute(sa.text(f"DROP FUNCTION IF EXISTS {function}"))
        connection.execute(sa.text("CREATE TABLE items (id bigint PRIMARY KEY, email text NOT NULL, note text)"))
        connection.execute(sa.text("INSERT INTO items SELECT g, 'user' || g || '@example.com', 'note' "
                                   "FROM generate_series(1, :rows) g"), {"rows": rows})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text("VACUUM ANALYZE items"))
        connection.execute(sa.text("CHECKPOINT"))
