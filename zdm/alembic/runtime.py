"""zdm inside an Alembic run: the env.py helper, and what ``op.zdm_*`` do when a revision runs.

Transactions. Alembic runs a revision inside a transaction on its connection. zdm's runner opens
connections of its own: each phase is its own transaction, the backfill many short ones, a
PostgreSQL ``CREATE INDEX CONCURRENTLY`` none at all, and on SQLite every transaction takes the
database's write lock up front (``BEGIN IMMEDIATE``). Run inside Alembic's open transaction,
zdm would wait for locks its own process holds (SQLite's write lock, or PostgreSQL's lock on a
table an earlier op of the revision altered). So every zdm operation runs inside
``MigrationContext.autocommit_block()``: Alembic commits what the run did so far and its
connection holds no transaction, hence no lock, while zdm works; Alembic begins a new
transaction afterwards for the rest of the revision and its version stamp.

What follows from it: the version stamp of a revision is written only after its zdm operations
succeeded, so a failed (and compensated) start leaves ``alembic current`` on the revision before,
and a rerun resumes or starts again. Put zdm operations first in ``upgrade()``: ordinary ops placed
before them are committed by the autocommit block even if the zdm operation then fails, while
ordinary ops after them are retried by a rerun, which skips a zdm plan already started. Use
``transaction_per_migration=True`` so that each revision commits on its own anyway. On SQLite,
Alembic's engine must not be one that issues ``BEGIN IMMEDIATE`` itself (``zdm.db.create_engine``
does): an autocommit block still begins a (no-op) transaction on it, which would take the lock.

Plan ids: the n-th zdm operation of revision ``R`` is plan ``R`` (n = 1) or ``R_n``, titled
``alembic revision R: ...``. Each operation is its own plan, so two zdm operations of one
revision may not change the same table (zdm allows one plan in flight per table): the second
is refused and the first rolled back.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import sqlalchemy as sa
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from pydantic import ValidationError

from zdm import db, state
from zdm.alembic import autogenerate
from zdm.alembic.offline import Hints, OfflineSchema
from zdm.dialects import for_name
from zdm.model import ModelError
from zdm.operations import Operation
from zdm.plan import MigrationPlan, Phase
from zdm.planfile import PlanFile, PlanFileError, Settings
from zdm.report import HumanReporter
from zdm.runner import Reporter, Runner, ZdmError

#: ``-x zdm=<mode>``: what zdm does in this Alembic run.
MODES = {
    "start": "expand and migrate the zdm operations of the revisions upgraded (the default)",
    "complete": "first contract every started zdm plan of earlier revisions, then as start",
    "apply": "every phase of each zdm operation at once (dev databases, a single app version)",
}
#: Offline, "contract" (or "complete") also prints the contract phase.
SYNONYMS = {"contract": "complete"}
TITLE = "alembic revision {revision}: {what}"
_TITLE = re.compile(r"^alembic revision (\S+): ")
IN_FLIGHT = (Phase.EXPANDING, Phase.MIGRATING, Phase.CONTRACTING)


class ZdmAlembicError(CommandError):
    """A zdm failure inside an Alembic run; the ``alembic`` command prints it as one line."""


@dataclass
class Session:
    """One Alembic invocation with zdm wired in."""

    mode: str
    overrides: dict[str, int]
    reporter: Reporter
    url: sa.URL | None = None  # online: Alembic's database
    offline: OfflineSchema | None = None
    connected: sa.Engine | None = None
    owns_engine: bool = False
    declared: dict[str, int] = field(default_factory=dict)  # revision -> zdm operations so far
    started: list[str] = field(default_factory=list)

    def plan_file(self, revision: str, operation: Operation) -> PlanFile:
        number = self.declared[revision] = self.declared.get(revision, 0) + 1
        plan_id = revision if number == 1 else f"{revision}_{number}"
        try:
            return PlanFile(id=plan_id, title=TITLE.format(revision=revision, what=operation.describe()),
                            operations=[operation])
        except ValidationError:
            raise ZdmAlembicError(f"revision id {revision!r} cannot name a zdm plan ({plan_id!r}): use 1-40 "
                                  "letters, digits, _ and - (alembic revision --rev-id)") from None

    @property
    def engine(self) -> sa.Engine:
        """zdm's own connections to Alembic's database, made when first needed.

        Lazily, so that a run without zdm operations behaves as before on any database.
        """
        if self.connected is None:
            self.connected, self.owns_engine = _engine_like(self.url), True
        return self.connected

    def runner(self) -> Runner:
        return Runner(self.engine, self.reporter, self.overrides)


_session: ContextVar[Session | None] = ContextVar("zdm_alembic_session", default=None)


def run_migrations(context: EnvironmentContext, *, engine: sa.Engine | None = None,
                   reporter: Reporter | None = None, **settings: int) -> None:
    """Run Alembic's migrations with zdm wired in: call it after ``context.configure(...)``.

    It replaces ``with context.begin_transaction(): context.run_migrations()`` in env.py, online
    and offline. ``-x zdm=start|complete|apply`` picks the mode (see MODES; offline,
    ``-x zdm=contract`` prints the contract phase too); ``settings`` and ``-x <setting>=<n>``
    override zdm's plan settings (``lock_timeout_ms``, ``batch_size``...). zdm connects to
    Alembic's database by the same URL unless given an ``engine``.
    """
    arguments = context.get_x_argument(as_dictionary=True)
    mode = SYNONYMS.get(arguments.get("zdm", "start"), arguments.get("zdm", "start"))
    if mode not in MODES:
        raise ZdmAlembicError(f"-x zdm={mode}: use one of {', '.join([*MODES, *SYNONYMS])}")
    migration_context = context.get_context()
    session = Session(mode, _settings({**settings, **arguments}), reporter or HumanReporter(), connected=engine)
    offline = context.is_offline_mode()
    if offline:
        session.offline = OfflineSchema(migration_context.dialect.name)
    else:
        assert migration_context.connection is not None
        session.url = migration_context.connection.engine.url
    autogenerate.install(migration_context, lambda: set() if offline else autogenerate.in_flight_columns(
        [plan for plan in _load_all(session) if plan.phase in IN_FLIGHT]))
    token = _session.set(session)
    try:
        if not offline and mode == "complete":
            _contract_before_upgrading(migration_context, session)
        with _following_create_table(session), _transactional_ddl(migration_context), context.begin_transaction():
            context.run_migrations()
        for plan_id in session.started:
            session.reporter.note(
                f"zdm plan {plan_id} is MIGRATING: deploy the new app version, then contract with "
                f"`alembic -x zdm=complete upgrade head` or `zdm complete {plan_id}`; `alembic downgrade` "
                "or `zdm rollback` undoes it")
    finally:
        _session.reset(token)
        if session.owns_engine and session.connected is not None:
            session.connected.dispose()


def run_operation(context: MigrationContext, operation: Operation, hints: Hints) -> None:
    """``op.zdm_<name>(...)`` in a revision: start (or apply) its plan, or print it offline."""
    session = _current(f"op.zdm_{operation.op}()")
    revision = running_revision()
    if revision not in session.declared:  # the revision's first zdm operation: nothing of zdm's ran yet
        _refuse_shared_tables(revision)
    plan_file = session.plan_file(revision, operation)
    with _command_errors(plan_file.id):
        if session.offline is not None:
            session.offline.render(context, plan_file, hints, contract=session.mode in ("complete", "apply"))
            return
        stored = _load(session, plan_file.id)
        if stored is not None and (stored.is_started or stored.phase in (Phase.CONTRACTING, Phase.COMPLETE)):
            session.reporter.note(f"zdm plan {plan_file.id} is already {stored.phase.value}: not started again")
            return
        _refuse_overlap(session, context, revision, plan_file.id, operation)
        with context.autocommit_block():
            if session.mode == "apply":
                session.runner().apply(plan_file)
            else:
                session.runner().start(plan_file)
                session.started.append(plan_file.id)


def rollback_revision(context: MigrationContext) -> None:
    """``op.zdm_rollback()`` in a revision's downgrade(): roll back its plans, newest first."""
    session = _current("op.zdm_rollback()")
    revision = running_revision()
    if session.offline is not None:
        context.impl.static_output(f"-- zdm: the plans of revision {revision} are rolled back online only "
                                   f"(alembic downgrade, or zdm rollback {revision})")
        return
    with _command_errors(revision):
        plans = [plan for plan in _load_all(session) if revision_of(plan) == revision]
        contracted = [plan.id for plan in plans if plan.phase in (Phase.CONTRACTING, Phase.COMPLETE)]
        if contracted:  # checked for every plan first: a downgrade undoes all of the revision or nothing
            raise ZdmAlembicError(
                f"revision {revision} cannot be downgraded: zdm plan {contracted[0]} ran its contract phase, which "
                "dropped what a rollback needs; nothing was rolled back (write a new revision to change back)")
        for plan in plans:
            if plan.phase is Phase.ROLLED_BACK:
                session.reporter.note(f"zdm plan {plan.id} is already rolled back")
        _roll_back(session, context, revision, [plan for plan in plans if plan.phase is not Phase.ROLLED_BACK])


def _refuse_shared_tables(revision: str) -> None:
    """Two zdm operations of one revision on one table can never both start (one plan in flight per
    table): refuse at the first, before any of them runs, rather than after a whole backfill.

    The running function (``upgrade()``) is read, not run: its ``op.zdm_*`` calls whose table is a
    literal. One the source does not show (a loop, a variable) is still refused when it comes
    (``_refuse_overlap``).
    """
    frame = _revision_frame()
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(frame.f_code)))
    except (OSError, TypeError, SyntaxError):
        return
    seen: dict[str, tuple[str, int]] = {}
    first_line = frame.f_code.co_firstlineno
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr.startswith("zdm_") and node.func.attr != "zdm_rollback"):
            continue
        given = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "table"), None)
        if not (isinstance(given, ast.Constant) and isinstance(given.value, str)):
            continue
        call = (f"op.{node.func.attr}()", first_line + node.lineno - 1)
        if given.value in seen:
            earlier = seen[given.value]
            raise ZdmAlembicError(
                f"zdm {revision}: {earlier[0]} (line {earlier[1]}) and {call[0]} (line {call[1]}) both change table "
                f"{given.value!r}, and zdm runs one plan per table at a time: put them in two revisions, deployed "
                "one after the other; nothing was started")
        seen[given.value] = call


def _revision_frame() -> FrameType:
    """The frame of the revision's running upgrade() or downgrade() (see running_revision)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if "revision" in frame.f_globals and "down_revision" in frame.f_globals:
            return frame
        frame = frame.f_back
    raise ZdmAlembicError("zdm operations run inside a revision's upgrade() or downgrade()")


def revision_of(plan: MigrationPlan) -> str | None:
    """The Alembic revision a plan belongs to; None for a plan started from a plan file."""
    found = _TITLE.match(plan.title)
    return found.group(1) if found else None


def running_revision() -> str:
    """The revision whose upgrade() or downgrade() is running.

    Alembic does not tell an operation which revision invoked it; the call stack does. Every
    revision file defines module-level ``revision`` and ``down_revision``, so the nearest caller
    whose module has both is the revision script.
    """
    return str(_revision_frame().f_globals["revision"])


# -- helpers ---------------------------------------------------------------------------------------
def _current(what: str) -> Session:
    session = _session.get()
    if session is None:
        raise ZdmAlembicError(f"{what} needs zdm wired into env.py: call zdm.alembic.run_migrations(context) "
                              "instead of context.run_migrations()")
    return session


def _contract_before_upgrading(migration_context: MigrationContext, session: Session) -> None:
    """``-x zdm=complete`` contracts only on the way up, before the first revision is upgraded.

    A command without a destination (``current``, ``check``, ``heads``) only reads, and a downgrade
    needs what a contract drops. Alembic tells the direction only through the steps it is about to
    run, so zdm looks at them first, before any of them runs.
    """
    if migration_context.opts.get("destination_rev") is None:
        return
    steps_of = migration_context._migrations_fn
    assert steps_of is not None

    def steps(heads: Any, migration: MigrationContext) -> list[Any]:
        planned = list(steps_of(heads, migration))
        if any(not step.is_upgrade for step in planned):
            raise ZdmAlembicError("-x zdm=complete contracts zdm plans before an upgrade, and a downgrade needs "
                                  "what a contract drops: run the downgrade without -x zdm=complete")
        connection = migration.connection
        if migration._transaction is None and connection is not None and connection.in_transaction():
            # Alembic read its version table in a transaction SQLAlchemy began on its own, which
            # holds SQLite's shared lock (a real BEGIN: see _transactional_ddl) and would keep zdm's
            # contract from committing. Nothing was written in it yet.
            connection.commit()
        _complete_started(session)
        return planned

    migration_context._migrations_fn = steps


def _complete_started(session: Session) -> None:
    """Contract the started plans of Alembic revisions, oldest first (``-x zdm=complete``)."""
    with _command_errors("complete"):
        for plan in _load_all(session):
            if revision_of(plan) is not None and (plan.is_started or plan.phase is Phase.CONTRACTING):
                session.runner().complete(plan.id)


def _roll_back(session: Session, context: MigrationContext, revision: str, plans: list[MigrationPlan]) -> None:
    """Roll back plans of ``revision``, newest first."""
    for plan in sorted(plans, key=lambda p: _number(p, revision), reverse=True):
        with context.autocommit_block():
            session.runner().rollback(plan.id)


def _refuse_overlap(session: Session, context: MigrationContext, revision: str, plan_id: str,
                    operation: Operation) -> None:
    """One plan in flight per table (the runner's rule), checked before Alembic commits anything.

    Two revisions changing one table need two deploys: say how to get to the second. Two operations
    of one revision on one table can never start: the revision's plans already started are rolled
    back, so that nothing of a revision Alembic did not stamp stays in flight.
    """
    for other in _load_all(session):
        tables = set(other.tables)
        if other.id == plan_id or other.phase not in IN_FLIGHT or operation.table not in tables:
            continue
        if revision_of(other) == revision:
            _roll_back(session, context, revision, [plan for plan in _load_all(session)
                                                    if revision_of(plan) == revision and plan.phase in IN_FLIGHT])
            raise ZdmAlembicError(
                f"zdm {plan_id}: zdm plan {other.id} of the same revision also changes table {operation.table!r}, "
                "and zdm runs one plan per table at a time: put the two operations in two revisions, deployed "
                f"one after the other; {other.id} was rolled back")
        retry = (f"; {other.id} was started by this run, so do not rerun with -x zdm=complete before its app "
                 "version is deployed: that would contract it while the old app still uses the old shape"
                 if other.id in session.started else "")
        raise ZdmAlembicError(
            f"zdm {plan_id}: table {operation.table!r} is being changed by zdm plan {other.id!r} "
            f"({other.phase.value}), so this change needs a deploy of its own: once the app version "
            f"for {other.id} is fully deployed, run `alembic -x zdm=complete upgrade <revision>`{retry}")


def _load(session: Session, plan_id: str) -> MigrationPlan | None:
    with _reading(session) as connection:
        found = state.load(connection, plan_id)
    return None if found is None else found[0]


def _load_all(session: Session) -> list[MigrationPlan]:
    with _reading(session) as connection:
        return [plan for plan, _ in state.load_all(connection)]


def _reading(session: Session) -> sa.Connection:
    """A connection of zdm's that only reads, in no transaction: it takes no write lock (SQLite's
    BEGIN IMMEDIATE would wait for Alembic's open transaction, which wrote the revision's ops so far)."""
    return session.engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def _number(plan: MigrationPlan, revision: str) -> int:
    return 1 if plan.id == revision else int(plan.id.rsplit("_", 1)[1])


def _engine_like(url: sa.URL | None) -> sa.Engine:
    assert url is not None
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        raise ZdmAlembicError("zdm runs on connections of its own, so it needs a SQLite database file, "
                              "not an in-memory database")
    return db.create_engine(url)


def _settings(values: dict[str, Any]) -> dict[str, int]:
    chosen = {key: value for key, value in values.items() if key in Settings.model_fields}
    try:
        return Settings(**chosen).model_dump(include=set(chosen))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ZdmAlembicError(f"zdm setting {first['loc'][0]}: {first['msg']}") from None


@contextmanager
def _following_create_table(session: Session) -> Iterator[None]:
    if session.offline is None:
        yield
        return
    with session.offline.following_create_table():
        yield


@contextmanager
def _transactional_ddl(context: MigrationContext) -> Iterator[None]:
    """Alembic's connection rolls back DDL with the rest of a failed revision (SQLite: see the dialect)."""
    if context.as_sql or context.connection is None:  # offline
        yield
        return
    try:
        dialect = for_name(context.dialect.name)
    except ValueError:  # a database zdm does not run on: Alembic as it is
        yield
        return
    with dialect.transactional_ddl(context.connection):
        yield


@contextmanager
def _command_errors(what: str) -> Iterator[None]:
    """zdm's own errors become Alembic command errors: one line from the ``alembic`` command."""
    try:
        yield
    except (ZdmError, PlanFileError, ModelError, ValueError, state.RunnerBusy, db.DatabaseUnavailable) as exc:
        if isinstance(exc, CommandError):
            raise
        raise ZdmAlembicError(f"zdm {what}: {' '.join(str(exc).split())}") from exc
