"""Plans stored in ``zdm_migrations`` by an earlier release still load, run, complete and roll back.

``data/stored_plans.json`` holds, for each database, a plan file and the plan that the release
before typed actions (commit 24aff2c) compiled from it for ``support.users_schema(20)``: its
statements as strings, its data checks and SQLite rebuilds as ``{"check": ...}`` and
``{"rebuild": ...}`` dicts. A plan that was interrupted right after it was stored (EXPANDING, no
step run yet) is resumed by today's runner from that record alone, then completed or rolled back.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from support import App, Phase, apply_phases, assert_agrees, rollback_model, runner, setup, users_schema, zdm_objects

from zdm import planfile, state
from zdm.actions import DataCheck, Rebuild, Statement
from zdm.plan import MigrationPlan

STORED = json.loads((Path(__file__).parent / "data" / "stored_plans.json").read_text())


def _store_as_interrupted(engine: sa.Engine, compiled: dict[str, Any]) -> None:
    record = {**compiled, "phase": "EXPANDING",
              "history": [{"at": "2026-11-30T00:00:00+00:00", "phase": "EXPANDING", "note": ""}]}
    with engine.begin() as connection:
        state.ensure_table(connection)
        connection.execute(state.migrations.insert().values(
            id=record["id"], phase="EXPANDING", plan=json.dumps(record), checkpoint="{}",
            updated_at=dt.datetime(2026, 11, 30)))


def test_the_stored_form_of_each_action_is_read_as_written() -> None:
    """Statements, checks and rebuilds come back typed, and are stored again exactly as before."""
    for dialect, stored in STORED.items():
        for step in stored["compiled"]["steps"]:
            for action in (*step["forward"], *step["compensate"]):
                typed = MigrationPlan.from_dict({**stored["compiled"], "steps": [
                    {**step, "forward": [action], "compensate": []}]}).steps[0].forward[0]
                assert typed.to_json() == action, dialect
                assert isinstance(typed, Statement if isinstance(action, str)
                                  else DataCheck if "check" in action else Rebuild)


@pytest.mark.parametrize("ending", ["complete", "rollback"])
def test_a_plan_stored_by_the_earlier_release_resumes_and_ends(zdm_database_url: str, ending: str) -> None:
    model = users_schema(20)
    engine = setup(zdm_database_url, model)
    dialect = engine.dialect.name
    stored = STORED[dialect]
    plan = planfile.parse(stored["plan_file"])
    _store_as_interrupted(engine, stored["compiled"])
    original = model.copy()

    with engine.connect() as connection:  # names minted today differ from the record's (issue 16)
        today = json.dumps(planfile.compile_plan(plan, connection).to_dict()["steps"])
    recorded = json.dumps(stored["compiled"]["steps"])
    names = {text: set(re.findall(r"\bzdm_(?:tg|fn)_\w+", text)) for text in (recorded, today)}
    assert names[recorded] - names[today], names  # e.g. zdm_tg_stored_users_code_zdm_new_ins, today hashed

    resumed = runner(engine).start(plan)  # runs the stored steps, not freshly compiled ones
    assert [s.description for s in resumed.steps] == [s["description"] for s in stored["compiled"]["steps"]]
    apply_phases(plan, model, dialect, Phase.EXPANDING, Phase.MIGRATING)
    assert_agrees(engine, model)
    if ending == "complete":
        runner(engine).complete(plan.id)
        apply_phases(plan, model, dialect, Phase.CONTRACTING)
    else:
        runner(engine).rollback(plan.id)
        model.table("users").filled.clear()  # the earlier release noted no filled keys: its fills stay
        rollback_model(plan, model, dialect)
        assert model.table("users").catalogue() == original.table("users").catalogue()
    assert_agrees(engine, model)
    assert zdm_objects(engine) == []


STORED_FILL = json.loads((Path(__file__).parent / "data" / "stored_fill_plans.json").read_text())


def test_a_fill_stored_with_its_give_back_in_one_statement_still_rolls_back(zdm_database_url: str) -> None:
    """``data/stored_fill_plans.json``: a set_not_null with fill as the release before the batched
    give-back compiled it (commit 306cd0a): the trigger and the table of keys in one step, whose
    compensate gives the NULLs back in one ``quiet_write``. Resumed and rolled back by today's runner."""
    model = users_schema(20)
    engine = setup(zdm_database_url, model)
    dialect = engine.dialect.name
    stored = STORED_FILL[dialect]
    assert any("quiet_write" in action for step in stored["compiled"]["steps"] for action in step["compensate"]
               if isinstance(action, dict))
    plan = planfile.parse(stored["plan_file"])
    _store_as_interrupted(engine, stored["compiled"])
    original = model.copy()
    resumed = runner(engine).start(plan)
    assert [s.description for s in resumed.steps] == [s["description"] for s in stored["compiled"]["steps"]]
    apply_phases(plan, model, dialect, Phase.EXPANDING, Phase.MIGRATING)
    App(engine, model).update(3, {"name": None})  # the old app: filled, noted
    assert_agrees(engine, model)
    runner(engine).rollback(plan.id)
    rollback_model(plan, model, dialect)
    assert model.table("users").catalogue() == original.table("users").catalogue()
    assert_agrees(engine, model)
    assert zdm_objects(engine) == []
