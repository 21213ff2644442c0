"""The in-memory reference model: tables, typed columns and rows.

It is the oracle of the test suite. Every operation applies its change to this model as well as to
the real database, and the tests compare the two after each phase. Keeping it tiny and obviously
correct is what makes it trustworthy.
"""

from __future__ import annotations

import copy
import datetime as dt
import enum
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class ModelError(ValueError):
    """A change the model refuses (missing or duplicate column, missing required value...)."""


class ColumnType(enum.StrEnum):
    TEXT = "TEXT"
    INTEGER = "INTEGER"
    BIGINT = "BIGINT"
    BOOLEAN = "BOOLEAN"
    TIMESTAMP = "TIMESTAMP"
    JSON = "JSON"
    #: A type zdm reads and copies (DATE, NUMERIC, UUID...) but does not declare.
    OTHER = "OTHER"

    def coerce(self, value: Any) -> Any:
        """Normalise a Python value to what this type holds, so rows compare across databases."""
        if value is None or self is ColumnType.OTHER:
            return value
        if self in (ColumnType.INTEGER, ColumnType.BIGINT):
            if isinstance(value, bool):
                return int(value)
            return int(value)
        if self is ColumnType.BOOLEAN:
            return bool(value)
        if self is ColumnType.TIMESTAMP:
            if isinstance(value, str):
                value = dt.datetime.fromisoformat(value)
                if value.tzinfo is not None:  # the databases would drop the offset without a word
                    raise ValueError(f"{value.isoformat()} has a UTC offset, which a TIMESTAMP does not keep")
            return value.replace(tzinfo=None) if isinstance(value, dt.datetime) else value
        if self is ColumnType.JSON:
            return json.loads(value) if isinstance(value, str) else value
        return str(value)


@dataclass
class Column:
    name: str
    type: ColumnType
    nullable: bool = True
    default: Any = None
    primary_key: bool = False

    @property
    def required(self) -> bool:
        """An insert must name this column: NOT NULL and nothing fills it in."""
        return not self.nullable and self.default is None and not self.primary_key


@dataclass
class Link:
    """The model's twin of dual-write triggers: ``b`` follows ``up(a)``; ``a`` follows ``down(b)``.

    Same rules as the triggers: on insert, a column left at its default (or NULL) takes its
    value from the other one; on update, a changed ``a`` wins over a changed ``b``.
    """

    a: str
    b: str
    up: Callable[[Any], Any]
    down: Callable[[Any], Any] | None = None
    #: ``a``'s NULL-ability before expand relaxed it (SQLite), restored by contract or rollback.
    a_nullable: bool = True


@dataclass
class Table:
    name: str
    columns: dict[str, Column] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    #: Column -> value written in place of NULL (the model's twin of a fill trigger).
    fills: dict[str, Any] = field(default_factory=dict)

    def __init__(self, name: str, columns: list[Column] | None = None) -> None:
        self.name = name
        self.columns = {}
        self.rows = []
        self.links = []
        self.fills = {}
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
            row[column.name] = column.type.coerce(column.default)

    def drop_column(self, name: str) -> Column:
        column = self.column(name)
        del self.columns[name]
        for row in self.rows:
            row.pop(name, None)
        return column

    def rename_column(self, old: str, new: str) -> None:
        column = self.column(old)
        if new in self.columns:
            raise ModelError(f"table {self.name!r} already has a column {new!r}")
        column.name = new
        self.columns = {(new if k == old else k): v for k, v in self.columns.items()}
        for row in self.rows:
            row[new] = row.pop(old)

    # -- rows --------------------------------------------------------------------------------
    def insert(self, values: dict[str, Any]) -> dict[str, Any]:
        unknown = set(values) - set(self.columns)
        if unknown:
            raise ModelError(f"table {self.name!r} has no column {sorted(unknown)[0]!r}")
        row: dict[str, Any] = {}
        for column in self.columns.values():
            if column.name in values:
                row[column.name] = column.type.coerce(values[column.name])
            else:
                row[column.name] = column.type.coerce(column.default)
        for link in self.links:  # like BEFORE triggers, links fill values before NOT NULL is checked
            self._link_insert(link, row)
        self._fill(row)
        for column in self.columns.values():
            if row[column.name] is None and not column.nullable:
                problem = "cannot be NULL" if column.name in values else "is required"
                raise ModelError(f"column {self.name}.{column.name} {problem}")
        self.rows.append(row)
        return row

    def _fill(self, row: dict[str, Any]) -> None:
        for name, value in self.fills.items():
            if row[name] is None:
                row[name] = self.column(name).type.coerce(value)

    def _link_insert(self, link: Link, row: dict[str, Any]) -> None:
        a, b = self.column(link.a), self.column(link.b)
        at_a_default = row[a.name] == a.type.coerce(a.default)
        at_b_default = row[b.name] == b.type.coerce(b.default)
        if row[b.name] is None or (at_b_default and not at_a_default):
            row[b.name] = b.type.coerce(_apply(link.up, row[a.name]))
        elif link.down and (row[a.name] is None or (at_a_default and not at_b_default)):
            row[a.name] = a.type.coerce(_apply(link.down, row[b.name]))

    def _link_update(self, link: Link, before: dict[str, Any], row: dict[str, Any]) -> None:
        a, b = self.column(link.a), self.column(link.b)
        up = b.type.coerce(_apply(link.up, row[a.name]))
        if row[a.name] != before[a.name]:
            row[b.name] = up
        elif link.down and row[b.name] != before[b.name] and row[b.name] != up:
            row[a.name] = a.type.coerce(_apply(link.down, row[b.name]))

    def update(self, key: dict[str, Any], values: dict[str, Any]) -> int:
        """Set ``values`` on the rows matching ``key``; returns how many rows matched."""
        matched = 0
        for row in self.rows:
            if all(row.get(k) == v for k, v in key.items()):
                before = dict(row)
                for name, value in values.items():
                    row[name] = self.column(name).type.coerce(value)
                for link in self.links:
                    self._link_update(link, before, row)
                self._fill(row)
                matched += 1
        return matched

    def row_count(self) -> int:
        return len(self.rows)

    def sorted_rows(self) -> list[dict[str, Any]]:
        """Rows ordered by primary key (or every column), for comparison with a database."""
        order = self.primary_key or self.column_names()
        return sorted(self.rows, key=lambda r: tuple(_sort_key(r.get(c)) for c in order))

    def shape(self) -> dict[str, tuple[str, bool]]:
        """Column name -> (type, nullable): what schema comparisons look at."""
        return {c.name: (c.type.value, c.nullable) for c in self.columns.values()}


def _apply(function: Callable[[Any], Any], value: Any) -> Any:
    return None if value is None else function(value)


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, "") if value is None else (1, value if not isinstance(value, dict) else str(value))


@dataclass
class Schema:
    tables: dict[str, Table] = field(default_factory=dict)
    #: Old table name -> new one, while a renamed table is still reachable under its old name.
    aliases: dict[str, str] = field(default_factory=dict)
    #: What an operation replaced (a default, a type...), so that rolling back the model restores it.
    memo: dict[str, Any] = field(default_factory=dict)

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
