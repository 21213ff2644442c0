"""Probes: an app of each version reads and writes the table, in a transaction rolled back."""

from __future__ import annotations

import datetime as dt
import decimal
import random
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from zdm import coltypes, introspect
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
    """A value an app could write into a column of this exact type, small enough for narrow ones.

    Every family zdm's column types know has one: text within a VARCHAR(n)'s limit (a CHAR(n)'s
    value fills it, as the database pads it), whole numbers a NUMERIC(p,s) holds, an enum's first
    labels, an array of one item. Each value also fits the usual other type of a type change
    (a whole number is an INTEGER and a NUMERIC). Raises CannotProbe for a type without one
    (family OTHER, an enum whose labels are unknown): see `Samples`, which resolves enums and
    domains from the live catalog first.
    """
    t = column_type
    family = t.family
    if family is Family.TEXT:
        text = f"p{n}{token[:6]}"
        if t.name.startswith("CHAR("):
            return (text * (1 + (t.length or 1) // len(text)))[: t.length or 1]
        return text[: t.length] if t.length else text
    if family is Family.INTEGER:
        return random.randint(10_000, 32_000)  # fits a SMALLINT too
    if family is Family.NUMERIC:
        whole = t.precision is None or t.precision > (t.scale or 0)
        return decimal.Decimal(n % 9 + 1) if whole else decimal.Decimal("0.5")
    if family is Family.FLOAT:
        return float(n % 9 + 1) + 0.5  # exact in a REAL too
    if family is Family.BOOLEAN:
        return n % 2 == 0
    if family is Family.TIMESTAMP:
        return dt.datetime(2001, 2, 3, 4, 5, 6) + dt.timedelta(seconds=n)
    if family is Family.TIMESTAMPTZ:
        return dt.datetime(2001, 2, 3, 4, 5, 6, tzinfo=dt.UTC) + dt.timedelta(seconds=n)
    if family is Family.DATE:
        return dt.date(2001, 2, 3) + dt.timedelta(days=n)
    if family is Family.TIME:
        return dt.time(4, 5, n % 60)
    if family is Family.INTERVAL:
        return dt.timedelta(seconds=n + 1)
    if family is Family.UUID:
        return uuid.uuid4()
    if family is Family.BYTES:
        return f"p{n}{token[:6]}".encode()
    if family is Family.JSON:
        return {"zdm_probe": n}
    if family is Family.ARRAY and t.item is not None:
        return [sample_value(t.item, n, token)]
    if family is Family.ENUM and t.labels:
        return t.labels[n % len(t.labels)]
    why = " (its labels are unknown)" if family is Family.ENUM else ""
    raise CannotProbe(f"no sample value for a column of type {t.value}{why}")


class Samples:
    """The values a probe writes into each column of one app shape, by the column's exact type.

    An enum named by the plan gets its labels from the live column or the database's types; a
    domain is its base type (with the base's limits, read from the catalog), and none is made up
    for a domain with a CHECK, whose rule zdm does not read. A column without a sample value
    (`can` is False) is left out of every write when it may be; a required one makes the probe
    not judged (CannotProbe).
    """

    def __init__(self, connection: sa.Connection, shape: Table, live: sa.Table) -> None:
        self.connection = connection
        self.dialect = for_connection(connection)
        self._enums: dict[str, ColumnType] | None = None
        self.types: dict[str, ColumnType | None] = {
            name: self._resolve(column.type, live.c[name].type if name in live.c else None)
            for name, column in shape.columns.items()}

    def can(self, name: str) -> bool:
        """Whether the probe can make up a value for column ``name``."""
        return self.types.get(name) is not None

    def value(self, name: str, n: int, token: str) -> Any:
        """A value for column ``name``; CannotProbe, naming the column, when there is none."""
        column_type = self.types.get(name)
        if column_type is None:
            raise CannotProbe(f"no sample value for the required column {name}")
        return sample_value(column_type, n, token)

    def _resolve(self, column_type: ColumnType, live_type: sa.types.TypeEngine[Any] | None,
                 depth: int = 0) -> ColumnType | None:
        if column_type.family is Family.OTHER or depth > 5:
            return None
        if column_type.family is Family.ARRAY:
            item = None if column_type.item is None else self._resolve(column_type.item, None, depth + 1)
            return None if item is None else ColumnType(column_type.name, Family.ARRAY, item=item)
        if not coltypes.is_builtin(column_type):
            domain = self.dialect.domain_base(self.connection, column_type.name)
            if domain is not None:
                base, checked = domain
                return None if checked else self._resolve(base, None, depth + 1)
        if column_type.family is Family.ENUM and not column_type.labels:
            if live_type is not None and (live := coltypes.from_sa(live_type)).name == column_type.name \
                    and live.labels:
                return live
            if self._enums is None:
                self._enums = self.dialect.user_types(self.connection)
            found = self._enums.get(column_type.name)
            return found if found is not None and found.labels else None
        return column_type


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
    live = introspect.live_table(connection, shape.name)
    missing = [n for n in shape.columns if n not in live.c]
    if missing:
        raise ProbeMismatch(f"no column {', '.join(missing)}")
    samples = Samples(connection, shape, live)
    candidates = [n for n in [*plan.favour, *shape.columns] if n in shape.columns and n not in key]
    writable = [n for n in candidates if samples.can(n)]
    probe_column = writable[0] if writable else None
    required = [*key, *[n for n in shape.columns if shape.columns[n].required and n not in key]]
    names = [*required, *([probe_column] if probe_column and probe_column not in required else [])]
    done = ["read"]
    _doing("read", lambda: connection.execute(sa.select(*[live.c[n] for n in shape.columns]).limit(1)).all())
    referenced = _referenced_values(connection, shape)
    unsampled = [n for n in required if n not in key and n not in referenced and not samples.can(n)]
    if unsampled:
        raise CannotProbe(f"no sample value for the required column {unsampled[0]} of type "
                          f"{shape.columns[unsampled[0]].type.value}")
    if key:
        done += _update_unrelated(connection, live, shape, plan, probe_column, token, referenced, samples)

    def value(name: str, n: int, token: str) -> Any:
        return referenced[name] if name in referenced else samples.value(name, n, token)

    def insert(named: list[str], token: str, what: str) -> dict[str, Any]:
        values = {n: _key_value(connection, live, shape, n, token, samples) if n in key
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
                      probe_column: str | None, token: str, referenced: dict[str, Any],
                      samples: Samples) -> list[str]:
    """Update a column the plan does not touch on the existing row with the highest key.

    A backfill walks the key upwards, so before it ends this row is one it has not reached:
    the write must go through (no check of zdm may hold it back), read back what it wrote, and
    leave the columns the plan changes as they were (a NULL may be filled: the write brings an
    unreached row up to date).
    """
    can = [n for n in plan.unrelated if n in referenced or samples.can(n)]
    choices = [n for n in can if n != probe_column] or can
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
               else samples.value(column, 7, token[::-1])}
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


def _key_value(connection: sa.Connection, live: sa.Table, shape: Table, name: str, token: str,
               samples: Samples) -> Any:
    column_type = shape.columns[name].type
    if column_type.family is Family.INTEGER or (column_type.family is Family.NUMERIC and not column_type.scale):
        return int(connection.scalar(sa.select(sa.func.coalesce(sa.func.max(live.c[name]), 0))) or 0) + 1
    return samples.value(name, 0, token)


def _read_back(connection: sa.Connection, live: sa.Table, shape: Table, where: sa.ColumnElement[bool],
               written: dict[str, Any], what: str) -> None:
    row = connection.execute(sa.select(*[live.c[n] for n in written]).where(where)).one()._mapping
    for name, value in written.items():
        column_type = shape.columns[name].type
        if column_type.coerce(row[name]) != column_type.coerce(value):
            raise ProbeMismatch(f"after the {what}, {name} reads {row[name]!r}, not the {value!r} written")


