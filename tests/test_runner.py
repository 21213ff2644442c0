"""The runner's promises: failures compensate, phases refuse what does not fit, one runner at a time."""

from __future__ import annotations

import fcntl
from typing import Any

import pytest
import sqlalchemy as sa
from support import App, Phase, apply_phases, assert_agrees, runner, setup, users_schema, zdm_objects

from zdm import oracle, planfile, state
from zdm.actions import DataCheck
from zdm.dialects.postgresql import ADVISORY_LOCK_KEY
from zdm.runner import MigrationFailed, PlanInvalid, PlanStateError, Reporter, Runner
from zdm.state import RunnerBusy

RENAME = {"id": "rename-email", "operations": [
    {"op": "rename_column", "table": "users", "column": "email", "new_name": "email_address"}]}


def _snapshot(engine: sa.Engine) -> tuple[object, list[str]]:
    with engine.connect() as connection:
        schema = oracle.read(connection)
        objects = sorted(sa.inspect(connection).get_table_names())
    return schema, objects


def _add_failing_trigger(engine: sa.Engine) -> None:
    """A user trigger that refuses any update of row 60 (a backfill does not fire it)."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql(
                "CREATE FUNCTION refuse_60() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.id = 60 THEN RAISE EXCEPTION 'row 60 is frozen'; END IF; RETURN NEW; END $$")
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse_60 BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION refuse_60()")
        else:
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse_60 BEFORE UPDATE ON users WHEN NEW.id = 60 "
                "BEGIN SELECT RAISE(ABORT, 'row 60 is frozen'); END")


def test_failure_during_migrate_compensates_everything(zdm_database_url: str) -> None:
    model = users_schema()
    engine = setup(zdm_database_url, model)
    _add_failing_trigger(engine)  # a backfill fires no user trigger: it must survive the rebuilds, not fail them
    plan = planfile.parse({**RENAME, "operations": [
        *RENAME["operations"], {"op": "add_check", "table": "users", "name": "users_not_60", "condition": "id <> 60"}]})

    with pytest.raises(MigrationFailed, match=r"users_not_60.*rolled back"):
        runner(engine, batch_size=10).start(plan)

    assert_agrees(engine, model)  # original shape, every row
    assert zdm_objects(engine) == []
    with engine.connect() as connection:
        recorded, checkpoint = state.load(connection, plan.id)
        checkpoint = checkpoint.to_dict()
        triggers = connection.exec_driver_sql(
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal" if engine.dialect.name == "postgresql"
            else "SELECT name FROM sqlite_master WHERE type = 'trigger'").scalars().all()
    assert recorded.phase is Phase.ROLLED_BACK
    assert "users_not_60" in recorded.history[-1].note
    assert all(s.rolled_back for s in recorded.steps if s.executed)
    assert checkpoint == {}
    assert triggers == ["refuse_60"]  # the user's own trigger survives the rebuilds


def test_start_twice_is_refused_and_changes_nothing(zdm_database_url: str) -> None:
    engine = setup(zdm_database_url, users_schema())
    plan = planfile.parse(RENAME)
    runner(engine).start(plan)
    before = _snapshot(engine)
    with pytest.raises(PlanStateError, match=r"already started.*zdm complete rename-email"):
        runner(engine).start(plan)
    assert _snapshot(engine) == before


def test_phase_commands_out_of_order(zdm_database_url: str) -> None:
    engine = setup(zdm_database_url, users_schema())
    plan = planfile.parse(RENAME)
    run = runner(engine)
    with pytest.raises(PlanStateError, match="no plan 'rename-email'"):
        run.complete(plan.id)
    with pytest.raises(PlanStateError, match="no plan"):
        run.rollback(plan.id)
    run.start(plan)
    run.rollback(plan.id)
    with pytest.raises(PlanStateError, match="already rolled back"):
        run.rollback(plan.id)
    with pytest.raises(PlanStateError, match="ROLLED_BACK, not ready to complete"):
        run.complete(plan.id)
    run.start(plan)
    run.complete(plan.id)
    with pytest.raises(PlanStateError, match="complete: its contract phase dropped"):
        run.rollback(plan.id)
    with pytest.raises(PlanStateError, match="already complete"):
        run.start(plan)
    with engine.connect() as connection:
        recorded, _ = state.load(connection, plan.id)
    assert [h.phase for h in recorded.history] == [
        Phase.EXPANDING, Phase.MIGRATING, Phase.ROLLED_BACK, Phase.EXPANDING, Phase.MIGRATING,
        Phase.CONTRACTING, Phase.COMPLETE]


def test_invalid_plan_changes_nothing(zdm_database_url: str) -> None:
    engine = setup(zdm_database_url, users_schema())
    before = _snapshot(engine)
    bad = [
        ({"op": "rename_column", "table": "users", "column": "nope", "new_name": "x"}, "no column 'nope'"),
        ({"op": "rename_column", "table": "users", "column": "email", "new_name": "name"},
         "already has a column 'name'"),
        ({"op": "drop_column", "table": "orders", "column": "x"}, "table 'orders' does not exist"),
        ({"op": "rename_column", "table": "users", "column": "id", "new_name": "key"}, "primary key"),
        ({"op": "add_column", "table": "users", "column": "email", "type": "TEXT"}, "already has a column 'email'"),
    ]
    for operation, message in bad:
        with pytest.raises(PlanInvalid, match=message):
            runner(engine).start(planfile.parse({"id": "bad", "operations": [operation]}))
    assert _snapshot(engine) == before  # no zdm_migrations table either


def test_contract_failure_keeps_the_plan_migrating(zdm_database_url: str) -> None:
    """The new app is deployed when complete runs: a failed contract must not take its column away."""
    model = users_schema()
    engine = setup(zdm_database_url, model)
    plan = planfile.parse(RENAME)
    run = runner(engine)
    run.start(plan)
    apply_phases(plan, model, engine.dialect.name, Phase.EXPANDING, Phase.MIGRATING)
    with engine.begin() as connection:  # a view on the new column, which contract drops: DROP COLUMN fails
        connection.exec_driver_sql("CREATE VIEW user_emails AS SELECT id, email_address FROM users")
    with pytest.raises(MigrationFailed, match=r"CONTRACTING failed.*MIGRATING again"):
        run.complete(plan.id)
    with engine.connect() as connection:
        recorded, _ = state.load(connection, plan.id)
    assert recorded.phase is Phase.MIGRATING and recorded.is_started
    App(engine, model).insert({"id": 999, "email_address": "still@works"})  # new app unaffected
    App(engine, model).insert({"id": 998, "email": "old@works"})
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP VIEW user_emails")
    assert_agrees(engine, model)
    run.complete(plan.id)
    apply_phases(plan, model, engine.dialect.name, Phase.CONTRACTING)
    assert_agrees(engine, model)


def test_second_runner_is_refused(zdm_database_url: str) -> None:
    engine = setup(zdm_database_url, users_schema())
    before = _snapshot(engine)
    plan = planfile.parse(RENAME)
    if engine.dialect.name == "postgresql":
        with engine.connect() as holder:
            holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
            with pytest.raises(RunnerBusy, match=r"another zdm runner .*pid \d+"):
                runner(engine).start(plan)
            holder.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
    else:
        with open(str(engine.url.database), "rb") as handle:  # the lock is the database file's own
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with pytest.raises(RunnerBusy, match="another zdm runner"):
                runner(engine).start(plan)
    assert _snapshot(engine) == before
    runner(engine).start(plan)  # free again once the other runner is gone


def test_lock_budget_names_the_blocking_session(zdm_postgres_url: str) -> None:
    engine = setup(zdm_postgres_url, users_schema())
    plan = planfile.parse(RENAME)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE teams (id integer PRIMARY KEY)")
    bystander = sa.create_engine(zdm_postgres_url, connect_args={"application_name": "other-table"})
    blocker = sa.create_engine(zdm_postgres_url, connect_args={"application_name": "slow-report"})
    with bystander.connect() as elsewhere, blocker.connect() as connection:
        elsewhere.exec_driver_sql("SELECT count(*) FROM teams")  # older, but not in zdm's way
        connection.exec_driver_sql("SELECT count(*) FROM users")  # ACCESS SHARE held: transaction stays open
        with pytest.raises(MigrationFailed, match=r"no lock within 50 ms after 3 tries.*'slow-report'") as failed:
            runner(engine, lock_timeout_ms=50, lock_retries=2).start(plan)
        assert "other-table" not in str(failed.value)
        connection.rollback()
        elsewhere.rollback()
    blocker.dispose()
    bystander.dispose()
    with engine.connect() as connection:
        assert "email_address" not in {c["name"] for c in sa.inspect(connection).get_columns("users")}


def test_a_second_plan_on_the_same_table_waits_for_the_first(zdm_database_url: str) -> None:
    engine = setup(zdm_database_url, users_schema(20))
    first = planfile.parse({"id": "lower", "operations": [
        {"op": "add_column", "table": "users", "column": "email_lower", "type": "TEXT",
         "from_column": "email", "transform": "lower"}]})
    runner(engine).start(first)
    before = _snapshot(engine)
    with pytest.raises(PlanStateError, match="table 'users' is being changed by plan 'lower' \\(MIGRATING\\)"):
        runner(engine).apply(planfile.parse(RENAME))
    assert _snapshot(engine) == before
    runner(engine).complete(first.id)
    runner(engine).apply(planfile.parse(RENAME))  # free once the first plan is complete
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT email_address, email_lower FROM users WHERE id = 1").one() == (
            " User1@Example.COM ", " user1@example.com ")


def test_columns_of_types_zdm_does_not_declare_are_carried(zdm_database_url: str) -> None:
    """DATE, NUMERIC...: read, compared and renamed with their exact live type."""
    from decimal import Decimal

    from zdm import db

    engine = db.create_engine(zdm_database_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount NUMERIC(10, 2) NOT NULL, "
                                   "due DATE)")
        connection.exec_driver_sql("INSERT INTO invoices VALUES (1, 12.50, '2026-12-01'), (2, 3.10, NULL)")
    plan = planfile.parse({"id": "total", "operations": [
        {"op": "rename_column", "table": "invoices", "column": "amount", "new_name": "total"}]})
    runner(engine).apply(plan)
    with engine.connect() as connection:
        columns = {c["name"]: c for c in sa.inspect(connection).get_columns("invoices")}
        rows = connection.exec_driver_sql("SELECT id, total FROM invoices ORDER BY id").all()
    assert str(columns["total"]["type"]) == "NUMERIC(10, 2)" and not columns["total"]["nullable"]
    assert [(i, Decimal(str(t))) for i, t in rows] == [(1, Decimal("12.50")), (2, Decimal("3.10"))]


def test_apply_rolls_back_when_contract_fails(zdm_database_url: str) -> None:
    model = users_schema(30)
    engine = setup(zdm_database_url, model)
    with engine.begin() as connection:  # a view on the column the plan drops: DROP COLUMN fails
        connection.exec_driver_sql("CREATE VIEW user_flags AS SELECT id, legacy_flag FROM users")
    before_the_plan = "rolled back: the database is as it was before the plan started"
    plan = planfile.parse({"id": "rename-and-drop", "operations": [
        *RENAME["operations"], {"op": "drop_column", "table": "users", "column": "legacy_flag"}]})
    with pytest.raises(MigrationFailed, match=rf"^CONTRACTING failed: .*; {before_the_plan}$"):
        runner(engine).apply(plan)
    assert_agrees(engine, model)
    assert zdm_objects(engine) == []


class TerminateRunnerLock(Reporter):
    """The server closes the runner lock's idle connection in the middle of the backfill; with
    ``rival``, another session takes the lock before the runner can take it again."""

    def __init__(self, url: str, rival: sa.Connection | None = None) -> None:
        self.url, self.rival, self.batches = url, rival, 0

    def backfill(self, progress: Any) -> None:
        self.batches += 1
        if self.batches == 2:
            admin = sa.create_engine(self.url)
            with admin.begin() as connection:
                connection.execute(sa.text(  # this database's runner only: tests run beside each other
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = :k "
                    "AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
                    {"k": ADVISORY_LOCK_KEY})
            admin.dispose()
            if self.rival is not None:
                self.rival.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
                self.rival.commit()


def test_a_runner_lock_lost_to_another_runner_stops_the_runner(zdm_postgres_url: str) -> None:
    """Without its lock a runner could work beside another one: it stops with its state saved."""
    model = users_schema(200)
    engine = setup(zdm_postgres_url, model)
    plan = planfile.parse(RENAME)
    overrides = {"batch_size": 20, "batch_target_ms": 1}
    rival_engine = sa.create_engine(zdm_postgres_url, connect_args={"application_name": "other-runner"})
    lost = r"another runner holds it now .*'other-runner'.*`zdm start` resumes"
    with rival_engine.connect() as rival, pytest.raises(MigrationFailed, match=lost):
        Runner(engine, TerminateRunnerLock(zdm_postgres_url, rival), overrides).start(plan)
    rival_engine.dispose()
    with engine.connect() as connection:
        stopped, checkpoint = state.load(connection, plan.id)
        checkpoint = checkpoint.to_dict()
    assert stopped.phase is Phase.MIGRATING and 0 < checkpoint["rows_done"] < 200
    runner(engine).start(plan)  # resumes from the checkpoint
    apply_phases(plan, model, engine.dialect.name, Phase.EXPANDING, Phase.MIGRATING)
    assert_agrees(engine, model)


def test_a_runner_lock_lost_with_its_session_is_taken_again(zdm_postgres_url: str) -> None:
    """A closed idle session (a restart, idle_session_timeout) is no reason to stop while no one else runs."""
    model = users_schema(200)
    engine = setup(zdm_postgres_url, model)
    plan = planfile.parse(RENAME)
    Runner(engine, TerminateRunnerLock(zdm_postgres_url), {"batch_size": 20, "batch_target_ms": 1}).start(plan)
    apply_phases(plan, model, engine.dialect.name, Phase.EXPANDING, Phase.MIGRATING)
    assert_agrees(engine, model)


def test_resuming_with_another_plan_file_is_refused(zdm_database_url: str) -> None:
    engine = setup(zdm_database_url, users_schema(50))
    plan = planfile.parse(RENAME)
    with pytest.raises(KeyboardInterrupt):
        Runner(engine, StopMidBackfill(), {"batch_size": 10}).start(plan)
    other = planfile.parse({"id": plan.id, "operations": [
        {"op": "add_column", "table": "users", "column": "nickname", "type": "TEXT"}]})
    with pytest.raises(PlanStateError, match="interrupted during MIGRATING with other operations than this file's"):
        runner(engine).start(other)
    runner(engine).start(plan)
    with engine.connect() as connection:
        assert state.load(connection, plan.id)[0].is_started


class StopMidBackfill(Reporter):
    def backfill(self, progress: Any) -> None:
        raise KeyboardInterrupt


class LocksAtChecks(Reporter):
    """The locks zdm's own transaction holds on users when each data check has just run."""

    def __init__(self) -> None:
        self.held: list[set[str]] = []

    def executed(self, connection: sa.Connection, action: Any, seconds: float) -> None:
        if isinstance(action, DataCheck):
            self.held.append(set(connection.execute(sa.text(
                "SELECT mode FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'relation' "
                "AND relation = 'users'::regclass")).scalars()))


def test_contract_checks_scan_before_any_lock_is_taken(zdm_postgres_url: str) -> None:
    """In one contract transaction, a type change's check must not scan under a rename's ACCESS EXCLUSIVE."""
    engine = setup(zdm_postgres_url, users_schema(30))
    plan = planfile.parse({"id": "two", "operations": [
        {"op": "rename_column", "table": "users", "column": "email", "new_name": "email_address"},
        {"op": "alter_column", "table": "users", "column": "code", "type": "INTEGER"}]})
    runner(engine).start(plan)
    locks = LocksAtChecks()
    Runner(engine, locks).complete(plan.id)
    assert locks.held and all("AccessExclusiveLock" not in held for held in locks.held), locks.held


def test_undoing_a_step_outside_a_transaction_keeps_the_lock_budget(zdm_postgres_url: str) -> None:
    """DROP INDEX CONCURRENTLY waits for every transaction on the table: under the budget, not forever."""
    engine = setup(zdm_postgres_url, users_schema(20))
    plan = planfile.parse({"id": "name-ix", "operations": [
        {"op": "create_index", "table": "users", "name": "users_name_ix", "columns": ["name"]}]})
    runner(engine).start(plan)
    blocker = sa.create_engine(zdm_postgres_url, connect_args={"application_name": "long-report"})
    with blocker.connect() as connection:
        connection.exec_driver_sql("SELECT count(*) FROM users")  # a transaction stays open on users
        with pytest.raises(MigrationFailed, match=r"no lock within 100 ms after 2 tries.*'long-report'"):
            runner(engine, lock_timeout_ms=100, lock_retries=1).rollback(plan.id)
        connection.rollback()
    blocker.dispose()
    runner(engine).rollback(plan.id)
    with engine.connect() as connection:
        assert "users_name_ix" not in {ix["name"] for ix in sa.inspect(connection).get_indexes("users")}
