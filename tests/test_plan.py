"""Phases, steps and plan files: the state machine and the validation a user meets first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import users_schema

from zdm import planfile
from zdm.actions import Statement
from zdm.plan import Backfill, IllegalTransition, MigrationPlan, MigrationStep, Phase

ALL = list(Phase)
LEGAL = {
    (Phase.PENDING, Phase.EXPANDING), (Phase.PENDING, Phase.ROLLED_BACK),
    (Phase.EXPANDING, Phase.MIGRATING), (Phase.EXPANDING, Phase.ROLLED_BACK),
    (Phase.MIGRATING, Phase.CONTRACTING), (Phase.MIGRATING, Phase.ROLLED_BACK),
    (Phase.CONTRACTING, Phase.COMPLETE), (Phase.CONTRACTING, Phase.ROLLED_BACK),
    (Phase.CONTRACTING, Phase.MIGRATING),  # a failed contract that dropped nothing
    (Phase.ROLLED_BACK, Phase.EXPANDING),  # start again
}


@pytest.mark.parametrize(("source", "target"), [(a, b) for a in ALL for b in ALL])
def test_transitions(source: Phase, target: Phase) -> None:
    plan = MigrationPlan("p", "t", phase=source)
    if (source, target) in LEGAL:
        plan.transition(target, "now")
        assert plan.phase is target and plan.history[-1].phase is target
    else:
        with pytest.raises(IllegalTransition, match=f"from {source.value} to {target.value}"):
            plan.transition(target, "now")


def test_progress_and_round_trip() -> None:
    steps = [MigrationStep(Phase.EXPANDING, "a", [Statement("SQL 1")], [Statement("UNDO 1")], executed=True),
             MigrationStep(Phase.MIGRATING, "b", backfill=Backfill("t", ["id"], {"b": "a"}, "b IS NULL")),
             MigrationStep(Phase.CONTRACTING, "c", [Statement("SQL 3")])]
    plan = MigrationPlan("p", "title", steps, phase=Phase.MIGRATING)
    assert plan.progress == 33.3 and plan.phase is not Phase.COMPLETE and not plan.is_started
    steps[1].executed = True
    assert plan.is_started
    again = MigrationPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan


def test_plan_files_load_from_yaml_and_json(tmp_path: Path) -> None:
    data = {"id": "p1", "title": "t", "settings": {"lock_timeout_ms": 200},
            "operations": [{"op": "drop_column", "table": "users", "column": "legacy_flag"}]}
    (tmp_path / "p.json").write_text(json.dumps(data))
    (tmp_path / "p.yaml").write_text("id: p1\ntitle: t\nsettings: {lock_timeout_ms: 200}\noperations:\n"
                                     "  - {op: drop_column, table: users, column: legacy_flag}\n")
    assert planfile.load(tmp_path / "p.json") == planfile.load(tmp_path / "p.yaml")
    assert planfile.load(tmp_path / "p.json").settings.lock_timeout_ms == 200


@pytest.mark.parametrize(("data", "message"), [
    ([1, 2], "a plan is a mapping"),
    ({"operations": []}, "id: Field required"),
    ({"id": "p", "operations": [], "extra": 1}, "extra: Extra inputs are not permitted"),
    ({"id": "p", "operations": [], "settings": {"lock_timeout_ms": 0}}, "settings.lock_timeout_ms"),
    ({"id": "p", "operations": [{"op": "add_column", "table": "t", "column": "c", "type": "TEXT",
                                 "nullable": False}]}, "NOT NULL column needs a default"),
])
def test_invalid_files_name_file_field_and_problem(data: object, message: str) -> None:
    with pytest.raises(planfile.PlanFileError) as error:
        planfile.parse(data, source="plans/x.yaml")
    assert str(error.value).startswith("plans/x.yaml: ") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_safety_rules() -> None:
    schema = users_schema(3)

    def problems(*operations: dict) -> list[str]:
        plan = planfile.parse({"id": "p", "operations": list(operations)})
        return [str(p) for p in planfile.check(plan, schema)]

    assert problems() == ["error: plan 'p' has no operations"]
    [warning] = problems({"op": "drop_column", "table": "users", "column": "legacy_flag"})
    assert warning.startswith("warning: the plan only contracts") and "data-loss" in warning
    [error] = problems({"op": "rename_column", "table": "users", "column": "email", "new_name": "e2"},
                       {"op": "drop_column", "table": "users", "column": "e2"})
    assert "users.e2 is already changed by operation 1" in error
    many = [{"op": "add_column", "table": "users", "column": f"c{i}", "type": "TEXT"} for i in range(31)]
    assert any("steps" in p and p.startswith("warning") for p in problems(*many))
    assert problems({"op": "add_column", "table": "users", "column": "c", "type": "TEXT"}) == []
