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
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import pglast
import sqlalchemy as sa
from pglast import ast
from pglast.enums import (
    A_Expr_Kind,
    AlterTableType,
    ConstrType,
    ObjectType,
    TransactionStmtKind,
    VariableSetKind,
)
from pglast.parser import scan
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
#: Objects other than tables and columns whose name the old app may use (in queries, casts, calls):
#: renaming, dropping or moving one to another schema before contract breaks it.
NAMED_OBJECTS = {
    ObjectType.OBJECT_SCHEMA: "schema", ObjectType.OBJECT_VIEW: "view", ObjectType.OBJECT_MATVIEW:
    "materialized view", ObjectType.OBJECT_FUNCTION: "function", ObjectType.OBJECT_PROCEDURE: "procedure",
    ObjectType.OBJECT_ROUTINE: "routine", ObjectType.OBJECT_TYPE: "type", ObjectType.OBJECT_DOMAIN: "domain",
    ObjectType.OBJECT_SEQUENCE: "sequence", ObjectType.OBJECT_FOREIGN_TABLE: "foreign table",
}
#: ALTER TABLE subcommands that switch triggers (and with ALL, the foreign keys' own) off.
TRIGGERS_OFF = frozenset({AlterTableType.AT_DisableTrig, AlterTableType.AT_DisableTrigAll,
                          AlterTableType.AT_DisableTrigUser})
#: Statements that end or start a transaction (SAVEPOINT and ROLLBACK TO stay inside one).
TRANSACTION_ENDS = frozenset({TransactionStmtKind.TRANS_STMT_COMMIT, TransactionStmtKind.TRANS_STMT_ROLLBACK,
                              TransactionStmtKind.TRANS_STMT_PREPARE, TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED,
                              TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED})
TRANSACTION_STARTS = frozenset({TransactionStmtKind.TRANS_STMT_BEGIN, TransactionStmtKind.TRANS_STMT_START})
#: The marker of a suppression comment: ``-- zdm: ignore[rule-id, ...] reason``.
SUPPRESSION = "zdm: ignore["

#: A relation as written: (schema or None, name). Only exact matches are the same relation.
Name = tuple[str | None, str]


@dataclass(frozen=True)
class Rule:
    """One entry of the catalogue every judgement of SQL uses (sql steps, `zdm lint`, Alembic).

    ``does``: what the statement does on a busy table (lock, rewrite, scan, the old app);
    ``instead``: what to do instead, naming the zdm operation (plan op / ``op.zdm_*``) when one exists.
    """

    id: str
    does: str
    instead: str


RULES: dict[str, Rule] = {rule.id: rule for rule in [
    Rule("alter-column-type", "rewrites the table and its indexes under ACCESS EXCLUSIVE (reads and writes wait)",
         "op alter_column / op.zdm_alter_column: a new column, dual-write triggers, a batched backfill"),
    Rule("set-not-null", "scans the whole table under ACCESS EXCLUSIVE",
         "op set_not_null / op.zdm_set_not_null: a NOT VALID check, VALIDATE, then SET NOT NULL without a scan"),
    Rule("add-check-validating", "checks every row while holding a lock that blocks writes",
         "op add_check / op.zdm_add_check: NOT VALID, then VALIDATE CONSTRAINT in its own transaction"),
    Rule("add-foreign-key-validating", "checks every row while locking both tables against writes",
         "op add_foreign_key / op.zdm_add_foreign_key: NOT VALID, then VALIDATE CONSTRAINT"),
    Rule("add-unique-constraint", "builds an index under ACCESS EXCLUSIVE",
         "op add_unique / op.zdm_add_unique: CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... USING INDEX"),
    Rule("add-exclusion-constraint", "builds an index under ACCESS EXCLUSIVE; it has no concurrent form",
         "add it while the table is small or the app is stopped"),
    Rule("add-column-rewrite", "rewrites the table under ACCESS EXCLUSIVE (a fresh value or a check per row)",
         "op add_column without the default or as the base type, then a backfill (op.zdm_add_column)"),
    Rule("add-column-constraint", "builds an index or checks every row under ACCESS EXCLUSIVE (no NOT VALID there)",
         "op add_column, then op add_unique / add_check / add_foreign_key"),
    Rule("add-column-not-null", "breaks the old app, whose inserts leave the new column NULL",
         "op add_column with a default, or nullable then op set_not_null"),
    Rule("table-rewrite", "rewrites the table under ACCESS EXCLUSIVE (SET LOGGED/UNLOGGED/TABLESPACE, VACUUM FULL, "
         "CLUSTER)", "pg_repack, or a maintenance window"),
    Rule("drop-column", "breaks the old app, which still reads or writes the column",
         "op drop_column / op.zdm_drop_column: dropped at contract, after the deploy"),
    Rule("drop-table", "breaks the old app, which may still use the table",
         "op drop_table / op.zdm_drop_table: dropped at contract"),
    Rule("rename-column", "breaks the old app, which still uses the old name",
         "op rename_column / op.zdm_rename_column: both names work until contract"),
    Rule("rename-table", "breaks the old app, which still uses the old name",
         "op rename_table / op.zdm_rename_table: both names work until contract"),
    Rule("rename-object", "breaks the old app, which still names the schema, view, function, type, domain, "
         "sequence or enum value", "create the new one beside the old, switch the app, drop the old at contract"),
    Rule("drop-object", "breaks the old app, which may still use the schema, view, function, type, domain or "
         "sequence", "drop it in a contract step (phase: contract), after the deploy"),
    Rule("set-schema", "moves the object away from the name the old app uses",
         "do it in a contract step, or keep a view or wrapper under the old name"),
    Rule("drop-default-not-null", "breaks the old app's inserts that leave a NOT NULL column out",
         "drop the default at contract, after the old app is gone"),
    Rule("create-index-blocking", "blocks writes (SHARE lock) while the whole index builds",
         "op create_index / op.zdm_create_index: CREATE INDEX CONCURRENTLY outside a transaction"),
    Rule("drop-index-blocking", "waits behind every query for ACCESS EXCLUSIVE, and queues reads and writes "
         "behind it", "op drop_index / op.zdm_drop_index: DROP INDEX CONCURRENTLY"),
    Rule("refresh-blocking", "blocks reads of the view while it is rebuilt",
         "REFRESH MATERIALIZED VIEW CONCURRENTLY (needs a unique index on the view)"),
    Rule("reindex-blocking", "blocks writes while the indexes rebuild",
         "REINDEX ... CONCURRENTLY, not in a transaction"),
    Rule("lock-table", "holds a lock that blocks writes until the transaction ends", "let each statement take its "
         "own lock, under zdm's lock budget"),
    Rule("alter-domain-checks-rows", "checks every stored value under a SHARE lock on each table using the domain",
         "a table CHECK instead: op add_check (NOT VALID, then VALIDATE)"),
    Rule("disable-trigger", "stops triggers (zdm's dual-write, audit, with ALL the foreign keys' own) for every "
         "writer, and takes a lock that blocks writes", "do not switch triggers off on a live table"),
    Rule("truncate", "empties the table under ACCESS EXCLUSIVE; the old app loses its rows",
         "delete in batches in a migrate step, or drop the table at contract"),
    Rule("sequence-restart", "hands out numbers already used: the app's inserts fail on the primary key",
         "restart only above the largest value in use (setval to max + 1)"),
    Rule("bulk-write", "updates or deletes many rows in one transaction: row locks that block the app's writes "
         "until commit, and bloat", "a backfill in batches (op.zdm_* operations do this), or a migrate step"),
    Rule("validate-in-same-transaction", "VALIDATE in the transaction that added the NOT VALID constraint keeps "
         "the ADD's lock (blocks writes) during the scan", "VALIDATE in a step of its own (op add_check does)"),
    Rule("concurrently-in-transaction", "fails: PostgreSQL refuses CONCURRENTLY inside a transaction block",
         "a step of its own with transactional: false (op create_index does it)"),
    Rule("enum-value-in-transaction", "fails: a new enum value cannot be used in the transaction that added it",
         "add the value in one step, use it in the next"),
    Rule("primary-key-using-nullable-index", "sets NOT NULL on the key's columns: a full scan under ACCESS "
         "EXCLUSIVE when one is nullable", "op set_not_null on each column first, then ADD PRIMARY KEY USING INDEX"),
    Rule("detach-partition-blocking", "takes ACCESS EXCLUSIVE on the partitioned table, queueing every query on it",
         "DETACH PARTITION ... CONCURRENTLY (PostgreSQL 14+), not in a transaction"),
    Rule("transaction-control", "ends zdm's (or Alembic's) transaction: a later failure is reported as rolled back "
         "while what ran before the COMMIT stays", "let zdm run each step in its own transaction; split the step"),
    Rule("lock-timeout-disabled", "turns off the lock budget: the next lock waits without end behind a long query "
         "while reads and writes queue behind it", "keep zdm's lock_timeout (set lock_timeout on the plan)"),
]}


@dataclass(frozen=True)
class Finding:
    """One risky statement: the rule it breaks and the line a user reads.

    ``statement``: the index, in the statements given, of the text holding it; ``offset``: the
    byte offset of the statement inside that text (UTF-8, as pglast reports it), for file lines.
    ``suppressed``: the reason given by a ``-- zdm: ignore[rule]`` comment, None when in force.
    """

    rule: str
    message: str
    table: str | None = None
    statement: int = 0
    offset: int = 0
    suppressed: str | None = None


def lock_risks(statements: Iterable[str], *, old_app_running: bool,
               connection: sa.Connection | None = None, in_transaction: bool = True) -> list[str]:
    """The messages of :func:`judge`'s findings that no comment suppresses, one per risky statement.

    For a zdm ``sql`` step, which the runner holds to its lock budget (``lock_budget`` of judge).
    """
    return [f"{finding.message} [{finding.rule}]"
            for finding in judge(statements, old_app_running=old_app_running, connection=connection,
                                 in_transaction=in_transaction, lock_budget=True)
            if finding.suppressed is None]


def judge(statements: Iterable[str], *, old_app_running: bool, connection: sa.Connection | None = None,
          in_transaction: bool = True, managed_transaction: bool = True,
          pg_version: int | None = None, lock_budget: bool = False) -> list[Finding]:
    """Every risky statement in ``statements`` (each text may hold several), in order.

    ``old_app_running``: the statements run before contract, while the old app still reads and
    writes the old shape, so renames and drops break it too.
    ``connection``: the live PostgreSQL database, asked what the statements' functions, types and
    columns are; None offline. Whatever it asks is rolled back, and the connection's transaction
    (or its lack of one) is left as it was.
    ``in_transaction``: the first statement runs inside a transaction (a zdm step, an Alembic
    revision); BEGIN and COMMIT in the text move it in and out.
    ``managed_transaction``: zdm or Alembic owns the transaction (and the lock budget), so
    COMMIT/BEGIN and turning lock_timeout off in the text are findings; False for plain .sql files.
    ``pg_version``: the target server's major version (PostgreSQL 11 stopped rewriting on ADD
    COLUMN with a constant default); None for a current one.
    ``lock_budget``: the statements run under a lock_timeout (a zdm step: the runner sets its lock
    budget), so a brief ACCESS EXCLUSIVE (DROP INDEX, DETACH PARTITION, LOCK TABLE) waits and
    queues others for at most the budget, then the step is retried; without one (a .sql file, an
    Alembic revision) it waits behind every query without end, and that is the finding. A
    ``SET lock_timeout`` in the text turns the budget on (a value) or off (0, DEFAULT, RESET).
    Raises nothing for SQL pglast cannot parse: it is left to the server.
    """
    reader = _Reader(Catalog(connection), old_app_running, in_transaction, managed_transaction, pg_version,
                     lock_budget)
    found: list[Finding] = []
    for index, text in enumerate(statements):
        try:
            parsed = pglast.parse_sql(text)
        except pglast.parser.ParseError:
            continue
        suppressions = _suppressions(text, parsed)
        for position, raw in enumerate(parsed):
            for finding in reader.read(raw.stmt):
                reason = suppressions.get(position, {}).get(finding.rule)
                found.append(replace(finding, statement=index, offset=raw.stmt_location, suppressed=reason))
    return found


def _suppressions(text: str, parsed: tuple[ast.RawStmt, ...]) -> dict[int, dict[str, str | None]]:
    """``-- zdm: ignore[rule, ...] reason`` comments: statement position -> {rule: reason}.

    A comment on the line where a statement ends applies to it; any other to the next statement.
    A suppression without a reason suppresses nothing (its reason is None, and the finding stays).
    """
    encoded = text.encode()
    ends = [(raw.stmt_location, raw.stmt_location + raw.stmt_len if raw.stmt_len else len(encoded))
            for raw in parsed]
    found: dict[int, dict[str, str | None]] = {}
    try:
        tokens = scan(text)
    except pglast.parser.ParseError:
        return found
    for token in tokens:
        if token.name not in ("SQL_COMMENT", "C_COMMENT"):
            continue
        comment = encoded[token.start:token.end + 1].decode().strip("-/* \n")
        if not comment.startswith(SUPPRESSION) or "]" not in comment:
            continue
        rules, _, reason = comment[len(SUPPRESSION):].partition("]")
        line_start = encoded.rfind(b"\n", 0, token.start) + 1
        position = next((i for i, (_, end) in enumerate(ends) if line_start <= end <= token.start), None)
        if position is None:
            position = next((i for i, (start, _) in enumerate(ends) if start > token.start), None)
        if position is None:
            continue
        for rule in rules.split(","):
            found.setdefault(position, {})[rule.strip()] = reason.strip() or None
    return found


@dataclass
class _Reader:
    """Reads a sequence of statements in order: what they created, the transaction they are in."""

    catalog: Catalog
    old_app_running: bool
    in_transaction: bool
    managed_transaction: bool
    pg_version: int | None
    #: A lock_timeout bounds every lock wait (see judge).
    lock_budget: bool
    #: Relations these statements surely created: nobody uses them yet.
    created: set[Name] = field(default_factory=set)
    #: Other objects they created (views, functions, types, sequences, schemas), by last name.
    created_objects: set[str] = field(default_factory=set)
    #: NOT VALID constraints added in the current transaction: (table, constraint name).
    not_valid: set[tuple[str, str]] = field(default_factory=set)
    #: Enum values added in the current transaction.
    enum_values: set[str] = field(default_factory=set)
    #: Columns these statements added: (table, column); nobody uses them yet.
    added_columns: set[tuple[str, str]] = field(default_factory=set)

    def read(self, statement: ast.Node) -> list[Finding]:
        self.created |= _creates(statement, self.created)
        self.created_objects |= _creates_objects(statement)
        self.catalog.learn(statement)
        found = self._transaction(statement)
        if self.in_transaction and self.enum_values and any(
                isinstance(node, ast.A_Const) and isinstance(node.val, ast.String)
                and node.val.sval in self.enum_values for node in walk(statement)):
            found.append(Finding("enum-value-in-transaction", "a value added to an enum is used in the transaction "
                                 "that added it, which PostgreSQL refuses (unsafe use of new value): add the value "
                                 "in one step, use it in the next"))
        targets = _targets(statement)
        if not (targets and targets <= self.created):
            found += _statement_risks(statement, _table(statement), self)
        self._remember(statement)
        return found

    def _transaction(self, statement: ast.Node) -> list[Finding]:
        found: list[Finding] = []
        if isinstance(statement, ast.TransactionStmt) and statement.kind in TRANSACTION_STARTS | TRANSACTION_ENDS:
            if self.managed_transaction:
                word = statement.kind.name.removeprefix("TRANS_STMT_").replace("_", " ")
                found.append(Finding("transaction-control", f"{word} inside a step ends or starts the transaction "
                                     "zdm runs it in: a later failure is reported as rolled back while what ran "
                                     "before it stays committed; split the step instead"))
            self.in_transaction = statement.kind in TRANSACTION_STARTS
            if not self.in_transaction:
                self.not_valid.clear()
                self.enum_values.clear()
        if isinstance(statement, ast.VariableSetStmt) and (statement.name == "lock_timeout"
                                                           or statement.kind is VariableSetKind.VAR_RESET_ALL):
            self.lock_budget = not _lock_timeout_off(statement)
        if isinstance(statement, ast.VariableSetStmt) and self.managed_transaction and \
                _lock_timeout_off(statement):
            found.append(Finding("lock-timeout-disabled", "turning lock_timeout off inside a step drops zdm's lock "
                                 "budget: the next lock waits without end behind a long query while reads and "
                                 "writes queue behind it; set lock_timeout on the plan instead"))
        if self.in_transaction and (what := _concurrent(statement)):
            found.append(Finding("concurrently-in-transaction", f"{what} cannot run inside a transaction block: "
                                 "PostgreSQL refuses it; give it a step of its own with transactional: false",
                                 _table(statement)))
        return found

    def _remember(self, statement: ast.Node) -> None:
        if isinstance(statement, ast.AlterTableStmt):
            self.added_columns |= {(_table(statement), str(command.def_.colname)) for command in statement.cmds or ()
                                   if command.subtype is AlterTableType.AT_AddColumn
                                   and isinstance(command.def_, ast.ColumnDef)}
        if not self.in_transaction:
            return
        if isinstance(statement, ast.AlterTableStmt):
            for command in statement.cmds or ():
                definition = command.def_
                if (command.subtype is AlterTableType.AT_AddConstraint and isinstance(definition, ast.Constraint)
                        and definition.skip_validation and definition.conname):
                    self.not_valid.add((_table(statement), definition.conname))
        if isinstance(statement, ast.AlterEnumStmt) and statement.newVal and not statement.oldVal:
            self.enum_values.add(statement.newVal)


def _lock_timeout_off(statement: ast.VariableSetStmt) -> bool:
    """SET lock_timeout to 0 (in any unit) or to its default, or RESET it (or ALL): the budget is gone."""
    if statement.kind is VariableSetKind.VAR_RESET_ALL:
        return True
    if statement.name != "lock_timeout":
        return False
    if statement.kind in (VariableSetKind.VAR_SET_DEFAULT, VariableSetKind.VAR_RESET):
        return True
    if statement.kind is not VariableSetKind.VAR_SET_VALUE or not statement.args:
        return False
    value = statement.args[0].val if isinstance(statement.args[0], ast.A_Const) else None
    if isinstance(value, ast.Integer):
        return value.ival == 0
    if isinstance(value, ast.Float):
        return float(value.fval) == 0
    if isinstance(value, ast.String):
        digits = value.sval.strip().rstrip("abcdefghijklmnopqrstuvwxyz ").strip()
        try:
            return float(digits) == 0
        except ValueError:
            return False
    return False


def _concurrent(statement: ast.Node) -> str | None:
    """The name of a statement PostgreSQL refuses inside a transaction block; None for others."""
    if isinstance(statement, ast.IndexStmt) and statement.concurrent:
        return "CREATE INDEX CONCURRENTLY"
    if isinstance(statement, ast.DropStmt) and statement.concurrent:
        return "DROP INDEX CONCURRENTLY"
    if isinstance(statement, ast.ReindexStmt) and option_on(statement.params, "concurrently"):
        return "REINDEX CONCURRENTLY"
    if isinstance(statement, ast.AlterTableStmt) and any(
            command.subtype is AlterTableType.AT_DetachPartition and isinstance(command.def_, ast.PartitionCmd)
            and command.def_.concurrent for command in statement.cmds or ()):
        return "DETACH PARTITION CONCURRENTLY"
    return None


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


def _creates_objects(statement: ast.Node) -> set[str]:
    """The last names of the non-table objects ``statement`` creates (views, functions, types...)."""
    if isinstance(statement, ast.ViewStmt) and not statement.replace:
        return {statement.view.relname}
    if isinstance(statement, ast.CreateTableAsStmt) and not statement.if_not_exists:
        return {statement.into.rel.relname}
    if isinstance(statement, ast.CreateSeqStmt) and not statement.if_not_exists:
        return {statement.sequence.relname}
    if isinstance(statement, ast.CreateFunctionStmt) and not statement.replace:
        return {statement.funcname[-1].sval}
    if isinstance(statement, ast.CreateDomainStmt):
        return {statement.domainname[-1].sval}
    if isinstance(statement, (ast.CreateEnumStmt, ast.CreateRangeStmt)):
        return {statement.typeName[-1].sval}
    if isinstance(statement, ast.CompositeTypeStmt):
        return {statement.typevar.relname}
    if isinstance(statement, ast.CreateSchemaStmt) and not statement.if_not_exists:
        return {statement.schemaname}
    return set()


def _object_name(node: ast.Node | None) -> str:
    """The last name of an object as a DROP or ALTER names it: a list of names, a function with args, a type."""
    if isinstance(node, ast.ObjectWithArgs):
        return node.objname[-1].sval
    if isinstance(node, ast.TypeName):
        return node.names[-1].sval
    if isinstance(node, ast.RangeVar):
        return node.relname
    if isinstance(node, ast.String):
        return node.sval
    if isinstance(node, tuple) and node and isinstance(node[-1], ast.String):
        return node[-1].sval
    return "?"


def _targets(statement: ast.Node) -> set[Name]:
    """The relations ``statement`` acts on, when it names them."""
    relation = getattr(statement, "relation", None)
    if isinstance(relation, ast.RangeVar):
        return {_name(relation)}
    if isinstance(statement, ast.DropStmt) and statement.removeType in DROPPED_RELATIONS:
        return {_dropped(names) for names in statement.objects}
    if isinstance(statement, ast.TruncateStmt):
        return {_name(relation) for relation in statement.relations}
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


def _statement_risks(statement: ast.Node, table: str, reader: _Reader) -> list[Finding]:
    old_app_running, catalog = reader.old_app_running, reader.catalog
    if isinstance(statement, ast.AlterTableStmt):
        return [risk for command in statement.cmds or ()
                if (risk := _alter_risk(command, table, reader))]
    if isinstance(statement, ast.AlterDomainStmt):
        return _alter_domain_risks(statement, catalog)
    if isinstance(statement, ast.IndexStmt) and not statement.concurrent:
        return [Finding("create-index-blocking", f"CREATE INDEX on {table} without CONCURRENTLY blocks writes to "
                        f"{table} while it builds: use op create_index (or CONCURRENTLY with transactional: false)",
                        table)]
    if isinstance(statement, ast.DropStmt) and statement.removeType is ObjectType.OBJECT_INDEX:
        return [] if reader.lock_budget else _drop_index_risks(statement)
    if isinstance(statement, ast.RefreshMatViewStmt) and not statement.concurrent:
        return [Finding("refresh-blocking", f"REFRESH MATERIALIZED VIEW {table} without CONCURRENTLY blocks reads "
                        f"of {table} until it is rebuilt: use REFRESH MATERIALIZED VIEW CONCURRENTLY (it needs a "
                        "unique index on the view)", table)]
    if isinstance(statement, ast.VacuumStmt) and option_on(statement.options, "full"):
        return [Finding("table-rewrite", "VACUUM FULL rewrites its tables under an ACCESS EXCLUSIVE lock")]
    if isinstance(statement, ast.ClusterStmt):
        return [Finding("table-rewrite", f"CLUSTER rewrites {table} under an ACCESS EXCLUSIVE lock", table)]
    if isinstance(statement, ast.ReindexStmt) and not option_on(statement.params, "concurrently"):
        return [Finding("reindex-blocking", "REINDEX without CONCURRENTLY blocks writes while it rebuilds: use "
                        "REINDEX ... CONCURRENTLY with transactional: false")]
    if isinstance(statement, ast.LockStmt) and statement.mode >= SHARE_LOCK and not reader.lock_budget:
        return [Finding("lock-table", "LOCK TABLE in a mode that blocks writes holds the lock until the step "
                        "commits")]
    if isinstance(statement, ast.TruncateStmt):
        tables = ", ".join(_shown(_name(relation)) for relation in statement.relations)
        return [Finding("truncate", f"TRUNCATE {tables} empties it under an ACCESS EXCLUSIVE lock, and the app loses "
                        "its rows: delete in batches, or drop the table at contract", tables)]
    if isinstance(statement, ast.AlterSeqStmt) and any(option.defname == "restart" for option in statement.options
                                                       or ()):
        sequence = _shown(_name(statement.sequence))
        return [Finding("sequence-restart", f"ALTER SEQUENCE {sequence} RESTART hands out numbers already used: the "
                        "app's inserts fail on the key; restart above the largest value in use")]
    if isinstance(statement, (ast.UpdateStmt, ast.DeleteStmt)) and (
            bulk := catalog.bulk(statement, table, _pinned(statement.whereClause),
                                 _pinned_columns(statement.whereClause))):
        verb = "UPDATE" if isinstance(statement, ast.UpdateStmt) else "DELETE"
        why = "" if bulk is True else f" ({bulk})"
        return [Finding("bulk-write", f"{verb} of {table} without a WHERE on a key locks every row it touches until "
                        "the step commits, blocking the app's writes to them: backfill in batches in a migrate step "
                        f"(the op.zdm_* operations do){why}", table)]
    if old_app_running:
        return _old_app_risks(statement, table, reader)
    return []


def _string_widening(command: ast.AlterTableCmd) -> bool:
    """Offline: ALTER COLUMN ... TYPE text (or varchar without a length), with no USING and no
    collation: the catalog-only change from any string column, which is what such a change almost
    always is (a number or a date into text needs USING on a real migration's data far more rarely
    than a varchar(n) is widened). ``--db`` asks the column's real type instead."""
    definition = command.def_
    if not isinstance(definition, ast.ColumnDef) or definition.raw_default is not None or definition.collClause:
        return False
    type_name = definition.typeName
    if type_name is None or type_name.typmods or type_name.arrayBounds:
        return False
    name = type_name.names[-1].sval if type_name.names else ""
    return name in ("text", "varchar")


def _pinned(where: ast.Node | None) -> bool:
    """Whether a WHERE clause narrows to given rows: a column = constant (or IN a list) among its ANDed terms."""
    if where is None:
        return False
    if isinstance(where, ast.BoolExpr) and where.boolop.name == "AND_EXPR":
        return any(_pinned(term) for term in where.args)
    if isinstance(where, ast.A_Expr) and where.kind in (A_Expr_Kind.AEXPR_OP, A_Expr_Kind.AEXPR_IN) and \
            isinstance(where.name[-1], ast.String) and where.name[-1].sval == "=":
        sides = (where.lexpr, where.rexpr)
        return any(isinstance(side, ast.ColumnRef) for side in sides) and \
            any(isinstance(side, (ast.A_Const, ast.ParamRef, tuple)) for side in sides)
    return False


def _pinned_columns(where: ast.Node | None) -> set[str]:
    """The columns a WHERE clause sets to a constant (or IN a list) among its ANDed terms."""
    if isinstance(where, ast.BoolExpr) and where.boolop.name == "AND_EXPR":
        return set().union(*(_pinned_columns(term) for term in where.args))
    if not _pinned(where) or not isinstance(where, ast.A_Expr):
        return set()
    return {str(side.fields[-1].sval) for side in (where.lexpr, where.rexpr)
            if isinstance(side, ast.ColumnRef) and isinstance(side.fields[-1], ast.String)}


def _old_app_risks(statement: ast.Node, table: str, reader: _Reader) -> list[Finding]:
    """Renames, drops and moves of names the old app uses, while it still runs."""
    if isinstance(statement, ast.RenameStmt) and statement.renameType in (
            ObjectType.OBJECT_COLUMN, ObjectType.OBJECT_TABLE):
        what = "column" if statement.renameType is ObjectType.OBJECT_COLUMN else "table"
        return [Finding(f"rename-{what}", f"RENAME {what.upper()} on {table} before contract breaks the old app, "
                        f"which still uses the old name: use op rename_{what}", table)]
    if isinstance(statement, ast.RenameStmt) and statement.renameType in NAMED_OBJECTS:
        name = statement.subname if statement.renameType is ObjectType.OBJECT_SCHEMA else \
            _object_name(statement.relation or statement.object)
        if name in reader.created_objects:
            return []
        what = NAMED_OBJECTS[statement.renameType]
        return [Finding("rename-object", f"renaming {what} {name} before contract breaks the old app, which still "
                        f"uses the old name: create the new {what} beside the old one and drop the old at contract")]
    if isinstance(statement, ast.AlterEnumStmt) and statement.oldVal:
        return [Finding("rename-object", f"renaming enum value {statement.oldVal!r} before contract breaks the old "
                        "app, which still writes and compares the old value")]
    if isinstance(statement, ast.DropStmt) and statement.removeType is ObjectType.OBJECT_TABLE:
        return [Finding("drop-table", "DROP TABLE before contract breaks the old app, which may still use it: use "
                        "op drop_table")]
    if isinstance(statement, ast.DropStmt) and statement.removeType in NAMED_OBJECTS:
        names = [_object_name(item) for item in statement.objects]
        if all(name in reader.created_objects for name in names):
            return []
        what = NAMED_OBJECTS[statement.removeType]
        return [Finding("drop-object", f"DROP {what.upper()} {', '.join(names)} before contract breaks the old app, "
                        "which may still use it: drop it in a contract step")]
    if isinstance(statement, ast.AlterObjectSchemaStmt) and statement.objectType in (
            {ObjectType.OBJECT_TABLE} | NAMED_OBJECTS.keys()):
        name = _object_name(statement.relation or statement.object)
        if name in reader.created_objects or (statement.relation is not None
                                              and _name(statement.relation) in reader.created):
            return []
        return [Finding("set-schema", f"SET SCHEMA moves {name} away from the name the old app uses: do it at "
                        "contract, or leave a view under the old name", table)]
    return []


def _drop_index_risks(statement: ast.DropStmt) -> list[Finding]:
    if statement.concurrent:
        return []
    names = ", ".join(_shown(_dropped(names)) for names in statement.objects)
    return [Finding("drop-index-blocking", f"DROP INDEX {names} without CONCURRENTLY waits behind every query on its "
                    "table for an ACCESS EXCLUSIVE lock that blocks reads and writes: use op drop_index (or "
                    "CONCURRENTLY with transactional: false)")]


def _alter_risk(command: ast.AlterTableCmd, table: str, reader: _Reader) -> Finding | None:
    kind, column, definition = command.subtype, command.name, command.def_
    if kind is AlterTableType.AT_AlterColumnType and reader.catalog.retype_rewrites(table, command) is not False:
        return Finding("alter-column-type", f"ALTER COLUMN {column} TYPE can rewrite {table} and its indexes under an "
                       "ACCESS EXCLUSIVE lock: use op alter_column", table)
    if kind is AlterTableType.AT_SetNotNull:
        return Finding("set-not-null", f"SET NOT NULL on {table}.{column} scans the whole table under an ACCESS "
                       "EXCLUSIVE lock: use op set_not_null", table)
    if kind is AlterTableType.AT_AddConstraint and isinstance(definition, ast.Constraint):
        return _constraint_risk(definition, table, reader.catalog)
    if kind is AlterTableType.AT_AddColumn and isinstance(definition, ast.ColumnDef):
        return _new_column_risk(definition, table, reader)
    if kind in (AlterTableType.AT_SetLogged, AlterTableType.AT_SetUnLogged, AlterTableType.AT_SetTableSpace):
        return Finding("table-rewrite", f"SET LOGGED/UNLOGGED/TABLESPACE rewrites {table} under an ACCESS EXCLUSIVE "
                       "lock", table)
    if kind in TRIGGERS_OFF:
        return Finding("disable-trigger", f"DISABLE TRIGGER on {table} stops its triggers for every writer (zdm's "
                       "dual-write triggers, audit triggers, with ALL the foreign keys' checks) and blocks writes "
                       "until the step commits", table)
    if kind is AlterTableType.AT_SetIdentity and any(option.defname == "restart" for option in definition or ()):
        return Finding("sequence-restart", f"ALTER COLUMN {column} RESTART hands out identity values already used: "
                       "the app's inserts fail on the key; restart above the largest value in use", table)
    if kind is AlterTableType.AT_DetachPartition and isinstance(definition, ast.PartitionCmd) and \
            not definition.concurrent and not reader.lock_budget:
        return Finding("detach-partition-blocking", f"DETACH PARTITION without CONCURRENTLY takes an ACCESS EXCLUSIVE "
                       f"lock on {table}, queueing every query on it: use DETACH PARTITION ... CONCURRENTLY "
                       "(PostgreSQL 14+) in a step with transactional: false", table)
    if kind is AlterTableType.AT_ValidateConstraint and (table, column) in reader.not_valid:
        return Finding("validate-in-same-transaction", f"VALIDATE CONSTRAINT {column} in the transaction that added "
                       f"it NOT VALID scans {table} while still holding the ADD's lock, which blocks writes: "
                       "validate in a step of its own", table)
    if reader.old_app_running and kind is AlterTableType.AT_DropColumn and (table, column) not in reader.added_columns:
        return Finding("drop-column", f"DROP COLUMN {column} before contract breaks the old app, which still uses it: "
                       "use op drop_column", table)
    if reader.old_app_running and kind is AlterTableType.AT_ColumnDefault and definition is None and \
            reader.catalog.nullable(table, column) is not True:
        return Finding("drop-default-not-null", f"DROP DEFAULT on {table}.{column} before contract breaks the old "
                       "app's inserts that leave it out, if it is NOT NULL: drop the default at contract", table)
    return None


def _constraint_risk(constraint: ast.Constraint, table: str, catalog: Catalog) -> Finding | None:
    kind = constraint.contype
    if kind in (ConstrType.CONSTR_CHECK, ConstrType.CONSTR_FOREIGN) and not constraint.skip_validation:
        op = "add_check" if kind is ConstrType.CONSTR_CHECK else "add_foreign_key"
        rule = "add-check-validating" if kind is ConstrType.CONSTR_CHECK else "add-foreign-key-validating"
        return Finding(rule, f"ADD CONSTRAINT without NOT VALID checks every row of {table} while holding a lock "
                       f"that blocks writes: use op {op} (NOT VALID, then VALIDATE)", table)
    if kind in (ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_PRIMARY) and not constraint.indexname:
        return Finding("add-unique-constraint", f"ADD UNIQUE/PRIMARY KEY builds an index on {table} under an ACCESS "
                       "EXCLUSIVE lock: use op add_unique (CREATE UNIQUE INDEX CONCURRENTLY, then USING INDEX)", table)
    if kind is ConstrType.CONSTR_PRIMARY and catalog.index_nullable(constraint.indexname) is not False:
        return Finding("primary-key-using-nullable-index", f"ADD PRIMARY KEY USING INDEX {constraint.indexname} sets "
                       f"NOT NULL on its columns, which scans {table} under an ACCESS EXCLUSIVE lock if one is "
                       "nullable: use op set_not_null on each first", table)
    if kind is ConstrType.CONSTR_EXCLUSION:
        return Finding("add-exclusion-constraint", f"ADD CONSTRAINT ... EXCLUDE builds an index on {table} under an "
                       f"ACCESS EXCLUSIVE lock and has no concurrent form: add it only while {table} is small or "
                       "the app is stopped", table)
    return None


def _new_column_risk(column: ast.ColumnDef, table: str, reader: _Reader) -> Finding | None:
    name, constraints = column.colname, column.constraints or ()
    kinds = {constraint.contype for constraint in constraints}
    type_name = column.typeName.names[-1].sval if column.typeName is not None else ""
    if type_name in SERIAL_TYPES or ConstrType.CONSTR_IDENTITY in kinds:
        what = type_name if type_name in SERIAL_TYPES else "GENERATED ... AS IDENTITY"
        return Finding("add-column-rewrite", f"ADD COLUMN {name} {what} rewrites {table} under an ACCESS EXCLUSIVE "
                       "lock (a sequence value per row): add a plain column, then backfill", table)
    if ConstrType.CONSTR_GENERATED in kinds:
        return Finding("add-column-rewrite", f"ADD COLUMN {name} GENERATED ... STORED rewrites {table}", table)
    if reader.pg_version is not None and reader.pg_version < 11 and _has_default(constraints):
        return Finding("add-column-rewrite", f"ADD COLUMN {name} with a DEFAULT rewrites {table} before PostgreSQL "
                       "11: add it without the default, then backfill", table)
    rewrite = reader.catalog.rewrite(column)
    if rewrite is not None and rewrite.kind == "domain":
        return Finding("add-column-rewrite", f"ADD COLUMN {name} of domain {rewrite.why} rewrites {table} under an "
                       f"ACCESS EXCLUSIVE lock, checking every row against the domain: add it as {rewrite.base}, then "
                       "use op add_check (NOT VALID, then VALIDATE) for the domain's rule", table)
    if rewrite is not None and rewrite.kind == "unknown type":
        return Finding("add-column-rewrite", f"ADD COLUMN {name} of type {rewrite.why}, which does not exist yet, "
                       f"rewrites {table} under an ACCESS EXCLUSIVE lock if it is a domain with a CHECK or NOT NULL: "
                       "create the type in the same step, so that zdm reads its declaration", table)
    if rewrite is not None:
        return Finding("add-column-rewrite", f"ADD COLUMN {name} with a volatile default ({rewrite.why}) rewrites "
                       f"{table} under an ACCESS EXCLUSIVE lock: add it without the default, then backfill", table)
    for constraint in constraints:
        if risk := _inline_constraint_risk(constraint, name, table, ConstrType.CONSTR_DEFAULT in kinds):
            return risk
    if reader.old_app_running and ConstrType.CONSTR_NOTNULL in kinds and not _has_default(constraints):
        return Finding("add-column-not-null", f"ADD COLUMN {name} NOT NULL without a default before contract breaks "
                       "the old app, whose inserts leave it NULL: use op add_column with a default, or add it "
                       "nullable, then op set_not_null", table)
    return None


def _inline_constraint_risk(constraint: ast.Constraint, column: str, table: str, default: bool) -> Finding | None:
    """A constraint written on ADD COLUMN: none of them can be NOT VALID or USING INDEX there.

    PostgreSQL (13+) checks an inline foreign key only when its column gets a default (even NULL):
    without one, every row is NULL and the key is marked valid without a scan.
    """
    kind = constraint.contype
    if kind in (ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_PRIMARY):
        return Finding("add-column-constraint", f"ADD COLUMN {column} UNIQUE/PRIMARY KEY builds an index on {table} "
                       "under an ACCESS EXCLUSIVE lock: add the column, then use op add_unique", table)
    if kind is ConstrType.CONSTR_CHECK:
        return Finding("add-column-constraint", f"ADD COLUMN {column} with a CHECK scans every row of {table} under "
                       "an ACCESS EXCLUSIVE lock: add the column, then use op add_check (NOT VALID, then VALIDATE)",
                       table)
    if kind is ConstrType.CONSTR_FOREIGN and default:
        return Finding("add-column-constraint", f"ADD COLUMN {column} with a default and REFERENCES "
                       f"{_shown(_name(constraint.pktable))} checks every row of {table} while it locks both tables "
                       "against writes: add it without the default (no check then), or use op add_foreign_key", table)
    return None


def _has_default(constraints: tuple[ast.Constraint, ...]) -> bool:
    """Whether the column gets a value on the old app's inserts: a DEFAULT other than NULL."""
    return any(constraint.contype is ConstrType.CONSTR_DEFAULT
               and not (isinstance(constraint.raw_expr, ast.A_Const) and constraint.raw_expr.isnull)
               for constraint in constraints)


def _alter_domain_risks(statement: ast.AlterDomainStmt, catalog: Catalog) -> list[Finding]:
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
    return [Finding("alter-domain-checks-rows", f"ALTER DOMAIN {domain} {checked[subtype]} checks every row of "
                    f"{where} under a SHARE lock that blocks writes{also if subtype == 'C' else ''}: put the rule in "
                    "a table CHECK instead, with op add_check")]


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
#: NULL when the table or column is not there.
NULLABLE = """
SELECT NOT a.attnotnull FROM pg_attribute a
WHERE a.attrelid = to_regclass(:table) AND a.attname = :column AND NOT a.attisdropped
"""
#: A column's type as PostgreSQL writes it (with its modifier); NULL when there is no such column.
COLUMN_TYPE = """
SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
WHERE a.attrelid = to_regclass(:table) AND a.attname = :column AND NOT a.attisdropped
"""
RETYPE_PROBE = "pg_temp.zdm_retype_probe"
#: Whether any key column of the index allows NULL; NULL when there is no such index.
INDEX_NULLABLE = """
SELECT bool_or(NOT a.attnotnull) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid
WHERE i.indexrelid = to_regclass(:index) AND a.attnum = ANY (i.indkey)
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

    # -- columns and indexes -------------------------------------------------------------------
    def nullable(self, table: str, column: str | None) -> bool | None:
        """Whether ``table.column`` allows NULL, from pg_attribute; None offline or when unknown."""
        return self._ask(NULLABLE, {"table": table, "column": column})

    def index_nullable(self, index: str | None) -> bool | None:
        """Whether any key column of ``index`` allows NULL (USING INDEX then sets NOT NULL, scanning)."""
        return self._ask(INDEX_NULLABLE, {"index": index})

    def retype_rewrites(self, table: str, command: ast.AlterTableCmd) -> bool | None:
        """Whether ALTER COLUMN ... TYPE rewrites or checks ``table``; None when it cannot be asked.

        PostgreSQL's answer on an empty temporary copy of the column (same type, same name), in a
        savepoint rolled back: a new relfilenode is a rewrite; a domain with rules as the new type
        checks every row. False only for a change PostgreSQL makes in the catalog alone (the same
        type, varchar(n) to a longer varchar or to text...).
        """
        with self._scratch(probe=True) as connection:
            if connection is None:
                return False if _string_widening(command) else None
            try:
                current = connection.execute(sa.text(COLUMN_TYPE), {"table": table, "column": command.name}).scalar()
                if current is None:
                    return None
                quoted = connection.dialect.identifier_preparer.quote(command.name)
                connection.exec_driver_sql("SET LOCAL statement_timeout = '5s'")
                connection.exec_driver_sql(f"CREATE TEMPORARY TABLE {RETYPE_PROBE} ({quoted} {current})")
                filenode = f"SELECT pg_relation_filenode('{RETYPE_PROBE}')"
                before = connection.exec_driver_sql(filenode).scalar()
                probe = ast.AlterTableStmt(relation=ast.RangeVar(schemaname="pg_temp", relname="zdm_retype_probe",
                                                                 inh=True, relpersistence="p"),
                                           cmds=(command,), objtype=ObjectType.OBJECT_TABLE)
                run_sql(connection, _deparse(probe))
                if connection.exec_driver_sql(filenode).scalar() != before:
                    return True
                type_oid = connection.execute(sa.text(
                    f"SELECT atttypid FROM pg_attribute WHERE attrelid = '{RETYPE_PROBE}'::regclass "
                    "AND attname = :column"), {"column": command.name}).scalar()
                return self._domain(connection, type_oid) is not None
            except sa.exc.DBAPIError:
                return None

    def bulk(self, statement: ast.Node, table: str, pinned: bool, pinned_columns: set[str] | None = None) -> bool | str:
        """Whether an UPDATE or DELETE writes many rows of ``table`` (at least half, or 10,000).

        With a connection, the planner's estimates (EXPLAIN, nothing runs) of the rows it writes
        and of the rows of the whole table; offline, any WHERE that does not pin a key (column = constant) is bulk.
        When the table holds rows but its planner statistics are missing or stale (never analyzed,
        or loaded since: ``reltuples`` unknown, the relation grown well past ``relpages``, more rows
        changed since ANALYZE than it counted), the estimates are guesses: the write is bulk unless
        its WHERE pins every column of a unique index (``pinned_columns``), and the answer is the
        reason to say so (a string) instead of True.
        """
        with self._scratch() as connection:
            if connection is not None:
                stale = self._stale_statistics(connection, table)
                if stale is not None:
                    keys = self._unique_keys(connection, table)
                    pins_a_key = any(key <= (pinned_columns or set()) for key in keys)
                    return False if pins_a_key else stale
                try:
                    plan = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {_deparse(statement)}").scalar()
                    rows = (plan[0]["Plan"].get("Plans") or [plan[0]["Plan"]])[0]["Plan Rows"]
                    whole = ast.SelectStmt(targetList=(ast.ResTarget(val=ast.A_Const(val=ast.Integer(1))),),
                                           fromClause=(getattr(statement, "relation", None),))
                    plan = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {_deparse(whole)}").scalar()
                    total = plan[0]["Plan"]["Plan Rows"]
                    return bool(rows >= min(10_000, max(2, total / 2)))
                except (sa.exc.DBAPIError, KeyError, IndexError, TypeError):
                    pass
        return not pinned

    @staticmethod
    def _stale_statistics(connection: sa.Connection, table: str) -> str | None:
        """Why ``table``'s planner statistics cannot be trusted (see ``bulk``); None when they can,
        or when the table is empty or unknown."""
        try:
            row = connection.execute(sa.text(
                "SELECT c.reltuples, c.relpages, pg_relation_size(c.oid) / current_setting('block_size')::int, "
                "s.n_mod_since_analyze, coalesce(s.last_analyze, s.last_autoanalyze) IS NOT NULL "
                "FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
                "WHERE c.oid = to_regclass(:table)"), {"table": table}).one_or_none()
        except sa.exc.DBAPIError:
            return None
        if row is None:
            return None
        reltuples, relpages, pages, modified, analyzed = row
        if not pages:
            return None
        if reltuples is None or reltuples <= 0 or (not analyzed and relpages == 0):
            why = "missing (never analyzed)"
        elif pages > 2 * relpages + 8 or (modified or 0) > max(reltuples, 1000):
            why = "stale (the table changed much since ANALYZE)"
        else:
            return None
        return (f"planner statistics of {table} are {why}, so the rows it writes cannot be estimated: "
                f"taken for a bulk write; run ANALYZE {table} for an estimate")

    @staticmethod
    def _unique_keys(connection: sa.Connection, table: str) -> list[set[str]]:
        """The column sets of ``table``'s unique indexes (plain columns, no predicate)."""
        try:
            rows = connection.execute(sa.text(
                "SELECT array_agg(a.attname::text) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(:table) AND i.indisunique "
                "AND i.indpred IS NULL AND i.indexprs IS NULL GROUP BY i.indexrelid"), {"table": table}).scalars()
            return [set(columns) for columns in rows]
        except sa.exc.DBAPIError:
            return []

    def size(self, table: str) -> int | None:
        """The bytes of ``table`` with its indexes and TOAST (pg_total_relation_size); None when unknown."""
        return self._ask("SELECT pg_total_relation_size(to_regclass(:table))", {"table": table})

    def _ask(self, query: str, parameters: dict[str, object]) -> Any:
        with self._scratch() as connection:
            if connection is None:
                return None
            try:
                return connection.execute(sa.text(query), parameters).scalar()
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
