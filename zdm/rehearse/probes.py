"""Probes: an app of each version reads and writes the table, in a transaction rolled back."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from zdm import introspect
from zdm.dialects import for_connection
from zdm.model import ColumnType, Family, Table
from zdm.runner import reason as _reason

#: A rewrite of a table with more rows than this breaks the promise (``--max-rewrite-rows``).

# -- probing both app versions ----------------------------------------------------------------
@dataclass
class Probe:
    moment: str  # when it ran: before start, after expand, MIGRATING, COMPLETE
    shape: str  # "old" or "new"
    table: str
    ok: bool | None  # None: could not be judged (see detail)
    detail: str


#: The probe moment between expand and the backfill: every row the table had is one the backfill has not reached.
AFTER_EXPAND = "after expand"


class CannotProbe(Exception):
    """The probe cannot write this shape at all (a type it cannot make a value for)."""


def sample_value(column_type: ColumnType, n: int, token: str) -> Any:
    """A value an app could write into a column of this type (small, to fit narrow columns)."""
    if column_type == ColumnType.TEXT:
        return f"p{n}{token[:6]}"
    if column_type == ColumnType.INTEGER:
        return random.randint(10_000, 32_000)  # fits a SMALLINT too
    if column_type == ColumnType.BIGINT:
        return random.randint(10**12, 10**15)
    if column_type == ColumnType.BOOLEAN:
        return n % 2 == 0
    if column_type == ColumnType.TIMESTAMP:
        return dt.datetime(2001, 2, 3, 4, 5, 6) + dt.timedelta(seconds=n)
    if column_type == ColumnType.JSON:
        return {"zdm_probe": n}
    raise CannotProbe(f"no sample value for a column of type {column_type.value}")


@dataclass(frozen=True)
class ProbePlan:
    """What one probe of one app shape writes, chosen from what the plan changes."""

    #: Columns tried first for the probe column (those only this shape knows, e.g. a new name).
    favour: list[str]
    #: Columns this shape has that the plan changes: an update of another column must leave them as they are.
    changed: list[str]
    #: Columns the plan neither changes nor uses, nor a constraint holds (best first): the app's unrelated
    #: updates write them.
    unrelated: list[str]


def probe(engine: sa.Engine, shape: Table, plan: ProbePlan, lock_timeout_ms: float) -> tuple[bool, str]:
    """Read, update, insert, read back, in one transaction rolled back; each write names only ``shape``'s columns.

    The way an app of that version writes: an update of an unrelated column on an existing row
    (the one with the highest key, which a backfill reaches last), an insert naming the key,
    every required column and one probe column (a ``favour``-ed one, such as the new name of a
    renamed column), an insert leaving every optional column to its default, and an update of
    the probe column. Returns (ok, what was done or, naming the write, why it failed).
    """
    try:
        with engine.connect() as connection:
            transaction = connection.begin()
            try:
                for sql in for_connection(connection).begin(max(1, int(lock_timeout_ms))):
                    connection.exec_driver_sql(sql)
                return True, _write_and_read(connection, shape, plan)
            finally:
                transaction.rollback()
    except ProbeFailed as exc:
        return False, str(exc)
    except (sa.exc.SQLAlchemyError, ProbeMismatch) as exc:
        return False, _reason(exc)


class ProbeMismatch(Exception):
    """A column read back something other than what the probe wrote."""


class ProbeFailed(Exception):
    """A write of the probe failed; the message names the write, then the database's reason."""


def _doing(what: str, work: Any) -> Any:
    """Run one write of the probe; its failure names it."""
    try:
        return work()
    except sa.exc.SQLAlchemyError as exc:
        raise ProbeFailed(f"{what}: {_reason(exc)}") from exc


def _write_and_read(connection: sa.Connection, shape: Table, plan: ProbePlan) -> str:
    token = uuid.uuid4().hex
    key = shape.primary_key
    candidates = [n for n in [*plan.favour, *shape.columns] if n in shape.columns and n not in key]
    writable = [n for n in candidates if shape.columns[n].type != ColumnType.OTHER]
    probe_column = writable[0] if writable else None
    required = [*key, *[n for n in shape.columns if shape.columns[n].required and n not in key]]
    names = [*required, *([probe_column] if probe_column and probe_column not in required else [])]
    live = introspect.live_table(connection, shape.name)
    missing = [n for n in shape.columns if n not in live.c]
    if missing:
        raise ProbeMismatch(f"no column {', '.join(missing)}")
    done = ["read"]
    _doing("read", lambda: connection.execute(sa.select(*[live.c[n] for n in shape.columns]).limit(1)).all())
    referenced = _referenced_values(connection, shape)
    if key:
        done += _update_unrelated(connection, live, shape, plan, probe_column, token, referenced)

    def value(name: str, n: int, token: str) -> Any:
        return referenced[name] if name in referenced else sample_value(shape.columns[name].type, n, token)

    def insert(named: list[str], token: str, what: str) -> dict[str, Any]:
        values = {n: _key_value(connection, live, shape, n, token) if n in key
                  else value(n, i, token) for i, n in enumerate(named)}
        _doing(what, lambda: connection.execute(live.insert().values(values)))
        if key:
            where = sa.and_(*[live.c[k] == values[k] for k in key])
            _read_back(connection, live, shape, where, values, what)
        return values

    left_out = [n for n in shape.columns if n not in names]
    what = f"insert leaving out {_some(left_out)}" if left_out else "insert"
    values = insert(names, token, what)
    done.append(what)
    if names != required:  # the first insert named an optional column: leave every optional one out once
        what = "insert leaving out every optional column"
        insert(required, uuid.uuid4().hex, what)
        done.append(what)
    if not key:
        return ", ".join([*done, "(no primary key: no read-back)"])
    if probe_column is not None:
        where = sa.and_(*[live.c[k] == values[k] for k in key])
        changed = {probe_column: value(probe_column, len(names) + 1, token[::-1])}
        what = f"update {probe_column}"
        _doing(what, lambda: connection.execute(live.update().where(where).values(changed)))
        _read_back(connection, live, shape, where, changed, what)
        done.append(what)
    return ", ".join([*done, "read back"])


def _update_unrelated(connection: sa.Connection, live: sa.Table, shape: Table, plan: ProbePlan,
                      probe_column: str | None, token: str, referenced: dict[str, Any]) -> list[str]:
    """Update a column the plan does not touch on the existing row with the highest key.

    A backfill walks the key upwards, so before it ends this row is one it has not reached:
    the write must go through (no check of zdm may hold it back), read back what it wrote, and
    leave the columns the plan changes as they were (a NULL may be filled: the write brings an
    unreached row up to date).
    """
    choices = [n for n in plan.unrelated if n != probe_column] or plan.unrelated
    if not choices:
        return ["(no unrelated column to update)"]
    column = choices[0]
    key = shape.primary_key
    kept = [n for n in plan.changed if n in live.c and n != column]
    row = connection.execute(sa.select(*[live.c[n] for n in [*key, *kept]])
                             .order_by(*[live.c[k].desc() for k in key]).limit(1)).first()
    if row is None:
        return ["(no row to update)"]
    found = row._mapping
    where = sa.and_(*[live.c[k] == found[k] for k in key])
    what = f"update {column} of the row {', '.join(f'{k}={found[k]!r}' for k in key)}"
    written = {column: referenced[column] if column in referenced
               else sample_value(shape.columns[column].type, 7, token[::-1])}
    _doing(what, lambda: connection.execute(live.update().where(where).values(written)))
    expected = {**written, **{n: found[n] for n in kept if found[n] is not None}}
    _read_back(connection, live, shape, where, expected, what)
    return [what]


def _referenced_values(connection: sa.Connection, shape: Table) -> dict[str, Any]:
    """Values a foreign key accepts, for the columns of ``shape`` one covers: {column: value}.

    A made-up number is (rightly) refused by a foreign key, so an app's write that names such a
    column takes a key of a row that exists in the referenced table, read from the live database.
    The keys are those of the shape and those the table has now (added by an expand, NOT VALID
    on PostgreSQL, that the old shape does not know). A column whose referenced table has no row
    gets NULL when it may be NULL, else the probe cannot write the shape (``CannotProbe``: not
    judged). Rows of the referenced table written by the probe itself are not used.
    """
    keys = [(list(fk.columns), fk.ref_table, list(fk.ref_columns)) for fk in shape.foreign_keys.values()]
    keys += [(fk["constrained_columns"], fk["referred_table"], fk["referred_columns"])
             for fk in sa.inspect(connection).get_foreign_keys(shape.name)]
    values: dict[str, Any] = {}
    for columns, ref_table, ref_columns in keys:
        if not all(c in shape.columns for c in columns) or all(c in values for c in columns):
            continue
        referenced = introspect.live_table(connection, ref_table)
        if not all(r in referenced.c for r in ref_columns):
            continue
        row = connection.execute(sa.select(*[referenced.c[r] for r in ref_columns])
                                 .where(*[referenced.c[r].is_not(None) for r in ref_columns]).limit(1)).first()
        if row is None and any(shape.columns[c].required for c in columns):
            raise CannotProbe(f"no row in {ref_table} for the foreign key on {shape.name} ({', '.join(columns)}) "
                              "to reference")
        values.update({c: None if row is None else row[i] for i, c in enumerate(columns)})
    return values


def _some(names: list[str], shown: int = 3) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def _key_value(connection: sa.Connection, live: sa.Table, shape: Table, name: str, token: str) -> Any:
    column_type = shape.columns[name].type
    if column_type.family is Family.INTEGER:
        return int(connection.scalar(sa.select(sa.func.coalesce(sa.func.max(live.c[name]), 0))) or 0) + 1
    return sample_value(column_type, 0, token)


def _read_back(connection: sa.Connection, live: sa.Table, shape: Table, where: sa.ColumnElement[bool],
               written: dict[str, Any], what: str) -> None:
    row = connection.execute(sa.select(*[live.c[n] for n in written]).where(where)).one()._mapping
    for name, value in written.items():
        column_type = shape.columns[name].type
        if column_type.coerce(row[name]) != column_type.coerce(value):
            raise ProbeMismatch(f"after the {what}, {name} reads {row[name]!r}, not the {value!r} written")


