"""Backfill in keyset batches: short transactions, adaptive size, a checkpoint per batch.

One UPDATE of a whole big table holds row locks on all of it for as long as it runs and makes a
single huge transaction. Batches over the primary key keep every transaction short; the batch
size follows a target duration (like pt-online-schema-change's chunk-time), and the last key
done commits with each batch, so a killed runner resumes where it stopped.

Only the key range that existed when the backfill began is visited: rows inserted after expand
were written in the new shape by the triggers and need no visit, so a busy table cannot make
the backfill chase its tail.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from zdm import introspect
from zdm.db import sql_text
from zdm.plan import Backfill

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


@dataclass
class BackfillSettings:
    batch_size: int = 1000
    target_ms: int = 100
    pause_ms: int = 0
    statement_timeout_ms: int = 10_000


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


def plan_range(connection: sa.Connection, table: sa.Table, spec: Backfill) -> dict[str, Any]:
    """The key range to visit (fixed when the backfill begins) and an estimate of its rows."""
    key = [table.c[k] for k in spec.key]
    last_row = connection.execute(sa.select(*key).order_by(*[k.desc() for k in key]).limit(1)).first()
    return {"last_key": None, "until": _json_key(last_row) if last_row else None,
            "rows_done": 0, "rows_total": estimate_rows(connection, table)}


def estimate_rows(connection: sa.Connection, table: sa.Table) -> int:
    """PostgreSQL's planner estimate when the table has statistics: counting a huge table would
    scan all of it before the first batch. Otherwise (SQLite, never analyzed) an exact count."""
    if connection.dialect.name == "postgresql":
        name = connection.dialect.identifier_preparer.quote(table.name)
        estimate = connection.scalar(sa.text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:t)"),
                                     {"t": name})
        if estimate is not None and estimate > 0:
            return int(estimate)
    return int(connection.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


def run_batch(
    connection: sa.Connection, table: sa.Table, spec: Backfill, checkpoint: dict[str, Any], batch_size: int
) -> tuple[dict[str, Any], int]:
    """One batch inside the caller's transaction; returns the new checkpoint and rows visited."""
    until = checkpoint["until"]
    if until is None or checkpoint["last_key"] == until:
        return checkpoint, 0
    key = [table.c[k] for k in spec.key]
    last = checkpoint["last_key"]
    in_range = [_key_upto(key, until)]
    if last is not None:
        in_range.append(_key_after(key, last))
    boundary = connection.execute(
        sa.select(*key).where(*in_range).order_by(*key).offset(batch_size - 1).limit(1)
    ).first()
    upper = _json_key(boundary) if boundary is not None else until
    batch = [*in_range[1:], _key_upto(key, upper)]
    visited = batch_size if boundary is not None else (
        connection.scalar(sa.select(sa.func.count()).select_from(table).where(*batch)) or 0
    )
    update = table.update().where(*batch).values(
        {column: sa.literal_column(expression) for column, expression in spec.assignments.items()}
    )
    if spec.pending:
        update = update.where(sql_text(spec.pending))
    connection.execute(update)
    new = dict(checkpoint, last_key=upper, rows_done=checkpoint["rows_done"] + int(visited))
    return new, int(visited)


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

    def progress(self, table: str, checkpoint: dict[str, Any], size: int, batch_ms: float,
                 finished: bool = False) -> BackfillProgress:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        done, total = checkpoint["rows_done"], max(checkpoint["rows_total"], checkpoint["rows_done"])
        rate = (done - self.start_done) / elapsed
        eta = (total - done) / rate if rate > 0 else None
        return BackfillProgress(table, done, total, rate, 0.0 if finished else eta, size, batch_ms, finished)


Reporter = Callable[[BackfillProgress], None]
