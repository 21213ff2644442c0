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
