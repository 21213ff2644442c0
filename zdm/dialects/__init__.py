"""What SQL differs between databases: triggers, table rebuilds, lock settings.

Operations say *what* a phase does in dialect-neutral terms (add this column, keep these two
columns in sync); a dialect turns that into statements. Identifiers are always quoted by the
SQLAlchemy dialect's preparer, never pasted into SQL as they came.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect as SADialect

from zdm.actions import Action, Rebuild, Statement, statements
from zdm.coltypes import Family, to_sa
from zdm.errors import ThrottleInvalid
from zdm.model import ColumnType, Schema, SqlDefault
from zdm.transforms import Transform


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


@dataclass(frozen=True)
class DisabledTrigger:
    """A zdm trigger a plan made that does not fire for the app's sessions: someone disabled it
    (``ALTER TABLE ... DISABLE TRIGGER``, a restore with ``--disable-triggers``) or left it firing
    for replication sessions only. While it is off the app's writes are not kept in step."""

    table: str
    name: str
    #: ``disabled``, or ``replica`` (fires only in sessions with ``session_replication_role = replica``).
    state: str
    #: The statement that makes it fire again, quoted for the database.
    enable: str

    def describe(self) -> str:
        how = "disabled" if self.state == "disabled" else "enabled for replication sessions only (ENABLE REPLICA)"
        return f"zdm trigger {self.name} on {self.table} is {how}"

    def to_json(self) -> dict[str, str]:
        return {"table": self.table, "trigger": self.name, "state": self.state, "enable": self.enable}


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


#: PostgreSQL keeps the first 63 bytes of a name (NAMEDATALEN - 1) and silently drops the rest.
NAME_BYTES = 63
_PLAIN = re.compile(r"[a-z0-9]+")
#: Where ``object_name`` records the names it mints while a plan compiles (``minted_names``).
_minted: ContextVar[list[str] | None] = ContextVar("zdm_minted", default=None)


def _digest(parts: tuple[str, ...]) -> str:
    """8 hex digits of a hash of ``parts`` as a list (so ``("a", "b_c")`` and ``("a_b", "c")`` differ)."""
    return hashlib.sha1(json.dumps(list(parts)).encode()).hexdigest()[:8]


def _hashed(readable: str, parts: tuple[str, ...], suffix: str = "") -> str:
    """The readable name's head, ``__``, the digest of ``parts``, then ``suffix``; within NAME_BYTES."""
    room = NAME_BYTES - len(suffix) - 10
    head = re.sub(r"[^A-Za-z0-9_]", "_", readable)[:room].rstrip("_")
    return f"{head}__{_digest(parts)}{suffix}"


def mint(*parts: str) -> str:
    """One unambiguous token for names as they came (plan id, table, column...), to build
    ``object_name``'s from: the parts joined by ``_`` when each is lowercase letters and digits
    (nothing to confuse), else their readable head with ``__`` and a hash of the parts appended:
    plan ``a`` on table ``b_c`` and plan ``a_b`` on table ``c`` get different names, and so do
    plans ``p-1`` and ``p_1``, or ``P1`` and ``p1`` on SQLite (which ignores case). A joined
    token never holds ``__``, so it never equals a hashed one."""
    readable = "_".join(parts)
    if all(_PLAIN.fullmatch(part) for part in parts) and len(readable) <= NAME_BYTES:
        return readable
    return _hashed(readable, parts)


def object_name(prefix: str, *parts: str) -> str:
    """The name of a zdm-owned object: ``prefix`` and ``parts`` (tokens from ``mint``, or words of
    zdm's code) joined by ``_``; over 63 bytes, its head with a hash of the whole. Every name minted
    while a plan compiles is checked against the live schema before anything runs
    (``minted_names``): zdm never creates, nor later drops, an object it did not make."""
    readable = "_".join((prefix, *parts))
    name = readable if len(readable.encode()) <= NAME_BYTES else _hashed(readable, (prefix, *parts))
    if (collected := _minted.get()) is not None:
        collected.append(name)
    return name


def shadow_column(column: str) -> str:
    """The temporary column that takes ``column``'s new type: ``<column>_zdm_new``, or for a long
    name its head, a hash of the name and ``_zdm_new`` (a cut name could equal another column's)."""
    name = f"{column}_zdm_new"
    return name if len(name.encode()) <= NAME_BYTES else _hashed(column, (column,), "_zdm_new")


@contextmanager
def minted_names() -> Iterator[list[str]]:
    """Collect the names ``object_name`` mints inside the block (``compile_plan`` checks them)."""
    collected: list[str] = []
    token = _minted.set(collected)
    try:
        yield collected
    finally:
        _minted.reset(token)


def index_copy_problem(definition: str, column: str) -> str | None:
    """Why the index ``definition`` cannot be copied onto another column as a plain one.

    A rename or type change rebuilds the column's indexes on the new column from their columns
    alone; anything more (an expression, a WHERE clause, a sort order, a collation...) would be
    lost, and reflection does not report all of it. The statement is read with PostgreSQL's
    parser, which also reads SQLite's CREATE INDEX. None when the index is plain or does not use
    ``column``.
    """
    import pglast

    from zdm.sqltree import column_names, statement

    try:
        parsed = statement(definition)
    except pglast.parser.ParseError:
        return "has a definition zdm cannot read"
    if column not in column_names(parsed):
        return None
    if (parsed.accessMethod or "btree") != "btree":
        return f"is a {parsed.accessMethod} index"
    if parsed.whereClause is not None:
        return "has a WHERE clause"
    if parsed.indexIncludingParams:
        return "has INCLUDE columns"
    if parsed.nulls_not_distinct:
        return "is NULLS NOT DISTINCT"
    for element in parsed.indexParams:
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
    """The whole vocabulary operations, the runner, state, backfill and rehearse use, for one database.

    Alembic's ``DefaultImpl`` pattern: this base class declares every word and implements what
    both databases share; a subclass per database overrides what differs. Statement builders
    return actions (``zdm.actions``) that a step runs in order. Differences of *phase* (when a
    constraint can be added without a scan, whether an index build leaves the transaction) are
    flags an operation reads, not branches on the database's name. Adding a third database is
    one more subclass here: nothing outside ``zdm/dialects/`` knows which database it talks to.
    """

    name = "generic"

    #: Index builds and drops run outside a transaction (CREATE INDEX CONCURRENTLY).
    concurrent_indexes = False
    #: CHECKs and foreign keys are added NOT VALID (enforced on new writes, old rows unchecked) and
    #: validated later without blocking writes. Without this, adding one checks every row at once.
    not_valid_constraints = False
    #: Row triggers can set a column before NOT NULL is checked (BEFORE triggers editing NEW), so a
    #: dual column's old NOT NULL column need not allow NULL during the window.
    triggers_fill_before_checks = False
    #: A type change retypes the column in place (a rebuild) instead of swapping in a new column.
    retypes_in_place = False
    #: An INTEGER primary key already holds BIGINT's values (SQLite's rowid is 64-bit): widening it
    #: changes nothing, and declaring it BIGINT would end the rowid alias (automatic ids, AUTOINCREMENT).
    wide_integer_keys = False
    #: add_unique gives a UNIQUE constraint (else a unique index, which enforces the same).
    unique_constraints = False
    #: Raw SQL steps are read for lock risks before they run (zdm.risks knows PostgreSQL's locks).
    judges_raw_sql = False
    #: A simple view takes writes as it is (else triggers make it writable, keyed by the primary key).
    updatable_views = False
    #: A value beyond its column type's limits (longer than VARCHAR(n), out of NUMERIC(p,s)'s or
    #: INTEGER's range) is refused; else it is stored as given (SQLite's type affinity).
    enforces_type_limits = False

    def __init__(self, sa_dialect: SADialect) -> None:
        self.sa = sa_dialect

    def syntax_error(self, sql: str) -> str | None:
        """Why this database's parser cannot read ``sql`` (one or more statements); None when it can.

        The generic dialect has no parser: nothing is refused.
        """
        return None

    # -- engines ------------------------------------------------------------------------------------
    def engine_url(self, url: sa.URL) -> sa.URL:
        """The URL zdm connects with (a driver chosen where the URL names none)."""
        return url

    def connect_args(self) -> dict[str, Any]:
        """Arguments of every connection zdm makes."""
        return {}

    def configure_engine(self, engine: sa.Engine) -> None:
        """Make ``engine``'s transactions what the runner needs (a phase of DDL is one transaction)."""

    def missing_database(self, url: sa.URL) -> str | None:
        """Why ``url`` names no existing database, when connecting would create one (else None)."""
        return None

    def transactional_ddl(self, connection: sa.Connection) -> AbstractContextManager[None]:
        """While entered, every transaction SQLAlchemy begins on ``connection`` (not one of zdm's own,
        another tool's, such as Alembic's) holds its DDL too, so that a rollback undoes it.

        The connection's own statements are unchanged; on leaving, it is as it was. Nothing to do
        where the driver already begins a transaction before DDL (psycopg on PostgreSQL).
        """
        return nullcontext()

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
        """The SQLAlchemy type that creates a column of ``column_type`` here (``zdm.coltypes.to_sa``)."""
        return to_sa(column_type)

    def type_problem(self, column_type: ColumnType, connection: sa.Connection | None) -> str | None:
        """Why this database cannot hold a column of ``column_type`` (one line), or None when it can.

        Without a connection (offline) only what the type's name tells is checked.
        """
        if not column_type.declared:
            return f"zdm copies columns of type {column_type.name} but does not create them; pick another type"
        return None

    def zone_problem(self, zone: str, connection: sa.Connection | None) -> str | None:
        """Why this database cannot read times in the time zone ``zone`` (one line), or None."""
        return None

    def literal(self, value: Any, column_type: ColumnType) -> str:
        """A Python value as a SQL literal of ``column_type`` (for DEFAULT clauses)."""
        if column_type.family is Family.JSON:  # SQLAlchemy renders no JSON literal; both databases read the text
            return self.sql(sa.literal(json.dumps(value), sa.Text()))
        if column_type.family in (Family.ENUM, Family.ARRAY, Family.UUID, Family.INTERVAL, Family.TIMESTAMPTZ):
            # a string literal the column's type reads (SQLAlchemy renders none for these here)
            return self.sql(sa.literal(_literal_text(value), sa.Text()))
        return self.sql(sa.literal(value, self.column_type(column_type)))

    def in_place_retype(self, old: ColumnType, new: ColumnType) -> str | None:
        """Why a column of type ``old`` can take type ``new`` in place, each value staying as it is
        (a phrase ``zdm plan`` shows), or None: the change then takes the dual-column path (a new
        column, converting triggers, a backfill, a swap at complete). Base: never."""
        return None

    def retype(self, table: str, column: str, new: ColumnType) -> list[Action]:
        """Give ``column`` the type ``new`` in place; only for pairs ``in_place_retype`` allows."""
        raise NotImplementedError

    def add_enum_value(self, enum: str, value: str, *, before: str | None = None,
                       after: str | None = None) -> list[Action]:
        """Add the label ``value`` to the enum type ``enum`` (``before`` or ``after`` a label, else
        last), doing nothing when it is there already. Only where the database has enums."""
        raise NotImplementedError

    # -- reading the live schema ---------------------------------------------------------------
    def index_definitions(self, connection: sa.Connection, table: str) -> dict[str, str]:
        """Every index of ``table`` as the CREATE INDEX statement the database keeps for it."""
        raise NotImplementedError

    def model_index_definitions(self, schema: Schema, table: str) -> dict[str, str]:
        """``index_definitions`` as the model knows the table (offline, Alembic --sql): its indexes and
        the indexes behind its UNIQUE constraints, as CREATE INDEX statements."""
        modelled = schema.table(table)
        found = {name: (index.columns, index.unique) for name, index in modelled.indexes.items()}
        found.update({name: (columns, True) for name, columns in modelled.uniques.items()
                      if self.unique_constraints_have_indexes})
        return {name: self.sql(sa.schema.CreateIndex(self._index(name, table, list(columns), unique)))
                for name, (columns, unique) in found.items()}

    def constraint_name(self, table: str, kind: str, columns: list[str]) -> str | None:
        """The name the database gives an unnamed constraint (``kind`` as PostgreSQL's contype) on
        ``columns`` of ``table``; None where it gives none."""
        return None

    #: A UNIQUE constraint's index has a definition ``index_definitions`` reads (PostgreSQL);
    #: SQLite's is an internal autoindex with none.
    unique_constraints_have_indexes = True

    def model_facts(self, schema: Schema, table: str, column: str) -> ColumnFacts:
        """``column_facts`` as the model knows the column (offline, Alembic --sql): its default, NOT
        NULL, and the checks and foreign keys that use it, both ways; nothing the model does not hold
        (grants, storage, triggers, views)."""
        modelled = schema.table(table)
        info = modelled.column(column)
        default = info.default
        sql = default.sql if isinstance(default, SqlDefault) else (
            None if default is None else self.literal(info.type.coerce(default), info.type))
        facts = ColumnFacts(default=sql, not_null=not info.nullable)
        q = self.quote
        for name, condition in modelled.checks.items():
            if column in _condition_columns(condition):
                facts.constraints[name] = ("c", f"CHECK ({condition})")
        for name, columns in modelled.uniques.items():
            if column in columns:
                facts.constraints[name] = ("u", f"UNIQUE ({', '.join(map(q, columns))})")
        for other in schema.tables.values():
            for name, key in other.foreign_keys.items():
                definition = (f"FOREIGN KEY ({', '.join(map(q, key.columns))}) REFERENCES {q(key.ref_table)}"
                              f"({', '.join(map(q, key.ref_columns))})"
                              + (f" ON DELETE {key.on_delete}" if key.on_delete else ""))
                if other.name == table and column in key.columns:
                    facts.constraints[name] = ("f", definition)
                elif other.name != table and key.ref_table == table and column in key.ref_columns:
                    facts.referenced_by.append((other.name, name, definition))
        return facts

    def column_facts(self, connection: sa.Connection, table: str, column: str) -> ColumnFacts:
        """What hangs on ``table.column`` besides its type and rows (see ColumnFacts)."""
        raise NotImplementedError

    def column_collations(self, connection: sa.Connection, table: str) -> dict[str, str]:
        """Collations reflection leaves out of the column types (none on PostgreSQL)."""
        return {}

    def zdm_objects(self, connection: sa.Connection) -> list[str]:
        """Names of zdm-owned triggers, functions, indexes and constraints left in the database."""
        raise NotImplementedError

    def user_types(self, connection: sa.Connection) -> dict[str, ColumnType]:
        """The database's enum types by name, with their labels (none on SQLite)."""
        return {}

    def domain_base(self, connection: sa.Connection, name: str) -> tuple[ColumnType, bool] | None:
        """The base type under the domain ``name`` (through domains over domains), and whether a
        CHECK of one of them may refuse a value of that base type; None when ``name`` is no domain
        (SQLite has none)."""
        return None

    def object_names(self, connection: sa.Connection) -> dict[str, str]:
        """Every name taken in the schema a plan works in, folded by ``fold_name``, each with what
        holds it (``"unique index accounts_email_uq on accounts"``): tables, views, indexes,
        sequences, types, constraints, triggers and functions. A name a plan creates must not be
        among them, whatever kind of object it is (zdm drops by name what it created)."""
        raise NotImplementedError

    def missing_objects(self, connection: sa.Connection, actions: list[Action]) -> list[str]:
        """What ``actions`` (the forward actions of the steps a record says ran, in order) left
        that the live database lacks: an index that is absent or INVALID, a trigger or constraint
        that is gone, a validated constraint that is not. One line each; [] when the record holds.
        A tracked object dropped by hand since shows too."""
        return []

    def disabled_triggers(self, connection: sa.Connection, actions: list[Action]) -> list[DisabledTrigger]:
        """The zdm triggers ``actions`` (the forward actions of the steps a record says ran) left that
        do not fire for the app's sessions now; [] when they all fire. A trigger that is gone is
        ``missing_objects``'s. SQLite has no statement that turns a trigger off: only a connection's
        own ``SQLITE_DBCONFIG_ENABLE_TRIGGER``, which no other connection can see."""
        return []

    def fold_name(self, name: str) -> str:
        """``name`` as the database compares it once quoted by the dialect (SQLite ignores case)."""
        return name

    def statement_progress(self, engine: sa.Engine, sql: str) -> dict[str, Any]:
        """What the database reports about zdm's statement ``sql`` while it runs (zdm.report shows it)."""
        return {}

    #: The locks a session holds can be read back (rehearse traces them); else one writer holds the
    #: whole database's write lock for each write transaction.
    reads_locks = False

    def locks_held(self, connection: sa.Connection) -> list[tuple[str, str]]:
        """(relation, lock mode) of every lock this session holds on user relations now."""
        return []

    def storage_ids(self, connection: sa.Connection, tables: list[str]) -> dict[str, int]:
        """An id of each table's storage, which a rewrite changes (PostgreSQL's relfilenode)."""
        return {}

    def user_objects(self, connection: sa.Connection) -> dict[str, str]:
        """The app's views, triggers and functions (not zdm's): described name -> definition."""
        return {}

    def estimate_rows(self, connection: sa.Connection, table: sa.Table) -> int:
        """Rows in ``table``, for progress: an exact count unless the database keeps an estimate."""
        return int(connection.scalar(sa.select(sa.func.count()).select_from(table)) or 0)

    # -- columns ---------------------------------------------------------------------------------
    def add_column(self, table: str, column: sa.Column[Any]) -> list[Action]:
        from alembic.ddl.base import AddColumn

        return [Statement(self.sql(AddColumn(table, column)))]

    def drop_column(self, table: str, name: str) -> list[Action]:
        from alembic.ddl.base import DropColumn

        return [Statement(self.sql(DropColumn(table, sa.Column(name, sa.Text))))]

    def rename_column(self, table: str, old: str, new: str) -> list[Action]:
        return [Statement(f"ALTER TABLE {self.quote(table)} RENAME COLUMN {self.quote(old)} TO {self.quote(new)}")]

    def alter_columns(self, table: str, changes: dict[str, dict[str, Any]]) -> list[Action]:
        """Set NULL-ability and defaults: ``changes`` maps a column to ``nullable`` (bool) and/or
        ``server_default`` (SQL, or None for no default). Setting NOT NULL on PostgreSQL scans the
        table unless a validated check proves it (see ``refuse_nulls``)."""
        raise NotImplementedError

    def run_rebuild(self, connection: sa.Connection, spec: Rebuild) -> None:
        """Rebuild a table to a new shape (``retypes_in_place`` and other rebuilding dialects)."""
        raise NotImplementedError

    def describe_rebuild(self, spec: Rebuild) -> str:
        raise NotImplementedError

    def check_rebuild(self, connection: sa.Connection, spec: Rebuild) -> None:
        """Raise ValueError, before anything runs, for a rebuild that cannot carry the live table."""
        raise NotImplementedError

    def replace_column(self, table: str, column: str, shadow: str, final_name: str, facts: ColumnFacts, *,
                       default: str | None,
                       not_null: tuple[list[Action], list[Action], list[Action]] | None,
                       constraints: list[tuple[str, str, str]], indexes: list[tuple[str, str, bool]]) -> list[Action]:
        """The brief swap of a type change by a new column: ``column`` goes, ``shadow`` takes its name
        (``final_name``), ``default``, NOT NULL (through the validated rule ``not_null`` gave, when
        given), comment, statistics target, storage, grants and sequence or identity (``facts``); the
        copies of its constraints, ``(table, temporary, final)``, and of its indexes, ``(temporary,
        final, is a UNIQUE constraint)``, take the original names. Dialects that do not
        ``retypes_in_place``."""
        raise NotImplementedError

    def retype_in_place(self, table: str, column: str, type_sql: str, values_from: str, *, nullable: bool,
                        default: str | None, drop: str) -> list[Action]:
        """Give ``column`` the declared type ``type_sql`` and the values of ``values_from``, then drop
        ``drop``, keeping the column's name, place and all it has (``retypes_in_place`` dialects)."""
        raise NotImplementedError

    # -- constraints -------------------------------------------------------------------------------
    def add_check(self, table: str, name: str, condition: str) -> list[Action]:
        """A CHECK; NOT VALID where ``not_valid_constraints``, else checking every row as it is added."""
        raise NotImplementedError

    def add_foreign_key(self, table: str, name: str, columns: list[str], ref_table: str, ref_columns: list[str],
                        on_delete: str | None) -> list[Action]:
        """A FOREIGN KEY; NOT VALID where ``not_valid_constraints``."""
        raise NotImplementedError

    def validate_constraint(self, table: str, name: str) -> list[Action]:
        """Check the rows a NOT VALID constraint has not seen (SHARE UPDATE EXCLUSIVE: writes go on)."""
        return []

    def drop_constraint(self, table: str, name: str) -> list[Action]:
        """Drop a named CHECK, UNIQUE or FOREIGN KEY constraint (nothing when it is not there)."""
        raise NotImplementedError

    def refuse_nulls(self, name: str, table: str, column: str) -> tuple[list[Action], list[Action], list[Action]]:
        """(add, validate, drop) a rule that refuses NULL in ``column`` for new writes, before NOT NULL
        itself is set: PostgreSQL's ``CHECK (column IS NOT NULL) NOT VALID``, which SET NOT NULL then
        trusts instead of scanning (PostgreSQL 12+); SQLite's triggers."""
        raise NotImplementedError

    def add_constraint(self, table: str, name: str, definition: str) -> list[Action]:
        """A constraint given by its definition (``CHECK (...)``, ``FOREIGN KEY ...``), NOT VALID."""
        raise NotImplementedError

    def constraint_for(self, definition: str, column: str, shadow: str, *, referenced: bool = False) -> str:
        """A constraint definition (as ``column_facts`` reads it) naming ``shadow`` for ``column``: in
        its keys and expressions, or, ``referenced``, in the columns another table's foreign key refers to."""
        raise NotImplementedError

    def references(self, definition: str) -> str | None:
        """The table a constraint definition (as ``column_facts`` reads it) refers to: a FOREIGN KEY's
        referenced table; None for another kind of constraint."""
        return None

    def unique_constraint_using_index(self, table: str, name: str, index: str) -> list[Action]:
        """Turn a unique index into a named UNIQUE constraint: no scan, only a brief lock."""
        raise NotImplementedError

    def primary_key_using_index(self, table: str, name: str, index: str, columns: list[str]) -> list[Action]:
        """Make the unique index ``index`` on ``columns`` (NOT NULL) ``table``'s primary key ``name``:
        no scan, only a brief lock where the database can; the index takes the constraint's name."""
        raise NotImplementedError

    def lock_tables(self, tables: list[str], *, exclusive: bool) -> list[Action]:
        """Take the locks a step's statements will take, in this order (parents before children, the
        order apps write in), so that zdm never holds one table while waiting for another that an
        app holds while waiting for the first. ``exclusive``: the lock of a column swap; else the
        lock of adding a foreign key (writes wait, reads go on)."""
        return []

    def widen_sequence(self, sequence: str, column_type: sa.types.TypeEngine[Any]) -> list[Action]:
        """Let ``sequence`` (schema-qualified, as ``column_facts`` reads it) reach the maximum of
        ``column_type``, keeping its current value."""
        return []

    # -- indexes ----------------------------------------------------------------------------------
    def create_index(self, name: str, table: str, columns: list[str], *, unique: bool = False) -> list[Action]:
        """Build an index (CONCURRENTLY where ``concurrent_indexes``)."""
        return [Statement(self.sql(sa.schema.CreateIndex(self._index(name, table, columns, unique))))]

    def drop_index(self, name: str, table: str) -> list[Action]:
        return [Statement(self.sql(sa.schema.DropIndex(self._index(name, table, [], False), if_exists=True)))]

    def retype_problem(self, connection: sa.Connection, table: str, column: str, new: ColumnType) -> str | None:
        """Why the in-place change of ``column`` to ``new`` (``retype``) would fail at complete (an
        index expression or predicate that does not fit the new type), asked before anything runs;
        the database is left as it was. None when it would not, or the dialect cannot tell."""
        return None

    def copy_problem(self, connection: sa.Connection, table: str, shadow: str, shadow_type: sa.types.TypeEngine[Any],
                     indexes: dict[str, str], checks: dict[str, str]) -> str | None:
        """Why one of the copies a change will build on the new column ``shadow`` cannot be built
        there (an operator or function the new type lacks, in an expression or a WHERE clause):
        ``indexes`` and ``checks`` map each original's name to its copy's definition. Asked before
        anything runs, and the database is left as it was; None when every copy builds (or the
        dialect's copies cannot fail on types)."""
        return None

    def index_copy(self, definition: str, column: str, shadow: str, name: str) -> str | None:
        """CREATE INDEX ``name``: the index ``definition`` (as ``index_definitions`` reads it) on ``shadow``
        instead of ``column``; None when the dialect cannot copy it."""
        from zdm.sqltree import statement

        if index_copy_problem(definition, column) is not None:
            return None
        parsed = statement(definition)
        columns = [shadow if element.name == column else element.name for element in parsed.indexParams]
        return self.sql(sa.schema.CreateIndex(self._index(name, parsed.relation.relname, columns,
                                                          bool(parsed.unique))))

    def rename_index(self, old: str, new: str) -> list[Action]:
        return [Statement(f"ALTER INDEX {self.quote(old)} RENAME TO {self.quote(new)}")]

    def _index(self, name: str, table: str, columns: list[str], unique: bool, **options: Any) -> sa.Index:
        holder = sa.Table(table, sa.MetaData(), *[sa.Column(c, sa.Text) for c in columns])
        return sa.Index(name, *[holder.c[c] for c in columns], unique=unique, **options)

    # -- tables -------------------------------------------------------------------------------------
    def rename_table(self, old: str, new: str) -> list[Action]:
        return [Statement(f"ALTER TABLE {self.quote(old)} RENAME TO {self.quote(new)}")]

    def table_alias(self, name: str, old: str, new: str, columns: dict[str, str | None], key: list[str]
                    ) -> tuple[list[Action], list[Action]]:
        """(create, drop) a view under the ``old`` name of table ``new`` that the old app can keep writing
        through; ``columns`` maps each column to its default (SQL or None); ``name`` names zdm's objects."""
        return [Statement(f"CREATE VIEW {self.quote(old)} AS SELECT * FROM {self.quote(new)}")], \
            [Statement(f"DROP VIEW IF EXISTS {self.quote(old)}")]

    # -- triggers ----------------------------------------------------------------------------------
    def sync_triggers(self, sync: Sync) -> tuple[list[Action], list[Action]]:
        """(create, drop) the dual-write triggers of ``sync``."""
        raise NotImplementedError

    def holds(self, column: str, value: str, column_type: ColumnType) -> str:
        """SQL that is true where ``column`` (of ``column_type``) holds ``value``, a literal as ``literal``
        renders it, for a column of any type (a fill's give-back finds the rows still holding it)."""
        return f"{self.quote(column)} = {value}"

    def fill_triggers(self, name: str, table: str, key: tuple[str, ...], column: str, value: str,
                      record: str | None = None) -> tuple[list[Action], list[Action]]:
        """(create, drop) triggers writing ``value`` wherever an app writes NULL into ``column``, and
        adding the row's key to the table ``record`` (see ``fill_record``) when given."""
        raise NotImplementedError

    def fill_record(self, record: str, table: str, key: tuple[str, ...]) -> tuple[list[Action], list[Action], str]:
        """(create, drop, index) a zdm-owned table ``record`` of ``table``'s key columns, where the
        fill triggers and the backfill note each row whose NULL they replaced. ``index`` makes the
        index a rollback walks the keys in (``Backfill.walk``) once nothing notes keys any more
        (built at expand, every noted key would pay for it)."""
        q = self.quote
        keys = ", ".join(q(k) for k in key)
        return statements([f"CREATE TABLE {q(record)} AS SELECT {keys} FROM {q(table)} WHERE 1 = 0"]), \
            statements([f"DROP TABLE IF EXISTS {q(record)}"]), \
            f"CREATE INDEX IF NOT EXISTS {q(object_name('zdm_ix', record))} ON {q(record)} ({keys})"

    def combine(self, actions: list[Action]) -> list[Action]:
        """The same actions, with what the database can do at once done at once (one rebuild)."""
        return actions

    def helper_functions(self, up: Transform, down: Transform | None) -> tuple[list[Action], list[Action]]:
        """(create, drop) functions that the conversions ``up`` and ``down`` call in triggers and backfills."""
        return [], []

    # -- transactions, the lock budget and faults -------------------------------------------------
    def begin(self, lock_timeout_ms: int, *, autocommit: bool = False) -> list[str]:
        """Statements that open every transaction zdm runs (the lock budget); with ``autocommit``,
        for a session whose statements each commit on their own."""
        return []

    def batch_begin(self, timeout_ms: int) -> list[str]:
        """Statements that open a backfill batch's transaction: bound its statements to ``timeout_ms``,
        and mark it as the backfill's, so the dual-write triggers can skip the batch's own writes
        (which set what they would set)."""
        return []

    def user_triggers_quiet(self, connection: sa.Connection, table: str, columns: list[str]) -> tuple[bool, str | None]:
        """Whether the backfill's batches of ``table`` (which set ``columns``) can keep the table's
        own triggers from firing, and, when they cannot, a note naming the triggers that will fire
        on every row the backfill updates (None when there are none). A backfill is not an app
        write: an ``updated_at`` or audit trigger firing for it would change rows and tables the
        plan never names, and no rollback takes that back."""
        return False, None

    def user_triggers_off(self, connection: sa.Connection, table: str) -> AbstractContextManager[None]:
        """Inside one backfill batch's transaction: the table's own triggers do not fire for the
        batch's writes (only called when :meth:`user_triggers_quiet` said they can be kept quiet)."""
        return nullcontext()

    def reclaim(self, engine: sa.Engine, table: str, lock_timeout_ms: int,
                cancel_with: Callable[[Callable[[], None]], None]) -> str | None:
        """Make the space of the rows the backfill's batches left dead reusable by the next batches.
        Runs on a thread of its own: ``cancel_with`` is handed, once the work has a connection, a
        function that cancels it from another thread (a backfill that stops stops it). Returns why it
        was skipped, or None. Nothing to do here: a database without MVCC rewrites rows in place
        (SQLite)."""
        return None

    def is_lock_timeout(self, exc: sa.exc.DBAPIError) -> bool:
        """The statement gave up waiting for a lock (retried with backoff)."""
        return False

    def connection_lost(self, exc: sa.exc.DBAPIError) -> bool:
        """The connection died, or a new one could not be made (retried; the state stays saved)."""
        return bool(exc.connection_invalidated)

    def blockers(self, engine: sa.Engine, tables: list[str]) -> str:
        """Who holds what zdm waited for, in one phrase for an error message."""
        return "another connection holds the lock"

    # -- throttling: how busy the replicas and the app are (zdm.throttle asks before each batch) ----
    #: Whether the database has streaming replicas and sessions to measure (replica lag, active sessions).
    measures_load = False

    def replica_lags(self, connection: sa.Connection) -> dict[str, float | None]:
        """Replay lag of every streaming replica as the primary sees it, in milliseconds, by replica
        name; None where the primary has no figure yet. Raises ThrottleInvalid where there are no replicas."""
        raise ThrottleInvalid(f"{self.name} has no streaming replicas to measure the lag of")

    def replay_lag_ms(self, connection: sa.Connection) -> float:
        """How far behind the primary a replica is, measured on the replica itself (milliseconds).
        Raises ThrottleInvalid when ``connection`` is not a replica."""
        raise ThrottleInvalid(f"{self.name} has no streaming replicas to measure the lag of")

    def active_sessions(self, connection: sa.Connection) -> int:
        """Sessions of other clients running a statement now (the app's load)."""
        raise ThrottleInvalid(f"{self.name} has no sessions to count: --max-active-sessions needs PostgreSQL")

    def probe_ms(self, engine: sa.Engine, sql: str) -> float:
        """Run the team's probe query once on a connection of its own, rows fetched, and return its
        duration (ms). Here in autocommit: a probe must not take a write lock (SQLite's transactions
        begin IMMEDIATE) nor wait behind the runner's own transaction."""
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            started = time.perf_counter()
            connection.execute(sa.text(sql)).fetchall()
            return (time.perf_counter() - started) * 1000
    def watch_blockers(self, engine: sa.Engine, connection: sa.Connection, lock_timeout_ms: int
                       ) -> AbstractContextManager[Callable[[], str | None]]:
        """While ``connection`` works, who blocks it, as the database itself says; the callable
        yielded returns the last sample (None: nobody was seen blocking it)."""
        return nullcontext(lambda: None)

    def runner_lock(self, engine: sa.Engine) -> AbstractContextManager[Callable[[], None]]:
        """One zdm runner per database; yields a check to run before each transaction (see zdm.state)."""
        raise NotImplementedError

    def runner_at_work(self, engine: sa.Engine) -> str | None:
        """Who holds the runner lock now, or None when no runner is at work."""
        raise NotImplementedError


def keeps_every_value(old: ColumnType, new: ColumnType) -> str | None:
    """Why every value of ``old`` is, unchanged, a value of ``new`` (a phrase), or None.

    The widening changes both databases store without touching a value: a longer or no VARCHAR
    limit, VARCHAR <-> TEXT, a NUMERIC of more precision at the same scale (or of none). A
    narrowing change (``VARCHAR(255)`` -> ``VARCHAR(50)``), CHAR (padded) and every other pair are
    None. Source: PostgreSQL's ALTER TABLE notes (binary-coercible types, varchar and numeric
    typmods: https://www.postgresql.org/docs/current/sql-altertable.html#SQL-ALTERTABLE-NOTES).
    """
    if old == new:
        return None
    if old.family is Family.TEXT and new.family is Family.TEXT and not old.name.startswith("CHAR(") \
            and not new.name.startswith("CHAR("):
        if new.length is None:
            return f"{new.name} holds every {old.name} value"
        if old.length is not None and new.length >= old.length:
            return f"a longer limit ({old.length} -> {new.length})"
        return None
    if old.family is Family.NUMERIC and new.family is Family.NUMERIC:
        if new.precision is None:
            return "NUMERIC without a limit holds every value"
        if old.precision is not None and new.precision >= old.precision and (old.scale or 0) == (new.scale or 0):
            return f"more digits at the same scale ({old.precision} -> {new.precision})"
    return None


def _literal_text(value: Any) -> str:
    """A value as the text its type reads back: ``{a,b}`` for a list (PostgreSQL's array literal)."""
    if isinstance(value, list):
        return "{" + ",".join('"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"' for v in value) + "}"
    if isinstance(value, dt.timedelta):
        return f"{value.total_seconds()} seconds"
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


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
    if name == "generic":  # the model's view when no database is in sight (plan files checked alone)
        return Dialect(sa.engine.default.DefaultDialect())
    raise ValueError(f"zdm supports postgresql and sqlite, not {name!r}")


def syntax_error_anywhere(sql: str) -> str | None:
    """Why ``sql`` is SQL neither PostgreSQL's nor SQLite's parser reads (a plan file checked alone,
    its database unknown); None when either reads it. The message is PostgreSQL's."""
    postgres = for_name("postgresql").syntax_error(sql)
    return postgres if postgres is not None and for_name("sqlite").syntax_error(sql) is not None else None


def for_connection(connection: sa.Connection | sa.Engine) -> Dialect:
    return for_name(connection.dialect.name)


def _condition_columns(condition: str) -> set[str]:
    from zdm.sqltree import condition_columns

    return set(condition_columns(condition))
