"""`zdm rehearse`: run a plan on a staging database and check every promise before production does.

A plan can be correct and still hurt: a statement may hold an ACCESS EXCLUSIVE lock while it
rewrites a big table, or a raw ``sql`` step's ``down`` may not undo its ``up``. Reading the SQL
does not tell; running it does. A rehearsal snapshots the affected tables (shape and a checksum
of every row), runs ``start`` with a tracer that records what each statement locked, for how
long and whether it rewrote a table, probes that the old and the new app shapes both read and
write (right after expand, while the backfill has reached no row, and after start), rolls back
and proves the snapshot is back. Optionally it then completes the plan. Before anything runs it
notes the user objects (views, triggers, foreign keys, constraints) that use a column the plan
renames, retypes or drops.

Locks are read from ``pg_locks`` for the runner's own backend right after each statement, while
its transaction is still open, and count as held until that transaction commits. A statement run
outside a transaction has released its locks before they can be read: unless its kind is known to
let writes through (CONCURRENTLY, VALIDATE CONSTRAINT), it counts as blocking writes while it ran.
SQLite has no lock table to read: there each write transaction holds the database's write lock
from its first statement to its commit, and that is what the report shows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import re
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import pglast
import sqlalchemy as sa
from pglast import ast
from pglast.enums import AlterTableType
from pglast.visitors import referenced_relations
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from zdm import introspect, state
from zdm.backfill import BackfillProgress
from zdm.dialects import for_connection
from zdm.model import ColumnType, Schema, Table
from zdm.operations.alter_column import AlterColumn
from zdm.operations.drop_column import DropColumn
from zdm.operations.rename_column import RenameColumn
from zdm.operations.set_not_null import SetNotNull
from zdm.plan import STEP_PHASES, MigrationPlan, MigrationStep, Phase
from zdm.planfile import PlanFile
from zdm.risks import option_on
from zdm.runner import PlanStateError, Reporter, Runner, ZdmError
from zdm.sqltree import condition_columns

#: A rewrite of a table with more rows than this breaks the promise (``--max-rewrite-rows``).
DEFAULT_MAX_REWRITE_ROWS = 10_000

#: PostgreSQL's table lock modes, weakest first. Up to SHARE UPDATE EXCLUSIVE, reads and writes
#: of the table go on; from SHARE on, writes (and, with ACCESS EXCLUSIVE, reads) wait.
LOCK_MODES = (
    "AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock",
    "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock",
)  # fmt: skip
#: SQLite's single database write lock: every other writer waits while it is held.
SQLITE_WRITE_LOCK = "DatabaseWriteLock"
SQLITE_DATABASE = "(database)"
#: The locks of a statement run outside a transaction, released before they could be read.
UNREAD_LOCK = "UnreadLock"
#: ALTER TABLE subcommands that take SHARE UPDATE EXCLUSIVE at most: reads and writes go on.
WEAK_ALTERS = frozenset({AlterTableType.AT_ValidateConstraint, AlterTableType.AT_SetStatistics,
                         AlterTableType.AT_ClusterOn, AlterTableType.AT_DropCluster})


def lock_name(mode: str) -> str:
    """``AccessExclusiveLock`` -> ``ACCESS EXCLUSIVE``, the name the PostgreSQL docs use."""
    return " ".join(re.findall(r"[A-Z][a-z]*", mode.removesuffix("Lock"))).upper()


def describe_locks(locks: Iterable[Lock]) -> str:
    """``ACCESS EXCLUSIVE events, events_pkey; SHARE events``: strongest mode first."""
    by_mode: dict[str, list[str]] = {}
    for lock in locks:
        by_mode.setdefault(lock.mode, []).append(lock.relation)
    order = sorted(by_mode, key=lambda m: LOCK_MODES.index(m) if m in LOCK_MODES else len(LOCK_MODES), reverse=True)
    return "; ".join(f"{lock_name(mode)} {', '.join(r for r in by_mode[mode] if r != SQLITE_DATABASE)}".strip()
                     for mode in order)


def blocks_writes(mode: str) -> bool:
    """Stronger than SHARE UPDATE EXCLUSIVE: the app's writes queue behind it (an unread lock may)."""
    if mode in (SQLITE_WRITE_LOCK, UNREAD_LOCK):
        return True
    return mode in LOCK_MODES and LOCK_MODES.index(mode) > LOCK_MODES.index("ShareUpdateExclusiveLock")


def lets_writes_through(action: str | dict[str, Any]) -> bool:
    """Whether a statement's kind alone shows it takes no lock that blocks writes.

    Outside a transaction its locks are gone before they can be read, so only its kind can
    clear it: CONCURRENTLY index builds and drops, VALIDATE CONSTRAINT, plain VACUUM take at most
    SHARE UPDATE EXCLUSIVE, and zdm's checks only read. Anything else, or SQL pglast cannot
    parse, may have blocked writes.
    """
    if isinstance(action, dict):
        return "check" in action
    try:
        parsed = pglast.parse_sql(action)
    except pglast.parser.ParseError:
        return False
    return all(_weak(raw.stmt) for raw in parsed)


def _weak(statement: ast.Node) -> bool:
    if isinstance(statement, (ast.IndexStmt, ast.DropStmt)):
        return bool(statement.concurrent)
    if isinstance(statement, ast.ReindexStmt):
        return option_on(statement.params, "concurrently")
    if isinstance(statement, ast.VacuumStmt):
        return not option_on(statement.options, "full")
    if isinstance(statement, ast.AlterTableStmt):
        return all(command.subtype in WEAK_ALTERS for command in statement.cmds or ())
    return isinstance(statement, (ast.CreateStatsStmt, ast.VariableSetStmt))


def unread_locks(action: str | dict[str, Any]) -> list[Lock]:
    """What a statement outside a transaction may have blocked: the relations it names."""
    try:
        names = sorted(referenced_relations(action)) if isinstance(action, str) else []
    except pglast.parser.ParseError:
        names = []
    return [Lock(name, UNREAD_LOCK) for name in names] or [Lock("(unknown)", UNREAD_LOCK)]


# -- snapshot ---------------------------------------------------------------------------------
@dataclass
class Snapshot:
    """What a rollback must give back: the table list, the affected tables' shapes and rows."""

    tables: list[str]
    shapes: dict[str, dict[str, Any]]
    #: table -> (row count, order-independent digest of every row)
    checksums: dict[str, tuple[int, str]]
    zdm_objects: list[str]
    #: "view adult_users", "trigger audit on users", "function f(integer)" -> its definition.
    objects: dict[str, str] = field(default_factory=dict)


def user_tables(connection: sa.Connection) -> list[str]:
    return sorted(t for t in sa.inspect(connection).get_table_names() if t not in introspect.INTERNAL_TABLES)


def table_shape(connection: sa.Connection, name: str) -> dict[str, Any]:
    """Columns (type, NULL, default, key), indexes and constraints: what an app or a query plan sees."""
    inspector = sa.inspect(connection)
    with warnings.catch_warnings():  # e.g. a NOT VALID check SQLAlchemy cannot parse
        warnings.simplefilter("ignore", sa.exc.SAWarning)
        key = inspector.get_pk_constraint(name).get("constrained_columns") or []
        columns = {
            c["name"]: [_type_text(c["type"], connection), bool(c["nullable"]), c.get("default"), c["name"] in key]
            for c in inspector.get_columns(name)
        }
        return {
            "columns": columns,
            "primary_key": list(key),
            "indexes": sorted([i["name"], list(i["column_names"]), bool(i["unique"])]
                              for i in inspector.get_indexes(name) if i.get("name")),
            "unique": sorted([u.get("name") or "", list(u["column_names"])]
                             for u in inspector.get_unique_constraints(name)),
            "checks": sorted([c.get("name") or "", c["sqltext"]] for c in inspector.get_check_constraints(name)),
            "foreign_keys": sorted([f.get("name") or "", list(f["constrained_columns"]), f["referred_table"],
                                    list(f["referred_columns"])] for f in inspector.get_foreign_keys(name)),
        }


def _type_text(sa_type: sa.types.TypeEngine[Any], connection: sa.Connection) -> str:
    try:
        return str(sa_type.compile(dialect=connection.dialect))
    except sa.exc.CompileError:
        return repr(sa_type)


def table_checksum(connection: sa.Connection, name: str, leave_out: Iterable[str] = ()) -> tuple[int, str]:
    """Row count and a digest of every row that ignores row order (so no ORDER BY, no key needed).

    Each row hashes its values by column name; the digests are summed modulo 2**128, which a
    lost, added or changed row moves, whatever order the rows come in. ``leave_out``: columns
    whose values may differ by design.
    """
    skipped = set(leave_out)
    table = sa.table(name, *[sa.column(c["name"]) for c in sa.inspect(connection).get_columns(name)
                             if c["name"] not in skipped])
    names = sorted(c.name for c in table.columns)
    total, count = 0, 0
    result = connection.execution_options(yield_per=5000).execute(sa.select(*[table.c[n] for n in names]))
    for row in result:
        text = json.dumps(list(row), default=str, sort_keys=True, separators=(",", ":"))
        total = (total + int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big")) % 2**128
        count += 1
    return count, f"{total:032x}"


def take_snapshot(connection: sa.Connection, tables: Iterable[str],
                  leave_out: dict[str, list[str]] | None = None) -> Snapshot:
    """``leave_out``: table -> columns left out of its checksum (see `filled_columns`)."""
    existing = user_tables(connection)
    affected = [t for t in tables if t in existing]
    return Snapshot(
        tables=existing,
        shapes={t: table_shape(connection, t) for t in affected},
        checksums={t: table_checksum(connection, t, (leave_out or {}).get(t, ())) for t in affected},
        zdm_objects=for_connection(connection).zdm_objects(connection),
        objects=user_objects(connection),
    )


#: The current schema's views, triggers and functions, zdm's own (``zdm_``) left to ``zdm_objects``.
POSTGRES_OBJECTS = """
SELECT CASE c.relkind WHEN 'm' THEN 'materialized view ' ELSE 'view ' END || c.relname, pg_get_viewdef(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('v', 'm') AND n.nspname = current_schema() AND c.relname NOT LIKE 'zdm\\_%'
UNION ALL
SELECT 'trigger ' || t.tgname || ' on ' || c.relname, pg_get_triggerdef(t.oid)
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT t.tgisinternal AND n.nspname = current_schema() AND t.tgname NOT LIKE 'zdm\\_%'
UNION ALL
SELECT 'function ' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')', p.prosrc
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = current_schema() AND p.proname NOT LIKE 'zdm\\_%'
AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                AND d.deptype = 'e')
"""
SQLITE_OBJECTS = """
SELECT type || ' ' || name || CASE type WHEN 'trigger' THEN ' on ' || tbl_name ELSE '' END, sql
FROM sqlite_master WHERE type IN ('view', 'trigger') AND name NOT LIKE 'zdm\\_%' ESCAPE '\\'
"""


def user_objects(connection: sa.Connection) -> dict[str, str]:
    """The app's views, triggers and functions: a ``down`` must drop what its ``up`` created.

    Definitions are compared with quotes and spacing evened out: SQLite rewrites a view's text
    when a table it names is renamed, and renaming back leaves the names quoted.
    """
    query = POSTGRES_OBJECTS if connection.dialect.name == "postgresql" else SQLITE_OBJECTS
    rows = connection.execute(sa.text(query))
    return {str(r[0]): " ".join((r[1] or "").replace('"', "").split()) for r in rows}


def snapshot_differences(before: Snapshot, after: Snapshot) -> list[str]:
    """What the database lost or gained, one line each; empty when it is as it was."""
    found = []
    if before.tables != after.tables:
        gone, new = sorted(set(before.tables) - set(after.tables)), sorted(set(after.tables) - set(before.tables))
        found.append(f"tables differ: missing {gone}, new {new}")
    for name in sorted(set(before.objects) | set(after.objects)):
        was, now = before.objects.get(name), after.objects.get(name)
        if was is None or now is None:
            found.append(f"{name}: was {'absent' if was is None else 'present'}, now "
                         f"{'absent' if now is None else 'present'}")
        elif was != now:
            found.append(f"{name}: definition changed")
    for name, shape in before.shapes.items():
        now = after.shapes.get(name)
        if now is None:
            continue
        for column in sorted(set(shape["columns"]) | set(now["columns"])):
            was_column, now_column = shape["columns"].get(column), now["columns"].get(column)
            if was_column != now_column:
                found.append(f"{name}.{column}: was {_column_text(was_column)}, now {_column_text(now_column)}")
        for part, was in shape.items():
            if part != "columns" and now[part] != was:
                found.append(f"{name} {part.replace('_', ' ')}: was {_brief(was)}, now {_brief(now[part])}")
        rows, digest = before.checksums[name]
        rows_now, digest_now = after.checksums[name]
        if rows != rows_now:
            found.append(f"{name}: {rows:,} rows before, {rows_now:,} after")
        elif digest != digest_now:
            found.append(f"{name}: same {rows:,} rows, but their values changed (checksum {digest[:12]} -> "
                         f"{digest_now[:12]})")
    if after.zdm_objects != before.zdm_objects:
        left = sorted(set(after.zdm_objects) - set(before.zdm_objects))
        found.append(f"zdm objects left behind: {', '.join(left) or '(some were removed)'}")
    return found


def _column_text(column: list[Any] | None) -> str:
    if column is None:
        return "absent"
    type_text, nullable, default, key = column
    return " ".join([type_text, "NULL" if nullable else "NOT NULL", *([f"DEFAULT {default}"] if default else []),
                     *(["PRIMARY KEY"] if key else [])])


def _brief(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 160 else text[:157] + "..."


# -- tracing ----------------------------------------------------------------------------------
@dataclass
class Lock:
    relation: str
    mode: str

    def __str__(self) -> str:
        return lock_name(self.mode) if self.relation == SQLITE_DATABASE else f"{lock_name(self.mode)} {self.relation}"


@dataclass
class StatementTrace:
    """One statement as it ran: what it took, for how long, what it rewrote."""

    step: str
    sql: str
    seconds: float = 0.0
    #: Locks this statement took that its transaction did not hold yet.
    locks: list[Lock] = field(default_factory=list)
    #: From the statement's start until its transaction ended (commit or rollback).
    held_ms: float | None = None
    rewrote: list[str] = field(default_factory=list)
    rows: int | None = None
    #: False when the locks are known from the statement's kind rather than read from the database.
    traced: bool = True

    def breaks_budget(self, budget_ms: float) -> bool:
        held = self.held_ms is not None and self.held_ms > budget_ms
        return held and any(blocks_writes(lock.mode) for lock in self.locks)


@dataclass
class PhaseTrace:
    phase: str
    statements: list[StatementTrace] = field(default_factory=list)


class Tracer(Reporter):
    """A Reporter that records each statement; forwards every event to ``inner`` (progress)."""

    def __init__(self, dialect: str, watched: Iterable[str], inner: Reporter | None = None) -> None:
        self.dialect = dialect
        self.watched = sorted(set(watched))
        self.inner = inner or Reporter()
        self.phases: list[PhaseTrace] = []
        self._step, self._sql = "", ""
        self._backfill: tuple[StatementTrace, float] | None = None
        #: Statements of the open transaction that took locks, with their start times.
        self._open: list[tuple[StatementTrace, float]] = []
        self._held: set[tuple[str, str]] = set()
        #: relfilenode of each watched table: committed, and as the open transaction sees it.
        self._nodes: dict[str, int] = {}
        self._nodes_committed: dict[str, int] = {}
        #: Run once when the next MIGRATING begins: expand has committed, the backfill has not begun.
        self.before_backfill: Callable[[], None] | None = None

    def watch(self, connection: sa.Connection) -> None:
        """Remember the watched tables' storage before anything runs (PostgreSQL)."""
        self._nodes = self._read_nodes(connection)
        self._nodes_committed = dict(self._nodes)

    @property
    def current(self) -> PhaseTrace:
        if not self.phases:
            self.phases.append(PhaseTrace("PENDING"))
        return self.phases[-1]

    # -- runner events -------------------------------------------------------------------------
    def phase(self, plan: MigrationPlan, phase: Phase) -> None:
        self.end_transaction(committed=False)  # a transaction still open here failed
        self.phases.append(PhaseTrace(phase.value))
        self.inner.phase(plan, phase)
        if phase is Phase.MIGRATING and self.before_backfill is not None:
            probe_now, self.before_backfill = self.before_backfill, None
            probe_now()

    def step(self, step: MigrationStep) -> None:
        self._step = step.description
        if step.backfill is not None:
            spec = step.backfill
            locks = [Lock(SQLITE_DATABASE, SQLITE_WRITE_LOCK)] if self.dialect == "sqlite" else [
                Lock(spec.table, "RowExclusiveLock")]
            trace = StatementTrace(step.description, spec.describe(), locks=locks, rows=0, traced=False)
            self.current.statements.append(trace)
            self._backfill = (trace, time.monotonic())
        self.inner.step(step)

    def statement(self, sql: str) -> None:
        self._sql = sql
        self.inner.statement(sql)

    def backfill(self, progress: BackfillProgress) -> None:
        if self._backfill is not None:
            trace, started = self._backfill
            trace.rows = progress.rows_done
            trace.seconds = time.monotonic() - started
            trace.held_ms = max(trace.held_ms or 0.0, progress.batch_ms)  # the longest batch transaction
            if progress.finished:
                self._backfill = None
        self.inner.backfill(progress)

    def note(self, message: str) -> None:
        self.end_transaction(committed=False)  # the runner notes a failure after rolling it back
        self.inner.note(message)

    def executed(self, connection: sa.Connection, action: str | dict[str, Any], seconds: float) -> None:
        started = time.monotonic() - seconds
        trace = StatementTrace(self._step, self._sql, seconds=seconds)
        own_transaction = connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        if self.dialect == "postgresql":
            if own_transaction:  # committed already: its locks are gone; it held them while it ran
                trace.traced, trace.held_ms = False, seconds * 1000
                if not lets_writes_through(action):
                    trace.locks = unread_locks(action)
            else:
                taken = [lock for lock in self._read_locks(connection) if (lock.relation, lock.mode) not in self._held]
                trace.locks = taken
                self._held.update((lock.relation, lock.mode) for lock in taken)
            nodes = self._read_nodes(connection)
            trace.rewrote = sorted(t for t, node in nodes.items() if self._nodes.get(t, node) != node)
            self._nodes = {**self._nodes, **nodes}
            if own_transaction:
                self._nodes_committed = dict(self._nodes)
        else:
            if not own_transaction and (SQLITE_DATABASE, SQLITE_WRITE_LOCK) not in self._held:
                trace.locks, trace.traced = [Lock(SQLITE_DATABASE, SQLITE_WRITE_LOCK)], False
                self._held.add((SQLITE_DATABASE, SQLITE_WRITE_LOCK))
            if isinstance(action, dict) and "rebuild" in action:
                trace.rewrote = [action["rebuild"]["table"]]
        if trace.locks and not own_transaction:
            self._open.append((trace, started))
        self.current.statements.append(trace)
        self.inner.executed(connection, action, seconds)

    def committed(self) -> None:
        self.end_transaction(committed=True)
        self.inner.committed()

    def end_transaction(self, committed: bool) -> None:
        """The open transaction ended: its locks are released, its storage changes kept or not."""
        now = time.monotonic()
        for trace, started in self._open:
            trace.held_ms = (now - started) * 1000
        self._open, self._held = [], set()
        if committed:
            self._nodes_committed = dict(self._nodes)
        else:
            self._nodes = dict(self._nodes_committed)

    # -- reading the database ------------------------------------------------------------------
    def _read_locks(self, connection: sa.Connection) -> list[Lock]:
        rows = connection.execute(sa.text(
            "SELECT c.relname, l.mode FROM pg_locks l "
            "JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' "
            "ORDER BY c.relname, l.mode"
        ))
        return [Lock(r.relname, r.mode) for r in rows]

    def _read_nodes(self, connection: sa.Connection) -> dict[str, int]:
        if self.dialect != "postgresql" or not self.watched:
            return {}
        rows = connection.execute(sa.text(
            "SELECT c.relname, c.relfilenode FROM pg_class c WHERE c.relname = ANY(:names) "
            "AND c.relkind IN ('r', 'p', 'm') AND pg_table_is_visible(c.oid)"
        ), {"names": self.watched})
        return {r.relname: int(r.relfilenode) for r in rows}


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
    """A value an app could write into a column of this type (small, to fit narrow columns)."""
    if column_type is ColumnType.TEXT:
        return f"p{n}{token[:6]}"
    if column_type is ColumnType.INTEGER:
        return random.randint(10_000, 32_000)  # fits a SMALLINT too
    if column_type is ColumnType.BIGINT:
        return random.randint(10**12, 10**15)
    if column_type is ColumnType.BOOLEAN:
        return n % 2 == 0
    if column_type is ColumnType.TIMESTAMP:
        return dt.datetime(2001, 2, 3, 4, 5, 6) + dt.timedelta(seconds=n)
    if column_type is ColumnType.JSON:
        return {"zdm_probe": n}
    raise CannotProbe(f"no sample value for a column of type {column_type.value}")


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
    candidates = [n for n in [*plan.favour, *shape.columns] if n in shape.columns and n not in key]
    writable = [n for n in candidates if shape.columns[n].type is not ColumnType.OTHER]
    probe_column = writable[0] if writable else None
    required = [*key, *[n for n in shape.columns if shape.columns[n].required and n not in key]]
    names = [*required, *([probe_column] if probe_column and probe_column not in required else [])]
    live = introspect.live_table(connection, shape.name)
    missing = [n for n in shape.columns if n not in live.c]
    if missing:
        raise ProbeMismatch(f"no column {', '.join(missing)}")
    done = ["read"]
    _doing("read", lambda: connection.execute(sa.select(*[live.c[n] for n in shape.columns]).limit(1)).all())
    if key:
        done += _update_unrelated(connection, live, shape, plan, probe_column, token)

    def insert(named: list[str], token: str, what: str) -> dict[str, Any]:
        values = {n: _key_value(connection, live, shape, n, token) if n in key
                  else sample_value(shape.columns[n].type, i, token) for i, n in enumerate(named)}
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
        changed = {probe_column: sample_value(shape.columns[probe_column].type, len(names) + 1, token[::-1])}
        what = f"update {probe_column}"
        _doing(what, lambda: connection.execute(live.update().where(where).values(changed)))
        _read_back(connection, live, shape, where, changed, what)
        done.append(what)
    return ", ".join([*done, "read back"])


def _update_unrelated(connection: sa.Connection, live: sa.Table, shape: Table, plan: ProbePlan,
                      probe_column: str | None, token: str) -> list[str]:
    """Update a column the plan does not touch on the existing row with the highest key.

    A backfill walks the key upwards, so before it ends this row is one it has not reached:
    the write must go through (no check of zdm may hold it back), read back what it wrote, and
    leave the columns the plan changes as they were (a NULL may be filled: the write brings an
    unreached row up to date).
    """
    choices = [n for n in plan.unrelated if n != probe_column] or plan.unrelated
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
    written = {column: sample_value(shape.columns[column].type, 7, token[::-1])}
    _doing(what, lambda: connection.execute(live.update().where(where).values(written)))
    expected = {**written, **{n: found[n] for n in kept if found[n] is not None}}
    _read_back(connection, live, shape, where, expected, what)
    return [what]


def _some(names: list[str], shown: int = 3) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def _key_value(connection: sa.Connection, live: sa.Table, shape: Table, name: str, token: str) -> Any:
    column_type = shape.columns[name].type
    if column_type in (ColumnType.INTEGER, ColumnType.BIGINT):
        return int(connection.scalar(sa.select(sa.func.coalesce(sa.func.max(live.c[name]), 0))) or 0) + 1
    return sample_value(column_type, 0, token)


def _read_back(connection: sa.Connection, live: sa.Table, shape: Table, where: sa.ColumnElement[bool],
               written: dict[str, Any], what: str) -> None:
    row = connection.execute(sa.select(*[live.c[n] for n in written]).where(where)).one()._mapping
    for name, value in written.items():
        column_type = shape.columns[name].type
        if column_type.coerce(row[name]) != column_type.coerce(value):
            raise ProbeMismatch(f"after the {what}, {name} reads {row[name]!r}, not the {value!r} written")


# -- the rehearsal ----------------------------------------------------------------------------
@dataclass
class Violation:
    kind: str  # lock, rewrite, probe, rollback, failed
    message: str


@dataclass
class Rehearsal:
    plan_id: str
    dialect: str
    lock_budget_ms: float
    max_rewrite_rows: int | None
    phases: list[PhaseTrace] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    #: Row counts of the affected tables before the rehearsal.
    rows: dict[str, int] = field(default_factory=dict)
    restored: bool | None = None
    differences: list[str] = field(default_factory=list)
    completed: bool = False
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def lock_tracing(self) -> bool:
        return self.dialect == "postgresql"

    @property
    def violations(self) -> list[Violation]:
        found = [Violation("failed", message) for message in self.failures]
        for phase in self.phases:
            for trace in phase.statements:
                if trace.breaks_budget(self.lock_budget_ms):
                    found.append(Violation("lock", f"{phase.phase}: {first_line(trace.sql)}: {_held(trace)} "
                                                   f"(budget {self.lock_budget_ms:,g} ms)"))
                for table in filter(self.rewrite_too_big, trace.rewrote):
                    found.append(Violation("rewrite", f"{phase.phase}: {first_line(trace.sql)}: rewrote {table} "
                                                      f"({self.rows[table]:,} rows > {self.max_rewrite_rows:,})"))
        found += [Violation("probe", f"{p.moment}: the {p.shape} shape of {p.table} failed: {p.detail}")
                  for p in self.probes if p.ok is False]
        if self.restored is False:
            more = f" (and {len(self.differences) - 1} more)" if len(self.differences) > 1 else ""
            found.append(Violation("rollback", f"rollback did not restore the snapshot: {self.differences[0]}{more}"))
        return found

    def rewrite_too_big(self, table: str) -> bool:
        return self.max_rewrite_rows is not None and self.rows.get(table, 0) > self.max_rewrite_rows

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan_id,
            "database": self.dialect,
            "lock_tracing": self.lock_tracing,
            "lock_budget_ms": self.lock_budget_ms,
            "max_rewrite_rows": self.max_rewrite_rows,
            "rows": self.rows,
            "phases": [asdict(phase) for phase in self.phases if phase.statements],
            "probes": [asdict(p) for p in self.probes],
            "restored": self.restored,
            "differences": self.differences,
            "completed": self.completed,
            "notes": self.notes,
            "violations": [asdict(v) for v in self.violations],
            "ok": self.ok,
        }


def _held(trace: StatementTrace) -> str:
    """What a statement over the budget held and how long; unread locks say why they count."""
    blocking = [lock for lock in trace.locks if blocks_writes(lock.mode)]
    if all(lock.mode == UNREAD_LOCK for lock in blocking):
        names = ", ".join(lock.relation for lock in blocking)
        return (f"ran {trace.held_ms:,.0f} ms outside a transaction, where its locks on {names} cannot be read, "
                "and nothing shows that it lets writes through")
    return f"held {describe_locks(blocking)} for {trace.held_ms:,.0f} ms"


def rehearse(
    engine: sa.Engine,
    plan_file: PlanFile,
    *,
    complete: bool = False,
    lock_budget_ms: float | None = None,
    max_rewrite_rows: int | None = DEFAULT_MAX_REWRITE_ROWS,
    probes: bool = True,
    overrides: dict[str, Any] | None = None,
    reporter: Reporter | None = None,
) -> Rehearsal:
    """Start (probing between expand and the backfill), probe, roll back and compare; with ``complete``,
    then start again and complete.

    Raises what the runner raises for bad input (PlanInvalid, PlanStateError) before anything
    runs; a failure while running is recorded in the result instead, so it is reported with the
    rest. Rehearse on a database nobody writes to meanwhile: other writes change the checksums.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    dialect = engine.dialect.name
    refuse_started(engine, plan_file.id)  # before the plan is checked against a schema it already changed
    runner = Runner(engine, overrides=overrides)
    runner.plan(plan_file)  # bad input fails here, before any snapshot or change
    budget = lock_budget_ms or overrides.get("lock_timeout_ms") or plan_file.settings.lock_timeout_ms
    filled = filled_columns(plan_file)
    with engine.connect() as connection:
        tables = affected_tables(connection, plan_file)
        original = introspect.read_schema(connection, tables)
        before = take_snapshot(connection, tables, filled)
        depending = dependency_notes(connection, plan_file, original)
        tracer = Tracer(dialect, tables, reporter)
        tracer.watch(connection)
        connection.rollback()
    final = final_model(plan_file, original, dialect)
    runner.reporter = tracer
    result = Rehearsal(plan_file.id, dialect, budget, max_rewrite_rows, phases=tracer.phases,
                       rows={t: rows for t, (rows, _) in before.checksums.items()})
    if dialect != "postgresql":
        result.notes.append(f"{dialect}: no lock tracing; each write transaction holds the database write lock "
                            "from its first statement to its commit, shown as DATABASE WRITE")
    result.notes += depending
    result.notes += [f"{table}.{column}: values filled by set_not_null fill are kept after rollback (by design); "
                     "the row checksums leave this column out" for table, names in filled.items() for column in names]

    used = plan_columns(plan_file)
    can_probe = probes and _baseline(engine, result, original, final, budget, used)
    if can_probe:  # after expand, before the backfill: no row reached yet, so unrelated writes meet unreached rows
        tracer.before_backfill = lambda: _probe_shapes(engine, result, AFTER_EXPAND, original, final, budget,
                                                       ("old", "new"), used)
    started = _run(result, tracer, lambda: runner.start(plan_file))
    tracer.before_backfill = None
    if started and can_probe:
        _probe_shapes(engine, result, "MIGRATING", original, final, budget, ("old", "new"), used)
    if started:
        _run(result, tracer, lambda: runner.rollback(plan_file.id))
    with engine.connect() as connection:
        result.differences = snapshot_differences(before, take_snapshot(connection, tables, filled))
        connection.rollback()
    result.restored = not result.differences

    if complete:
        if result.failures or not result.restored:
            result.notes.append("--complete skipped: the rehearsal already failed, the database is left as it is")
        else:
            shown = len(tracer.phases)  # the second start repeats what the first one showed
            again = _run(result, tracer, lambda: runner.start(plan_file))
            del tracer.phases[shown:]
            if again and _run(result, tracer, lambda: runner.complete(plan_file.id)):
                result.completed = True
                if can_probe:
                    _probe_shapes(engine, result, "COMPLETE", original, final, budget, ("new",), used)
    return result


def refuse_started(engine: sa.Engine, plan_id: str) -> None:
    """A plan started or complete here has changed the schema: rehearsing it again proves nothing."""
    with engine.connect() as connection:
        found = state.load(connection, plan_id)
    if found is None or found[0].phase is Phase.ROLLED_BACK:
        return
    phase = found[0].phase
    what = "already complete" if phase is Phase.COMPLETE else f"already started ({phase.value})"
    raise PlanStateError(f"plan {plan_id!r} is {what} in this database: rehearse it on one where it has not "
                         "started (or was rolled back)")


#: PostgreSQL's contype letters.
CONSTRAINT_KINDS = {"c": "check constraint", "u": "unique constraint", "f": "foreign key", "p": "primary key",
                    "x": "exclusion constraint"}


def dependency_notes(connection: sa.Connection, plan_file: PlanFile, schema: Schema) -> list[str]:
    """For each column the plan renames, retypes or drops, the user objects that use it and what becomes of them.

    Read from the live catalog (``Dialect.column_facts``) before anything runs. What zdm cannot carry
    was refused already, when the plan was compiled; these notes are for the reviewer, who may own
    a view or a trigger the deploy should know about.
    """
    dialect = for_connection(connection)
    notes = []
    for operation in plan_file.operations:
        if not isinstance(operation, RenameColumn | AlterColumn | DropColumn):
            continue
        table = schema.tables.get(operation.table)
        if table is None or operation.column not in table.columns:
            continue  # a column an earlier operation of the plan adds: nothing uses it yet
        facts = dialect.column_facts(connection, operation.table, operation.column)
        column = f"{operation.table}.{operation.column}"
        fate = _fate(operation, dialect.name)
        described = []
        for dependent in facts.dependents:
            described.append((_dependent_name(dependent), f"uses {column}",
                              "statistics" if dependent.startswith("statistics object") else "dependent"))
        for trigger in facts.triggers:
            name = f"trigger {trigger.name} on {operation.table}"
            if trigger.names_column and f"trigger {trigger.name} on table {operation.table}" not in facts.dependents:
                function = f" (function {trigger.function})" if trigger.function else ""
                described.append((name + function, f"names {column} in its code", "trigger"))
        for child, name, _definition in facts.referenced_by:
            what = f"a foreign key of {child}" if name == "(unnamed)" else f"foreign key {name} of {child}"
            described.append((what, f"references {column}", "referenced_by"))
        for name, (kind, _definition) in facts.constraints.items():
            described.append((f"{CONSTRAINT_KINDS.get(kind, 'constraint')} {name}", f"uses {column}", "constraint"))
        notes += [f"{what} {verb} ({fate(kind)})" for what, verb, kind in described]
    return notes


def _dependent_name(described: str) -> str:
    """PostgreSQL's description of a dependent object, as a reviewer names it."""
    if match := re.fullmatch(r"rule _RETURN on (view|materialized view) (.+)", described):
        return f"{match[1]} {match[2]}"
    if match := re.fullmatch(r"default value for column (.+) of table (.+)", described):
        return f"generated column {match[2]}.{match[1]}"  # a generated column's expression is its "default"
    return described


def _fate(operation: RenameColumn | AlterColumn | DropColumn, dialect: str) -> Callable[[str], str]:
    """What becomes of an object of a kind (dependent, statistics, trigger, referenced_by, constraint) that uses
    the column, once the plan is complete."""
    if isinstance(operation, RenameColumn):
        return lambda kind: "kept: renamed in place"
    if isinstance(operation, AlterColumn):
        if dialect == "sqlite":  # one rebuild retypes the column where it is
            renamed = f", then renamed to {operation.new_name}" if operation.new_name else ""
            return lambda kind: f"kept: the column is retyped in place{renamed}"
        new_type = operation.type.value

        def replaced(kind: str) -> str:
            if kind in ("constraint", "referenced_by"):
                return f"carried to the new {new_type} column"
            if kind == "trigger":
                return f"kept: the column keeps its name, its type becomes {new_type}"
            return f"the column is replaced by a {new_type} copy at complete"

        return replaced

    def dropped(kind: str) -> str:
        if kind == "constraint":
            return "dropped with the column at complete"
        if kind == "statistics":
            return "loses the column at complete"
        if kind == "trigger":
            return "breaks once complete drops the column: change it first"
        return "complete fails while it uses the column: drop it first"

    return dropped


def filled_columns(plan_file: PlanFile) -> dict[str, list[str]]:
    """Columns whose NULLs a ``set_not_null`` ``fill`` replaces: a rollback cannot tell them apart, so keeps them."""
    found: dict[str, list[str]] = {}
    for operation in plan_file.operations:
        if isinstance(operation, SetNotNull) and operation.fill is not None:
            found.setdefault(operation.table, []).append(operation.column)
    return found


def affected_tables(connection: sa.Connection, plan_file: PlanFile) -> list[str]:
    """The tables the plan names; every table when a ``sql`` step does not name its own."""
    named = [getattr(op, "table", None) for op in plan_file.operations]
    if any(name is None for name in named):
        return user_tables(connection)
    return sorted(set(named))  # type: ignore[arg-type]


def final_model(plan_file: PlanFile, schema: Schema, dialect: str) -> Schema:
    """The schema the new app version expects: every operation applied through CONTRACTING."""
    final = schema.copy()
    for operation in plan_file.operations:
        for phase in STEP_PHASES:
            operation.apply_to_model(final, phase, dialect)
    return final


def _run(result: Rehearsal, tracer: Tracer, command: Any) -> bool:
    """Run a runner command; a failure becomes part of the result, bad input (exit code 2) is raised."""
    try:
        command()
    except ZdmError as exc:
        if exc.exit_code == PlanStateError.exit_code:
            raise
        tracer.end_transaction(committed=False)
        result.failures.append(str(exc))
        return False
    return True


def _shapes(original: Schema, final: Schema) -> list[tuple[str, Table | None, Table | None]]:
    names = sorted(set(original.tables) | set(final.tables))
    return [(n, original.tables.get(n), final.tables.get(n)) for n in names]


def _baseline(engine: sa.Engine, result: Rehearsal, original: Schema, final: Schema, budget: float,
              used: dict[str, set[str]]) -> bool:
    """Probe the old shape before anything runs: a probe that fails even now cannot judge the plan."""
    for name, old, new in _shapes(original, final):
        if old is None:
            continue
        try:
            ok, detail = probe(engine, old, probe_plan(original, old, new, used.get(name, set())), budget)
        except CannotProbe as exc:
            ok, detail = False, str(exc)
        if not ok:
            result.probes.append(Probe("before start", "old", name, None, f"probes skipped: {detail}"))
            return False
    return True


def _probe_shapes(engine: sa.Engine, result: Rehearsal, moment: str, original: Schema, final: Schema,
                  budget: float, shapes: tuple[str, ...], used: dict[str, set[str]]) -> None:
    for name, old, new in _shapes(original, final):
        for label, shape, other in (("old", old, new), ("new", new, old)):
            if label not in shapes or shape is None:
                continue
            try:
                ok, detail = probe(engine, shape, probe_plan(original, shape, other, used.get(name, set())), budget)
            except CannotProbe as exc:
                result.probes.append(Probe(moment, label, name, None, str(exc)))
                continue
            result.probes.append(Probe(moment, label, name, ok, detail))


def probe_plan(original: Schema, shape: Table, other: Table | None, used: set[str]) -> ProbePlan:
    """What to write in ``shape``, given the other version's shape of the same table and the columns
    the plan names on it."""
    # Prefer the columns only this version knows: they are the ones the plan changes.
    favour = [c for c in shape.columns if other is None or c not in other.columns]
    changed = [c for c in shape.columns
               if other is not None and (c not in other.columns or other.columns[c] != shape.columns[c])]
    held = constrained_columns(original, shape)
    unrelated = [c for c, column in shape.columns.items()
                 if not column.primary_key and column.type is not ColumnType.OTHER
                 and c not in changed and c not in used and c not in held]
    return ProbePlan(favour, changed, unrelated)


def constrained_columns(schema: Schema, shape: Table) -> set[str]:
    """Columns a made-up value could break a constraint of: CHECKs, UNIQUEs, foreign keys both ways."""
    found = {c for condition in shape.checks.values() for c in condition_columns(condition)}
    found |= {c for columns in shape.uniques.values() for c in columns}
    found |= {c for index in shape.indexes.values() if index.unique for c in index.columns}
    found |= {c for key in shape.foreign_keys.values() for c in key.columns}
    found |= {c for table in schema.tables.values() for key in table.foreign_keys.values()
              if key.ref_table == shape.name for c in key.ref_columns}
    return found


def plan_columns(plan_file: PlanFile) -> dict[str, set[str]]:
    """table -> the columns the plan's operations name there (changed, read from, indexed, checked)."""
    found: dict[str, set[str]] = {}
    for operation in plan_file.operations:
        table = getattr(operation, "table", None)
        if table is None:
            continue
        names = {column for _, column in operation.touches()}
        read = [getattr(operation, "from_column", None), *(getattr(operation, "columns", None) or [])]
        names |= {name for name in read if isinstance(name, str)}  # create_table's columns are not names
        condition = getattr(operation, "condition", None)
        if isinstance(condition, str):
            names |= condition_columns(condition)
        found.setdefault(table, set()).update(names)
        if isinstance(getattr(operation, "ref_table", None), str):
            found.setdefault(operation.ref_table, set()).update(getattr(operation, "ref_columns", None) or [])
    return found


def first_line(sql: str, width: int = 70) -> str:
    lines = [line.strip() for line in sql.strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if len(lines) > 1:
        text += " ..."
    return text if len(text) <= width else text[: width - 3] + "..."


def _reason(exc: BaseException) -> str:
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        return " ".join(str(exc.orig).split())
    return " ".join(str(exc).split())


# -- the human report -------------------------------------------------------------------------
def print_report(result: Rehearsal, console: Console) -> None:
    """A table per phase (statement, locks, held for, rewrite, rows), then probes, rollback, verdict."""
    budget = f"lock budget {result.lock_budget_ms:,g} ms"
    rewrites = "no rewrite limit" if result.max_rewrite_rows is None else \
        f"rewrites up to {result.max_rewrite_rows:,} rows"
    console.print(f"[bold]zdm rehearse {escape(result.plan_id)}[/] on {result.dialect} ({budget}, {rewrites})")
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    for phase in result.phases:
        if not phase.statements:
            continue
        table = RichTable(title=f"[bold]{phase.phase}[/]", title_justify="left", show_edge=False, pad_edge=False)
        table.add_column("statement", no_wrap=True, overflow="ellipsis", max_width=48)
        table.add_column("locks taken", no_wrap=True, overflow="ellipsis", max_width=32)
        for heading in ("held for", "rewrite", "rows"):
            table.add_column(heading, justify="left" if heading == "rewrite" else "right", no_wrap=True)
        for trace in phase.statements:
            late = trace.breaks_budget(result.lock_budget_ms)
            held = "" if trace.held_ms is None else _ms(trace.held_ms)
            if trace.rows is not None and held:  # a backfill: many short transactions
                held += "/batch"
            table.add_row(
                escape(first_line(trace.sql, 100)),
                escape(_locks(trace)),
                f"[red]{held}[/]" if late else held,
                ", ".join(f"[red]{escape(t)}[/]" if result.rewrite_too_big(t) else escape(t)
                          for t in trace.rewrote) or "no",
                _rows(trace, result),
            )
        console.print()
        console.print(table)
    traces = [t for phase in result.phases for t in phase.statements]
    if any(not t.traced and t.locks for t in traces):
        console.print("[dim]* known from the statement's kind (backfill batches, SQLite), "
                      "not read from the database[/]")
    if any(lock.mode == UNREAD_LOCK for t in traces for lock in t.locks):
        console.print("[dim]UNREAD: run outside a transaction, its locks were released before they could be "
                      "read; it counts as blocking writes for as long as it ran[/]")
    if result.probes:
        console.print()
        probes = RichTable(title="[bold]probes[/] (each in a transaction rolled back)", title_justify="left",
                           show_edge=False, pad_edge=False)
        for heading in ("when", "shape", "table", "result"):
            probes.add_column(heading)
        for p in result.probes:
            verdict = "[green]ok[/]" if p.ok else "[red]FAILED[/]" if p.ok is False else "[yellow]not judged[/]"
            probes.add_row(p.moment, p.shape, escape(p.table), f"{verdict}: {escape(p.detail)}")
        console.print(probes)
    console.print()
    if result.restored:
        tables = ", ".join(f"{t} ({rows:,} rows)" for t, rows in result.rows.items()) or "no tables"
        console.print(f"rollback: [green]restored[/] schema and row checksums of {escape(tables)}")
    elif result.restored is False:
        console.print("rollback: [red]did NOT restore the snapshot[/]")
        for difference in result.differences:
            console.print(f"  - {escape(difference)}")
    if result.completed:
        console.print("complete: [bold]the plan is COMPLETE[/]: this database now has the new shape")
    violations = result.violations
    if not violations:
        console.print("[bold green]OK[/]: every statement kept the promise")
        return
    console.print(f"[bold red]FAILED[/]: {len(violations)} broken promise{'s' if len(violations) > 1 else ''}")
    for violation in violations:
        console.print(f"  - {violation.kind}: {escape(violation.message)}")


def _ms(ms: float) -> str:
    return f"{ms:,.1f} ms" if ms < 10 else f"{ms:,.0f} ms"


def _locks(trace: StatementTrace) -> str:
    if not trace.locks:
        return "(outside a transaction)" if not trace.traced and trace.held_ms is not None else ""
    def strength(lock: Lock) -> int:
        return LOCK_MODES.index(lock.mode) if lock.mode in LOCK_MODES else len(LOCK_MODES)

    strongest = max(trace.locks, key=strength)
    others = len(trace.locks) - 1
    return f"{strongest}{f' +{others}' if others else ''}{'' if trace.traced else ' *'}"


def _rows(trace: StatementTrace, result: Rehearsal) -> str:
    if trace.rows is not None:
        return f"{trace.rows:,}"
    if trace.rewrote:
        return f"{sum(result.rows.get(t, 0) for t in trace.rewrote):,}"
    return ""
