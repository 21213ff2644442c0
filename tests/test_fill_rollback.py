"""set_not_null with ``fill``: a rollback gives back the NULLs the fill replaced (breaker finding 5),
those the backfill filled and those the old app wrote during the window, and only those."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from support import App, Phase, apply_phases, assert_agrees, rollback_model, runner, setup, users_schema, zdm_objects
from test_crash import wait_for_runner_gone

from zdm import db, planfile, state, status
from zdm.backfill import BackfillProgress
from zdm.model import Schema
from zdm.plan import Checkpoint
from zdm.runner import PlanStateError, Reporter
from zdm.status import format_record


def test_rollback_gives_back_the_nulls_the_fill_replaced(zdm_database_url: str) -> None:
    engine = db.create_engine(zdm_database_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, qty INTEGER, note TEXT)")
        connection.exec_driver_sql("INSERT INTO t VALUES (1, 5, 'a'), (2, NULL, 'b'), (3, NULL, 'c'), "
                                   "(4, 0, 'd'), (5, NULL, 'e')")
    plan = planfile.parse({"id": "nn", "operations": [
        {"op": "set_not_null", "table": "t", "column": "qty", "fill": 0}]})
    run = runner(engine, batch_size=2)
    run.start(plan)
    with engine.begin() as connection:  # the old app, during the window
        connection.exec_driver_sql("INSERT INTO t (id, qty, note) VALUES (6, NULL, 'f'), (7, 0, 'g')")
        connection.exec_driver_sql("UPDATE t SET qty = 9 WHERE id = 3")  # a filled row given a value
        connection.exec_driver_sql("UPDATE t SET qty = NULL WHERE id = 1")  # NULL written: filled
        connection.exec_driver_sql("UPDATE t SET note = 'x' WHERE id = 5")  # another column
        assert connection.exec_driver_sql("SELECT count(*) FROM t WHERE qty IS NULL").scalar() == 0
    run.rollback(plan.id)
    with engine.connect() as connection:
        rows = dict(connection.exec_driver_sql("SELECT id, qty FROM t").all())
        tables = sa.inspect(connection).get_table_names()
    # 2, 5 (backfill), 1 and 6 (the old app's NULL) are NULL again; 4 and 7 were written 0; 3 got 9
    assert rows == {1: None, 2: None, 3: 9, 4: 0, 5: None, 6: None, 7: 0}
    assert [name for name in tables if name.startswith("zdm_") and name != "zdm_migrations"] == []
    assert zdm_objects(engine) == []
    run.start(plan)  # and the plan can run again, to complete
    run.complete(plan.id)
    with engine.connect() as connection:
        assert dict(connection.exec_driver_sql("SELECT id, qty FROM t").all()) == {
            1: 0, 2: 0, 3: 9, 4: 0, 5: 0, 6: 0, 7: 0}
        assert [name for name in sa.inspect(connection).get_table_names() if name.startswith("zdm_filled")] == []


# -- the give-back in key batches: many filled rows, app writes between batches, a kill mid-way ---------
ROWS = 1000
FILL = "unknown"
PLAN = {"id": "fill", "operations": [{"op": "set_not_null", "table": "users", "column": "name", "fill": FILL}]}
#: Small batches that stay small (the target), with a pause a kill lands in.
SMALL_BATCHES = {"batch_size": 20, "batch_target_ms": 1}


def _filled_window(url: str) -> tuple[sa.Engine, Schema, planfile.PlanFile]:
    """users with NULL names (every 7th), started; then the old app writes NULL into every 4th row,
    which the trigger fills: some 390 rows hold the fill, their keys noted."""
    model = users_schema(ROWS)
    engine = setup(url, model)
    plan = planfile.parse(PLAN)
    runner(engine, **SMALL_BATCHES).start(plan)
    apply_phases(plan, model, engine.dialect.name, Phase.EXPANDING, Phase.MIGRATING)
    app = App(engine, model)
    for key in range(4, ROWS + 1, 4):
        app.update(key, {"name": None})
    assert_agrees(engine, model)
    return engine, model, plan


def _filled_keys(model: Schema) -> list[int]:
    """The keys of the rows that hold the fill and were filled: those a rollback makes NULL."""
    table = model.table("users")
    return sorted(key for (column, (key,)) in table.filled
                  if column == "name" and table.rows[key - 1]["name"] == FILL)


def _checkpoint(engine: sa.Engine) -> Checkpoint:
    with engine.connect() as connection:
        found = state.load(connection, PLAN["id"])
    assert found is not None
    return found[1]


def _write(engine: sa.Engine, key: int, name: str) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE users SET name = :n WHERE id = :k"), {"n": name, "k": key})


class AppBetweenBatches(Reporter):
    """After each batch of the give-back, the app writes: a value of its own into a filled row the
    batches have not reached (kept: it is no longer the fill), and the fill value itself into a row
    they have given back already (kept: written after zdm's undo of that row)."""

    def __init__(self, engine: sa.Engine, model: Schema) -> None:
        self.engine, self.model = engine, model
        self.batches = 0
        self.later: list[tuple[int, str]] = []  # written after the give-back of the row: the model's after it

    def backfill(self, progress: BackfillProgress) -> None:
        if progress.finished:
            return
        self.batches += 1
        last = _checkpoint(self.engine).last_key
        assert last is not None
        ahead = [key for key in _filled_keys(self.model) if key > last[0]]
        behind = [key for key in range(4, last[0] + 1, 4) if (key, FILL) not in self.later]
        if ahead:
            App(self.engine, self.model).update(ahead[0], {"name": f"kept {ahead[0]}"})
        if behind:
            _write(self.engine, behind[-1], FILL)
            self.later.append((behind[-1], FILL))


def test_rollback_gives_back_in_key_batches_around_app_writes(zdm_database_url: str) -> None:
    engine, model, plan = _filled_window(zdm_database_url)
    filled = _filled_keys(model)
    assert len(filled) > 350
    run = runner(engine, **SMALL_BATCHES)
    run.reporter = app = AppBetweenBatches(engine, model)
    run.rollback(plan.id)
    assert app.batches >= 10  # 20-row batches that stay near 20 (each its own transaction)
    rollback_model(plan, model, engine.dialect.name)
    for key, name in app.later:
        model.update("users", {"id": key}, {"name": name})
    assert_agrees(engine, model)
    with engine.connect() as connection:
        names = dict(connection.exec_driver_sql("SELECT id, name FROM users").all())
    assert sum(name is None for name in names.values()) > 250
    assert sum(str(name).startswith("kept ") for name in names.values()) >= 10
    assert all(names[key] == FILL for key, _ in app.later) and len(app.later) >= 10
    assert zdm_objects(engine) == [] and _checkpoint(engine) == Checkpoint()


def test_a_rollback_killed_mid_give_back_is_finished_by_the_next(zdm_database_url: str, tmp_path: Path) -> None:
    """kill -9 `zdm rollback` after its third batch: the rows before the checkpoint are NULL again,
    those after it still hold the fill; the next rollback goes on from the checkpoint, so a row
    given back and then written the fill value by the app keeps it."""
    engine, model, plan = _filled_window(zdm_database_url)
    process = subprocess.Popen(
        [sys.executable, "-m", "zdm.cli", "rollback", plan.id, "--db", zdm_database_url, "--json",
         "--batch-size", "20", "--batch-target-ms", "1", "--batch-pause-ms", "200"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    batches = 0
    for line in process.stderr:
        event = json.loads(line) if line.startswith("{") else {}
        batches += event.get("event") == "backfill"
        if batches == 3:
            break
    process.kill()
    process.wait()
    process.stderr.close()
    wait_for_runner_gone(engine)

    checkpoint = _checkpoint(engine)
    with engine.connect() as connection:
        found = state.load(connection, plan.id)
        names = dict(connection.exec_driver_sql("SELECT id, name FROM users").all())
    assert found is not None and found[0].rolling_back
    assert found[0].steps[checkpoint.step or 0].undo_backfill is not None and checkpoint.last_key is not None
    last = checkpoint.last_key[0]
    filled = _filled_keys(model)
    assert [key for key in filled if names[key] is None] == [key for key in filled if key <= last]
    assert [key for key in filled if names[key] == FILL] == [key for key in filled if key > last] != []
    with pytest.raises(PlanStateError, match="was being rolled back"):
        runner(engine).start(plan)
    told = format_record(status.read(engine)[0])
    assert f"backfill users: {checkpoint.rows_done:,}/" in told and "(interrupted)" in told, told
    assert "`zdm rollback fill` finishes it" in told, told

    given_back, unreached = max(key for key in filled if key <= last), min(key for key in filled if key > last)
    _write(engine, given_back, FILL)  # the app, after zdm gave this row back
    App(engine, model).update(unreached, {"name": "kept"})
    runner(engine, **SMALL_BATCHES).rollback(plan.id)
    rollback_model(plan, model, engine.dialect.name)
    model.update("users", {"id": given_back}, {"name": FILL})
    assert_agrees(engine, model)
    assert zdm_objects(engine) == [] and _checkpoint(engine) == Checkpoint()
    with engine.connect() as connection:
        assert [name for name in sa.inspect(connection).get_table_names() if name.startswith("zdm_filled")] == []


class CountBatches(Reporter):
    def __init__(self) -> None:
        self.batches = 0

    def backfill(self, progress: BackfillProgress) -> None:
        self.batches += not progress.finished


def test_a_composite_key_is_walked_in_batches_too(zdm_database_url: str) -> None:
    engine = db.create_engine(zdm_database_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (a INTEGER, b TEXT, qty INTEGER, PRIMARY KEY (a, b))")
        connection.exec_driver_sql("INSERT INTO t VALUES (1, 'x', NULL), (1, 'y', 3), (1, 'z', NULL), (2, 'x', NULL), "
                                   "(2, 'y', NULL), (3, 'x', 0), (3, 'y', NULL)")
    plan = planfile.parse({"id": "nn", "operations": [
        {"op": "set_not_null", "table": "t", "column": "qty", "fill": 0}]})
    run = runner(engine, batch_size=2, batch_target_ms=1)
    run.start(plan)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE t SET qty = 7 WHERE a = 2 AND b = 'y'")
    run.reporter = counted = CountBatches()
    run.rollback(plan.id)
    with engine.connect() as connection:
        rows = {(a, b): qty for a, b, qty in connection.exec_driver_sql("SELECT a, b, qty FROM t").all()}
    assert rows == {(1, "x"): None, (1, "y"): 3, (1, "z"): None, (2, "x"): None, (2, "y"): 7, (3, "x"): 0,
                    (3, "y"): None}
    assert counted.batches >= 2 and zdm_objects(engine) == []  # 2 keys, then 4


def _table_scans(engine: sa.Engine, table: str) -> int:
    """How many sequential scans of ``table`` PostgreSQL counted (its statistics flushed first)."""
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT pg_stat_force_next_flush()")
        connection.commit()
        return int(connection.scalar(sa.text("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = :t"),
                                     {"t": table}))


def test_a_give_back_batch_reads_its_rows_by_key_not_the_whole_table(zdm_postgres_url: str) -> None:
    """A big table's statistics, read before the fill, say almost no row holds it: the planner chose to
    scan the whole table and probe the table of keys for each row holding the fill, every batch (1M
    rows, 500k filled, text and uuid key: the first batch ran past its statement timeout, and the
    rollback failed). Each batch now names at most its batch of keys, and the table is read by key."""
    engine = db.create_engine(zdm_postgres_url)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            'CREATE TABLE "Accounts" (tenant TEXT, id UUID, "WeIrd" TEXT, PRIMARY KEY (tenant, id))')
        connection.exec_driver_sql(
            "INSERT INTO \"Accounts\" SELECT 't' || mod(g, 7), md5(g::text)::uuid, "
            "CASE WHEN mod(g, 2) = 0 THEN NULL ELSE 'w' || g END FROM generate_series(1, 20000) g")
        connection.exec_driver_sql('ANALYZE "Accounts"')  # as autovacuum left it before the plan started
    plan = planfile.parse({"id": "nn", "operations": [
        {"op": "set_not_null", "table": "Accounts", "column": "WeIrd", "fill": "n/a"}]})
    run = runner(engine, batch_size=50, batch_target_ms=1)
    run.start(plan)
    before = _table_scans(engine, "Accounts")
    run.reporter = counted = CountBatches()
    run.rollback(plan.id)
    assert counted.batches >= 20
    assert _table_scans(engine, "Accounts") - before < 5, "the give-back scanned the table in its batches"
    with engine.connect() as connection:
        assert connection.scalar(sa.text('SELECT count(*) FROM "Accounts" WHERE "WeIrd" IS NULL')) == 10000
    assert zdm_objects(engine) == []


@pytest.mark.parametrize("column_type, fill", [("JSON", {"b": 1, "a": [2]}), ("REAL", 0.1), ("JSONB", {"b": 1, "a": 2}),
                                               ("TIMESTAMPTZ", "2024-05-01T12:00:00+02:00"), ("TEXT[]", ["x", "y"])])
def test_a_fill_of_any_type_is_given_back(zdm_database_url: str, column_type: str, fill: Any) -> None:
    """The give-back finds the rows still holding the fill by comparing with it: json has no = in
    PostgreSQL (the rollback failed at its first batch, every time: the plan could only complete).
    The other types check that a comparison of text forms reads the fill as the column's type (jsonb
    orders its keys, REAL is not double precision, timestamptz is written in the session's zone)."""
    engine = db.create_engine(zdm_database_url)
    if engine.dialect.name == "sqlite" and column_type in ("JSONB", "TIMESTAMPTZ", "TEXT[]"):
        pytest.skip(f"SQLite has no {column_type}")
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE TABLE t (id INTEGER PRIMARY KEY, v {column_type})")
        connection.exec_driver_sql("INSERT INTO t (id) VALUES (1), (2), (3)")
    plan = planfile.parse({"id": "nn", "operations": [{"op": "set_not_null", "table": "t", "column": "v",
                                                        "fill": fill}]})
    run = runner(engine)
    run.start(plan)
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO t (id) VALUES (4)")  # the old app: filled too
        assert connection.exec_driver_sql("SELECT count(*) FROM t WHERE v IS NULL").scalar() == 0
    run.rollback(plan.id)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM t WHERE v IS NULL").scalar() == 4
    assert zdm_objects(engine) == []


def test_status_of_a_rollback_killed_after_an_earlier_ctrl_c_does_not_blame_the_ctrl_c(
        zdm_database_url: str) -> None:
    """start was stopped by Ctrl-C (noted in the history), resumed to its end; then `zdm rollback` was
    killed -9 mid give-back. status said "interrupted during MIGRATING at <the Ctrl-C's time>
    (Ctrl-C)": the last history entry, though runs came after it."""
    engine, _, plan = _filled_window(zdm_database_url)
    assert state.record_interruption(engine, plan.id, "Ctrl-C")
    (record,) = status.read(engine)
    assert record.interruption is not None  # nothing ran since: it is why the plan stands here
    process = subprocess.Popen(
        [sys.executable, "-m", "zdm.cli", "rollback", plan.id, "--db", zdm_database_url, "--json",
         "--batch-size", "20", "--batch-target-ms", "1", "--batch-pause-ms", "200"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith("{") and json.loads(line).get("event") == "backfill":
            break
    process.kill()
    process.wait()
    process.stderr.close()
    wait_for_runner_gone(engine)
    (record,) = status.read(engine)
    told = format_record(record)
    assert "interrupted during MIGRATING: a rollback had begun" in told, told
    assert "Ctrl-C" not in told.split("\n  20")[0], told  # the history lines below still list it
    assert record.to_json()["interrupted"] is None
