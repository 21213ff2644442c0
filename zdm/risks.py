"""What raw SQL would do to a busy PostgreSQL table, read before it runs.

The catalogue's operations are lock-safe by construction; a raw ``sql`` step is not. A statement
that rewrites or scans a table under a lock that blocks writes (or reads), or that takes away a
name the old app still uses, breaks zdm's promise however short the team thinks it is. Each
statement is parsed with PostgreSQL's own parser (pglast), so a risk is read from the statement's
structure, not guessed from its text; a statement pglast cannot parse is left to the server.

What a name stands for is the system catalog's business, not the parser's: ``new_token()`` may be a
VOLATILE user function and ``positive_int`` a domain with a CHECK, and either makes ADD COLUMN
rewrite the table. With a live connection, zdm asks PostgreSQL itself (see ``Catalog``); offline
(Alembic --sql) it can only go by the names it knows and what the same step creates.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import pglast
import sqlalchemy as sa
from pglast import ast
from pglast.enums import AlterTableType, ConstrType, ObjectType
from pglast.stream import RawStream

from zdm.db import run_sql
from zdm.sqltree import walk

#: Functions whose default makes ADD COLUMN rewrite the table (a fresh value per row): what zdm
#: goes by offline, when it cannot ask the database.
VOLATILE_DEFAULTS = frozenset({"random", "random_normal", "gen_random_uuid", "gen_random_bytes", "uuidv4",
                               "uuidv7", "uuid_generate_v1", "uuid_generate_v1mc", "uuid_generate_v4",
                               "clock_timestamp", "timeofday", "nextval", "randomblob"})
SERIAL_TYPES = frozenset({"smallserial", "serial", "bigserial", "serial2", "serial4", "serial8"})
#: LOCK TABLE modes from SHARE (5) up conflict with the ROW EXCLUSIVE lock of the app's writes.
SHARE_LOCK = 5
#: DROP statements whose objects are relations, named like a table: (schema,) name.
DROPPED_RELATIONS = frozenset({ObjectType.OBJECT_TABLE, ObjectType.OBJECT_INDEX, ObjectType.OBJECT_MATVIEW})

#: A relation as written: (schema or None, name). Only exact matches are the same relation.
Name = tuple[str | None, str]


def lock_risks(statements: Iterable[str], *, old_app_running: bool,
               connection: sa.Connection | None = None) -> list[str]:
    """One line per risky statement: what it does, and the catalogue operation that does it safely.

    ``old_app_running``: the statements run before contract, while the old app still reads and
    writes the old shape, so renames and drops break it too.
    ``connection``: the live PostgreSQL database, asked what the statements' functions and types
    are; None offline. Whatever it asks is rolled back, and the connection's transaction (or its
    lack of one) is left as it was.
    """
    risks: list[str] = []
    created: set[Name] = set()  # relations these statements surely created: nobody uses them yet
    catalog = Catalog(connection)
    for text in statements:
        try:
            parsed = pglast.parse_sql(text)
        except pglast.parser.ParseError:
            continue
        for raw in parsed:
            statement = raw.stmt
            created |= _creates(statement, created)
            catalog.learn(statement)
            targets = _targets(statement)
            if targets and targets <= created:
                continue
            risks += _statement_risks(statement, _table(statement), old_app_running, catalog)
    return risks


def _creates(statement: ast.Node, created: set[Name]) -> set[Name]:
    """The relations ``statement`` creates for sure (not IF NOT EXISTS, which may find one in use)."""
    if isinstance(statement, ast.CreateStmt) and not statement.if_not_exists:
        return {_name(statement.relation)}
    if isinstance(statement, ast.CreateTableAsStmt) and not statement.if_not_exists:  # CTAS, materialized view
        return {_name(statement.into.rel)}
    if (isinstance(statement, ast.IndexStmt) and statement.idxname and not statement.if_not_exists
            and _name(statement.relation) in created):  # an index lives in its table's schema
        return {(statement.relation.schemaname, statement.idxname)}
    return set()


def _targets(statement: ast.Node) -> set[Name]:
    """The relations ``statement`` acts on, when it names them."""
    relation = getattr(statement, "relation", None)
    if isinstance(relation, ast.RangeVar):
        return {_name(relation)}
    if isinstance(statement, ast.DropStmt) and statement.removeType in DROPPED_RELATIONS:
        return {_dropped(names) for names in statement.objects}
    return set()


def _name(relation: ast.RangeVar) -> Name:
    return relation.schemaname, relation.relname


def _dropped(names: tuple[ast.String, ...]) -> Name:
    return names[-2].sval if len(names) > 1 else None, names[-1].sval


def _shown(name: Name) -> str:
    schema, relname = name
    return relname if schema is None else f"{schema}.{relname}"


def _table(statement: ast.Node) -> str:
    relation = getattr(statement, "relation", None)
    return _shown(_name(relation)) if isinstance(relation, ast.RangeVar) else "?"


def _statement_risks(statement: ast.Node, table: str, old_app_running: bool, catalog: Catalog) -> list[str]:
    if isinstance(statement, ast.AlterTableStmt):
        return [risk for command in statement.cmds or ()
                if (risk := _alter_risk(command, table, old_app_running, catalog))]
    if isinstance(statement, ast.AlterDomainStmt):
        return _alter_domain_risks(statement, catalog)
    if isinstance(statement, ast.IndexStmt) and not statement.concurrent:
        return [f"CREATE INDEX on {table} without CONCURRENTLY blocks writes to {table} while it builds: "
                "use op create_index (or CONCURRENTLY with transactional: false)"]
    if isinstance(statement, ast.DropStmt) and statement.removeType is ObjectType.OBJECT_INDEX:
        return _drop_index_risks(statement)
    if isinstance(statement, ast.RefreshMatViewStmt) and not statement.concurrent:
        return [f"REFRESH MATERIALIZED VIEW {table} without CONCURRENTLY blocks reads of {table} until it is "
                "rebuilt: use REFRESH MATERIALIZED VIEW CONCURRENTLY (it needs a unique index on the view)"]
    if isinstance(statement, ast.VacuumStmt) and option_on(statement.options, "full"):
        return ["VACUUM FULL rewrites its tables under an ACCESS EXCLUSIVE lock"]
    if isinstance(statement, ast.ClusterStmt):
        return [f"CLUSTER rewrites {table} under an ACCESS EXCLUSIVE lock"]
    if isinstance(statement, ast.ReindexStmt) and not option_on(statement.params, "concurrently"):
        return ["REINDEX without CONCURRENTLY blocks writes while it rebuilds: use REINDEX ... CONCURRENTLY "
                "with transactional: false"]
    if isinstance(statement, ast.LockStmt) and statement.mode >= SHARE_LOCK:
        return ["LOCK TABLE in a mode that blocks writes holds the lock until the step commits"]
    if old_app_running and isinstance(statement, ast.RenameStmt) and statement.renameType in (
            ObjectType.OBJECT_COLUMN, ObjectType.OBJECT_TABLE):
        what = "column" if statement.renameType is ObjectType.OBJECT_COLUMN else "table"
        return [f"RENAME {what.upper()} on {table} before contract breaks the old app, which still uses the old "
                f"name: use op rename_{what}"]
    if old_app_running and isinstance(statement, ast.DropStmt) and statement.removeType is ObjectType.OBJECT_TABLE:
        return ["DROP TABLE before contract breaks the old app, which may still use it: use op drop_table"]
    return []


def _drop_index_risks(statement: ast.DropStmt) -> list[str]:
    if statement.concurrent:
        return []
    names = ", ".join(_shown(_dropped(names)) for names in statement.objects)
    return [f"DROP INDEX {names} without CONCURRENTLY waits behind every query on its table for an ACCESS "
            "EXCLUSIVE lock that blocks reads and writes: use op drop_index (or CONCURRENTLY with transactional: "
            "false)"]


def _alter_risk(command: ast.AlterTableCmd, table: str, old_app_running: bool, catalog: Catalog) -> str | None:
    kind, column, definition = command.subtype, command.name, command.def_
    if kind is AlterTableType.AT_AlterColumnType:
        return (f"ALTER COLUMN {column} TYPE can rewrite {table} and its indexes under an ACCESS EXCLUSIVE lock: "
                "use op alter_column")
    if kind is AlterTableType.AT_SetNotNull:
        return (f"SET NOT NULL on {table}.{column} scans the whole table under an ACCESS EXCLUSIVE lock: "
                "use op set_not_null")
    if kind is AlterTableType.AT_AddConstraint and isinstance(definition, ast.Constraint):
        return _constraint_risk(definition, table)
    if kind is AlterTableType.AT_AddColumn and isinstance(definition, ast.ColumnDef):
        return _new_column_risk(definition, table, old_app_running, catalog)
    if kind in (AlterTableType.AT_SetLogged, AlterTableType.AT_SetUnLogged, AlterTableType.AT_SetTableSpace):
        return f"SET LOGGED/UNLOGGED/TABLESPACE rewrites {table} under an ACCESS EXCLUSIVE lock"
    if old_app_running and kind is AlterTableType.AT_DropColumn:
        return (f"DROP COLUMN {column} before contract breaks the old app, which still uses it: "
                "use op drop_column")
    return None


def _constraint_risk(constraint: ast.Constraint, table: str) -> str | None:
    kind = constraint.contype
    if kind in (ConstrType.CONSTR_CHECK, ConstrType.CONSTR_FOREIGN) and not constraint.skip_validation:
        op = "add_check" if kind is ConstrType.CONSTR_CHECK else "add_foreign_key"
        return (f"ADD CONSTRAINT without NOT VALID checks every row of {table} while holding a lock that blocks "
                f"writes: use op {op} (NOT VALID, then VALIDATE)")
    if kind in (ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_PRIMARY) and not constraint.indexname:
        return (f"ADD UNIQUE/PRIMARY KEY builds an index on {table} under an ACCESS EXCLUSIVE lock: use op "
                "add_unique (CREATE UNIQUE INDEX CONCURRENTLY, then USING INDEX)")
    if kind is ConstrType.CONSTR_EXCLUSION:
        return (f"ADD CONSTRAINT ... EXCLUDE builds an index on {table} under an ACCESS EXCLUSIVE lock and has no "
                f"concurrent form: add it only while {table} is small or the app is stopped")
    return None


def _new_column_risk(column: ast.ColumnDef, table: str, old_app_running: bool, catalog: Catalog) -> str | None:
    name, constraints = column.colname, column.constraints or ()
    kinds = {constraint.contype for constraint in constraints}
    type_name = column.typeName.names[-1].sval if column.typeName is not None else ""
    if type_name in SERIAL_TYPES or ConstrType.CONSTR_IDENTITY in kinds:
        what = type_name if type_name in SERIAL_TYPES else "GENERATED ... AS IDENTITY"
        return (f"ADD COLUMN {name} {what} rewrites {table} under an ACCESS EXCLUSIVE lock (a sequence value per "
                "row): add a plain column, then backfill")
    if ConstrType.CONSTR_GENERATED in kinds:
        return f"ADD COLUMN {name} GENERATED ... STORED rewrites {table}"
    rewrite = catalog.rewrite(column)
    if rewrite is not None and rewrite.kind == "domain":
        return (f"ADD COLUMN {name} of domain {rewrite.why} rewrites {table} under an ACCESS EXCLUSIVE lock, "
                f"checking every row against the domain: add it as {rewrite.base}, then use op add_check (NOT "
                "VALID, then VALIDATE) for the domain's rule")
    if rewrite is not None and rewrite.kind == "unknown type":
        return (f"ADD COLUMN {name} of type {rewrite.why}, which does not exist yet, rewrites {table} under an "
                "ACCESS EXCLUSIVE lock if it is a domain with a CHECK or NOT NULL: create the type in the same step, "
                "so that zdm reads its declaration")
    if rewrite is not None:
        return (f"ADD COLUMN {name} with a volatile default ({rewrite.why}) rewrites {table} under an ACCESS "
                "EXCLUSIVE lock: add it without the default, then backfill")
    for constraint in constraints:
        if risk := _inline_constraint_risk(constraint, name, table, ConstrType.CONSTR_DEFAULT in kinds):
            return risk
    if old_app_running and ConstrType.CONSTR_NOTNULL in kinds and not _has_default(constraints):
        return (f"ADD COLUMN {name} NOT NULL without a default before contract breaks the old app, whose inserts "
                "leave it NULL: use op add_column with a default, or add it nullable, then op set_not_null")
    return None


def _inline_constraint_risk(constraint: ast.Constraint, column: str, table: str, default: bool) -> str | None:
    """A constraint written on ADD COLUMN: none of them can be NOT VALID or USING INDEX there.

    PostgreSQL (13+) checks an inline foreign key only when its column gets a default (even NULL):
    without one, every row is NULL and the key is marked valid without a scan.
    """
    kind = constraint.contype
    if kind in (ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_PRIMARY):
        return (f"ADD COLUMN {column} UNIQUE/PRIMARY KEY builds an index on {table} under an ACCESS EXCLUSIVE "
                "lock: add the column, then use op add_unique")
    if kind is ConstrType.CONSTR_CHECK:
        return (f"ADD COLUMN {column} with a CHECK scans every row of {table} under an ACCESS EXCLUSIVE lock: "
                "add the column, then use op add_check (NOT VALID, then VALIDATE)")
    if kind is ConstrType.CONSTR_FOREIGN and default:
        return (f"ADD COLUMN {column} with a default and REFERENCES {_shown(_name(constraint.pktable))} checks every "
                f"row of {table} while it locks both tables against writes: add it without the default (no check "
                "then), or use op add_foreign_key")
    return None


def _has_default(constraints: tuple[ast.Constraint, ...]) -> bool:
    """Whether the column gets a value on the old app's inserts: a DEFAULT other than NULL."""
    return any(constraint.contype is ConstrType.CONSTR_DEFAULT
               and not (isinstance(constraint.raw_expr, ast.A_Const) and constraint.raw_expr.isnull)
               for constraint in constraints)


def _alter_domain_risks(statement: ast.AlterDomainStmt, catalog: Catalog) -> list[str]:
    """ALTER DOMAIN checks every stored value of the domain, under a SHARE lock on each table using it.

    PostgreSQL 15 takes that lock for ADD CONSTRAINT, SET NOT NULL and VALIDATE CONSTRAINT alike
    (measured in tests/test_risks.py): NOT VALID then VALIDATE does not make it safe, as it does
    for a table's CHECK.
    """
    checked = {"C": "ADD CONSTRAINT without NOT VALID", "O": "SET NOT NULL", "V": "VALIDATE CONSTRAINT"}
    subtype = statement.subtype
    if subtype not in checked or (subtype == "C" and getattr(statement.def_, "skip_validation", False)):
        return []
    domain = ".".join(name.sval for name in statement.typeName)
    users = catalog.domain_users(domain)
    if users == []:  # no column holds a value of it: nothing to check
        return []
    where = ("every column of that type" if users is None
             else ", ".join(users[:3]) + (f" (and {len(users) - 3} more)" if len(users) > 3 else ""))
    also = " (adding it NOT VALID only defers that to VALIDATE CONSTRAINT, which takes the same lock)"
    return [f"ALTER DOMAIN {domain} {checked[subtype]} checks every row of {where} under a SHARE lock that blocks "
            f"writes{also if subtype == 'C' else ''}: put the rule in a table CHECK instead, with op add_check"]


@dataclass
class Rewrite:
    """Why ADD COLUMN rewrites the table: a volatile default, a domain with constraints, or a type
    the database does not know yet (it may be such a domain)."""

    kind: Literal["volatile", "domain", "unknown type"]
    #: For the error: "new_token() is VOLATILE", "positive_int (CHECK ((VALUE > 0)))", the unknown type.
    why: str
    #: For a domain, the type to add the column as instead: the domain's underlying base type.
    base: str = ""


#: The scratch table of a probe: a temporary table, in a savepoint that is always rolled back.
PROBE = "pg_temp.zdm_rewrite_probe"
#: The VOLATILE functions a probe column's default calls, directly or through an operator, as the
#: server resolved them: the stored expression tree names each function (and each operator's) by oid.
#: (pg_depend would miss the built-in ones: dependencies on pinned objects are not recorded.)
PROBE_VOLATILE = r"""
SELECT DISTINCT p.oid::regprocedure::text
FROM pg_attrdef ad CROSS JOIN LATERAL regexp_matches(ad.adbin::text, ':(?:op)?funcid (\d+)', 'g') AS m
JOIN pg_proc p ON p.oid = m[1]::oid
WHERE ad.adrelid = 'pg_temp.zdm_rewrite_probe'::regclass AND p.provolatile = 'v'
ORDER BY 1
"""
#: A type's domain rules (its own and those of the domains it is built on) and its base type.
DOMAIN_RULES = """
WITH RECURSIVE chain AS (
    SELECT t.oid, t.typtype, t.typbasetype, t.typtypmod, t.typnotnull, 0 AS depth FROM pg_type t WHERE t.oid = :type
    UNION ALL
    SELECT t.oid, t.typtype, t.typbasetype, t.typtypmod, t.typnotnull, c.depth + 1
    FROM pg_type t JOIN chain c ON t.oid = c.typbasetype WHERE c.typtype = 'd'
)
SELECT format_type(CAST(:type AS oid), NULL),
       (SELECT string_agg(rule, ', ') FROM (
            SELECT 'NOT NULL' AS rule FROM chain WHERE typtype = 'd' AND typnotnull
            UNION ALL
            SELECT pg_get_constraintdef(con.oid) FROM pg_constraint con JOIN chain ON con.contypid = chain.oid
            WHERE con.contype = 'c') rules),
       (SELECT format_type(typbasetype, typtypmod) FROM chain WHERE typtype = 'd' ORDER BY depth DESC LIMIT 1)
"""
#: The columns holding a domain's values: its own and those of domains built on it (ALTER DOMAIN checks both).
DOMAIN_USERS = """
WITH RECURSIVE domains AS (
    SELECT to_regtype(:domain)::oid AS oid
    UNION
    SELECT t.oid FROM pg_type t JOIN domains d ON t.typbasetype = d.oid WHERE t.typtype = 'd'
)
SELECT c.oid::regclass::text || '.' || quote_ident(a.attname)
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
WHERE a.atttypid IN (SELECT oid FROM domains) AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'm')
ORDER BY 1
"""
#: Whether any function of that name (visible, or in the named schema) is VOLATILE; NULL if none exists.
FUNCTION_VOLATILE = """
SELECT bool_or(p.provolatile = 'v') FROM pg_proc p
WHERE p.proname = :name AND CASE WHEN CAST(:schema AS text) IS NULL THEN pg_function_is_visible(p.oid)
                                 ELSE p.pronamespace = to_regnamespace(:schema)::oid END
"""


@dataclass
class Catalog:
    """What the names in a step's statements stand for, asked of PostgreSQL rather than guessed.

    Whether ADD COLUMN rewrites is PostgreSQL's own decision (a volatile default after it inlines
    SQL functions, a domain with a CHECK or NOT NULL, a cast through a volatile function...), so
    zdm asks the server: it adds the same column, type and default to an empty temporary table
    inside a savepoint that is always rolled back, and sees whether the table got a new file. The
    table is empty, so a volatile default is never called (a stable or immutable one is, once, as
    the real statement would). The system catalog then says why (the stored default's functions,
    ``pg_type``, ``pg_constraint``).

    What the same statements create (CREATE FUNCTION, CREATE DOMAIN) the server does not know yet:
    it is judged by its declaration, and a function is VOLATILE unless declared otherwise. When the
    probe cannot run (an autocommit connection, a name an earlier step creates), zdm reads the
    system catalog by name, and takes a name it does not find there for the worst; offline it goes
    by the names it knows.
    """

    connection: sa.Connection | None
    #: Functions the statements so far create, by name: their declared volatility.
    functions: dict[str, str] = field(default_factory=dict)
    #: Domains the statements so far create, by name: (their rules, empty when none; their base type).
    domains: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: Other types they create (enums, composites, ranges): not domains, so no check of the rows.
    types: set[str] = field(default_factory=set)

    def learn(self, statement: ast.Node) -> None:
        if isinstance(statement, ast.CreateFunctionStmt) and not statement.is_procedure:
            declared = [option.arg.sval for option in statement.options or () if option.defname == "volatility"]
            self.functions[statement.funcname[-1].sval] = (declared[-1] if declared else "volatile").upper()
        if isinstance(statement, ast.CreateDomainStmt):
            rules = [f"CHECK ({_deparse(c.raw_expr)})" if c.contype is ConstrType.CONSTR_CHECK else "NOT NULL"
                     for c in statement.constraints or ()
                     if c.contype in (ConstrType.CONSTR_CHECK, ConstrType.CONSTR_NOTNULL)]
            inherited, base = self.domains.get(statement.typeName.names[-1].sval, ("", _deparse(statement.typeName)))
            self.domains[statement.domainname[-1].sval] = (", ".join(filter(None, [*rules, inherited])), base)
        if isinstance(statement, (ast.CreateEnumStmt, ast.CreateRangeStmt)):
            self.types.add(statement.typeName[-1].sval)
        if isinstance(statement, ast.CompositeTypeStmt):
            self.types.add(statement.typevar.relname)
        if isinstance(statement, ast.DefineStmt) and statement.kind is ObjectType.OBJECT_TYPE:
            self.types.add(statement.defnames[-1].sval)

    # -- ADD COLUMN ---------------------------------------------------------------------------
    def rewrite(self, column: ast.ColumnDef) -> Rewrite | None:
        """Why adding ``column`` rewrites its table; None when PostgreSQL keeps the table as it is."""
        if column.typeName is None:
            return None
        default = next((c.raw_expr for c in column.constraints or () if c.contype is ConstrType.CONSTR_DEFAULT),
                       None)
        calls = [node for node in walk(default) if isinstance(node, ast.FuncCall)]
        type_name = column.typeName.names[-1].sval
        declared_type = None if column.typeName.arrayBounds else self.domains.get(type_name)
        if declared_type is not None and declared_type[0]:
            return Rewrite("domain", f"{_deparse(column.typeName)} ({declared_type[0]}, created by this step)",
                           declared_type[1])
        created_type = declared_type is not None or type_name in self.types
        if not created_type and not any(call.funcname[-1].sval in self.functions for call in calls):
            probed = self._probe(column, default)
            if probed is not None:
                return probed or None
        for call in calls:
            if why := self.volatile_call(call):
                return Rewrite("volatile", why)
        return None if created_type else self._domain_by_name(column.typeName)

    def _probe(self, column: ast.ColumnDef, default: ast.Node | None) -> Rewrite | Literal[False] | None:
        """PostgreSQL's own answer: a Rewrite, False for none, None when it cannot be asked."""
        definition = f"probe {_deparse(column.typeName)}"
        if default is not None:
            definition += f" DEFAULT {_deparse(default)}"
        filenode = f"SELECT pg_relation_filenode('{PROBE}')"
        with self._scratch(probe=True) as connection:
            if connection is None:
                return None
            try:
                connection.exec_driver_sql("SET LOCAL statement_timeout = '5s'")
                connection.exec_driver_sql(f"CREATE TEMPORARY TABLE {PROBE} ()")
                before = connection.exec_driver_sql(filenode).scalar()
                run_sql(connection, f"ALTER TABLE {PROBE} ADD COLUMN {definition}")
                if connection.exec_driver_sql(filenode).scalar() == before:
                    return False
                type_oid = connection.exec_driver_sql(
                    f"SELECT atttypid FROM pg_attribute WHERE attrelid = '{PROBE}'::regclass AND attname = 'probe'"
                ).scalar()
                if domain := self._domain(connection, type_oid):
                    return domain
                volatile = connection.exec_driver_sql(PROBE_VOLATILE).scalars().all()
            except sa.exc.DBAPIError:  # a name the server does not know yet, a default that fails...
                return None
        why = " and ".join(f"{name} is VOLATILE" for name in volatile) or "PostgreSQL reports a rewrite for it"
        return Rewrite("volatile", why)

    def volatile_call(self, call: ast.FuncCall) -> str | None:
        """Why one call in a default is volatile (its declaration, pg_proc, or the name list); None if not."""
        *schema, name = (part.sval for part in call.funcname)
        if name in self.functions:
            declared = self.functions[name]
            return f"this step creates {name}() {declared}" if declared == "VOLATILE" else None
        shown = ".".join([*schema, name])
        with self._scratch() as connection:
            if connection is not None:
                try:
                    found = connection.execute(sa.text(FUNCTION_VOLATILE),
                                               {"name": name, "schema": schema[-1] if schema else None}).scalar()
                except sa.exc.DBAPIError:
                    connection = None
        if connection is None:
            return f"{shown}() is VOLATILE" if name in VOLATILE_DEFAULTS else None
        if found is None:
            return (f"{shown}() does not exist yet, and a function is VOLATILE unless declared otherwise; create "
                    "it in the same step to have its declaration read")
        return f"{shown}() is VOLATILE" if found else None

    def _domain_by_name(self, type_name: ast.TypeName) -> Rewrite | None:
        shown = _deparse(type_name)
        with self._scratch() as connection:
            if connection is None:
                return None
            try:
                type_oid = connection.execute(sa.text("SELECT to_regtype(:name)::oid"), {"name": shown}).scalar()
                if type_oid is not None:
                    return self._domain(connection, type_oid)
            except sa.exc.DBAPIError:
                return None
        return Rewrite("unknown type", shown)

    @staticmethod
    def _domain(connection: sa.Connection, type_oid: int) -> Rewrite | None:
        shown, rules, base = connection.execute(sa.text(DOMAIN_RULES), {"type": type_oid}).one()
        return Rewrite("domain", f"{shown} ({rules})", base) if rules else None

    # -- ALTER DOMAIN --------------------------------------------------------------------------
    def domain_users(self, domain: str) -> list[str] | None:
        """The columns whose rows ALTER DOMAIN checks: [] for a domain these statements create, None if unknown."""
        if domain.split(".")[-1] in self.domains:
            return []
        with self._scratch() as connection:
            if connection is None:
                return None
            try:
                if connection.execute(sa.text("SELECT to_regtype(:domain)"), {"domain": domain}).scalar() is None:
                    return None
                return list(connection.execute(sa.text(DOMAIN_USERS), {"domain": domain}).scalars())
            except sa.exc.DBAPIError:
                return None

    @contextmanager
    def _scratch(self, *, probe: bool = False) -> Iterator[sa.Connection | None]:
        """The connection inside a savepoint that is always rolled back; None offline.

        The caller's transaction goes on as before (an error inside stays inside), and a connection
        that was not in one is left without one. An autocommit connection has no savepoint to roll
        back: it serves the catalog reads as it is, and no probe.
        """
        connection = self.connection
        if connection is None or connection.dialect.name != "postgresql":
            yield None
            return
        if getattr(connection.connection.dbapi_connection, "autocommit", False):
            yield None if probe else connection
            return
        outer = None if connection.in_transaction() else connection.begin()
        savepoint = connection.begin_nested()
        try:
            yield connection
        finally:
            savepoint.rollback()
            if outer is not None:
                outer.rollback()


def _deparse(node: ast.Node) -> str:
    """SQL for a parsed node: what the server is asked is rebuilt from the parse, so it is one expression."""
    return str(RawStream()(node))


def volatile(expression: str, connection: sa.Connection | None = None) -> bool:
    """Whether a default, as the database reports it, gives a new value on every call.

    With ``connection``, each function it calls is looked up in pg_proc; without, only the
    names zdm knows count.
    """
    try:
        parsed = pglast.parse_sql(f"SELECT {expression}")
    except pglast.parser.ParseError:
        return False
    catalog = Catalog(connection)
    return any(isinstance(node, ast.FuncCall) and catalog.volatile_call(node) for node in walk(parsed[0].stmt))


def option_on(options: tuple[ast.DefElem, ...] | None, name: str) -> bool:
    """Whether option ``name`` is on: bare (``FULL``), or with a value PostgreSQL reads as true."""
    return any(option.defname == name and not _off(option.arg) for option in options or ())


def _off(value: ast.Node | None) -> bool:
    # defGetBoolean: 0/1, or true/false/on/off in any case; anything else is the server's error.
    if isinstance(value, ast.Integer):
        return value.ival == 0
    return isinstance(value, ast.String) and value.sval.lower() in ("false", "off")
