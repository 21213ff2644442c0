"""A fresh, empty database per test, dropped afterwards, so that tests run in parallel."""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from zdm.testing.servers import DATABASE_PREFIX, _normalize_postgres_url, _url_str

if TYPE_CHECKING:  # imported lazily below: the plugin loads in every pytest session
    from sqlalchemy.engine import URL

# --------------------------------------------------------------------------- #
# Per-test databases
# --------------------------------------------------------------------------- #


def _drop(server: URL, name: str) -> None:
    """Terminate the backends still connected to ``name``, then drop it."""
    engine = create_engine(server, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    quoted = engine.dialect.identifier_preparer.quote(name)
    try:
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


class DeferredDrops:
    """Drops databases on a thread of its own, one after another, while the tests go on.

    PostgreSQL (up to 15) makes every ``DROP DATABASE`` wait for a checkpoint, which flushes the
    whole server's dirty buffers: 0.1 to 1 s per test on a busy machine, spent waiting on the
    disk. A test's database is no longer used once the test is over, so the plugin's fixture
    hands it here; :meth:`close` (at the end of the session) waits until every one is gone.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[URL, str] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.errors: list[str] = []

    def drop(self, server: URL, name: str) -> None:
        """Drop ``name`` on ``server`` soon."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="zdm-drop-databases", daemon=True)
                self._thread.start()
        self._queue.put((server, name))

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                _drop(*item)
            except Exception as exc:  # the fixture reports it; the next drops still run
                self.errors.append(f"{item[1]}: {exc}")

    def close(self) -> None:
        """Wait until every database handed over is dropped."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()


@contextmanager
def fresh_postgres_database(server_url: str, *, drops: DeferredDrops | None = None) -> Iterator[str]:
    """Create an empty, uniquely named database on ``server_url``; drop it on exit.

    Gives each test full isolation (and xdist safety) without the cost of a
    server per test.  Backends still connected at exit are terminated first.
    With ``drops`` the drop happens there, in the background, instead of before
    the ``with`` block is left.
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
    finally:
        engine.dispose()
    try:
        yield _url_str(server.set(database=name))
    finally:
        if drops is not None:
            drops.drop(server, name)
        else:
            _drop(server, name)
