"""kill -9 the real `zdm start` in the middle of a key widening's backfill, then resume and complete.

The runner is the CLI in a subprocess, killed after its second batch of the chosen table (the key's
table, or a referencing one). The old app then writes to the parent and both children while the plan
lies interrupted; `zdm start` resumes from the checkpoint, `zdm complete` swaps. The data equals the
reference model, every constraint is validated (no foreign key left NOT VALID), no zdm object is left.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from support import Phase, apply_phases, assert_agrees, learn_catalogue, setup, zdm_objects
from test_crash import wait_for_runner_gone, zdm
from test_widen_key import PLAN, orders_schema, serial, window
from workload import sqlite_app_engine

from zdm import planfile
from zdm.model import ColumnType

RUN_FLAGS = ["--batch-size", "10", "--batch-target-ms", "1", "--batch-pause-ms", "5"]


def start_and_kill(url: str, plan_path: Path, table: str, nth: int) -> int:
    """`zdm start --json`, killed -9 right after its ``nth`` backfill batch of ``table``; the batches seen."""
    process = subprocess.Popen([sys.executable, "-m", "zdm.cli", "start", str(plan_path), "--db", url, "--json",
                                *RUN_FLAGS], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    seen = 0
    for line in process.stderr:
        event = json.loads(line) if line.startswith("{") else {}
        if event.get("event") == "backfill" and event.get("table") == table and not event.get("finished"):
            seen += 1
            if seen == nth:
                break
    process.kill()
    process.wait()
    process.stderr.close()
    return seen


@pytest.mark.parametrize("table", ["orders", "items"])
def test_kill_mid_backfill_then_resume_and_complete(zdm_database_url: str, tmp_path: Path, table: str) -> None:
    dialect = sa.make_url(zdm_database_url).get_backend_name()
    if dialect == "sqlite" and table == "orders":
        pytest.skip("SQLite's rowid key is 64-bit already: no backfill of orders")
    model = orders_schema(rows=80)
    engine = setup(zdm_database_url, model)
    serial(engine)
    learn_catalogue(engine, model)
    app = sqlite_app_engine(zdm_database_url)
    plan = planfile.parse(PLAN)
    plan_path = tmp_path / "widen.json"
    plan_path.write_text(json.dumps(PLAN))
    original, final = model.copy(), model.copy()
    apply_phases(plan, final, dialect, Phase.EXPANDING, Phase.MIGRATING, Phase.CONTRACTING)
    try:
        assert start_and_kill(zdm_database_url, plan_path, table, nth=2) == 2, "the backfill ended before the kill"
        wait_for_runner_gone(engine)
        record = json.loads(zdm("status", "--json", "--db", zdm_database_url).stdout)["plans"][0]
        assert record["phase"] == "MIGRATING" and not all(s["executed"] for s in record["steps"])
        checkpoint = record["checkpoint"]
        assert checkpoint["last_key"] and checkpoint["rows_done"] >= 20  # two batches of 10 or more
        with engine.connect() as connection:
            half = connection.scalar(sa.text(f"SELECT count(*) FROM {table} WHERE "
                                             f"{'id' if table == 'orders' else 'order_id'}_zdm_new IS NULL"))
        assert half, "the kill was to land mid-backfill"

        apply_phases(plan, model, dialect, Phase.EXPANDING)
        window(1, app, model, original, final, "old").play(10_000)  # the old app, while the plan lies killed

        zdm("start", str(plan_path), "--db", zdm_database_url, *RUN_FLAGS)
        apply_phases(plan, model, dialect, Phase.MIGRATING)
        assert_agrees(engine, model)
        zdm("complete", plan.id, "--db", zdm_database_url)
        apply_phases(plan, model, dialect, Phase.CONTRACTING)
        assert_agrees(engine, model)
        assert zdm_objects(engine) == []
        assert model.table("items").column("order_id").type == ColumnType.BIGINT
        if dialect == "postgresql":
            with engine.connect() as connection:
                assert connection.scalar(sa.text("SELECT count(*) FROM pg_constraint WHERE NOT convalidated")) == 0
                assert connection.scalar(sa.text("SELECT count(*) FROM pg_constraint WHERE contype = 'f'")) == 2
    finally:
        app.dispose()
        engine.dispose()
