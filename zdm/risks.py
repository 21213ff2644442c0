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
VOLATILE_DEFAULTS = frozenset({"random", "gen_random_uuid", "uuid_generate_v1", "uuid_generate_v4",
                               "clock_timestamp", "timeofday", "nextval"})
SERIAL_TYPES = frozenset({"smallserial", "serial", "bigserial", "serial2", "serial4", "serial8"})
#: LOCK TABLE modes from SHARE (5) up conflict with the ROW EXCLUSIVE lock of the app's writes.
SHARE_LOCK = 5


def lock_risks(statements: Iterable[str], *, old_app_running: bool) -> list[str]:
    """One line per risky statement: what it does, and the catalogue operation that does it safely.

    ``old_app_running``: the statements run before contract, while the old app still reads and
    writes the old shape, so renames and drops break it too.
    """
    risks: list[str] = []
    created: set[str] = set()  # tables created by these statements: nobody uses them yet
    for text in statements:
        try:
            parsed = pglast.parse_sql(text)
        except pglast.parser.ParseError:
            continue
        for raw in parsed:
            statement = raw.stmt
            if isinstance(statement, ast.CreateStmt):
                created.add(statement.relation.relname)
            table = _table(statement)
            if table is not None and table in created:
                continue
            risks += _statement_risks(statement, table or "?", old_app_running)
    return risks


def _table(statement: ast.Node) -> str | None:
    relation = getattr(statement, "relation", None)
    return relation.relname if isinstance(relation, ast.RangeVar) else None


def _statement_risks(statement: ast.Node, table: str, old_app_running: bool) -> list[str]:
    if isinstance(statement, ast.AlterTableStmt):
        return [risk for command in statement.cmds or () if (risk := _alter_risk(command, table, old_app_running))]
    if isinstance(statement, ast.IndexStmt) and not statement.concurrent:
        return [f"CREATE INDEX on {table} without CONCURRENTLY blocks writes to {table} while it builds: "
                "use op create_index (or CONCURRENTLY with transactional: false)"]
    if isinstance(statement, ast.VacuumStmt) and _option(statement.options, "full"):
        return ["VACUUM FULL rewrites its tables under an ACCESS EXCLUSIVE lock"]
    if isinstance(statement, ast.ClusterStmt):
        return [f"CLUSTER rewrites {table} under an ACCESS EXCLUSIVE lock"]
    if isinstance(statement, ast.ReindexStmt) and not _option(statement.params, "concurrently"):
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
        return _new_column_risk(definition, table)
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
    return None


def _new_column_risk(column: ast.ColumnDef, table: str) -> str | None:
    type_name = column.typeName.names[-1].sval if column.typeName is not None else ""
    if type_name in SERIAL_TYPES:
        return f"ADD COLUMN {column.colname} {type_name} rewrites {table} (a sequence value per row)"
    for constraint in column.constraints or ():
        if constraint.contype is ConstrType.CONSTR_GENERATED:
            return f"ADD COLUMN {column.colname} GENERATED ... STORED rewrites {table}"
        if constraint.contype is ConstrType.CONSTR_DEFAULT and _calls(constraint.raw_expr, VOLATILE_DEFAULTS):
            return (f"ADD COLUMN {column.colname} with a volatile default rewrites {table} under an ACCESS "
                    "EXCLUSIVE lock: add it without the default, then backfill")
    return None


def _calls(expression: ast.Node | None, names: frozenset[str]) -> bool:
    """Whether ``expression`` calls one of ``names`` anywhere inside it."""
    return any(isinstance(node, ast.FuncCall) and node.funcname[-1].sval in names for node in _walk(expression))


def _walk(node: object) -> Iterable[ast.Node]:
    if isinstance(node, ast.Node):
        yield node
        for name in node:
            yield from _walk(getattr(node, name))
    elif isinstance(node, tuple):
        for item in node:
            yield from _walk(item)


def _option(options: tuple[ast.DefElem, ...] | None, name: str) -> bool:
    return any(option.defname == name for option in options or ())
