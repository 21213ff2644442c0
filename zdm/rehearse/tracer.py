"""The tracer: a reporter that records, for every statement the runner runs, its locks, how long it
held them, whether it rewrote a table, and the rows a backfill touched."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa

from zdm.actions import Action
from zdm.backfill import BackfillProgress
from zdm.dialects import Dialect
from zdm.plan import MigrationPlan, MigrationStep, Phase
from zdm.rehearse.locks import SQLITE_DATABASE, SQLITE_WRITE_LOCK, Lock, blocks_writes, unread_locks
from zdm.report import Reporter

#: A rewrite of a table with more rows than this breaks the promise (``--max-rewrite-rows``).

# -- tracing ----------------------------------------------------------------------------------
@dataclass
class StatementTrace:
    """One statement as it ran: what it took, for how long, what it rewrote."""

    step: str
    sql: str
    seconds: float = 0.0
    #: Locks this statement took that its transaction did not hold yet.
    locks: list[Lock] = field(default_factory=list)
    #: From the statement's start until its transaction ended (commit or rollback).
    held_ms: float | None = None
    rewrote: list[str] = field(default_factory=list)
    rows: int | None = None
    #: False when the locks are known from the statement's kind rather than read from the database.
    traced: bool = True

    def breaks_budget(self, budget_ms: float) -> bool:
        held = self.held_ms is not None and self.held_ms > budget_ms
        return held and any(blocks_writes(lock.mode) for lock in self.locks)


@dataclass
class PhaseTrace:
    phase: str
    statements: list[StatementTrace] = field(default_factory=list)


class Tracer(Reporter):
    """A Reporter that records each statement; forwards every event to ``inner`` (progress)."""

    def __init__(self, dialect: Dialect, watched: Iterable[str], inner: Reporter | None = None) -> None:
        self.dialect = dialect
        self.watched = sorted(set(watched))
        self.inner = inner or Reporter()
        self.phases: list[PhaseTrace] = []
        self._step, self._sql = "", ""
        self._backfill: tuple[StatementTrace, float] | None = None
        #: Statements of the open transaction that took locks, with their start times.
        self._open: list[tuple[StatementTrace, float]] = []
        self._held: set[tuple[str, str]] = set()
        #: relfilenode of each watched table: committed, and as the open transaction sees it.
        self._nodes: dict[str, int] = {}
        self._nodes_committed: dict[str, int] = {}
        #: Run once when the next MIGRATING begins: expand has committed, the backfill has not begun.
        self.before_backfill: Callable[[], None] | None = None

    def watch(self, connection: sa.Connection) -> None:
        """Remember the watched tables' storage before anything runs (PostgreSQL)."""
        self._nodes = self._read_nodes(connection)
        self._nodes_committed = dict(self._nodes)

    @property
    def current(self) -> PhaseTrace:
        if not self.phases:
            self.phases.append(PhaseTrace("PENDING"))
        return self.phases[-1]

    # -- runner events -------------------------------------------------------------------------
    def phase(self, plan: MigrationPlan, phase: Phase) -> None:
        self.end_transaction(committed=False)  # a transaction still open here failed
        self.phases.append(PhaseTrace(phase.value))
        self.inner.phase(plan, phase)
        if phase is Phase.MIGRATING and self.before_backfill is not None:
            probe_now, self.before_backfill = self.before_backfill, None
            probe_now()

    def step(self, step: MigrationStep) -> None:
        self._step = step.description
        if step.backfill is not None:
            spec = step.backfill
            locks = [Lock(spec.table, "RowExclusiveLock")] if self.dialect.reads_locks else [
                Lock(SQLITE_DATABASE, SQLITE_WRITE_LOCK)]
            trace = StatementTrace(step.description, spec.describe(), locks=locks, rows=0, traced=False)
            self.current.statements.append(trace)
            self._backfill = (trace, time.monotonic())
        self.inner.step(step)

    def statement(self, sql: str) -> None:
        self._sql = sql
        self.inner.statement(sql)

    def backfill(self, progress: BackfillProgress) -> None:
        if self._backfill is not None:
            trace, started = self._backfill
            trace.rows = progress.rows_done
            trace.seconds = time.monotonic() - started
            trace.held_ms = max(trace.held_ms or 0.0, progress.batch_ms)  # the longest batch transaction
            if progress.finished:
                self._backfill = None
        self.inner.backfill(progress)

    def note(self, message: str) -> None:
        self.end_transaction(committed=False)  # the runner notes a failure after rolling it back
        self.inner.note(message)

    def executed(self, connection: sa.Connection, action: Action, seconds: float) -> None:
        started = time.monotonic() - seconds
        trace = StatementTrace(self._step, self._sql, seconds=seconds)
        own_transaction = connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        if self.dialect.reads_locks:
            if own_transaction:  # committed already: its locks are gone; it held them while it ran
                trace.traced, trace.held_ms = False, seconds * 1000
                if not action.lets_writes_through():
                    trace.locks = unread_locks(action)
            else:
                taken = [lock for lock in self._read_locks(connection) if (lock.relation, lock.mode) not in self._held]
                trace.locks = taken
                self._held.update((lock.relation, lock.mode) for lock in taken)
            nodes = self._read_nodes(connection)
            trace.rewrote = sorted(t for t, node in nodes.items() if self._nodes.get(t, node) != node)
            self._nodes = {**self._nodes, **nodes}
            if own_transaction:
                self._nodes_committed = dict(self._nodes)
        else:
            if not own_transaction and (SQLITE_DATABASE, SQLITE_WRITE_LOCK) not in self._held:
                trace.locks, trace.traced = [Lock(SQLITE_DATABASE, SQLITE_WRITE_LOCK)], False
                self._held.add((SQLITE_DATABASE, SQLITE_WRITE_LOCK))
            trace.rewrote = action.rewrites()
        if trace.locks and not own_transaction:
            self._open.append((trace, started))
        self.current.statements.append(trace)
        self.inner.executed(connection, action, seconds)

    def committed(self) -> None:
        self.end_transaction(committed=True)
        self.inner.committed()

    def end_transaction(self, committed: bool) -> None:
        """The open transaction ended: its locks are released, its storage changes kept or not."""
        now = time.monotonic()
        for trace, started in self._open:
            trace.held_ms = (now - started) * 1000
        self._open, self._held = [], set()
        if committed:
            self._nodes_committed = dict(self._nodes)
        else:
            self._nodes = dict(self._nodes_committed)

    # -- reading the database ------------------------------------------------------------------
    def _read_locks(self, connection: sa.Connection) -> list[Lock]:
        return [Lock(relation, mode) for relation, mode in self.dialect.locks_held(connection)]

    def _read_nodes(self, connection: sa.Connection) -> dict[str, int]:
        return self.dialect.storage_ids(connection, self.watched) if self.watched else {}


