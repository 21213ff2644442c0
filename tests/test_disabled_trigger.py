"""A zdm trigger someone turned off between start and complete (``ALTER TABLE ... DISABLE TRIGGER
ALL`` for a bulk load, ``pg_restore --disable-triggers``, ``ENABLE REPLICA TRIGGER`` by replication
tooling): the app's writes are no longer kept in step, so `zdm status` names it (exit 4), `zdm
complete` and a resumed `zdm start` refuse it (exit 2, one line, the database untouched), and
`zdm rollback` still undoes the plan.

PostgreSQL only: SQLite has no statement that disables a trigger (only a connection's own
``SQLITE_DBCONFIG_ENABLE_TRIGGER``, which no other connection can see).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from support import App, Phase, apply_phases, assert_agrees, rollback_model, runner, setup, users_schema, zdm_objects
from test_hostile import postgres_state

from zdm import planfile, status
from zdm.cli import main
from zdm.errors import MigrationFailed
from zdm.model import Schema
from zdm.report import Reporter
from zdm.schemas import OUTPUT

VALIDATOR = jsonschema.Draft202012Validator(json.loads(OUTPUT.read_text()))

#: One plan per kind of zdm trigger PostgreSQL gets: two-way dual-write (a type change under a new
#: name), one-way sync (a column derived from another), fill (NOT NULL with a fill value).
PLANS: dict[str, dict[str, Any]] = {
    "dual-write": {"op": "alter_column", "table": "users", "column": "age", "type": "BIGINT", "new_name": "years"},
    "one-way": {"op": "add_column", "table": "users", "column": "email_lower", "type": "TEXT",
                "from_column": "email", "transform": "lower"},
    "fill": {"op": "set_not_null", "table": "users", "column": "name", "fill": "nobody"},
}


def zdm(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def started(url: str, operation: dict[str, Any]) -> tuple[sa.Engine, Schema, planfile.PlanFile]:
    model = users_schema(rows=60)
    for row in model.table("users").rows:  # no NULL to fill: a rollback restores every row as it was
        row["name"] = row["name"] or "someone"
    engine = setup(url, model)
    plan = planfile.parse({"id": "p", "operations": [operation]})
    runner(engine).start(plan)
    apply_phases(plan, model, engine.dialect.name, Phase.EXPANDING, Phase.MIGRATING)
    return engine, model, plan


def zdm_trigger(engine: sa.Engine) -> str:
    (name,) = [name for name in zdm_objects(engine) if name.startswith("zdm_tg_")]
    return name


def execute(engine: sa.Engine, sql: str) -> None:
    with engine.begin() as connection:
        connection.exec_driver_sql(sql)


def snapshot(engine: sa.Engine) -> str:
    with engine.connect() as connection:
        return postgres_state(connection)


@pytest.mark.parametrize("zdm_database_url", ["postgresql"], indirect=True)
def test_the_old_app_writing_while_the_dual_write_trigger_is_disabled(zdm_database_url: str) -> None:
    """The story: a bulk load disables every trigger of the table mid-window; the old app's writes
    are then not copied into the new column. Status says so, complete refuses, nothing changes;
    once enabled again, complete's check still finds the row written meanwhile; a rollback and a
    new start bring every row into the final shape."""
    url = zdm_database_url
    engine, model, plan = started(url, PLANS["dual-write"])
    trigger = zdm_trigger(engine)
    code, out, _ = zdm("status", "--db", url, "--json")
    assert code == 0 and json.loads(out)["plans"][0]["disabled_triggers"] == []

    execute(engine, "ALTER TABLE users DISABLE TRIGGER ALL")
    old_app = App(engine, model)
    old_app.update(5, {"age": 99})
    with engine.connect() as connection:
        years = connection.exec_driver_sql("SELECT years FROM users WHERE id = 5").scalar()
    assert years != 99, "the disabled trigger still copied the write: the case is not reproduced"

    code, out, err = zdm("status", "p", "--db", url)
    assert code == 4, err
    assert f"zdm trigger {trigger} on users is disabled" in out
    assert f"`ALTER TABLE users ENABLE TRIGGER {trigger}`" in out
    assert "rows written while it was off may be out of step" in out
    assert "`zdm complete` and `zdm start` refuse until then" in out and "deploy the new app" not in out
    code, out, _ = zdm("status", "--db", url, "--json")
    document = json.loads(out)
    VALIDATOR.validate(document)
    assert (code, document["ok"], document["exit_code"]) == (4, False, 4)
    assert document["plans"][0]["disabled_triggers"] == [
        {"table": "users", "trigger": trigger, "state": "disabled",
         "enable": f"ALTER TABLE users ENABLE TRIGGER {trigger}"}]

    before = snapshot(engine)
    code, out, err = zdm("complete", "p", "--db", url)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"zdm: error: plan 'p' cannot complete: zdm trigger {trigger} on users is disabled"), err
    assert snapshot(engine) == before
    code, out, _ = zdm("complete", "p", "--db", url, "--json")
    VALIDATOR.validate(json.loads(out))
    assert code == 2 and json.loads(out)["error"]["kind"] == "plan_state"
    assert snapshot(engine) == before

    execute(engine, "ALTER TABLE users ENABLE TRIGGER ALL")
    code, out, _ = zdm("status", "p", "--db", url, "--json")
    VALIDATOR.validate(json.loads(out))
    assert code == 0 and json.loads(out)["plan"]["disabled_triggers"] == []
    with pytest.raises(MigrationFailed, match=r"rows of users whose years is not the conversion of age.*id=5"):
        runner(engine).complete(plan.id)  # the row written while it was off is still out of step

    runner(engine).rollback(plan.id)
    rollback_model(plan, model, engine.dialect.name)
    assert_agrees(engine, model)  # the old app's write while the trigger was off is kept
    runner(engine).start(plan)
    runner(engine).complete(plan.id)
    apply_phases(plan, model, engine.dialect.name, Phase.EXPANDING, Phase.MIGRATING, Phase.CONTRACTING)
    assert_agrees(engine, model)
    assert old_app.read(5, "years") == 99
    engine.dispose()


@pytest.mark.parametrize("how", ["disabled", "replica"])
@pytest.mark.parametrize("kind", PLANS)
@pytest.mark.parametrize("zdm_database_url", ["postgresql"], indirect=True)
def test_each_zdm_trigger_turned_off_is_named_and_complete_refuses(zdm_database_url: str, kind: str,
                                                                   how: str) -> None:
    """Each kind of zdm trigger, disabled by name or left firing for replication sessions only: named by
    status (exit 4), complete refuses with the database untouched, rollback still undoes the plan."""
    url = zdm_database_url
    engine, model, plan = started(url, PLANS[kind])
    trigger = zdm_trigger(engine)
    execute(engine, f"ALTER TABLE users {'DISABLE' if how == 'disabled' else 'ENABLE REPLICA'} TRIGGER {trigger}")
    (record,) = status.read(engine)
    assert [t.to_json() for t in record.disabled_triggers] == [
        {"table": "users", "trigger": trigger, "state": how, "enable": f"ALTER TABLE users ENABLE TRIGGER {trigger}"}]
    code, out, _ = zdm("status", "--db", url)
    said = "disabled" if how == "disabled" else "enabled for replication sessions only (ENABLE REPLICA)"
    assert code == 4 and f"zdm trigger {trigger} on users is {said}" in out

    before = snapshot(engine)
    code, _, err = zdm("complete", "p", "--db", url)
    assert code == 2 and err.count("\n") == 1 and f"zdm trigger {trigger} on users is {said}" in err, err
    assert snapshot(engine) == before

    runner(engine).rollback(plan.id)  # a rollback drops the trigger, off or not
    rollback_model(plan, model, engine.dialect.name)
    assert_agrees(engine, model)
    assert zdm_objects(engine) == []
    code, out, _ = zdm("status", "--db", url, "--json")
    assert code == 0 and json.loads(out)["plans"][0]["disabled_triggers"] == []
    engine.dispose()


@pytest.mark.parametrize("zdm_database_url", ["postgresql"], indirect=True)
def test_a_trigger_enabled_always_or_again_lets_complete_run(zdm_database_url: str) -> None:
    """ENABLE ALWAYS fires for every session: nothing to say. Enabled again after a DISABLE: complete
    runs, and the old app's writes made since are in step."""
    url = zdm_database_url
    engine, model, plan = started(url, PLANS["one-way"])
    trigger = zdm_trigger(engine)
    execute(engine, f"ALTER TABLE users ENABLE ALWAYS TRIGGER {trigger}")
    code, out, _ = zdm("status", "--db", url, "--json")
    assert code == 0 and json.loads(out)["plans"][0]["disabled_triggers"] == []
    execute(engine, f"ALTER TABLE users DISABLE TRIGGER {trigger}")
    assert zdm("status", "--db", url)[0] == 4
    execute(engine, f"ALTER TABLE users ENABLE TRIGGER {trigger}")
    App(engine, model).update(3, {"email": "Again@X"})
    assert zdm("status", "--db", url)[0] == 0
    code, _, err = zdm("complete", "p", "--db", url)
    assert code == 0, err
    apply_phases(plan, model, engine.dialect.name, Phase.CONTRACTING)
    assert_agrees(engine, model)
    engine.dispose()


class StopAtBackfill(Reporter):
    """Ctrl-C at the first backfill batch: the plan lies interrupted during MIGRATING."""

    def backfill(self, *args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt


@pytest.mark.parametrize("zdm_database_url", ["postgresql"], indirect=True)
def test_a_resumed_start_refuses_while_a_zdm_trigger_is_disabled(zdm_database_url: str, tmp_path: Path) -> None:
    """Interrupted mid-backfill, a trigger disabled: status names it, `zdm start` refuses to resume
    (exit 2, one line, nothing changed); enabled again, it resumes and completes."""
    url = zdm_database_url
    model = users_schema(rows=200)
    engine = setup(url, model)
    plan_path = tmp_path / "p.json"
    plan_path.write_text(json.dumps({"id": "p", "operations": [PLANS["one-way"]]}))
    plan = planfile.load(plan_path)
    run = runner(engine)
    run.reporter = StopAtBackfill()
    with pytest.raises(KeyboardInterrupt):
        run.start(plan)
    (record,) = status.read(engine)
    assert record.activity == "interrupted" and record.plan.phase is Phase.MIGRATING
    trigger = zdm_trigger(engine)
    execute(engine, "ALTER TABLE users DISABLE TRIGGER ALL")
    code, out, _ = zdm("status", "--db", url)
    assert code == 4 and f"zdm trigger {trigger} on users is disabled" in out

    before = snapshot(engine)
    code, out, err = zdm("start", str(plan_path), "--db", url)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"zdm: error: plan 'p' cannot resume: zdm trigger {trigger} on users is disabled"), err
    assert snapshot(engine) == before

    execute(engine, "ALTER TABLE users ENABLE TRIGGER ALL")
    code, _, err = zdm("start", str(plan_path), "--db", url)
    assert code == 0, err
    code, _, err = zdm("complete", "p", "--db", url)
    assert code == 0, err
    apply_phases(plan, model, engine.dialect.name, Phase.EXPANDING, Phase.MIGRATING, Phase.CONTRACTING)
    assert_agrees(engine, model)
    engine.dispose()


@pytest.mark.parametrize("zdm_database_url", ["postgresql"], indirect=True)
def test_status_watch_ends_with_exit_4_on_a_plan_whose_trigger_is_off(zdm_database_url: str) -> None:
    url = zdm_database_url
    engine, _, _ = started(url, PLANS["dual-write"])
    trigger = zdm_trigger(engine)
    execute(engine, f"ALTER TABLE users DISABLE TRIGGER {trigger}")
    code, out, _ = zdm("status", "p", "--watch", "--db", url)
    assert code == 4 and f"zdm trigger {trigger} on users is disabled" in out and "deploy the new app" not in out
    code, out, _ = zdm("status", "p", "--watch", "--db", url, "--json")
    document = json.loads(out)
    VALIDATOR.validate(document)
    assert code == 4 and document["ok"] is False and document["plan"]["disabled_triggers"][0]["trigger"] == trigger
    engine.dispose()


class DisableAtBackfill(Reporter):
    """Someone disables every trigger of the table while the backfill runs; notes are kept."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.notes: list[str] = []

    def backfill(self, *args: Any, **kwargs: Any) -> None:
        if not self.notes:
            execute(self.engine, "ALTER TABLE users DISABLE TRIGGER ALL")
            self.notes.append("disabled")

    def note(self, message: str) -> None:
        self.notes.append(message)


@pytest.mark.parametrize("zdm_database_url", ["postgresql"], indirect=True)
def test_start_says_so_when_a_zdm_trigger_was_disabled_while_it_ran(zdm_database_url: str) -> None:
    engine = setup(zdm_database_url, users_schema(rows=200))
    run = runner(engine)
    run.reporter = reporter = DisableAtBackfill(engine)
    run.start(planfile.parse({"id": "p", "operations": [PLANS["one-way"]]}))
    trigger = zdm_trigger(engine)
    assert reporter.notes[-1].startswith(f"plan 'p' started, but zdm trigger {trigger} on users is disabled"), \
        reporter.notes
    engine.dispose()


@pytest.mark.parametrize("zdm_database_url", ["postgresql"], indirect=True)
def test_apply_rolls_back_rather_than_contract_past_a_trigger_disabled_while_it_ran(zdm_database_url: str) -> None:
    """`zdm apply` runs contract itself: a zdm trigger turned off during its backfill fails the run,
    which rolls everything back (the old column holds every write), as any failure of apply does."""
    model = users_schema(rows=200)
    engine = setup(zdm_database_url, model)
    run = runner(engine)
    run.reporter = DisableAtBackfill(engine)
    plan = planfile.parse({"id": "p", "operations": [PLANS["one-way"]]})
    with pytest.raises(MigrationFailed, match=r"MIGRATING failed: zdm trigger zdm_tg_\w+ on users is disabled.*"
                                              r"rolled back"):
        run.apply(plan)
    (record,) = status.read(engine)
    assert record.plan.phase is Phase.ROLLED_BACK
    assert_agrees(engine, model)
    assert zdm_objects(engine) == []
    engine.dispose()


@pytest.mark.parametrize("zdm_database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_plan_whose_triggers_fire_needs_no_attention(zdm_database_url: str) -> None:
    """On both databases, zdm's triggers as zdm made them: nothing to say, exit 0. SQLite has no
    statement that turns a trigger off, for zdm to find or for anyone to run."""
    url = zdm_database_url
    engine, _, _ = started(url, PLANS["dual-write"])
    assert any(name.startswith("zdm_tg_") for name in zdm_objects(engine))
    code, out, _ = zdm("status", "p", "--db", url, "--json")
    document = json.loads(out)
    VALIDATOR.validate(document)
    assert (code, document["ok"], document["plan"]["disabled_triggers"]) == (0, True, [])
    if engine.dialect.name == "sqlite":
        with pytest.raises(sa.exc.OperationalError, match="syntax error"):
            execute(engine, "ALTER TABLE users DISABLE TRIGGER ALL")
    engine.dispose()


def test_the_statement_that_enables_it_again_names_the_schema(zdm_postgres_url: str) -> None:
    """An app in schema ``app`` (zdm's URL sets the search_path): the ALTER TABLE that status hands the
    team to run names the schema, so it works from a session with the default search_path (psql).
    Unqualified it failed there: relation "Accounts" does not exist."""
    plain = sa.create_engine(zdm_postgres_url)
    execute(plain, 'CREATE SCHEMA app; CREATE TABLE app."Accounts" (id INTEGER PRIMARY KEY, "Name" TEXT); '
                   'INSERT INTO app."Accounts" VALUES (1, NULL), (2, \'b\')')
    url = plain.url.update_query_dict({"options": "-csearch_path=app"}).render_as_string(hide_password=False)
    engine = sa.create_engine(url)
    plan = planfile.parse({"id": "p", "operations": [
        {"op": "set_not_null", "table": "Accounts", "column": "Name", "fill": "nobody"}]})
    runner(engine).start(plan)
    execute(plain, 'ALTER TABLE app."Accounts" DISABLE TRIGGER ALL')
    code, out, _ = zdm("status", "--db", url, "--json")
    (disabled,) = json.loads(out)["plans"][0]["disabled_triggers"]
    assert code == 4
    execute(plain, disabled["enable"])  # as the team would, from psql
    code, out, _ = zdm("status", "--db", url, "--json")
    assert code == 0 and json.loads(out)["plans"][0]["disabled_triggers"] == []
    runner(engine).rollback(plan.id)
    with plain.connect() as connection:
        names = connection.exec_driver_sql('SELECT "Name" FROM app."Accounts" ORDER BY id').scalars().all()
    assert names == [None, "b"]
    engine.dispose()
    plain.dispose()
