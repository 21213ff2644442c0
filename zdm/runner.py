"""The phase walk: which steps run when, in which transaction, and what a failure leaves.

Each phase runs as one transaction together with the state row that records it, so the record
and the database never disagree. The exceptions are statements PostgreSQL forbids inside a
transaction and the backfill, which is many short transactions with a checkpoint each.

When ``start`` fails, the failing transaction is rolled back and the compensating actions of the
steps already committed run, newest first: the plan ends ROLLED_BACK and the database is in its
original shape with every row written meanwhile. When the contract phase of ``complete`` fails,
what contract added is undone and the plan stays MIGRATING: the new app is already deployed and
still needs the new shape, which a rollback would take away.

How an action runs is the action's (``zdm.actions``); a transaction under the lock budget is the
executor's (``zdm.execution``); a backfill's batches are ``zdm.backfill``'s; what differs between
databases is the dialect's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError

from zdm import backfill, db, introspect, planfile, state
from zdm.actions import Action
from zdm.dialects import Dialect, DisabledTrigger, for_connection
from zdm.errors import (
    DataCheckFailed,
    LockBudgetExceeded,
    MigrationFailed,
    PlanInvalid,
    PlanStateError,
    ThrottleInvalid,
    ZdmError,
)
from zdm.execution import Executor
from zdm.plan import Checkpoint, MigrationPlan, MigrationStep, Phase
from zdm.planfile import PlanFile, Problem
from zdm.report import Reporter
from zdm.status import disabled_text
from zdm.throttle import Throttle

__all__ = ["DataCheckFailed", "LockBudgetExceeded", "MigrationFailed", "PlanInvalid", "PlanStateError", "Reporter",
           "Runner", "ThrottleInvalid", "ZdmError"]


class Runner:
    def __init__(self, engine: sa.Engine, reporter: Reporter | None = None,
                 overrides: dict[str, Any] | None = None) -> None:
        self.engine = engine
        self.overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        self.dialect: Dialect = for_connection(engine)
        # Checked once merged with the plan's own (``_use``): a pair may come half from each.
        self.settings = planfile.Settings.model_construct(**self.overrides)
        self.executor = Executor(engine, self.dialect, reporter or Reporter(),
                                 lock_timeout_ms=self.settings.lock_timeout_ms, lock_retries=self.settings.lock_retries)
        #: Where the run stands: the backfill to resume, or the step in flight outside a transaction.
        self._checkpoint = Checkpoint()
        self._throttle = Throttle(engine, self.dialect, "", self.settings)

    @property
    def reporter(self) -> Reporter:
        """Where the run's events go (the executor's too)."""
        return self.executor.reporter

    @reporter.setter
    def reporter(self, reporter: Reporter) -> None:
        self.executor.reporter = reporter

    def _use(self, settings: dict[str, Any], plan: MigrationPlan | None = None) -> None:
        """The settings a run uses (the plan's own, then the command line's), and the tables it may wait on."""
        try:
            self.settings = planfile.Settings(**{**settings, **self.overrides})
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            raise PlanInvalid([Problem("error", f"settings: {where}: {error['msg'].removeprefix('Value error, ')}")]
                              ) from None
        self.executor.lock_timeout_ms = self.settings.lock_timeout_ms
        self.executor.lock_retries = self.settings.lock_retries
        if plan is not None:
            self.executor.tables = _tables_of(plan)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with state.runner_lock(self.engine) as still_held:
            self.executor.still_held = still_held
            try:
                yield
            finally:
                self.executor.still_held = lambda: None

    @contextmanager
    def _throttling(self, plan: MigrationPlan) -> Iterator[None]:
        """The run's throttle (zdm.throttle), checked before anything runs: a limit the database cannot
        measure, a replica that cannot be reached or a probe query that fails is bad input."""
        replicas = [db.create_engine(url) for url in self.settings.replicas]
        try:
            self._throttle = Throttle(self.engine, self.dialect, plan.id, self.settings, replicas)
            self._throttle.check()
            yield
        finally:
            for engine in replicas:
                engine.dispose()

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
            with self._throttling(plan):
                self._forward(plan, checkpoint, (Phase.EXPANDING, Phase.MIGRATING))
            for trigger in self._disabled_triggers(plan):  # turned off while the backfill ran
                self.reporter.note(f"plan {plan.id!r} started, but {disabled_text(trigger, plan.id)}; "
                                   "`zdm complete` refuses until then")
            return plan

    def complete(self, plan_id: str) -> MigrationPlan:
        with self._locked():
            plan, _ = self._load(plan_id)
            if plan.phase is Phase.COMPLETE:
                raise PlanStateError(f"plan {plan_id!r} is already complete")
            if plan.rolling_back:
                raise PlanStateError(_rolling_back(plan))
            if not plan.is_started and plan.phase is not Phase.CONTRACTING:
                hint = "start it again first" if plan.phase is Phase.ROLLED_BACK else "run `zdm start` first"
                raise PlanStateError(f"plan {plan_id!r} is {plan.phase.value}, not ready to complete: {hint}")
            with self.engine.connect() as connection:  # before any lock: what contract relies on is there
                ran = [action for step in plan.steps if step.executed for action in step.forward]
                # CONTRACTING: checked before its first step ran, which may have dropped some
                problems = self.dialect.missing_objects(connection, ran) if plan.phase is Phase.MIGRATING else []
                disabled = self.dialect.disabled_triggers(connection, ran)
            if problems:
                raise PlanStateError(f"plan {plan_id!r} cannot complete: {problems[0]}; `zdm rollback {plan_id}` "
                                     "undoes it, then `zdm start` again")
            if disabled:
                raise PlanStateError(f"plan {plan_id!r} cannot complete: {disabled_text(disabled[0], plan_id)}")
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
            with self._throttling(plan):  # giving back what a fill replaced runs in batches
                self._compensate(plan, checkpoint=checkpoint)
            return plan

    def apply(self, plan_file: PlanFile) -> MigrationPlan:
        """Every phase in one go, for dev databases and apps with a single version running.

        No app depends on the new shape yet, so a failure anywhere, contract included, rolls
        everything back.
        """
        with self._locked():
            plan, checkpoint = self._prepare_start(plan_file)
            with self._throttling(plan):
                self._forward(plan, checkpoint, (Phase.EXPANDING, Phase.MIGRATING, Phase.CONTRACTING))
            self._transition(plan, Phase.COMPLETE)
            return plan

    def status(self) -> list[tuple[MigrationPlan, Checkpoint]]:
        with self.engine.connect() as connection:
            return state.load_all(connection)

    # -- preparing ----------------------------------------------------------------------------
    def _compile(self, connection: sa.Connection, plan_file: PlanFile) -> MigrationPlan:
        schema = introspect.read_schema(connection)
        problems = planfile.check(plan_file, schema)
        if any(p.level == "error" for p in problems):
            raise PlanInvalid(problems)
        try:
            plan = planfile.compile_plan(plan_file, connection)
        except ValueError as exc:  # an operation that cannot be done on this live schema
            raise PlanInvalid([Problem("error", str(exc))]) from None
        for problem in problems:  # warnings of a plan that compiles: a refused one prints its error alone
            self.reporter.note(str(problem))
        plan.source["settings"] = {**plan.source.get("settings", {}), **self.overrides}
        return plan

    def _load(self, plan_id: str) -> tuple[MigrationPlan, Checkpoint]:
        with self.engine.connect() as connection:
            found = state.load(connection, plan_id)
        if found is None:
            raise PlanStateError(f"no plan {plan_id!r} in this database (`zdm status` lists the plans)")
        plan, checkpoint = found
        self._use(plan.source.get("settings", {}), plan)
        return plan, checkpoint

    def _prepare_start(self, plan_file: PlanFile) -> tuple[MigrationPlan, Checkpoint]:
        with self.engine.connect() as connection:
            found = state.load(connection, plan_file.id)
        if found is not None:
            with self.engine.begin() as connection:
                state.ensure_table(connection)  # a table of an earlier release gets its control column
        if found is not None:
            previous, checkpoint = found
            if previous.phase is Phase.COMPLETE:
                raise PlanStateError(f"plan {plan_file.id!r} is already complete")
            if previous.rolling_back:
                raise PlanStateError(_rolling_back(previous))
            if previous.phase is Phase.CONTRACTING:
                raise PlanStateError(f"plan {plan_file.id!r} is being completed: run `zdm complete {plan_file.id}`")
            if previous.is_started:
                raise PlanStateError(
                    f"plan {plan_file.id!r} is already started (MIGRATING): after the deploy run "
                    f"`zdm complete {plan_file.id}`, or undo it with `zdm rollback {plan_file.id}`"
                )
            if previous.phase in (Phase.EXPANDING, Phase.MIGRATING):
                if _operations(previous.source) != plan_file.model_dump(mode="json")["operations"]:
                    raise PlanStateError(
                        f"plan {plan_file.id!r} was interrupted during {previous.phase.value} with other operations "
                        f"than this file's: resume it with the file it started with, or `zdm rollback "
                        f"{plan_file.id}` first")
                self._refuse_disabled_triggers(previous)
                self.reporter.note(f"resuming plan {plan_file.id!r} interrupted during {previous.phase.value}")
                self._resume_settings(previous, plan_file, checkpoint)
                return previous, checkpoint
        self._use(plan_file.settings.model_dump())
        with self.engine.connect() as connection:
            self._refuse_overlap(connection, plan_file.id, {op.table for op in plan_file.operations if op.table})
            plan = self._compile(connection, plan_file)
            connection.rollback()
            self._refuse_overlap(connection, plan_file.id, set(plan.tables))
        if found is not None:
            plan.history, plan.phase = found[0].history, found[0].phase
        with self.engine.begin() as connection:
            state.ensure_table(connection)
        self.executor.tables = _tables_of(plan)
        return plan, Checkpoint()

    def _disabled_triggers(self, plan: MigrationPlan) -> list[DisabledTrigger]:
        """The zdm triggers of the plan's steps that ran which do not fire for the app's sessions."""
        with self.engine.connect() as connection:
            ran = [action for step in plan.steps if step.executed for action in step.forward]
            return self.dialect.disabled_triggers(connection, ran)

    def _refuse_disabled_triggers(self, plan: MigrationPlan) -> None:
        """A resumed start would backfill while the app's writes are not kept in step by a zdm trigger
        someone turned off: refused, nothing changed, until it fires again."""
        disabled = self._disabled_triggers(plan)
        if disabled:
            raise PlanStateError(f"plan {plan.id!r} cannot resume: {disabled_text(disabled[0], plan.id)}")

    def _resume_settings(self, plan: MigrationPlan, plan_file: PlanFile, checkpoint: Checkpoint) -> None:
        """A resumed start runs with the settings given now (the plan file's, then the command line's),
        not those of the interrupted run, and says which changed. What `zdm throttle` stored for the
        interrupted run is dropped; a `zdm pause` stays (`zdm resume` lifts it)."""
        before = planfile.Settings.model_validate(plan.source.get("settings", {})).model_dump()
        self._use(plan_file.settings.model_dump(), plan)
        now = self.settings.model_dump()
        changed = [f"{name} {before[name]} -> {now[name]}" for name in now if before.get(name) != now[name]]
        if changed:
            self.reporter.note(f"settings given now replace those of the interrupted run: {', '.join(changed)}")
        plan.source["settings"] = {**plan_file.settings.model_dump(exclude_defaults=True), **self.overrides}
        with self.engine.begin() as connection:
            control = state.read_control(connection, plan.id)
            if control.settings:
                dropped = ", ".join(f"{k} {v}" for k, v in sorted(control.settings.items()))
                self.reporter.note(f"dropped what `zdm throttle` set for the interrupted run ({dropped})")
                control.settings = {}
                state.write_control(connection, plan.id, control)
            if control.paused:
                self.reporter.note(f"plan {plan.id!r} is paused ({control.by}, {control.at}): the backfill waits "
                                   f"until `zdm resume {plan.id}`")
            state.save(connection, plan, checkpoint)

    def _refuse_overlap(self, connection: sa.Connection, plan_id: str, tables: set[str]) -> None:
        """One plan at a time per table: a second one would build triggers on the first's columns.
        ``tables``: those the plan changes (checked again once the plan is compiled: a key widening
        changes the tables whose foreign keys point at the key, a type change those whose foreign
        keys it copies)."""
        for other, _ in state.load_all(connection):
            if other.id == plan_id or other.phase not in (Phase.EXPANDING, Phase.MIGRATING, Phase.CONTRACTING):
                continue
            shared = tables & set(other.tables)
            if shared:
                raise PlanStateError(
                    f"table {sorted(shared)[0]!r} is being changed by plan {other.id!r} ({other.phase.value}): "
                    f"complete or roll it back first"
                )

    # -- running forward ----------------------------------------------------------------------
    def _forward(self, plan: MigrationPlan, checkpoint: Checkpoint, phases: tuple[Phase, ...]) -> None:
        self._checkpoint = checkpoint  # where the run stands; a failure compensates what it says is in flight
        try:
            for phase in phases:
                if plan.phase in phases and phases.index(plan.phase) > phases.index(phase):
                    continue  # resuming: this phase finished before the interruption
                disabled = self._disabled_triggers(plan) if phase is Phase.CONTRACTING else []
                if disabled:  # `zdm apply`: contract would keep what the new column holds
                    raise MigrationFailed(disabled_text(disabled[0], plan.id))
                if plan.phase is not phase:
                    self._transition(plan, phase)
                self._run_phase(plan, phase)
        except state.RunnerLockLost as exc:
            raise MigrationFailed(f"{exc} during {plan.phase.value}; state and checkpoint are saved: `zdm start` "
                                  f"resumes, `zdm rollback {plan.id}` undoes") from exc
        except sa.exc.DBAPIError as exc:
            if self.dialect.connection_lost(exc):
                raise MigrationFailed(
                    f"lost the database connection during {plan.phase.value}: {reason(exc)}; state and "
                    f"checkpoint are saved: `zdm start` resumes, `zdm rollback {plan.id}` undoes"
                ) from exc
            self._fail_and_compensate(plan, reason(exc), exc)
        except Exception as exc:  # any failure compensates; Ctrl-C and kill leave state to resume
            self._fail_and_compensate(plan, reason(exc), exc)

    def _fail_and_compensate(self, plan: MigrationPlan, why: str, exc: Exception) -> None:
        failed_in = plan.phase.value
        self.reporter.note(f"{failed_in} failed: {why}; compensating")
        try:
            self._compensate(plan, note=f"{failed_in} failed: {why}", checkpoint=self._checkpoint)
        except Exception as undo:
            raise MigrationFailed(
                f"{failed_in} failed: {why}; compensation also failed: {reason(undo)}; "
                f"run `zdm rollback {plan.id}` once the cause is fixed"
            ) from exc
        raise MigrationFailed(f"{failed_in} failed: {why}; rolled back: the database is as it was before "
                              "the plan started") from exc

    def _contract(self, plan: MigrationPlan) -> None:
        if plan.phase is not Phase.CONTRACTING:
            self._transition(plan, Phase.CONTRACTING)
        try:
            self._run_phase(plan, Phase.CONTRACTING)
        except Exception as exc:
            why = reason(exc)
            done = [s for s in plan.steps_of(Phase.CONTRACTING) if s.executed]
            if all(s.compensate for s in done):  # nothing dropped yet: what contract added can go again
                self._undo_contract(plan, done)
                self._transition(plan, Phase.MIGRATING, note=f"contract failed: {why}")
                raise MigrationFailed(
                    f"CONTRACTING failed: {why}; nothing was dropped, the plan is MIGRATING again "
                    "(both app versions keep working)"
                ) from exc
            raise MigrationFailed(f"CONTRACTING failed: {why}; run `zdm complete {plan.id}` again") from exc
        self._transition(plan, Phase.COMPLETE)

    def _undo_contract(self, plan: MigrationPlan, steps: list[MigrationStep]) -> None:
        """Undo contract steps that only added (constraints on the new column), newest first, so that
        the next ``complete`` runs them again."""
        for step in reversed(steps):
            def undo(connection: sa.Connection, step: MigrationStep = step) -> None:
                for action in step.compensate:
                    self.executor.execute(connection, action)
                step.executed = False
                state.save(connection, plan)

            self.executor.transaction(undo, f"compensate {step.description}")

    def _transition(self, plan: MigrationPlan, phase: Phase, note: str = "") -> None:
        plan.transition(phase, state.now(), note)
        self.reporter.phase(plan, phase)
        self.executor.transaction(lambda connection: state.save(connection, plan), f"record {phase.value}")

    def _run_phase(self, plan: MigrationPlan, phase: Phase) -> None:
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
                self._run_backfill(plan, step)
            else:
                self._run_outside_transaction(plan, step)
        self._run_group(plan, group)

    def _run_group(self, plan: MigrationPlan, steps: list[MigrationStep]) -> None:
        """Steps of one phase in one transaction, committed with the record that they ran."""
        if not steps:
            return

        # A contract's data checks scan tables: they run before any statement of the transaction
        # takes a lock (an earlier operation's DROP COLUMN), so no scan happens under one.
        contracting = steps[0].phase is Phase.CONTRACTING

        def first(action: Action) -> bool:
            return contracting and action.only_reads

        def work(connection: sa.Connection) -> None:
            for action in [action for step in steps for action in step.forward if first(action)]:
                self.executor.execute(connection, action)
            for step in steps:
                self.reporter.step(step)
                for action in step.forward:
                    if not first(action):
                        self.executor.execute(connection, action)
            for step in steps:
                step.executed = True
            state.save(connection, plan)

        try:
            self.executor.transaction(work, steps[0].description)
        except BaseException:
            for step in steps:
                step.executed = False
            raise

    def _run_outside_transaction(self, plan: MigrationPlan, step: MigrationStep) -> None:
        """A step with no transaction to commit its record with: it is recorded as in flight first.

        A kill mid-way can leave its object half-built (an INVALID index): ``status`` shows the step
        in flight, ``start`` runs it again (its SQL drops such a leftover first), ``rollback`` undoes it.
        """
        in_flight = self._checkpoint = Checkpoint(step=plan.steps.index(step), outside_transaction=True)
        self.executor.transaction(lambda connection: state.save(connection, plan, in_flight), step.description)
        self.reporter.step(step)

        def work(connection: sa.Connection) -> None:
            for action in step.forward:
                self.executor.execute(connection, action)
                self.reporter.committed()

        self.executor.transaction(work, step.description, autocommit=True)
        step.executed = True
        self.executor.transaction(lambda connection: state.save(connection, plan), step.description)
        self._checkpoint = Checkpoint()

    def _run_backfill(self, plan: MigrationPlan, step: MigrationStep) -> None:
        spec = step.backfill
        assert spec is not None
        self.reporter.step(step)
        self.reporter.statement(spec.describe())
        backfill.run(self.executor, spec, self._checkpoint, step=plan.steps.index(step), what=step.description,
                     batch_size=self.settings.batch_size, throttle=self._throttle,
                     save=lambda connection, at: state.save_checkpoint(connection, plan.id, at))
        step.executed = True
        self.executor.transaction(lambda connection: state.save(connection, plan), step.description)
        self._checkpoint = Checkpoint()

    # -- compensating -------------------------------------------------------------------------
    def _compensate(self, plan: MigrationPlan, note: str = "", checkpoint: Checkpoint | None = None) -> None:
        checkpoint = checkpoint or Checkpoint()
        in_flight = checkpoint.step if checkpoint.outside_transaction else None
        done = [s for i, s in enumerate(plan.steps) if (s.executed or i == in_flight) and not s.rolled_back]
        if any(s.phase is Phase.CONTRACTING and not s.compensate for s in done):
            raise PlanStateError(f"plan {plan.id!r} already ran contract steps; it cannot be rolled back")
        if plan.phase is not Phase.ROLLED_BACK:
            self.reporter.phase(plan, Phase.ROLLED_BACK)
        group: list[MigrationStep] = []
        for step in reversed(done):
            if step.transactional and step.undo_backfill is None:
                group.append(step)
                continue
            self._undo_group(plan, group)
            group = []
            if step.undo_backfill is not None:  # its batches, then its compensate
                self._run_undo_backfill(plan, step, checkpoint)
                self._undo_group(plan, [step])
                continue

            def undo(connection: sa.Connection, step: MigrationStep = step) -> None:
                for action in step.compensate:
                    self.executor.execute(connection, action)

            self.reporter.step(step)
            self.executor.transaction(undo, f"compensate {step.description}", autocommit=True)  # under the lock budget
            self._undo_group(plan, [step], run=False)
        self._undo_group(plan, group)
        plan.transition(Phase.ROLLED_BACK, state.now(), note)

        def record(connection: sa.Connection) -> None:
            state.ensure_table(connection)
            state.save(connection, plan)

        self.executor.transaction(record, f"record {Phase.ROLLED_BACK.value}")

    def _run_undo_backfill(self, plan: MigrationPlan, step: MigrationStep, checkpoint: Checkpoint) -> None:
        """The batches of ``step.undo_backfill``, resumed from ``checkpoint`` when it is this step's (a
        rollback killed mid-way): the rows done before are not visited again."""
        spec = step.undo_backfill
        assert spec is not None
        self.reporter.step(replace(step, backfill=spec))  # reported as the backfill it is
        self.reporter.statement(spec.describe())
        backfill.run(self.executor, spec, checkpoint, step=plan.steps.index(step),
                     what=f"compensate {step.description}", batch_size=self.settings.batch_size,
                     throttle=self._throttle,
                     save=lambda connection, at: state.save_checkpoint(connection, plan.id, at))

    def _undo_group(self, plan: MigrationPlan, steps: list[MigrationStep], run: bool = True) -> None:
        if not steps:
            return

        def work(connection: sa.Connection) -> None:
            for step in steps:
                if run and step.compensate:
                    if step.undo_backfill is None:  # else reported with its batches, which ran first
                        self.reporter.step(step)
                    for action in step.compensate:
                        self.executor.execute(connection, action)
                step.rolled_back = True
            state.save(connection, plan)

        try:
            self.executor.transaction(work, f"compensate {steps[0].description}")
        except BaseException:
            for step in steps:
                step.rolled_back = False
            raise


def _rolling_back(plan: MigrationPlan) -> str:
    undone = sum(1 for step in plan.steps if step.rolled_back)
    return (f"plan {plan.id!r} was being rolled back ({undone} of {len(plan.steps)} steps undone) when it "
            f"stopped: `zdm rollback {plan.id}` finishes the rollback")


def _tables_of(plan: MigrationPlan) -> list[str]:
    return plan.tables


def reason(exc: BaseException) -> str:
    """An exception as one line: the database's own message for a database error."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        return " ".join(str(exc.orig).split())
    return " ".join(str(exc).split())


def _operations(source: dict[str, Any]) -> Any:
    """A stored plan's operations as this release dumps them (a field added since reads as its default)."""
    try:
        return PlanFile.model_validate(source).model_dump(mode="json")["operations"]
    except ValueError:
        return source.get("operations")
