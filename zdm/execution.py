"""Running actions on the database the way every phase needs: in a transaction under the lock
budget, retrying lock timeouts and lost connections, checking the runner lock first.

The runner walks the phases; this is what it uses to run anything. What differs between databases
(how the budget is set, what a lock timeout or a lost connection looks like, who is in the way) is
the dialect's to say.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa

from zdm.actions import Action
from zdm.dialects import Dialect
from zdm.errors import LockBudgetExceeded
from zdm.report import Reporter

T = TypeVar("T")


def _always_held() -> None:
    """Outside a command there is no runner lock to lose."""


class Executor:
    """Transactions under the lock budget (``lock_timeout_ms``, ``lock_retries``) for one engine."""

    def __init__(self, engine: sa.Engine, dialect: Dialect, reporter: Reporter, *, lock_timeout_ms: int,
                 lock_retries: int) -> None:
        self.engine, self.dialect, self.reporter = engine, dialect, reporter
        self.lock_timeout_ms, self.lock_retries = lock_timeout_ms, lock_retries
        #: Raises once the runner lock is gone; checked before every transaction.
        self.still_held: Callable[[], None] = _always_held
        #: The tables of the plan at work: a lock timeout names the sessions holding locks on them.
        self.tables: list[str] = []

    def execute(self, connection: sa.Connection, action: Action) -> None:
        """Run one action, telling the reporter before and after (a lock tracer reads pg_locks then)."""
        started = time.monotonic()
        self.reporter.statement(action.describe(self.dialect))
        action.run(connection, self.dialect)
        self.reporter.executed(connection, action, time.monotonic() - started)

    def transaction(self, work: Callable[[sa.Connection], T], what: str, autocommit: bool = False) -> T:
        """Run ``work`` in a transaction under the lock budget, retrying lock timeouts and lost connections.

        ``autocommit``: each statement commits by itself (CREATE INDEX CONCURRENTLY refuses a
        transaction); ``work`` must then be safe to run again from the start. Raises
        LockBudgetExceeded when the retries run out, naming who is in the way; a lost connection
        that outlasts them, as the database error it is.
        """
        attempts = self.lock_retries + 1
        blocked_by: str | None = None  # who blocked the last try, as the database said while it waited
        for attempt in range(1, attempts + 1):
            try:
                self.still_held()
                if autocommit:
                    with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                        for sql in self.dialect.begin(self.lock_timeout_ms, autocommit=True):
                            connection.exec_driver_sql(sql)
                        with self.dialect.watch_blockers(self.engine, connection, self.lock_timeout_ms) as seen:
                            try:
                                return work(connection)
                            finally:
                                blocked_by = seen()
                with self.engine.begin() as connection:
                    for sql in self.dialect.begin(self.lock_timeout_ms):
                        connection.exec_driver_sql(sql)
                    with self.dialect.watch_blockers(self.engine, connection, self.lock_timeout_ms) as seen:
                        try:
                            result = work(connection)
                        finally:
                            blocked_by = seen()
                self.reporter.committed()
                return result
            except sa.exc.DBAPIError as exc:
                lock_timeout, lost = self.dialect.is_lock_timeout(exc), self.dialect.connection_lost(exc)
                if not (lock_timeout or lost):
                    raise
                if attempt == attempts:
                    if lost:
                        raise
                    raise LockBudgetExceeded(
                        f"{what}: no lock within {self.lock_timeout_ms} ms after {attempts} tries; "
                        f"{blocked_by or self.dialect.blockers(self.engine, self.tables)}"
                    ) from exc
                # A lock comes free in milliseconds; a restarting server takes seconds.
                first = 0.05 if lock_timeout else 0.5
                delay = min(10.0, first * 2 ** (attempt - 1)) * (0.5 + random.random())
                kind = "lock timeout" if lock_timeout else "connection lost"
                self.reporter.note(f"{what}: {kind} (try {attempt}/{attempts}), retrying in {delay:.2f} s")
                time.sleep(delay)
        raise AssertionError("unreachable")
