"""What SQL differs between databases: triggers, table rebuilds, lock settings.

Operations say *what* a phase does in dialect-neutral terms (add this column, keep these two
columns in sync); a dialect turns that into statements. Identifiers are always quoted by the
SQLAlchemy dialect's preparer, never pasted into SQL as they came.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import pglast
import sqlalchemy as sa
from alembic.ddl.base import AddColumn, DropColumn
from sqlalchemy.engine import Dialect as SADialect

from zdm.model import ColumnType
from zdm.sqltree import column_names
from zdm.transforms import Transform

SA_TYPES: dict[ColumnType, type[sa.types.TypeEngine[Any]]] = {
    ColumnType.TEXT: sa.Text,
    ColumnType.INTEGER: sa.Integer,
    ColumnType.BIGINT: sa.BigInteger,
    ColumnType.BOOLEAN: sa.Boolean,
    ColumnType.TIMESTAMP: sa.DateTime,
    ColumnType.JSON: sa.JSON,
}


@dataclass(frozen=True)
class Sync:
    """Keep column ``b`` equal to ``up(a)`` and, when ``down`` is given, ``a`` equal to ``down(b)``.

    This is the dual-write promise of the expand phase: the old app writes ``a``, the new app
    writes ``b``, both read correct values, whatever else a write touches. The rules, the same in
    both dialects and in the reference model (``zdm.model.Link``):

    - insert: ``b`` still at its default (``b_default``; NULL without one) means the writer left
      ``b`` out, so ``b`` takes ``up(a)``; otherwise the writer named ``b`` (only the new app knows
      it), so ``a`` takes ``down(b)``. An explicit NULL is a value like any other.
    - update: a changed ``a`` wins (``b`` takes ``up(a)``); else a changed ``b`` that is not
      already ``up(a)`` gives ``a`` its ``down(b)`` (so the backfill's own write never bounces back);
      else, with ``fill_unreached``, a row the backfill has not reached yet (``b`` NULL, ``a`` set)
      gets ``b`` on any write, so an app's write to an unrelated column brings it up to date.
    """

    name: str
    table: str
    key: tuple[str, ...]
    a: str
    b: str
    up: Transform
    down: Transform | None
    #: ``b``'s default as SQL, or None.
    b_default: str | None = None
    fill_unreached: bool = False
    #: SQLite: ``a`` is NOT NULL for the apps, but expand relaxed it so the new app may leave it out
    #: (SQLite's triggers cannot fill it before the check). The triggers refuse NULL instead.
    a_not_null: bool = False


@dataclass(frozen=True)
class UserTrigger:
    """A trigger the user made on a table, and whether its code names a column."""

    name: str
    #: Fires BEFORE, FOR EACH ROW, on INSERT or UPDATE: it may change NEW before zdm's trigger sees it.
    edits_rows: bool
    #: Its code (the trigger function's body on PostgreSQL, the trigger's SQL on SQLite) names the column.
    names_column: bool
    function: str | None = None
    #: The function's planner cost (PostgreSQL): setting it again makes every session recompile the
    #: function, whose cached plans still expect the column's old type.
    cost: float | None = None


@dataclass
class ColumnFacts:
    """What hangs on a column besides its type and rows, read from the live catalog.

    A change that replaces the column (alter_column) must carry each of these onto the new one, or
    refuse before anything runs; a rename in place keeps them all, but for code that names the
    column (trigger functions).
    """

    default: str | None = None
    comment: str | None = None
    not_null: bool = False
    #: ``ALTER COLUMN ... SET STATISTICS`` when not the default.
    statistics: int | None = None
    #: ``ALTER COLUMN ... SET STORAGE`` when not the type's own.
    storage: str | None = None
    #: Column privileges: (grantee, privilege, grantable).
    grants: list[tuple[str, str, bool]] = field(default_factory=list)
    #: The sequence the column owns (serial), schema-qualified as the database names it.
    sequence: str | None = None
    #: "ALWAYS" or "BY DEFAULT" for an identity column.
    identity: str | None = None
    #: Constraints of the table that use the column: name -> (kind, definition); kind is PostgreSQL's
    #: contype: c (check), u (unique), f (foreign key), p (primary key), x (exclusion).
    constraints: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: Foreign keys of other tables that reference the column: (table, name, definition).
    referenced_by: list[tuple[str, str, str]] = field(default_factory=list)
    #: Other objects that use the column and go with it (views, rules, policies, generated columns,
    #: publications, statistics, column triggers), described by the database.
    dependents: list[str] = field(default_factory=list)
    triggers: list[UserTrigger] = field(default_factory=list)


def object_name(prefix: str, *parts: str) -> str:
    """A name for a zdm-owned object that fits PostgreSQL's 63-byte limit and stays unique."""
    readable = "_".join((prefix, *parts))
    if len(readable) <= 55:
        return readable
    digest = hashlib.sha1(readable.encode()).hexdigest()[:8]
    return f"{readable[:46]}_{digest}"


def index_copy_problem(definition: str, column: str) -> str | None:
    """Why the index ``definition`` cannot be copied onto another column as a plain one.

    A rename or type change rebuilds the column's indexes on the new column from their columns
    alone; anything more (an expression, a WHERE clause, a sort order, a collation...) would be
    lost, and reflection does not report all of it. The statement is read with PostgreSQL's
    parser, which also reads SQLite's CREATE INDEX. None when the index is plain or does not use
    ``column``.
    """
    try:
        statement = pglast.parse_sql(definition)[0].stmt
    except pglast.parser.ParseError:
        return "has a definition zdm cannot read"
    if column not in column_names(statement):
        return None
    if (statement.accessMethod or "btree") != "btree":
        return f"is a {statement.accessMethod} index"
    if statement.whereClause is not None:
        return "has a WHERE clause"
    if statement.indexIncludingParams:
        return "has INCLUDE columns"
    if statement.nulls_not_distinct:
        return "is NULLS NOT DISTINCT"
    for element in statement.indexParams:
        if element.expr is not None:
            return "has an expression"
        if element.collation or element.opclass:
            return "has a collation or an operator class"
        if element.ordering or element.nulls_ordering:
            return "sorts a column DESC or NULLS FIRST/LAST"
    return None


def mentions(sql: str, column: str) -> bool:
    """Whether SQL text (a CHECK, a trigger body) names ``column``, bare or quoted.

    A text match, for SQL that no parser here reads whole (SQLite's triggers): it may also see
    the name inside a string literal, which errs on the side of refusing.
    """
    return re.search(rf'(?<![\w"]){re.escape(column)}(?![\w"])|"{re.escape(column)}"', sql, re.I) is not None


class Dialect:
    """Base: what both databases share. Subclasses override what differs."""

    name = "generic"

    def __init__(self, sa_dialect: SADialect) -> None:
        self.sa = sa_dialect

    # -- quoting and compiling ----------------------------------------------------------------
    def quote(self, name: str) -> str:
        return self.sa.identifier_preparer.quote(name)

    def sql(self, construct: Any) -> str:
        """Compile a SQLAlchemy construct to a statement with literal values inlined."""
        return str(construct.compile(dialect=self.sa, compile_kwargs={"literal_binds": True})).strip()

    def expr(self, transform: Transform, source: str) -> str:
        """``transform`` applied to an already-quoted column reference such as ``NEW."email"``."""
        return self.sql(transform.sql(sa.literal_column(source)))

    def column_type(self, column_type: ColumnType) -> sa.types.TypeEngine[Any]:
        return SA_TYPES[column_type]()

    def type_sql(self, column_type: ColumnType) -> str:
        return self.column_type(column_type).compile(dialect=self.sa)

    # -- reading the live schema ---------------------------------------------------------------
    def index_definitions(self, connection: sa.Connection, table: str) -> dict[str, str]:
        """Every index of ``table`` as the CREATE INDEX statement the database keeps for it."""
        raise NotImplementedError

    def column_facts(self, connection: sa.Connection, table: str, column: str) -> ColumnFacts:
        """What hangs on ``table.column`` besides its type and rows (see ColumnFacts)."""
        raise NotImplementedError

    def column_collations(self, connection: sa.Connection, table: str) -> dict[str, str]:
        """Collations reflection leaves out of the column types (none on PostgreSQL)."""
        return {}

    # -- DDL ----------------------------------------------------------------------------------
    def add_column(self, table: str, column: sa.Column[Any]) -> str:
        return self.sql(AddColumn(table, column))

    def drop_column(self, table: str, name: str) -> list[Any]:
        return [self.sql(DropColumn(table, sa.Column(name, sa.Text)))]

    def create_index(self, name: str, table: str, columns: list[str], *, unique: bool = False) -> list[str]:
        """Statements building an index; PostgreSQL builds it CONCURRENTLY."""
        return [self.sql(sa.schema.CreateIndex(self._index(name, table, columns, unique)))]

    def drop_index(self, name: str, table: str) -> list[str]:
        return [self.sql(sa.schema.DropIndex(self._index(name, table, [], False), if_exists=True))]

    def _index(self, name: str, table: str, columns: list[str], unique: bool, **options: Any) -> sa.Index:
        holder = sa.Table(table, sa.MetaData(), *[sa.Column(c, sa.Text) for c in columns])
        return sa.Index(name, *[holder.c[c] for c in columns], unique=unique, **options)

    #: True when index statements must run outside a transaction.
    concurrent_indexes = False

    def literal(self, value: Any, column_type: ColumnType) -> str:
        """A Python value as a SQL literal of ``column_type`` (for DEFAULT clauses)."""
        if column_type is ColumnType.JSON:  # SQLAlchemy renders no JSON literal; both databases read the text
            return self.sql(sa.literal(json.dumps(value), sa.Text()))
        return self.sql(sa.literal(value, self.column_type(column_type)))

    # -- what subclasses provide ---------------------------------------------------------------
    def sync_triggers(self, sync: Sync) -> tuple[list[str], list[str]]:
        """(statements creating the sync triggers, statements dropping them)."""
        raise NotImplementedError

    def fill_triggers(self, name: str, table: str, key: tuple[str, ...], column: str, value: str
                      ) -> tuple[list[str], list[str]]:
        """(create, drop) triggers writing ``value`` wherever an app writes NULL into ``column``."""
        raise NotImplementedError

    def begin(self, lock_timeout_ms: int) -> list[str]:
        """Statements that open every transaction zdm runs (lock budget)."""
        return []

    def zdm_objects(self, connection: sa.Connection) -> list[str]:
        """Names of zdm-owned triggers and functions left in the database."""
        raise NotImplementedError


def for_name(name: str) -> Dialect:
    from zdm.dialects.postgresql import PostgresDialect
    from zdm.dialects.sqlite import SQLiteDialect

    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import psycopg

        # "named" placeholders: compiled SQL keeps a literal % as it is (no driver escaping),
        # so what is stored, printed and reviewed is the real SQL; run_sql escapes at the end.
        return PostgresDialect(psycopg.dialect(paramstyle="named"))
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import pysqlite

        return SQLiteDialect(pysqlite.dialect())
    raise ValueError(f"zdm supports postgresql and sqlite, not {name!r}")


def for_connection(connection: sa.Connection | sa.Engine) -> Dialect:
    return for_name(connection.dialect.name)
