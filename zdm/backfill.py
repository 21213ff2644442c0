"""Backfill in keyset batches: short transactions, adaptive size, a checkpoint per batch.

One UPDATE of a whole big table holds row locks on all of it for as long as it runs and makes a
single huge transaction. Batches over the primary key keep every transaction short; the batch
size follows a target duration (like pt-online-schema-change's chunk-time), and the last key
done commits with each batch, so a killed runner resumes where it stopped.

Only the key range that existed when the backfill began is visited: rows inserted after expand
were written in the new shape by the triggers and need no visit, so a busy table cannot make
the backfill chase its tail.

A backfill with ``walk`` visits only the rows whose keys a zdm-owned table of keys names (the
undo of ``set_not_null`` with ``fill``: the rows it filled), in the order of those keys.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from zdm import introspect
from zdm.db import sql_text
from zdm.plan import Backfill, Checkpoint

if TYPE_CHECKING:
    from zdm.dialects import Dialect
    from zdm.execution import Executor
    from zdm.planfile import Settings
    from zdm.throttle import Throttle

MIN_BATCH, MAX_BATCH = 10, 100_000


@dataclass
class BackfillProgress:
    table: str
    rows_done: int
    rows_total: int
    rows_per_s: float
    eta_s: float | None
    batch_size: int
    batch_ms: float
    finished: bool = False


def _key_after(key: list[sa.Column[Any]], last: list[Any]) -> sa.ColumnElement[bool]:
    if len(key) == 1:
        return key[0] > last[0]
    return sa.tuple_(*key) > sa.tuple_(*[sa.literal(v, c.type) for c, v in zip(key, last, strict=False)])


def _key_upto(key: list[sa.Column[Any]], bound: list[Any]) -> sa.ColumnElement[bool]:
    if len(key) == 1:
        return key[0] <= bound[0]
    return sa.tuple_(*key) <= sa.tuple_(*[sa.literal(v, c.type) for c, v in zip(key, bound, strict=False)])


def _json_key(row: Any) -> list[Any]:
    return [v if isinstance(v, (int, str)) or v is None else str(v) for v in row]


class NoKey(ValueError):
    """The table has no primary key to walk in batches."""


def reflect(connection: sa.Connection, spec: Backfill) -> sa.Table:
    """The live table, once per backfill: every batch reuses it (and its compiled statements)."""
    if not spec.key:
        raise NoKey(f"table {spec.table!r} has no primary key: zdm backfills in key order and needs one "
                    "(add a primary key first)")
    return introspect.live_table(connection, spec.table)


def walked(table: sa.Table, spec: Backfill) -> sa.Table:
    """The table whose keys the batches walk: ``table`` itself, or the table of keys ``spec.walk``
    (indexed on them by ``spec.prepare``: each batch looks for its keys in order)."""
    if spec.walk is None:
        return table
    return sa.Table(spec.walk, sa.MetaData(), *[sa.Column(k, table.c[k].type) for k in spec.key])


def plan_range(connection: sa.Connection, table: sa.Table, spec: Backfill, step: int, dialect: Dialect
               ) -> Checkpoint:
    """The key range to visit (fixed when the backfill begins) and an estimate of its rows, after
    ``spec.prepare``."""
    if spec.prepare:
        connection.exec_driver_sql(spec.prepare)
    walk = walked(table, spec)
    key = [walk.c[k] for k in spec.key]
    last_row = connection.execute(sa.select(*key).order_by(*[k.desc() for k in key]).limit(1)).first()
    return Checkpoint(step=step, until=_json_key(last_row) if last_row else None,
                      rows_total=dialect.estimate_rows(connection, walk))


def run_batch(connection: sa.Connection, table: sa.Table, spec: Backfill, checkpoint: Checkpoint, batch_size: int
              ) -> tuple[Checkpoint, int]:
    """One batch inside the caller's transaction; returns the new checkpoint and rows visited."""
    until = checkpoint.until
    if until is None or checkpoint.last_key == until:
        return checkpoint, 0
    walk = walked(table, spec)
    key = [walk.c[k] for k in spec.key]
    last = checkpoint.last_key
    in_range = [_key_upto(key, until)]
    if last is not None:
        in_range.append(_key_after(key, last))
    boundary = connection.execute(
        sa.select(*key).where(*in_range).order_by(*key).offset(batch_size - 1).limit(1)
    ).first()
    upper = _json_key(boundary) if boundary is not None else until
    batch = [*in_range[1:], _key_upto(key, upper)]
    visited = batch_size if boundary is not None else (
        connection.scalar(sa.select(sa.func.count()).select_from(walk).where(*batch)) or 0
    )
    if spec.walk is not None:  # the table's rows whose keys this batch of the walked keys names
        keys = [table.c[k] for k in spec.key]
        # At most a batch of distinct keys (a key noted twice is still one row), and the planner is told
        # so: unbounded, statistics read before the fill made it scan the whole table every batch.
        named = sa.select(*key).where(*batch).distinct().limit(batch_size)
        batch = [(keys[0] if len(keys) == 1 else sa.tuple_(*keys)).in_(named)]
    update = table.update().where(*batch).values(
        {column: sa.literal_column(expression) for column, expression in spec.assignments.items()}
    )
    if spec.pending:
        update = update.where(sql_text(spec.pending))
    if spec.record:  # the rows this batch changes, noted first (in the same transaction)
        changing = sa.select(*[table.c[k] for k in spec.key]).where(
            *batch, *([sql_text(spec.pending)] if spec.pending else []))
        connection.execute(sa.table(spec.record, *[sa.column(k) for k in spec.key]).insert().from_select(
            spec.key, changing))
    connection.execute(update)
    return replace(checkpoint, last_key=upper, rows_done=checkpoint.rows_done + int(visited)), int(visited)


def run(executor: Executor, spec: Backfill, checkpoint: Checkpoint, *, step: int, what: str, batch_size: int,
        throttle: Throttle, save: Callable[[sa.Connection, Checkpoint], None]) -> Checkpoint:
    """The whole backfill of one step, batch after batch, each in a transaction of its own that also
    commits the checkpoint (``save``); resumes from ``checkpoint`` when it is this step's. Before
    each batch ``throttle`` waits while the plan is paused or the replicas or the app are too busy,
    and gives the batch target and pause in force (`zdm throttle` changes them mid-run). Reports
    progress after each batch. Returns the final checkpoint."""
    reporter, dialect = executor.reporter, executor.dialect
    table = executor.transaction(lambda connection: reflect(connection, spec), what)
    if checkpoint.step != step or checkpoint.outside_transaction:
        checkpoint = executor.transaction(lambda connection: plan_range(connection, table, spec, step, dialect), what)
    quiet, firing = executor.transaction(
        lambda connection: dialect.user_triggers_quiet(connection, spec.table, list(spec.assignments)), what)
    if firing:
        reporter.note(firing)
    size = max(1, batch_size)
    rate = Rate(checkpoint.rows_done)
    reclaimed_at = checkpoint.rows_done
    reclaim = Reclaim(lambda cancel_with: dialect.reclaim(executor.engine, spec.table, executor.lock_timeout_ms,
                                                          cancel_with))

    def store(at: Checkpoint) -> None:
        executor.transaction(lambda connection: save(connection, at), what)

    try:
        while True:
            started = [time.monotonic()]

            def batch(connection: sa.Connection, size: int = size, at: Checkpoint = checkpoint,
                      started: list[float] = started) -> tuple[Settings, Checkpoint, int] | None:
                # The throttle looks first, in the batch's own transaction (a transaction of its own
                # before each batch was five more round trips per batch); if it says wait, nothing
                # has been done and before_batch does the waiting.
                settings, wait = throttle.look(connection)
                if wait is not None:
                    return None
                started[0] = time.monotonic()  # the batch's time, which sizes the next one: without the look (a probe)
                for sql in dialect.batch_begin(max(10 * settings.batch_target_ms, 5000)):
                    connection.exec_driver_sql(sql)
                with dialect.user_triggers_off(connection, spec.table) if quiet else nullcontext():
                    new, visited = run_batch(connection, table, spec, replace(at, throttling=None), size)
                if visited or at.throttling is not None:  # a reason to wait stored earlier goes too
                    save(connection, new)
                return settings, new, visited

            # The checkpoint in memory moves only once its batch has committed: a batch lost with
            # its connection is retried from the same key, not skipped.
            done = executor.transaction(batch, what)
            if done is None:
                _, checkpoint = throttle.before_batch(checkpoint, reporter,
                                                      lambda look: executor.transaction(look, what), store)
                continue
            settings, checkpoint, visited = done
            elapsed_ms = (time.monotonic() - started[0]) * 1000
            if not visited:
                break
            reporter.backfill(rate.progress(spec.table, checkpoint, size, elapsed_ms))
            for skipped in reclaim.finished():
                reporter.note(skipped)
            stretch = stretch_rows(checkpoint.rows_total, settings.vacuum_every_pct)
            if stretch is not None and checkpoint.rows_done - reclaimed_at >= stretch and not reclaim.running():
                reclaimed_at = checkpoint.rows_done
                reclaim.start()
            size = next_batch_size(size, elapsed_ms, settings.batch_target_ms)
            if settings.batch_pause_ms:
                time.sleep(settings.batch_pause_ms / 1000)
        for skipped in reclaim.wait():  # the steps after the backfill take locks a VACUUM would hold
            reporter.note(skipped)
    except BaseException:
        # A failed batch, Ctrl-C: what runs next (the compensation, the next runner) takes locks the
        # VACUUM holds, and the server would go on with it after this process is gone.
        reclaim.stop()
        raise
    reporter.backfill(rate.progress(spec.table, checkpoint, size, 0.0, finished=True))
    return checkpoint


class Reclaim:
    """The dialect's reclaim of a stretch (``Dialect.reclaim``: a VACUUM on PostgreSQL) on a thread
    and connection of its own, while the next batches run: the backfill does not wait for it (on
    a 1M-row rename that wait was 6-8% of the backfill). One at a time: a stretch that ends while the
    previous reclaim runs is reclaimed by the next one. Its outcome (why it was skipped, or its
    error) is read from the backfill's thread, which reports it. A backfill that stops stops it
    (``stop``)."""

    #: How long ``stop`` waits for a cancelled reclaim to end (it ends within milliseconds).
    STOP_WAIT_S = 10.0

    def __init__(self, reclaim: Callable[[Callable[[Callable[[], None]], None]], str | None]) -> None:
        self._reclaim = reclaim
        self._thread: threading.Thread | None = None
        self._outcome: list[str | BaseException | None] = []
        self._cancel: Callable[[], None] | None = None

    def start(self) -> None:
        self._cancel = None

        def cancel_with(cancel: Callable[[], None]) -> None:
            self._cancel = cancel

        def work() -> None:
            try:
                self._outcome.append(self._reclaim(cancel_with))
            except BaseException as exc:  # handed to the backfill's thread by finished()
                self._outcome.append(exc)

        # A daemon: should ``stop`` give up, it does not keep the process alive.
        self._thread = threading.Thread(target=work, name="zdm-reclaim", daemon=True)
        self._thread.start()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def finished(self) -> list[str]:
        """Why the reclaims that have ended were skipped (one line each); raises the error of one
        that failed."""
        if self.running():
            return []
        outcome, self._outcome = self._outcome, []
        for failed in outcome:
            if isinstance(failed, BaseException):
                raise failed
        return [note for note in outcome if isinstance(note, str)]

    def wait(self) -> list[str]:
        """Wait for the reclaim in flight, then as ``finished``."""
        if self._thread is not None:
            self._thread.join()
        return self.finished()

    def stop(self) -> None:
        """Cancel the reclaim in flight and wait until it has ended; its outcome is dropped. Cancelled
        again until it ends: a cancel that arrives between two of its statements cancels nothing."""
        deadline = time.monotonic() + self.STOP_WAIT_S
        while self._thread is not None and self._thread.is_alive() and time.monotonic() < deadline:
            if self._cancel is not None:
                self._cancel()
            self._thread.join(0.05)
        self._outcome = []


#: The fewest rows between two reclaims (VACUUMs) of the space the backfill's updates left dead.
MIN_STRETCH = 1000


def stretch_rows(rows_total: int, every_pct: int) -> int | None:
    """Rows to update between two reclaims: ``every_pct`` percent of the table, at least MIN_STRETCH;
    None for never (0).

    Each update leaves the old row version dead; once reclaimed, the next stretch's new versions
    take its space. The table then grows by about one stretch plus what the new values add,
    not by a copy of itself: 5% keeps a rename of a 1M-row table within 1.5x its size."""
    if every_pct <= 0:
        return None
    return max(MIN_STRETCH, rows_total * every_pct // 100)


def next_batch_size(current: int, elapsed_ms: float, target_ms: int) -> int:
    """Grow or shrink toward the target duration, at most doubling or halving per batch.

    A slow batch shrinks the next one to the size that would have hit the target; a fast one
    grows it only half-way (in ratio), so noise does not swing the size past the target.
    """
    ratio = target_ms / max(elapsed_ms, 0.1)
    factor = min(2.0, ratio**0.5) if ratio > 1 else max(0.5, ratio)
    return max(MIN_BATCH, min(MAX_BATCH, round(current * factor)))


class Rate:
    """Rows per second and ETA over the run so far."""

    def __init__(self, done: int) -> None:
        self.started = time.monotonic()
        self.start_done = done

    def progress(self, table: str, checkpoint: Checkpoint, size: int, batch_ms: float,
                 finished: bool = False) -> BackfillProgress:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        done, total = checkpoint.rows_done, max(checkpoint.rows_total, checkpoint.rows_done)
        rate = (done - self.start_done) / elapsed
        eta = (total - done) / rate if rate > 0 else None
        return BackfillProgress(table, done, total, rate, 0.0 if finished else eta, size, batch_ms, finished)

