"""What raw SQL would do to a busy PostgreSQL table, read before it runs.

The catalogue's operations are lock-safe by construction; a raw ``sql`` step is not. A statement
that rewrites or scans a table under a lock that blocks writes (or reads), or that takes away a
name the old app still uses, breaks zdm's promise however short the team thinks it is. Each
statement is parsed with PostgreSQL's own parser (pglast), so a risk is read from the statement's
structure, not guessed from its text; a statement pglast cannot parse is left to the server.
"""

from __future__ import annotations

from collections.abc import Iterable

import pglast
from pglast import ast
from pglast.enums import AlterTableType, ConstrType, ObjectType

#: Functions whose default makes ADD COLUMN rewrite the table (a fresh value per row).
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


def lock_risks(statements: Iterable[str], *, old_app_running: bool) -> list[str]:
    """One line per risky statement: what it does, and the catalogue operation that does it safely.

    ``old_app_running``: the statements run before contract, while the old app still reads and
    writes the old shape, so renames and drops break it too.
    """
    risks: list[str] = []
    created: set[Name] = set()  # relations these statements surely created: nobody uses them yet
    for text in statements:
        try:
            parsed = pglast.parse_sql(text)
        except pglast.parser.ParseError:
            continue
        for raw in parsed:
            statement = raw.stmt
            created |= _creates(statement, created)
            targets = _targets(statement)
            if targets and targets <= created:
                continue
            risks += _statement_risks(statement, _table(statement), old_app_running)
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


def _statement_risks(statement: ast.Node, table: str, old_app_running: bool) -> list[str]:
    if isinstance(statement, ast.AlterTableStmt):
        return [risk for command in statement.cmds or () if (risk := _alter_risk(command, table, old_app_running))]
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


def _alter_risk(command: ast.AlterTableCmd, table: str, old_app_running: bool) -> str | None:
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
        return _new_column_risk(definition, table, old_app_running)
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


def _new_column_risk(column: ast.ColumnDef, table: str, old_app_running: bool) -> str | None:
    name, constraints = column.colname, column.constraints or ()
    kinds = {constraint.contype for constraint in constraints}
    type_name = column.typeName.names[-1].sval if column.typeName is not None else ""
    if type_name in SERIAL_TYPES or ConstrType.CONSTR_IDENTITY in kinds:
        what = type_name if type_name in SERIAL_TYPES else "GENERATED ... AS IDENTITY"
        return (f"ADD COLUMN {name} {what} rewrites {table} under an ACCESS EXCLUSIVE lock (a sequence value per "
                "row): add a plain column, then backfill")
    if ConstrType.CONSTR_GENERATED in kinds:
        return f"ADD COLUMN {name} GENERATED ... STORED rewrites {table}"
    if any(constraint.contype is ConstrType.CONSTR_DEFAULT and _calls(constraint.raw_expr, VOLATILE_DEFAULTS)
           for constraint in constraints):
        return (f"ADD COLUMN {name} with a volatile default rewrites {table} under an ACCESS EXCLUSIVE lock: "
                "add it without the default, then backfill")
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


def volatile(expression: str) -> bool:
    """Whether a default, as the database reports it, gives a new value on every call."""
    try:
        parsed = pglast.parse_sql(f"SELECT {expression}")
    except pglast.parser.ParseError:
        return False
    return _calls(parsed[0].stmt, VOLATILE_DEFAULTS)


def _calls(expression: ast.Node | None, names: frozenset[str]) -> bool:
    """Whether ``expression`` calls one of ``names`` anywhere inside it."""
    return any(isinstance(node, ast.FuncCall) and node.funcname[-1].sval in names for node in walk(expression))


def walk(node: object) -> Iterable[ast.Node]:
    """Every node of a parsed statement, ``node`` first."""
    if isinstance(node, ast.Node):
        yield node
        for name in node:
            yield from walk(getattr(node, name))
    elif isinstance(node, tuple):
        for item in node:
            yield from walk(item)


def option_on(options: tuple[ast.DefElem, ...] | None, name: str) -> bool:
    """Whether option ``name`` is on: bare (``FULL``), or with a value PostgreSQL reads as true."""
    return any(option.defname == name and not _off(option.arg) for option in options or ())


def _off(value: ast.Node | None) -> bool:
    # defGetBoolean: 0/1, or true/false/on/off in any case; anything else is the server's error.
    if isinstance(value, ast.Integer):
        return value.ival == 0
    return isinstance(value, ast.String) and value.sval.lower() in ("false", "off")
