"""Runs the phases: transactions, lock budget and retries, backfill, compensation.

Each phase runs as one transaction together with the state row that records it, so the record
and the database never disagree. The exceptions are statements PostgreSQL forbids inside a
transaction and the backfill, which is many short transactions with a checkpoint each.

When ``start`` fails, the failing transaction is rolled back and the compensating SQL of the
steps already committed runs, newest first: the plan ends ROLLED_BACK and the database is in its
original shape with every row written meanwhile. When the contract phase of ``complete`` fails,
its transaction is rolled back and the plan stays MIGRATING: the new app is already deployed
and still needs the new shape, which a rollback would take away.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import sqlalchemy as sa

from zdm import backfill, introspect, planfile, state
from zdm.db import run_sql
from zdm.dialects import Dialect, for_connection
from zdm.dialects.sqlite import describe_rebuild, run_rebuild
from zdm.plan import MigrationPlan, MigrationStep, Phase
from zdm.planfile import PlanFile, Problem

T = TypeVar("T")


class ZdmError(RuntimeError):
    """An error the CLI reports as one line; ``exit_code`` 2 for bad input, 1 for runtime."""

    exit_code = 1


class PlanInvalid(ZdmError):
    """The plan does not fit the live schema; nothing ran."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        errors = [p.message for p in problems if p.level == "error"]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{errors[0]}{more}")


class PlanStateError(ZdmError):
    """The command does not fit the plan's phase (start twice, complete before start...)."""

    exit_code = 2


class MigrationFailed(ZdmError):
    """A statement failed while running; the message says what state was left."""


class LockBudgetExceeded(MigrationFailed):
    """A lock could not be had within the budget, even after the retries."""


class Reporter:
    """What the runner tells the outside world. The base reports nothing."""

    def phase(self, plan: MigrationPlan, phase: Phase) -> None: ...
    def step(self, step: MigrationStep) -> None: ...
    def statement(self, sql: str) -> None: ...
    def backfill(self, progress: backfill.BackfillProgress) -> None: ...
    def note(self, message: str) -> None: ...

    def executed(self, connection: sa.Connection, action: str | dict[str, Any], seconds: float) -> None:
        """After each statement, on its still-open connection (a lock tracer reads pg_locks here)."""

    def committed(self) -> None:
        """After each transaction zdm commits (locks taken inside it are released now)."""


class Runner:
    def __init__(self, engine: sa.Engine, reporter: Reporter | None = None,
                 overrides: dict[str, Any] | None = None) -> None:
        self.engine = engine
        self.reporter = reporter or Reporter()
        self.overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        self.dialect: Dialect = for_connection(engine)
        self.settings = planfile.Settings(**self.overrides)
        #: Raises once the runner lock is gone; checked before every transaction.
        self._still_held: Callable[[], None] = _always_held
        #: The tables of the plan at work: a lock timeout names the sessions holding locks on them.
        self._tables: list[str] = []

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with state.runner_lock(self.engine) as still_held:
            self._still_held = still_held
            try:
                yield
            finally:
                self._still_held = _always_held

    # -- commands ------------------------------------------------------------------------------
    def plan(self, plan_file: PlanFile) -> MigrationPlan:
        """Check and compile; changes nothing."""
        with self.engine.connect() as connection:
            plan = self._compile(connection, plan_file)
            connection.rollback()
        return plan

    def start(self, plan_file: PlanFile) -> MigrationPlan:
        with self._locked():
            plan, checkpoint = self._prepare_start(plan_file)
            self._forward(plan, checkpoint, (Phase.EXPANDING, Phase.MIGRATING))
            return plan

    def complete(self, plan_id: str) -> MigrationPlan:
        with self._locked():
            plan, _ = self._load(plan_id)
            if plan.phase is Phase.COMPLETE:
                raise PlanStateError(f"plan {plan_id!r} is already complete")
            if not plan.is_started and plan.phase is not Phase.CONTRACTING:
                hint = "start it again first" if plan.phase is Phase.ROLLED_BACK else "run `zdm start` first"
                raise PlanStateError(f"plan {plan_id!r} is {plan.phase.value}, not ready to complete: {hint}")
            self._contract(plan)
            return plan

    def rollback(self, plan_id: str) -> MigrationPlan:
        with self._locked():
            plan, checkpoint = self._load(plan_id)
            if plan.phase is Phase.COMPLETE:
                raise PlanStateError(
                    f"plan {plan_id!r} is complete: its contract phase dropped what a rollback would "
                    "need; write a new plan to change the schema back"
                )
            if plan.phase is Phase.ROLLED_BACK:
                raise PlanStateError(f"plan {plan_id!r} is already rolled back")
            self._compensate(plan, checkpoint=checkpoint)
            return plan

    def apply(self, plan_file: PlanFile) -> MigrationPlan:
        """Every phase in one go, for dev databases and apps with a single version running.

        No app depends on the new shape yet, so a failure anywhere, contract included, rolls
        everything back.
        """
        with self._locked():
            plan, checkpoint = self._prepare_start(plan_file)
            self._forward(plan, checkpoint, (Phase.EXPANDING, Phase.MIGRATING, Phase.CONTRACTING))
            self._transition(plan, Phase.COMPLETE)
            return plan

    def status(self) -> list[tuple[MigrationPlan, dict[str, Any]]]:
        with self.engine.connect() as connection:
            return state.load_all(connection)

    # -- preparing ----------------------------------------------------------------------------
    def _compile(self, connection: sa.Connection, plan_file: PlanFile) -> MigrationPlan:
        schema = introspect.read_schema(connection)
        problems = planfile.check(plan_file, schema)
        if any(p.level == "error" for p in problems):
            raise PlanInvalid(problems)
        for problem in problems:
            self.reporter.note(str(problem))
        try:
            plan = planfile.compile_plan(plan_file, connection)
        except ValueError as exc:  # an operation that cannot be done on this live schema
            raise PlanInvalid([Problem("error", str(exc))]) from None
        plan.source["settings"] = {**plan.source.get("settings", {}), **self.overrides}
        return plan

    def _load(self, plan_id: str) -> tuple[MigrationPlan, dict[str, Any]]:
        with self.engine.connect() as connection:
            found = state.load(connection, plan_id)
        if found is None:
            raise PlanStateError(f"no plan {plan_id!r} in this database (`zdm status` lists the plans)")
        plan, checkpoint = found
        self.settings = planfile.Settings(**{**plan.source.get("settings", {}), **self.overrides})
        self._tables = _tables_of(plan)
        return plan, checkpoint

    def _prepare_start(self, plan_file: PlanFile) -> tuple[MigrationPlan, dict[str, Any]]:
        with self.engine.connect() as connection:
            found = state.load(connection, plan_file.id)
        if found is not None:
            previous, checkpoint = found
            if previous.phase is Phase.COMPLETE:
                raise PlanStateError(f"plan {plan_file.id!r} is already complete")
            if previous.phase is Phase.CONTRACTING:
                raise PlanStateError(f"plan {plan_file.id!r} is being completed: run `zdm complete {plan_file.id}`")
            if previous.is_started:
                raise PlanStateError(
                    f"plan {plan_file.id!r} is already started (MIGRATING): after the deploy run "
                    f"`zdm complete {plan_file.id}`, or undo it with `zdm rollback {plan_file.id}`"
                )
            if previous.phase in (Phase.EXPANDING, Phase.MIGRATING):
                if previous.source.get("operations") != plan_file.model_dump(mode="json")["operations"]:
                    raise PlanStateError(
                        f"plan {plan_file.id!r} was interrupted during {previous.phase.value} with other operations "
                        f"than this file's: resume it with the file it started with, or `zdm rollback "
                        f"{plan_file.id}` first")
                self.settings = planfile.Settings(**{**previous.source.get("settings", {}), **self.overrides})
                self.reporter.note(f"resuming plan {plan_file.id!r} interrupted during {previous.phase.value}")
                self._tables = _tables_of(previous)
                return previous, checkpoint
        self.settings = planfile.Settings(**{**plan_file.settings.model_dump(), **self.overrides})
        with self.engine.connect() as connection:
            self._refuse_overlap(connection, plan_file)
            plan = self._compile(connection, plan_file)
            connection.rollback()
        if found is not None:
            plan.history, plan.phase = found[0].history, found[0].phase
        with self.engine.begin() as connection:
            state.ensure_table(connection)
        self._tables = _tables_of(plan)
        return plan, {}

    def _refuse_overlap(self, connection: sa.Connection, plan_file: PlanFile) -> None:
        """One plan at a time per table: a second one would build triggers on the first's columns."""
        tables = {operation.table for operation in plan_file.operations if operation.table}
        for other, _ in state.load_all(connection):
            if other.id == plan_file.id or other.phase not in (Phase.EXPANDING, Phase.MIGRATING, Phase.CONTRACTING):
                continue
            shared = tables & {operation.get("table") for operation in other.source.get("operations", [])}
            if shared:
                raise PlanStateError(
                    f"table {sorted(shared)[0]!r} is being changed by plan {other.id!r} ({other.phase.value}): "
                    f"complete or roll it back first"
                )

    # -- running forward ----------------------------------------------------------------------
    def _forward(self, plan: MigrationPlan, checkpoint: dict[str, Any], phases: tuple[Phase, ...]) -> None:
        try:
            for phase in phases:
                if plan.phase in phases and phases.index(plan.phase) > phases.index(phase):
                    continue  # resuming: this phase finished before the interruption
                if plan.phase is not phase:
                    self._transition(plan, phase)
                self._run_phase(plan, phase, checkpoint)
        except state.RunnerLockLost as exc:
            raise MigrationFailed(f"{exc} during {plan.phase.value}; state and checkpoint are saved: `zdm start` "
                                  f"resumes, `zdm rollback {plan.id}` undoes") from exc
        except sa.exc.DBAPIError as exc:
            if self._connection_lost(exc):
                raise MigrationFailed(
                    f"lost the database connection during {plan.phase.value}: {_reason(exc)}; state and "
                    f"checkpoint are saved: `zdm start` resumes, `zdm rollback {plan.id}` undoes"
                ) from exc
            self._fail_and_compensate(plan, _reason(exc), exc, checkpoint)
        except Exception as exc:  # any failure compensates; Ctrl-C and kill leave state to resume
            self._fail_and_compensate(plan, _reason(exc), exc, checkpoint)

    def _fail_and_compensate(self, plan: MigrationPlan, reason: str, exc: Exception,
                             checkpoint: dict[str, Any]) -> None:
        failed_in = plan.phase.value
        self.reporter.note(f"{failed_in} failed: {reason}; compensating")
        try:
            self._compensate(plan, note=f"{failed_in} failed: {reason}", checkpoint=checkpoint)
        except Exception as undo:
            raise MigrationFailed(
                f"{failed_in} failed: {reason}; compensation also failed: {_reason(undo)}; "
                f"run `zdm rollback {plan.id}` once the cause is fixed"
            ) from exc
        raise MigrationFailed(f"{failed_in} failed: {reason}; rolled back: the database is as it was before "
                              "the plan started") from exc

    def _contract(self, plan: MigrationPlan) -> None:
        if plan.phase is not Phase.CONTRACTING:
            self._transition(plan, Phase.CONTRACTING)
        try:
            self._run_phase(plan, Phase.CONTRACTING, {})
        except Exception as exc:
            reason = _reason(exc)
            done = [s for s in plan.steps_of(Phase.CONTRACTING) if s.executed]
            if all(s.compensate for s in done):  # nothing dropped yet: what contract added can go again
                self._undo_contract(plan, done)
                self._transition(plan, Phase.MIGRATING, note=f"contract failed: {reason}")
                raise MigrationFailed(
                    f"CONTRACTING failed: {reason}; nothing was dropped, the plan is MIGRATING again "
                    "(both app versions keep working)"
                ) from exc
            raise MigrationFailed(f"CONTRACTING failed: {reason}; run `zdm complete {plan.id}` again") from exc
        self._transition(plan, Phase.COMPLETE)

    def _undo_contract(self, plan: MigrationPlan, steps: list[MigrationStep]) -> None:
        """Undo contract steps that only added (constraints on the new column), newest first, so that
        the next ``complete`` runs them again."""
        for step in reversed(steps):
            def undo(connection: sa.Connection, step: MigrationStep = step) -> None:
                for action in step.compensate:
                    self._execute(connection, action)
                step.executed = False
                state.save(connection, plan)

            self._transaction(undo, f"compensate {step.description}")

    def _transition(self, plan: MigrationPlan, phase: Phase, note: str = "") -> None:
        plan.transition(phase, state.now(), note)
        self.reporter.phase(plan, phase)
        self._transaction(lambda connection: state.save(connection, plan), f"record {phase.value}")

    def _run_phase(self, plan: MigrationPlan, phase: Phase, checkpoint: dict[str, Any]) -> None:
        group: list[MigrationStep] = []
        for step in plan.steps_of(phase):
            if step.executed:
                continue
            if step.transactional and step.backfill is None:
                group.append(step)
                continue
            self._run_group(plan, group)
            group = []
            if step.backfill is not None:
                self._run_backfill(plan, step, checkpoint)
            else:
                self._run_outside_transaction(plan, step, checkpoint)
        self._run_group(plan, group)

    def _run_group(self, plan: MigrationPlan, steps: list[MigrationStep]) -> None:
        """Steps of one phase in one transaction, committed with the record that they ran."""
        if not steps:
            return

        # A contract's data checks scan tables: they run before any statement of the transaction
        # takes a lock (an earlier operation's DROP COLUMN), so no scan happens under one.
        contracting = steps[0].phase is Phase.CONTRACTING

        def first(action: str | dict[str, Any]) -> bool:
            return contracting and isinstance(action, dict) and "check" in action

        def work(connection: sa.Connection) -> None:
            for action in [action for step in steps for action in step.forward if first(action)]:
                self._execute(connection, action)
            for step in steps:
                self.reporter.step(step)
                for action in step.forward:
                    if not first(action):
                        self._execute(connection, action)
            for step in steps:
                step.executed = True
            state.save(connection, plan)

        try:
            self._transaction(work, steps[0].description)
        except BaseException:
            for step in steps:
                step.executed = False
            raise

    def _run_outside_transaction(self, plan: MigrationPlan, step: MigrationStep, checkpoint: dict[str, Any]) -> None:
        """A step with no transaction to commit its record with: it is recorded as in flight first.

        A kill mid-way can leave its object half-built (an INVALID index): ``status`` shows the step
        in flight, ``start`` runs it again (its SQL drops such a leftover first), ``rollback`` undoes it.
        """
        checkpoint.clear()
        checkpoint.update(step=plan.steps.index(step), outside_transaction=True)
        self._transaction(lambda connection: state.save(connection, plan, checkpoint), step.description)
        self.reporter.step(step)

        def work(connection: sa.Connection) -> None:
            for action in step.forward:
                self._execute(connection, action)
                self.reporter.committed()

        self._transaction(work, step.description, autocommit=True)
        step.executed = True
        self._transaction(lambda connection: state.save(connection, plan), step.description)
        checkpoint.clear()

    def _run_backfill(self, plan: MigrationPlan, step: MigrationStep, checkpoint: dict[str, Any]) -> None:
        spec = step.backfill
        assert spec is not None
        self.reporter.step(step)
        self.reporter.statement(spec.describe())
        index = plan.steps.index(step)
        table = self._transaction(lambda connection: backfill.reflect(connection, spec), step.description)
        if checkpoint.get("step") != index:
            found = self._transaction(lambda connection: backfill.plan_range(connection, table, spec),
                                      step.description)
            checkpoint.clear()
            checkpoint.update(step=index, **found)
        size = max(1, self.settings.batch_size)
        rate = backfill.Rate(checkpoint["rows_done"])
        while True:
            started = time.monotonic()

            def batch(connection: sa.Connection, size: int = size) -> tuple[dict[str, Any], int]:
                if self.dialect.name == "postgresql":
                    timeout = max(10 * self.settings.batch_target_ms, 5000)
                    connection.exec_driver_sql(f"SET LOCAL statement_timeout = '{int(timeout)}ms'")
                new, visited = backfill.run_batch(connection, table, spec, checkpoint, size)
                if visited:
                    state.save_checkpoint(connection, plan.id, new)
                return new, visited

            # The checkpoint in memory moves only once its batch has committed: a batch lost with
            # its connection is retried from the same key, not skipped.
            new, visited = self._transaction(batch, step.description)
            checkpoint.update(new)
            elapsed_ms = (time.monotonic() - started) * 1000
            if not visited:
                break
            self.reporter.backfill(rate.progress(spec.table, checkpoint, size, elapsed_ms))
            size = backfill.next_batch_size(size, elapsed_ms, self.settings.batch_target_ms)
            if self.settings.batch_pause_ms:
                time.sleep(self.settings.batch_pause_ms / 1000)
        self.reporter.backfill(rate.progress(spec.table, checkpoint, size, 0.0, finished=True))
        step.executed = True
        self._transaction(lambda connection: state.save(connection, plan, {}), step.description)
        checkpoint.clear()

    # -- compensating -------------------------------------------------------------------------
    def _compensate(self, plan: MigrationPlan, note: str = "", checkpoint: dict[str, Any] | None = None) -> None:
        checkpoint = checkpoint or {}
        in_flight = checkpoint.get("step") if checkpoint.get("outside_transaction") else None
        done = [s for i, s in enumerate(plan.steps) if (s.executed or i == in_flight) and not s.rolled_back]
        if any(s.phase is Phase.CONTRACTING and not s.compensate for s in done):
            raise PlanStateError(f"plan {plan.id!r} already ran contract steps; it cannot be rolled back")
        if plan.phase is not Phase.ROLLED_BACK:
            self.reporter.phase(plan, Phase.ROLLED_BACK)
        group: list[MigrationStep] = []
        for step in reversed(done):
            if step.transactional:
                group.append(step)
                continue
            self._undo_group(plan, group)
            group = []

            def undo(connection: sa.Connection, step: MigrationStep = step) -> None:
                for action in step.compensate:
                    self._execute(connection, action)

            self.reporter.step(step)
            self._transaction(undo, f"compensate {step.description}", autocommit=True)  # under the lock budget
            self._undo_group(plan, [step], run=False)
        self._undo_group(plan, group)
        plan.transition(Phase.ROLLED_BACK, state.now(), note)
        with self.engine.begin() as connection:
            state.ensure_table(connection)
            state.save(connection, plan, {})

    def _undo_group(self, plan: MigrationPlan, steps: list[MigrationStep], run: bool = True) -> None:
        if not steps:
            return

        def work(connection: sa.Connection) -> None:
            for step in steps:
                if run and step.compensate:
                    self.reporter.step(step)
                    for action in step.compensate:
                        self._execute(connection, action)
                step.rolled_back = True
            state.save(connection, plan)

        try:
            self._transaction(work, f"compensate {steps[0].description}")
        except BaseException:
            for step in steps:
                step.rolled_back = False
            raise

    # -- executing ------------------------------------------------------------------------------
    def _execute(self, connection: sa.Connection, action: str | dict[str, Any]) -> None:
        started = time.monotonic()
        if isinstance(action, dict) and "check" in action:
            self.reporter.statement(describe_action(action, self.dialect))
            run_check(connection, action["check"])
        elif isinstance(action, dict):
            self.reporter.statement(describe_action(action, self.dialect))
            run_rebuild(connection, action["rebuild"])
        else:
            self.reporter.statement(action)
            run_sql(connection, action)
        self.reporter.executed(connection, action, time.monotonic() - started)

    def _transaction(self, work: Callable[[sa.Connection], T], what: str, autocommit: bool = False) -> T:
        """Run ``work`` in a transaction under the lock budget, retrying lock timeouts and lost connections.

        ``autocommit``: each statement commits by itself (CREATE INDEX CONCURRENTLY refuses a
        transaction); ``work`` must then be safe to run again from the start.
        """
        attempts = self.settings.lock_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                self._still_held()
                if autocommit:
                    with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                        for sql in self.dialect.begin(self.settings.lock_timeout_ms):
                            connection.exec_driver_sql(sql.replace("SET LOCAL", "SET"))
                        return work(connection)
                with self.engine.begin() as connection:
                    for sql in self.dialect.begin(self.settings.lock_timeout_ms):
                        connection.exec_driver_sql(sql)
                    result = work(connection)
                self.reporter.committed()
                return result
            except sa.exc.DBAPIError as exc:
                retryable = _is_lock_timeout(exc) or self._connection_lost(exc)
                if not retryable:
                    raise
                if attempt == attempts:
                    if self._connection_lost(exc):
                        raise
                    raise LockBudgetExceeded(
                        f"{what}: no lock within {self.settings.lock_timeout_ms} ms after {attempts} "
                        f"tries; {self._blockers()}"
                    ) from exc
                # A lock comes free in milliseconds; a restarting server takes seconds.
                first = 0.05 if _is_lock_timeout(exc) else 0.5
                delay = min(10.0, first * 2 ** (attempt - 1)) * (0.5 + random.random())
                kind = "lock timeout" if _is_lock_timeout(exc) else "connection lost"
                self.reporter.note(f"{what}: {kind} (try {attempt}/{attempts}), retrying in {delay:.2f} s")
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _connection_lost(self, exc: sa.exc.DBAPIError) -> bool:
        """The connection died, or a new one could not be made (server down or restarting)."""
        if exc.connection_invalidated:
            return True
        # psycopg reports a failed connect without a SQLSTATE (57P03: the server is starting up).
        return (self.dialect.name == "postgresql" and isinstance(exc, sa.exc.OperationalError)
                and getattr(exc.orig, "sqlstate", None) in (None, "57P03"))

    def _blockers(self) -> str:
        if self.dialect.name != "postgresql":
            return "another connection holds the database's write lock"
        # The sessions holding a lock on the plan's tables (on any table for a raw step without one),
        # oldest transaction first: the one zdm queued behind is among them.
        tables = [self.dialect.quote(name) for name in self._tables]
        with self.engine.connect() as connection:
            rows = connection.execute(sa.text(
                "SELECT a.pid, a.application_name, a.state, "
                "EXTRACT(EPOCH FROM now() - a.xact_start) AS open_s FROM pg_stat_activity a "
                "WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() "
                "AND a.xact_start IS NOT NULL AND EXISTS (SELECT 1 FROM pg_locks l "
                "WHERE l.pid = a.pid AND l.granted AND l.locktype = 'relation' AND (cardinality(:tables) = 0 "
                "OR l.relation IN (SELECT to_regclass(t) FROM unnest(:tables) t))) "
                "ORDER BY a.xact_start LIMIT 3"
            ).bindparams(sa.bindparam("tables", type_=sa.ARRAY(sa.Text))), {"tables": tables}).all()
        if not rows:
            return "the blocking session had finished by the time zdm looked"
        return "blocked by " + "; ".join(
            f"pid {r.pid} (application_name {r.application_name!r}, {r.state}, transaction open "
            f"{float(r.open_s):.1f} s)" for r in rows
        )


def _tables_of(plan: MigrationPlan) -> list[str]:
    return sorted({operation["table"] for operation in plan.source.get("operations", []) if operation.get("table")})


def _always_held() -> None:
    """Outside a command there is no runner lock to lose."""


class DataCheckFailed(MigrationFailed):
    """Rows that the change cannot take (unconvertible values, NULLs, orphans, duplicates)."""


def run_check(connection: sa.Connection, check: dict[str, Any]) -> None:
    rows = run_sql(connection, check["query"]).all()
    if rows:
        sample = "; ".join(", ".join(f"{k}={v!r}" for k, v in row._mapping.items()) for row in rows)
        raise DataCheckFailed(f"{check['problem']}: {sample}")


def describe_action(action: str | dict[str, Any], dialect: Dialect) -> str:
    """A stored action as a reader sees it in `zdm plan` and in logs."""
    if isinstance(action, str):
        return action
    if "check" in action:
        return f"-- check, must return no row ({action['check']['problem']}):\n{action['check']['query']}"
    return describe_rebuild(action["rebuild"], dialect.quote)


def _is_lock_timeout(exc: sa.exc.DBAPIError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate == "55P03" or "database is locked" in str(exc.orig)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        return " ".join(str(exc.orig).split())
    return " ".join(str(exc).split())


@contextmanager
def quiet() -> Iterator[None]:
    yield
