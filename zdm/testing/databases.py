"""A fresh, empty database per test, dropped afterwards, so that tests run in parallel."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from zdm.testing.servers import DATABASE_PREFIX, _normalize_postgres_url, _url_str

if TYPE_CHECKING:  # imported lazily below: the plugin loads in every pytest session

    pass

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
            # A throwaway database needs no durability: its sessions commit without waiting for
            # the WAL flush (visibility and locking are unchanged), which on a busy disk is most
            # of what a short write costs. The throwaway server (pg_ctl) runs so as a whole.
            conn.execute(text(f"ALTER DATABASE {quoted} SET synchronous_commit = off"))
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
