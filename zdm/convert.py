"""`zdm lint --fix`: the unsafe ops of existing migrations rewritten into zdm's safe forms.

- **Alembic revisions**: the revision's ``upgrade()`` runs against a recording ``Operations``
  (nothing is emitted), so each op is known as Alembic records it (an ``AlterColumnOp`` with its
  ``modify_type``, a ``CreateIndexOp`` with its columns...), with the line of the call. An op that
  has an ``op.zdm_*`` equivalent (the same conversions autogenerate makes,
  ``zdm.alembic.autogenerate``) has its statement replaced in the source, and ``downgrade()``
  starts with ``op.zdm_rollback()`` instead of the ops that undid it. The file is edited by
  statement, through Python's own parser: its other code, comments and layout stay as written.
  zdm runs one plan per table at a time, so only the first op of each table is converted (a table
  a zdm op of the revision already changes has none); ops on tables the revision creates stay.
- **.sql files**: each statement, as PostgreSQL's parser reads it, becomes a catalogue operation
  of a plan file written next to it (``<name>.yaml``) where one does the same (CREATE INDEX,
  ADD CONSTRAINT UNIQUE / FOREIGN KEY / CHECK, ALTER COLUMN TYPE / SET NOT NULL, ADD COLUMN,
  RENAME COLUMN, DROP COLUMN, DROP INDEX), else an ``sql`` step holding the statement as written.

What is left unsafe (``zdm lint`` still finds it) is marked with a ``zdm: not converted`` comment
saying why; a later ``--fix`` does not mark it twice.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import json
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pglast
import yaml
from pglast import ast as pg
from pglast import enums

from zdm.lint import Config, LintError, lint

#: The comment that marks what --fix left in place.
MARK = "zdm: not converted"


@dataclass
class Converted:
    """What --fix did to one file: the file written, how many ops it converted, how many it marked."""

    source: Path
    written: Path
    converted: int = 0
    marked: int = 0
    notes: list[str] = field(default_factory=list)


def fix(path: Path, config: Config, dialect: str = "postgresql") -> Converted:
    """Convert one file (see the module doc); raises LintError for a file it cannot read."""
    if path.suffix == ".py":
        return _fix_revision(path, config, dialect)
    if path.suffix == ".sql":
        return _fix_sql(path, config)
    return Converted(path, path)  # plan files: catalogue operations are zdm's already


# -- Alembic revisions ----------------------------------------------------------------------------
@dataclass
class _Recorded:
    op: Any
    line: int


def _record(path: Path, function: str) -> list[_Recorded]:
    """The ops ``function`` of the revision invokes, each with the revision's line that invoked it."""
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    spec = importlib.util.spec_from_file_location(f"zdm_fix_revision_{abs(hash(str(path)))}", path)
    if spec is None or spec.loader is None:
        raise LintError(f"{path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    context = MigrationContext.configure(dialect_name="postgresql",
                                         opts={"as_sql": True, "output_buffer": io.StringIO()})
    operations = Operations(context)
    recorded: list[_Recorded] = []
    where = str(path.resolve())

    def recording(operation: Any) -> Any:
        caller = next((frame for frame in reversed(traceback.extract_stack()) if frame.filename == where), None)
        recorded.append(_Recorded(operation, caller.lineno or 0 if caller is not None else 0))
        return None

    operations.invoke = recording  # type: ignore[method-assign]
    operations._install_proxy()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # what the revision prints is no part of the output
            spec.loader.exec_module(module)
            run = getattr(module, function, None)
            if callable(run):
                run()
    except Exception as exc:
        raise LintError(f"{path}: {function}() failed in offline mode: {type(exc).__name__}: {exc}") from exc
    finally:
        operations._remove_proxy()
        sys.modules.pop(spec.name, None)
    return recorded


def _function(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    return next((node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name), None)


def _lines_of(statement: ast.stmt) -> range:
    return range(statement.lineno, (statement.end_lineno or statement.lineno) + 1)


def _statement_at(function: ast.FunctionDef, line: int, *, calls_only: bool = True) -> ast.stmt | None:
    """The top-level statement of ``function`` holding ``line``; ``calls_only``: only when it is a plain
    ``op.<name>(...)`` call alone on its lines, which --fix may replace line for line (a statement
    sharing a line with another, ``op.a(); op.b()``, is never cut out with it)."""
    for statement in function.body:
        if statement.lineno <= line <= (statement.end_lineno or statement.lineno):
            if not calls_only:
                return statement
            call = statement.value if isinstance(statement, ast.Expr) else None
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) \
                    and not _shares_a_line(function, statement):
                return statement
            return None
    return None


def _shares_a_line(function: ast.FunctionDef, statement: ast.stmt) -> bool:
    return any(other is not statement and set(_lines_of(other)) & set(_lines_of(statement))
               for other in function.body)


def _fix_revision(path: Path, config: Config, dialect: str) -> Converted:
    from alembic.operations import ops

    from zdm.alembic.autogenerate import ZdmOp, _render_zdm
    from zdm.alembic.offline import Hints
    from zdm.alembic.operations import ZdmOperation

    source = path.read_text()
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise LintError(f"{path}: not Python: {exc}") from exc
    upgrade, downgrade = _function(tree, "upgrade"), _function(tree, "downgrade")
    if upgrade is None:
        raise LintError(f"{path}: not an Alembic revision (no upgrade())")
    result = Converted(path, path)
    problems, _ = lint([str(path)], config, None, dialect)
    problems = [problem for problem in problems if problem.suppressed is None]
    unsafe = {problem.line for problem in problems if problem.function != "downgrade"}
    lines = source.splitlines(keepends=True)
    replacements: dict[int, tuple[int, str]] = {}  # first line -> (last line, new text)
    created: set[str] = set()
    changed: dict[str, str] = {}  # table -> the zdm op of the revision that changes it
    blocked: dict[int, str] = {}  # line -> why an op with a zdm form was left
    converted: set[int] = set()  # first lines of the statements replaced
    undone: set[tuple[str, str] | None] = set()
    for item in _record(path, "upgrade"):
        op = item.op
        if isinstance(op, ops.CreateTableOp):
            created.add(op.table_name)
            continue
        if isinstance(op, ZdmOperation):
            changed.setdefault(op.operation.table, f"op.zdm_{op.operation.op}")
            continue
        if item.line not in unsafe or (form := _form(op)) is None:
            continue
        operation, rest, key = form
        if operation.table in created:
            continue
        statement = _statement_at(upgrade, item.line)
        if statement is None:
            top = _statement_at(upgrade, item.line, calls_only=False)
            if top is not None and _shares_a_line(upgrade, top):
                blocked[item.line] = ("--fix replaces whole lines, and this one holds other statements too: put "
                                      "each op call on a line of its own and run --fix again")
            else:
                blocked[item.line] = (f"op.zdm_{operation.op} does this, but --fix edits only an op call that is "
                                      "a statement of upgrade() of its own (not in a loop, an if or a with "
                                      "block): write it by hand")
            continue
        if operation.table in changed:
            blocked[item.line] = (f"{changed[operation.table]} changes {operation.table} in this revision already "
                                  "(one zdm plan per table): move this to the next revision")
            continue
        indent = lines[statement.lineno - 1][: statement.col_offset]
        text = indent + _render_zdm(None, ZdmOp(operation, Hints())) + "\n"  # type: ignore[arg-type]
        if rest is not None:
            text += indent + _render_alembic(rest) + "\n"
        replacements[statement.lineno] = (statement.end_lineno or statement.lineno, text)
        converted.add(statement.lineno)
        changed[operation.table] = f"op.zdm_{operation.op}"
        undone.add(key)
        result.converted += 1
    removed: set[int] = set()
    if result.converted and downgrade is not None:
        removed = _roll_back_in_downgrade(path, downgrade, lines, replacements, undone)
    for problem in problems:
        function = downgrade if problem.function == "downgrade" else upgrade
        statement = _statement_at(function, problem.line, calls_only=False) if function is not None else None
        first = statement.lineno if statement is not None else problem.line
        if first in converted or first in removed or (first >= 2 and MARK in lines[first - 2]):
            continue
        if problem.function == "downgrade" and result.converted and first not in removed:
            why = "no zdm form in a downgrade(): it runs while the new app does; op.zdm_rollback() undoes zdm's"
        else:
            why = blocked.get(problem.line, "no zdm operation does this; see `zdm lint --rules`")
        last, text = replacements.get(first, (statement.end_lineno or first if statement else first,
                                              "".join(lines[first - 1:(statement.end_lineno or first)
                                                            if statement else first])))
        mark = f"{lines[first - 1][: len(lines[first - 1]) - len(lines[first - 1].lstrip())]}# {MARK} " \
               f"[{problem.rule}]: {why}\n"
        if mark not in text:
            replacements[first] = (last, mark + text)
            result.marked += 1
    path.write_text(_apply(lines, replacements))
    return result


def _form(op: Any) -> tuple[Any, Any, tuple[str, str] | None] | None:
    """(the zdm operation, what is left of ``op``, the key its downgrade op has) for an op with a zdm
    form: autogenerate's conversions, and those of ops autogenerate does not write."""
    from alembic.operations import ops

    from zdm.alembic.autogenerate import _zdm_form
    from zdm.planfile import PlanFile

    def operation(**fields: Any) -> Any:
        try:
            return PlanFile.model_validate({"id": "fix", "operations": [fields]}).operations[0]
        except ValueError:
            return None

    found: Any = None
    if isinstance(op, ops.AddColumnOp):
        return _add_column_form(op)
    if isinstance(op, ops.AlterColumnOp) and op.modify_name and op.modify_type is None \
            and op.modify_nullable is None and op.modify_server_default is False:
        found = operation(op="rename_column", table=op.table_name, column=op.column_name, new_name=op.modify_name)
        return None if found is None else (found, None, ("column", f"{op.table_name}.{op.modify_name}"))
    if isinstance(op, ops.DropColumnOp):
        found = operation(op="drop_column", table=op.table_name, column=op.column_name)
    elif isinstance(op, ops.RenameTableOp):
        found = operation(op="rename_table", table=op.table_name, new_name=op.new_table_name)
    elif isinstance(op, ops.DropTableOp):
        found = operation(op="drop_table", table=op.table_name)
    elif isinstance(op, ops.ExecuteSQLOp) and isinstance(op.sqltext, str):
        try:
            parsed = pglast.parse_sql(op.sqltext)
        except pglast.parser.ParseError:
            return None
        if len(parsed) == 1 and (fields := _operation(parsed[0].stmt)) is not None:
            found = operation(**fields)
    elif (table := _table_of(op)) is not None:
        return _zdm_form(table, op)
    return None if found is None else (found, None, _operation_key(found))


def _operation_key(operation: Any) -> tuple[str, str] | None:
    """The key (zdm.alembic.autogenerate._key) of the op that undoes ``operation`` in a downgrade."""
    name = getattr(operation, "name", None)
    if operation.op == "create_index":
        return "index", str(name)
    if operation.op in ("add_check", "add_unique", "add_foreign_key"):
        return "constraint", str(name)
    if operation.op == "rename_column":
        return "column", f"{operation.table}.{operation.new_name}"
    if operation.op == "rename_table":
        return "table", str(operation.new_name)
    if hasattr(operation, "column"):
        return "column", f"{operation.table}.{operation.column}"
    return "table", str(operation.table)


def _add_column_form(op: Any) -> tuple[Any, None, tuple[str, str]] | None:
    """``op.add_column`` of a NOT NULL column with a constant server default: zdm's add_column (a
    volatile default, or NOT NULL with none, has no zdm form: it stays, marked)."""
    from zdm import introspect
    from zdm.alembic.offline import _default_value
    from zdm.planfile import PlanFile

    column = op.column
    column_type = introspect.column_type(column.type)
    if not column_type.declared or column.primary_key or column.foreign_keys or column.computed is not None \
            or column.identity is not None:
        return None
    fields: dict[str, Any] = {"op": "add_column", "table": op.table_name, "column": column.name,
                              "type": column_type.value, "nullable": bool(column.nullable)}
    if column.server_default is not None:
        default = _default_value(column.server_default, column_type)
        if default is None:
            return None
        fields["default"] = default
    try:
        operation = PlanFile.model_validate({"id": "fix", "operations": [fields]}).operations[0]
    except ValueError:
        return None
    return operation, None, ("column", f"{op.table_name}.{column.name}")


def _undoes(table: str, op: Any) -> tuple[str, str] | None:
    """What a downgrade op undoes, as the key of the upgrade op (zdm.alembic.autogenerate._key)."""
    from alembic.operations import ops

    from zdm.alembic.autogenerate import _key

    if isinstance(op, ops.DropColumnOp):
        return "column", f"{table}.{op.column_name}"
    if isinstance(op, ops.AddColumnOp):
        return "column", f"{table}.{op.column.name}"
    if isinstance(op, ops.RenameTableOp):
        return "table", str(op.table_name)
    if isinstance(op, ops.CreateTableOp):
        return "table", str(op.table_name)
    if isinstance(op, ops.ExecuteSQLOp) and isinstance(op.sqltext, str):
        try:
            parsed = pglast.parse_sql(op.sqltext)
        except pglast.parser.ParseError:
            return None
        node: Any = parsed[0].stmt if len(parsed) == 1 else None
        if type(node).__name__ == "AlterTableStmt" and len(node.cmds or ()) == 1 \
                and node.cmds[0].subtype == enums.AlterTableType.AT_DropConstraint:
            return "constraint", str(node.cmds[0].name)
        if type(node).__name__ == "DropStmt" and node.removeType == enums.ObjectType.OBJECT_INDEX \
                and len(node.objects) == 1:
            return "index", _name(node.objects[0][-1])
        return None
    return _key(table, op)


def _table_of(op: Any) -> str | None:
    from alembic.operations import ops

    if isinstance(op, (ops.AlterColumnOp, ops.CreateIndexOp, ops.AddColumnOp)):
        return str(op.table_name)
    if isinstance(op, ops.CreateForeignKeyOp):
        return str(op.source_table)
    if isinstance(op, (ops.CreateUniqueConstraintOp, ops.CreateCheckConstraintOp)):
        return str(op.table_name)
    return None


def _render_alembic(op: Any) -> str:
    from alembic.autogenerate import render_op_text
    from alembic.autogenerate.api import AutogenContext
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(dialect_name="postgresql", opts={
        "sqlalchemy_module_prefix": "sa.", "alembic_module_prefix": "op.", "user_module_prefix": None})
    return render_op_text(AutogenContext(context), op)


def _roll_back_in_downgrade(path: Path, downgrade: ast.FunctionDef, lines: list[str],
                            replacements: dict[int, tuple[int, str]], undone: set[Any]) -> set[int]:
    """``op.zdm_rollback()`` first in downgrade(); the ops that undid a converted op go (it undoes them)."""

    body = downgrade.body
    first = body[0]
    indent = lines[first.lineno - 1][: first.col_offset]
    removed: set[int] = set()
    for item in _record(path, "downgrade"):
        statement = _statement_at(downgrade, item.line)
        op = item.op
        table = str(getattr(op, "table_name", None) or getattr(op, "source_table", ""))
        if statement is not None and (key := _undoes(table, op)) is not None and key in undone:
            replacements[statement.lineno] = (statement.end_lineno or statement.lineno, "")
            removed.add(statement.lineno)
    if any(isinstance(node, ast.Attribute) and node.attr == "zdm_rollback" for node in ast.walk(downgrade)):
        return removed  # rolls zdm back already (an earlier --fix, or written by hand)
    rollback = indent + "op.zdm_rollback()\n"
    if isinstance(first, ast.Pass) and len(body) == 1:
        replacements[first.lineno] = (first.end_lineno or first.lineno, rollback)
        return removed
    last, text = replacements.get(first.lineno, (first.end_lineno or first.lineno,
                                                 "".join(lines[first.lineno - 1:first.end_lineno or first.lineno])))
    replacements[first.lineno] = (last, rollback + text)
    return removed


def _apply(lines: list[str], replacements: dict[int, tuple[int, str]]) -> str:
    out: list[str] = []
    number = 1
    while number <= len(lines):
        if number in replacements:
            last, text = replacements[number]
            out.append(text)
            number = last + 1
        else:
            out.append(lines[number - 1])
            number += 1
    return "".join(out)


# -- .sql files -------------------------------------------------------------------------------------
def _fix_sql(path: Path, config: Config) -> Converted:
    """``<name>.yaml`` next to ``path``: a plan of catalogue operations and ``sql`` steps."""
    from zdm.risks import judge

    text = path.read_text()
    try:
        parsed = pglast.parse_sql(text)
    except pglast.parser.ParseError as exc:
        raise LintError(f"{path}: not SQL PostgreSQL parses: {exc}") from exc
    written = path.with_suffix(".yaml")
    result = Converted(path, written)
    entries: list[tuple[list[str], dict[str, Any]]] = []
    encoded = text.encode()
    for raw in parsed:
        start = raw.stmt_location or 0
        statement = encoded[start:start + (raw.stmt_len or len(encoded) - start)].decode().strip()
        if not statement or isinstance(raw.stmt, pg.TransactionStmt):
            continue  # a plan step owns its transaction
        operation = _operation(raw.stmt)
        if operation is not None:
            entries.append(([], operation))
            result.converted += 1
            continue
        transactional = not getattr(raw.stmt, "concurrent", False)
        comments = list(dict.fromkeys(
            f"{MARK} [{finding.rule}]: no zdm operation does this; see `zdm lint --rules`"
            for finding in judge([statement], old_app_running=True, in_transaction=transactional,
                                 pg_version=config.pg_version)))
        result.marked += len(comments)
        step: dict[str, Any] = {"op": "sql", "up": statement, "down": [],
                                **({} if transactional else {"transactional": False})}
        entries.append(([*comments, "zdm: --fix cannot write `down` (what undoes it): add it for `zdm rollback`"],
                        step))
    document = [f"# converted from {path.name} by zdm lint --fix", f"id: {json.dumps(_plan_id(path))}",
                "operations:"]
    for comments, operation in entries:
        document += [f"  # {comment}" for comment in comments]
        dumped = yaml.safe_dump([operation], sort_keys=False, default_flow_style=False, width=100)
        document += ["  " + line for line in dumped.splitlines()]
    written.write_text("\n".join(document) + "\n")
    return result


def _plan_id(path: Path) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in path.stem)[:40]
    return cleaned or "converted"


def _name(node: Any) -> str:
    return str(node.sval) if isinstance(node, pg.String) else str(node)


def _type_name(node: Any) -> str | None:
    from pglast.stream import RawStream

    from zdm import coltypes

    try:
        return coltypes.parse(RawStream()(node)).value
    except ValueError:
        return None


def _operation(node: Any) -> dict[str, Any] | None:
    """The catalogue operation that does what the statement does, safely; None where none does."""
    objects = enums.ObjectType
    kind = type(node).__name__  # not isinstance: pglast's node types make every field optional
    if kind == "IndexStmt":
        return _index(node)
    if kind == "RenameStmt" and node.relation is not None and not node.relation.schemaname:
        if node.renameType == objects.OBJECT_COLUMN:
            return {"op": "rename_column", "table": node.relation.relname, "column": node.subname,
                    "new_name": node.newname}
        if node.renameType == objects.OBJECT_TABLE:
            return {"op": "rename_table", "table": node.relation.relname, "new_name": node.newname}
        return None
    if kind == "DropStmt" and node.removeType == objects.OBJECT_TABLE and len(node.objects) == 1 \
            and len(node.objects[0]) == 1 and not node.missing_ok \
            and node.behavior != enums.DropBehavior.DROP_CASCADE:
        return {"op": "drop_table", "table": _name(node.objects[0][0])}
    if kind != "AlterTableStmt" or len(node.cmds or ()) != 1 or node.relation.schemaname \
            or node.objtype != objects.OBJECT_TABLE:
        return None
    table = str(node.relation.relname)
    command: Any = node.cmds[0]
    alter = enums.AlterTableType
    if command.subtype == alter.AT_AlterColumnType and command.def_.raw_default is None \
            and command.def_.collClause is None:
        column_type = _type_name(command.def_.typeName)
        return None if column_type is None else {"op": "alter_column", "table": table, "column": command.name,
                                                 "type": column_type}
    if command.subtype == alter.AT_SetNotNull:
        return {"op": "set_not_null", "table": table, "column": command.name}
    if command.subtype == alter.AT_DropColumn and not command.missing_ok \
            and command.behavior != enums.DropBehavior.DROP_CASCADE:
        return {"op": "drop_column", "table": table, "column": command.name}
    if command.subtype == alter.AT_AddColumn:
        return _add_column(table, command.def_)
    if command.subtype == alter.AT_AddConstraint:
        return _constraint(table, command.def_)
    return None


def _index(node: Any) -> dict[str, Any] | None:
    if node.relation.schemaname or node.whereClause is not None or node.indexIncludingParams or not node.idxname \
            or (node.accessMethod or "btree") != "btree":
        return None
    columns = [element.name for element in node.indexParams]
    if any(column is None for column in columns) or any(e.ordering or e.nulls_ordering or e.collation or e.opclass
                                                         for e in node.indexParams):
        return None
    return {"op": "create_index", "table": node.relation.relname, "name": node.idxname, "columns": columns,
            **({"unique": True} if node.unique else {})}


def _add_column(table: str, definition: Any) -> dict[str, Any] | None:
    column_type = _type_name(definition.typeName)
    if column_type is None:
        return None
    operation: dict[str, Any] = {"op": "add_column", "table": table, "column": definition.colname, "type": column_type}
    for constraint in definition.constraints or ():
        contype = enums.ConstrType
        if constraint.contype == contype.CONSTR_NOTNULL:
            operation["nullable"] = False
        elif constraint.contype == contype.CONSTR_DEFAULT and isinstance(constraint.raw_expr, pg.A_Const) \
                and not constraint.raw_expr.isnull:
            if (constant := _constant(constraint.raw_expr.val)) is None:
                return None
            operation["default"] = constant
        elif constraint.contype != contype.CONSTR_NULL:
            return None  # a key, a check, a reference, a volatile default: as written
    if operation.get("nullable") is False and "default" not in operation:
        return None  # fails on a table with rows: add it nullable, then set_not_null
    return operation


def _constant(value: Any) -> Any:
    """A literal's Python value (None for one zdm does not carry as a default)."""
    kind = type(value).__name__
    if kind == "String":
        return value.sval
    if kind == "Integer":
        return value.ival
    if kind == "Float":
        return float(value.fval)
    if kind == "Boolean":
        return value.boolval
    return None


def _constraint(table: str, constraint: Any) -> dict[str, Any] | None:
    from pglast.stream import RawStream

    contype = enums.ConstrType
    if not constraint.conname or constraint.deferrable or constraint.indexname:
        return None
    if constraint.contype == contype.CONSTR_UNIQUE and not constraint.including and not constraint.nulls_not_distinct:
        return {"op": "add_unique", "table": table, "name": constraint.conname,
                "columns": [_name(key) for key in constraint.keys]}
    if constraint.contype == contype.CONSTR_CHECK and not constraint.is_no_inherit:
        return {"op": "add_check", "table": table, "name": constraint.conname,
                "condition": RawStream()(constraint.raw_expr)}
    if constraint.contype == contype.CONSTR_FOREIGN and not constraint.pktable.schemaname \
            and constraint.fk_upd_action in ("a", None) and constraint.fk_matchtype in ("s", None) \
            and constraint.pk_attrs:
        actions = {"a": None, "c": "CASCADE", "n": "SET NULL", "r": "RESTRICT"}
        if constraint.fk_del_action not in actions:
            return None
        operation = {"op": "add_foreign_key", "table": table, "name": constraint.conname,
                     "columns": [_name(key) for key in constraint.fk_attrs], "ref_table": constraint.pktable.relname,
                     "ref_columns": [_name(key) for key in constraint.pk_attrs]}
        if actions[constraint.fk_del_action]:
            operation["on_delete"] = actions[constraint.fk_del_action]
        return operation
    return None
