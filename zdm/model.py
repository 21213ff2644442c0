"""The in-memory reference model: tables, typed columns, the catalogue around them, and rows.

It is the oracle of the test suite. Every operation applies its change to this model as well as to
the real database, and the tests compare the two after each phase: the columns (type, NULL-ability,
default, comment), the catalogue a user relies on (indexes, unique constraints, checks, foreign
keys) and every row. Writes go through the same rules the database enforces (NOT NULL, keys,
uniqueness, checks, foreign keys and their ON DELETE actions), so a test can ask the model whether
an app's write must succeed, and compare that with what the database did.

Keeping it small and obviously correct is what makes it trustworthy: where SQL has to be read (a
CHECK condition), the model asks an in-memory SQLite to evaluate it rather than re-implementing SQL.
"""

from __future__ import annotations

import copy
import datetime as dt
import decimal
import functools
import json
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zdm.coltypes import ColumnType, Family

__all__ = ["ColumnType", "Family"]


class ModelError(ValueError):
    """A change the model refuses (missing or duplicate column, missing required value...)."""


class ConstraintViolation(ModelError):
    """A write the database must refuse: ``kind`` is "not null", "unique", "check", "foreign key" or
    "value" (beyond the column type's limits)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class SqlDefault:
    """A default the model does not evaluate (``now()``, ``nextval(...)``), kept as SQL text."""

    sql: str


@dataclass
class Column:
    name: str
    type: ColumnType
    nullable: bool = True
    default: Any = None
    primary_key: bool = False
    comment: str | None = None

    @property
    def required(self) -> bool:
        """An insert must name this column: NOT NULL and nothing fills it in."""
        return not self.nullable and self.default is None and not self.primary_key

    def default_value(self) -> Any:
        """What an insert that omits the column stores (None for a default the model cannot evaluate)."""
        return None if isinstance(self.default, SqlDefault) else self.type.coerce(self.default)


@dataclass(frozen=True)
class Index:
    """A plain or unique index on columns (one behind a UNIQUE constraint is in ``Table.uniques``)."""

    columns: tuple[str, ...]
    unique: bool = False


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]
    #: CASCADE, SET NULL, RESTRICT or None (NO ACTION).
    on_delete: str | None = None


@dataclass
class Link:
    """The model's twin of dual-write triggers: ``b`` follows ``up(a)``; ``a`` follows ``down(b)``.

    Same rules as the triggers. On insert, ``b`` still at its default (the writer did not name it)
    takes ``up(a)``; otherwise the writer named ``b`` (only the new app knows it), and ``a`` takes
    ``down(b)``. On update, a changed ``a`` wins over a changed ``b``; a row the backfill has not
    reached yet (``b`` NULL, ``a`` set) gets ``b`` on any write.
    """

    a: str
    b: str
    up: Callable[[Any], Any]
    down: Callable[[Any], Any] | None = None
    #: ``a``'s NULL-ability before expand (SQLite relaxes it; the pair still refuses NULL).
    a_nullable: bool = True
    #: A dual column: a row the backfill has not reached gets ``b`` on any write.
    fill_unreached: bool = False


@dataclass
class Table:
    name: str
    columns: dict[str, Column] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    #: Column -> value written in place of NULL (the model's twin of a fill trigger).
    fills: dict[str, Any] = field(default_factory=dict)
    #: (column, key) of each row whose NULL a fill replaced (the twin of set_not_null's table of keys).
    filled: set[tuple[str, tuple[Any, ...]]] = field(default_factory=set)
    indexes: dict[str, Index] = field(default_factory=dict)
    #: UNIQUE constraints: name -> columns.
    uniques: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: CHECK constraints: name -> condition (SQL that both databases read alike).
    checks: dict[str, str] = field(default_factory=dict)
    foreign_keys: dict[str, ForeignKey] = field(default_factory=dict)

    def __init__(self, name: str, columns: list[Column] | None = None) -> None:
        self.name = name
        self.columns = {}
        self.rows = []
        self.links = []
        self.fills = {}
        self.filled = set()
        self.indexes = {}
        self.uniques = {}
        self.checks = {}
        self.foreign_keys = {}
        for column in columns or []:
            self.add_column(column)

    # -- shape -------------------------------------------------------------------------------
    def column(self, name: str) -> Column:
        try:
            return self.columns[name]
        except KeyError:
            raise ModelError(f"table {self.name!r} has no column {name!r}") from None

    def column_names(self) -> list[str]:
        return list(self.columns)

    @property
    def primary_key(self) -> list[str]:
        return [c.name for c in self.columns.values() if c.primary_key]

    def add_column(self, column: Column) -> None:
        """Add a column; existing rows get its default, like ALTER TABLE ADD COLUMN does."""
        if column.name in self.columns:
            raise ModelError(f"table {self.name!r} already has a column {column.name!r}")
        if self.rows and not column.nullable and column.default is None:
            raise ModelError(
                f"cannot add NOT NULL column {column.name!r} without a default to "
                f"{self.name!r}: it has {len(self.rows)} rows"
            )
        self.columns[column.name] = column
        for row in self.rows:
            row[column.name] = column.default_value()

    def drop_column(self, name: str) -> Column:
        """Drop a column with the indexes and constraints that use it, as DROP COLUMN does."""
        column = self.column(name)
        del self.columns[name]
        for row in self.rows:
            row.pop(name, None)
        self.indexes = {n: ix for n, ix in self.indexes.items() if name not in ix.columns}
        self.uniques = {n: cols for n, cols in self.uniques.items() if name not in cols}
        from zdm.sqltree import condition_columns

        self.checks = {n: cond for n, cond in self.checks.items() if name not in condition_columns(cond)}
        self.foreign_keys = {n: fk for n, fk in self.foreign_keys.items() if name not in fk.columns}
        return column

    def rename_column(self, old: str, new: str) -> None:
        """Rename a column everywhere the table names it (indexes, constraints), as RENAME COLUMN does."""
        column = self.column(old)
        if new in self.columns:
            raise ModelError(f"table {self.name!r} already has a column {new!r}")
        column.name = new
        self.columns = {(new if k == old else k): v for k, v in self.columns.items()}
        for row in self.rows:
            row[new] = row.pop(old)

        def renamed(columns: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(new if c == old else c for c in columns)

        self.indexes = {n: Index(renamed(ix.columns), ix.unique) for n, ix in self.indexes.items()}
        self.uniques = {n: renamed(cols) for n, cols in self.uniques.items()}
        from zdm.sqltree import rename_in_condition

        self.checks = {n: rename_in_condition(cond, old, new) for n, cond in self.checks.items()}
        self.foreign_keys = {n: ForeignKey(renamed(fk.columns), fk.ref_table, fk.ref_columns, fk.on_delete)
                             for n, fk in self.foreign_keys.items()}

    # -- rows --------------------------------------------------------------------------------
    def insert(self, values: dict[str, Any]) -> dict[str, Any]:
        """Insert a row; raises ConstraintViolation where the database would refuse it.

        Foreign keys need the other tables: ``Schema.insert`` checks them.
        """
        row = self.new_row(values)
        self.check_row(row, named=set(values))
        self.rows.append(row)
        return row

    def new_row(self, values: dict[str, Any]) -> dict[str, Any]:
        """The row an INSERT of ``values`` stores, before any constraint is checked."""
        unknown = set(values) - set(self.columns)
        if unknown:
            raise ModelError(f"table {self.name!r} has no column {sorted(unknown)[0]!r}")
        row: dict[str, Any] = {}
        for column in self.columns.values():
            if column.name in values:
                row[column.name] = column.type.coerce(values[column.name])
            else:
                row[column.name] = column.default_value()
        for link in self.links:  # like BEFORE triggers, links fill values before constraints are checked
            self._link_insert(link, row)
        self._fill(row)
        return row

    def check_row(self, row: dict[str, Any], named: set[str], replacing: dict[str, Any] | None = None,
                  *, unique: bool = True) -> None:
        """Raise ConstraintViolation if ``row`` breaks NOT NULL, a key, a uniqueness rule or a check.

        ``replacing``: the row's previous version, when ``row`` is an update of it. ``unique``: False
        for the row an upsert proposes, which both databases check for all but uniqueness first.
        """
        for column in self.columns.values():
            if row[column.name] is None and not column.nullable:
                problem = "cannot be NULL" if column.name in named else "is required"
                raise ConstraintViolation("not null", f"column {self.name}.{column.name} {problem}")
        for link in self.links:
            if not link.a_nullable and row[link.a] is None:
                raise ConstraintViolation("not null", f"column {self.name}.{link.a} cannot be NULL")
        for name, columns in self.unique_rules().items() if unique else ():
            values = tuple(row[c] for c in columns)
            if None in values:
                continue  # NULLs never collide
            for other in self.rows:
                if other is not replacing and tuple(other[c] for c in columns) == values:
                    raise ConstraintViolation("unique", f"{self.name}: duplicate {values} for {name}")
        for name, condition in self.checks.items():
            if not condition_holds(condition, row):
                raise ConstraintViolation("check", f"{self.name}: row breaks check {name} ({condition})")

    def unique_rules(self) -> dict[str, tuple[str, ...]]:
        """Every rule that makes a set of columns unique: the key, UNIQUE constraints, unique indexes."""
        rules = {f"{self.name} primary key": tuple(self.primary_key)} if self.primary_key else {}
        rules.update(self.uniques)
        rules.update({name: ix.columns for name, ix in self.indexes.items() if ix.unique})
        return rules

    def _fill(self, row: dict[str, Any]) -> None:
        for name, value in self.fills.items():
            if row[name] is None:
                row[name] = self.column(name).type.coerce(value)
                self.filled.add((name, self.key_of(row)))

    def key_of(self, row: dict[str, Any]) -> tuple[Any, ...]:
        """The row's primary key values."""
        return tuple(row[k] for k in self.primary_key)

    def _link_insert(self, link: Link, row: dict[str, Any]) -> None:
        a, b = self.column(link.a), self.column(link.b)
        if same_value(row[b.name], b.default_value()):  # the writer left b out: it follows a
            row[b.name] = b.type.coerce(_apply(link.up, row[a.name]))
        elif link.down:  # the writer named b: only the new app knows it
            row[a.name] = a.type.coerce(_apply(link.down, row[b.name]))

    def _link_update(self, link: Link, before: dict[str, Any], row: dict[str, Any]) -> None:
        a, b = self.column(link.a), self.column(link.b)
        up = b.type.coerce(_apply(link.up, row[a.name]))
        if not same_value(row[a.name], before[a.name]):
            row[b.name] = up
        elif link.down and not same_value(row[b.name], before[b.name]) and not same_value(row[b.name], up):
            row[a.name] = a.type.coerce(_apply(link.down, row[b.name]))
        elif link.fill_unreached and row[b.name] is None and row[a.name] is not None:
            row[b.name] = up  # a row the backfill has not reached: any write brings it up to date

    def updated_row(self, row: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        """What ``row`` becomes after an UPDATE setting ``values``, before constraints are checked."""
        updated = dict(row)
        for name, value in values.items():
            updated[name] = self.column(name).type.coerce(value)
        for link in self.links:
            self._link_update(link, row, updated)
        self._fill(updated)
        return updated

    def update(self, key: dict[str, Any], values: dict[str, Any]) -> int:
        """Set ``values`` on the rows matching ``key``; returns how many rows matched."""
        matched = 0
        for index, row in enumerate(self.rows):
            if all(row.get(k) == v for k, v in key.items()):
                updated = self.updated_row(row, values)
                self.check_row(updated, named=set(values), replacing=row)
                self.rows[index] = updated
                matched += 1
        return matched

    def find(self, key: dict[str, Any]) -> dict[str, Any] | None:
        return next((row for row in self.rows if all(row.get(k) == v for k, v in key.items())), None)

    def row_count(self) -> int:
        return len(self.rows)

    def sorted_rows(self) -> list[dict[str, Any]]:
        """Rows ordered by primary key (or every column), for comparison with a database."""
        order = self.primary_key or self.column_names()
        return sorted(self.rows, key=lambda r: tuple(_sort_key(r.get(c)) for c in order))

    def shape(self) -> dict[str, tuple[str, bool]]:
        """Column name -> (type, nullable): what schema comparisons look at."""
        return {c.name: (c.type.value, c.nullable) for c in self.columns.values()}

    def catalogue(self) -> dict[str, Any]:
        """Everything about the table a user relies on besides its rows, in a comparable form.

        Columns with their type, NULL-ability, default and comment; indexes; UNIQUE, CHECK and
        FOREIGN KEY constraints (a check by the columns it reads: its text differs by database).
        """
        from zdm.sqltree import condition_columns

        return {
            "columns": {c.name: (c.type.value, c.nullable, _default_text(c), c.comment)
                        for c in self.columns.values()},
            "primary key": tuple(self.primary_key),
            "indexes": {name: index for name, index in sorted(self.indexes.items())
                        if not name.startswith("zdm_")},  # zdm's own, while a plan is in flight
            "unique constraints": dict(sorted(self.uniques.items())),
            "checks": {name: sorted(condition_columns(cond)) for name, cond in sorted(self.checks.items())
                       if not name.startswith("zdm_")},  # zdm's own, while a plan is in flight
            "foreign keys": dict(sorted(self.foreign_keys.items())),
        }


def _default_text(column: Column) -> str | None:
    if column.default is None:
        return None
    if isinstance(column.default, SqlDefault):
        return f"SQL {column.default.sql}"
    return repr(column.default_value())


def same_value(a: Any, b: Any) -> bool:
    """Equal, or both NaN: a NaN equals nothing, itself included, yet two NaNs hold the same (and both
    databases take a NaN for a NaN: neither an update from NaN to NaN nor a row of NaN differs)."""
    if a == b:
        return True
    nan = (float, decimal.Decimal)
    return isinstance(a, nan) and isinstance(b, nan) and a != a and b != b


def same_row(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Rows with the same columns and the same values (``same_value``)."""
    return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)


def _apply(function: Callable[[Any], Any], value: Any) -> Any:
    return None if value is None else function(value)


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, "") if value is None else (1, value if not isinstance(value, dict | list) else str(value))


# -- CHECK conditions, evaluated by SQLite --------------------------------------------------------
@functools.cache
def _evaluator() -> sqlite3.Connection:
    return sqlite3.connect(":memory:", check_same_thread=False)


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, dict | list):
        return json.dumps(value)
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, dt.date | dt.time | uuid.UUID):
        return str(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return value


def condition_holds(condition: str, row: dict[str, Any]) -> bool:
    """Whether a CHECK passes for ``row``: true or NULL, as in SQL. Evaluated by SQLite, with the
    row's values bound to its column names (conditions in tests are written to read alike in both
    databases)."""
    names = sorted(row)
    columns = ", ".join(f"? AS {_quote(name)}" for name in names)
    query = f"SELECT ({condition}) FROM (SELECT {columns})"
    try:
        result = _evaluator().execute(query, [_sqlite_value(row[name]) for name in names]).fetchone()[0]
    except sqlite3.Error as exc:
        raise ModelError(f"the model cannot evaluate check ({condition}): {exc}") from None
    return result is None or bool(result)


@functools.cache
def _quote(name: str) -> str:
    from sqlalchemy.dialects import sqlite

    return sqlite.dialect().identifier_preparer.quote(name)


# -- the schema ---------------------------------------------------------------------------------
@dataclass
class Schema:
    tables: dict[str, Table] = field(default_factory=dict)
    #: Old table name -> new one, while a renamed table is still reachable under its old name.
    aliases: dict[str, str] = field(default_factory=dict)
    #: What an operation replaced (a default, a type...), so that rolling back the model restores it.
    memo: dict[str, Any] = field(default_factory=dict)
    #: The database's enum types by name, with their labels (PostgreSQL), for types declared by name.
    types: dict[str, ColumnType] = field(default_factory=dict)
    #: The database refuses a value beyond its column type's limits (a text too long for VARCHAR(n),
    #: a number out of NUMERIC(p,s)'s or INTEGER's range), as PostgreSQL does and SQLite does not
    #: (``Dialect.enforces_type_limits``): app writes through the schema are then refused alike.
    type_limits: bool = False

    def resolve(self, column_type: ColumnType) -> ColumnType:
        """``column_type`` with what the database knows of it: an enum declared by name gets its labels."""
        if column_type.family is Family.ENUM and not column_type.labels:
            return self.types.get(column_type.name, column_type)
        return column_type

    def table(self, name: str) -> Table:
        try:
            return self.tables[self.aliases.get(name, name)]
        except KeyError:
            raise ModelError(f"no table {name!r}") from None

    def has_table(self, name: str) -> bool:
        return name in self.tables

    def rename_table(self, old: str, new: str) -> None:
        if new in self.tables:
            raise ModelError(f"table {new!r} already exists")
        table = self.tables.pop(old)
        table.name = new
        self.tables[new] = table
        for other in self.tables.values():
            other.foreign_keys = {n: ForeignKey(fk.columns, new if fk.ref_table == old else fk.ref_table,
                                                fk.ref_columns, fk.on_delete)
                                  for n, fk in other.foreign_keys.items()}

    def rename_column(self, table: str, old: str, new: str) -> None:
        """Rename a column and every foreign key of other tables that references it."""
        target = self.table(table)
        target.rename_column(old, new)
        for other in self.tables.values():
            other.foreign_keys = {
                n: ForeignKey(fk.columns, fk.ref_table,
                              tuple(new if fk.ref_table == target.name and c == old else c for c in fk.ref_columns),
                              fk.on_delete)
                for n, fk in other.foreign_keys.items()}

    def add_table(self, table: Table) -> Table:
        if table.name in self.tables:
            raise ModelError(f"table {table.name!r} already exists")
        self.tables[table.name] = table
        return table

    def drop_table(self, name: str) -> Table:
        table = self.table(name)
        del self.tables[name]
        return table

    def copy(self) -> Schema:
        return copy.deepcopy(self)

    # -- app writes, with the foreign keys between tables ------------------------------------------
    def within_limits(self, table: str, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` as the database stores them in ``table``'s columns; with ``type_limits``, a value
        beyond its column type's limits raises ConstraintViolation ("value"), before any other rule
        is checked (the database converts the values it is given first)."""
        if not self.type_limits:
            return values
        target = self.table(table)
        stored = dict(values)
        for name, value in values.items():
            if name in target.columns:
                try:
                    stored[name] = target.columns[name].type.stored(value)
                except (TypeError, ValueError) as exc:
                    raise ConstraintViolation("value", f"{target.name}.{name}: {exc}") from None
        return stored

    def insert(self, table: str, values: dict[str, Any]) -> dict[str, Any]:
        target = self.table(table)
        values = self.within_limits(table, values)
        row = target.new_row(values)
        target.check_row(row, named=set(values))
        self._check_references(target, row)
        target.rows.append(row)
        return row

    def update(self, table: str, key: dict[str, Any], values: dict[str, Any]) -> int:
        target = self.table(table)
        values = self.within_limits(table, values)
        matched = 0
        for index, row in enumerate(list(target.rows)):
            if all(row.get(k) == v for k, v in key.items()):
                updated = target.updated_row(row, values)
                target.check_row(updated, named=set(values), replacing=row)
                self._check_references(target, updated)
                self._check_referenced(target, row, updated)
                target.rows[index] = updated
                matched += 1
        return matched

    def upsert(self, table: str, values: dict[str, Any], update: dict[str, Any]) -> None:
        """INSERT ... ON CONFLICT (key) DO UPDATE SET ``update``."""
        target = self.table(table)
        values = self.within_limits(table, values)
        update = self.within_limits(table, update)
        key = {k: target.column(k).type.coerce(values[k]) for k in target.primary_key}
        # PostgreSQL and SQLite check the proposed row's NOT NULL and CHECKs before they look for a conflict.
        target.check_row(target.new_row(values), named=set(values), unique=False)
        if target.find(key) is None:
            self.insert(table, values)
        elif update:
            self.update(table, key, update)

    def delete(self, table: str, key: dict[str, Any]) -> int:
        target = self.table(table)
        doomed = [row for row in target.rows if all(row.get(k) == v for k, v in key.items())]
        for row in doomed:
            self._on_delete(target, row)
            target.rows.remove(row)
        return len(doomed)

    def _check_references(self, table: Table, row: dict[str, Any]) -> None:
        for name, fk in table.foreign_keys.items():
            values = tuple(row[c] for c in fk.columns)
            if None in values:
                continue
            parent = self.table(fk.ref_table)
            if not any(tuple(p[c] for c in fk.ref_columns) == values for p in parent.rows):
                raise ConstraintViolation("foreign key", f"{table.name}: {values} has no row in {fk.ref_table} "
                                          f"({name})")

    def _children(self, table: Table) -> list[tuple[Table, str, ForeignKey]]:
        return [(child, name, fk) for child in self.tables.values() for name, fk in child.foreign_keys.items()
                if fk.ref_table == table.name]

    def _check_referenced(self, table: Table, before: dict[str, Any], after: dict[str, Any]) -> None:
        """An update that changes a referenced key must not orphan rows (no ON UPDATE actions modelled)."""
        for child, name, fk in self._children(table):
            old = tuple(before[c] for c in fk.ref_columns)
            if old != tuple(after[c] for c in fk.ref_columns) and any(
                    tuple(r[c] for c in fk.columns) == old for r in child.rows):
                raise ConstraintViolation("foreign key", f"{child.name} still references {old} ({name})")

    def _on_delete(self, table: Table, row: dict[str, Any]) -> None:
        for child, name, fk in self._children(table):
            key = tuple(row[c] for c in fk.ref_columns)
            referencing = [r for r in child.rows if tuple(r[c] for c in fk.columns) == key]
            if not referencing:
                continue
            if fk.on_delete == "CASCADE":
                for child_row in referencing:
                    self._on_delete(child, child_row)
                    child.rows.remove(child_row)
            elif fk.on_delete == "SET NULL":
                for child_row in referencing:  # an UPDATE of the child: its BEFORE triggers (links, fills) fire
                    index = next(i for i, r in enumerate(child.rows) if r is child_row)
                    child.rows[index] = child.updated_row(child_row, {column: None for column in fk.columns})
            else:
                raise ConstraintViolation("foreign key", f"{child.name} still references {key} ({name})")
