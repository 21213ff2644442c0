"""The rehearsal itself: snapshot, start with the tracer, probe, roll back, compare; what the
reviewer should know; what breaks a promise."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa

from zdm import introspect, state
from zdm.dialects import Dialect, for_connection
from zdm.model import ColumnType, Schema, Table
from zdm.plan import STEP_PHASES, Phase
from zdm.planfile import PlanFile
from zdm.rehearse.locks import DEFAULT_MAX_REWRITE_ROWS, UNREAD_LOCK, blocks_writes, describe_locks
from zdm.rehearse.probes import AFTER_EXPAND, CannotProbe, Probe, ProbePlan, probe
from zdm.rehearse.snapshot import snapshot_differences, take_snapshot, user_tables
from zdm.rehearse.tracer import PhaseTrace, StatementTrace, Tracer
from zdm.runner import PlanStateError, Reporter, Runner, ZdmError
from zdm.sqltree import condition_columns

#: A rewrite of a table with more rows than this breaks the promise (``--max-rewrite-rows``).

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

    #: Locks are read back (PostgreSQL); else each write transaction holds the database's write lock.
    lock_tracing: bool = False

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
    def not_judged(self) -> list[Probe]:
        """The probes that could not be judged: no promise broken, but none shown kept either."""
        return [p for p in self.probes if p.ok is None]

    @property
    def ok(self) -> bool:
        """Every promise kept and shown kept: no violation, and every probe judged."""
        return not self.violations and not self.not_judged

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
            "judged": not self.not_judged,
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
    dialect = for_connection(engine)
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
    result = Rehearsal(plan_file.id, dialect.name, budget, max_rewrite_rows, phases=tracer.phases,
                       rows={t: rows for t, (rows, _) in before.checksums.items()}, lock_tracing=dialect.reads_locks)
    if not dialect.reads_locks:
        result.notes.append(f"{dialect.name}: no lock tracing; each write transaction holds the database write lock "
                            "from its first statement to its commit, shown as DATABASE WRITE")
    result.notes += depending
    result.notes += [f"{table}.{column}: values filled by set_not_null fill are NULL again after rollback where the "
                     "row still holds the fill value (a value the app wrote equal to it too); the row checksums "
                     "leave this column out" for table, names in filled.items() for column in names]

    used = plan_columns(plan_file)
    probed = _baseline(engine, result, original, final, budget, used) if probes else set()
    can_probe = bool(probed)
    if can_probe:  # after expand, before the backfill: no row reached yet, so unrelated writes meet unreached rows
        tracer.before_backfill = lambda: _probe_shapes(engine, result, AFTER_EXPAND, original, final, budget,
                                                       ("old", "new"), used, probed)
    started = _run(result, tracer, lambda: runner.start(plan_file))
    tracer.before_backfill = None
    if started and can_probe:
        _probe_shapes(engine, result, "MIGRATING", original, final, budget, ("old", "new"), used, probed)
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
                    _probe_shapes(engine, result, "COMPLETE", original, final, budget, ("new",), used, probed)
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
        name_of_column = operation.existing_column
        if operation.column_fate("dependent", dialect) is None or operation.table is None or name_of_column is None:
            continue  # it changes no column
        table = schema.tables.get(operation.table)
        if table is None or name_of_column not in table.columns:
            continue  # a column an earlier operation of the plan adds: nothing uses it yet
        facts = dialect.column_facts(connection, operation.table, name_of_column)
        column = f"{operation.table}.{name_of_column}"
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
        notes += [f"{what} {verb} ({operation.column_fate(kind, dialect)})" for what, verb, kind in described]
    return notes


def _dependent_name(described: str) -> str:
    """PostgreSQL's description of a dependent object, as a reviewer names it."""
    if match := re.fullmatch(r"rule _RETURN on (view|materialized view) (.+)", described):
        return f"{match[1]} {match[2]}"
    if match := re.fullmatch(r"default value for column (.+) of table (.+)", described):
        return f"generated column {match[2]}.{match[1]}"  # a generated column's expression is its "default"
    return described


def filled_columns(plan_file: PlanFile) -> dict[str, list[str]]:
    """Columns whose NULLs a ``set_not_null`` ``fill`` replaces: a rollback cannot tell them apart, so keeps them."""
    found: dict[str, list[str]] = {}
    for operation in plan_file.operations:
        if operation.filled_columns() and operation.table is not None:
            found.setdefault(operation.table, []).extend(operation.filled_columns())
    return found


def affected_tables(connection: sa.Connection, plan_file: PlanFile) -> list[str]:
    """The tables the plan changes: those it names, and those whose foreign keys point at them
    when the plan changes them too (widening a primary key widens the referencing columns);
    every table when a ``sql`` step does not name its own."""
    named = [getattr(op, "table", None) for op in plan_file.operations]
    if any(name is None for name in named):
        return user_tables(connection)
    tables: set[str] = set(named)  # type: ignore[arg-type]
    children = {key["table"] for name in tables for key in introspect.referencing_foreign_keys(connection, name)}
    if children - tables:
        schema = introspect.read_schema(connection, sorted(tables | children))
        final = final_model(plan_file, schema, for_connection(connection))
        tables |= {name for name in children - tables if _changed(schema.tables.get(name), final.tables.get(name))}
    return sorted(tables)


def _changed(before: Table | None, after: Table | None) -> bool:
    """Whether the model's table differs in what an app or a rollback relies on."""
    if before is None or after is None:
        return before is not after
    return any(getattr(before, part) != getattr(after, part)
               for part in ("columns", "indexes", "uniques", "checks", "foreign_keys"))


def final_model(plan_file: PlanFile, schema: Schema, dialect: Dialect) -> Schema:
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
              used: dict[str, set[str]]) -> set[str]:
    """Probe the old shape of each table before anything runs: a table whose probe fails even now
    cannot judge the plan (its probes are skipped, and reported not judged). Returns the tables
    to probe, and those the plan creates."""
    probed = set()
    for name, old, new in _shapes(original, final):
        if old is None:
            probed.add(name)
            continue
        try:
            ok, detail = probe(engine, old, probe_plan(original, old, new, used.get(name, set())), budget)
        except CannotProbe as exc:
            ok, detail = False, str(exc)
        if ok:
            probed.add(name)
        else:
            result.probes.append(Probe("before start", "old", name, None, f"probes skipped: {detail}"))
    return probed


def _probe_shapes(engine: sa.Engine, result: Rehearsal, moment: str, original: Schema, final: Schema,
                  budget: float, shapes: tuple[str, ...], used: dict[str, set[str]], probed: set[str]) -> None:
    for name, old, new in _shapes(original, final):
        if name not in probed:
            continue
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
                 if not column.primary_key and column.type != ColumnType.OTHER
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
        ref_table = getattr(operation, "ref_table", None)
        if isinstance(ref_table, str):
            found.setdefault(ref_table, set()).update(getattr(operation, "ref_columns", None) or [])
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


