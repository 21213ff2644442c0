"""kill -9 the real `zdm start` at random moments; the database and `zdm status` must still tell the truth.

Each trial runs the CLI in a subprocess on a fresh users table (with an index on the renamed column,
so PostgreSQL also builds an index CONCURRENTLY), kills it at a seeded random moment in expand, in
the backfill or after it (validate, index), then:

- `zdm status --json` from another process must agree with the database: steps recorded as
  executed have their objects, steps not recorded have none, the backfill checkpoint names exactly
  the rows already backfilled;
- an old-version app writes (the triggers must be there if, and only if, expand is recorded);
- resume (`start`) or `rollback`, alternately, must leave the database equal to the
  reference model: no row lost or wrong, and after rollback no zdm object left.

Trials run a few at a time (each on its own database) to keep the test near half a minute.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from support import App, Phase, apply_phases, assert_agrees, rollback_model, runner, setup, users_schema, zdm_objects

from zdm import planfile, state
from zdm.actions import Statement
from zdm.dialects.postgresql import ADVISORY_LOCK_KEY
from zdm.model import Index
from zdm.runner import PlanStateError, Reporter, Runner
from zdm.testing import ServerSource, fresh_postgres_database

ROWS = 800
PLAN = {"id": "crash", "operations": [
    {"op": "rename_column", "table": "users", "column": "email", "new_name": "email_address"}]}
#: Small, slow batches so that a kill lands mid-backfill; the target keeps them small.
RUN_FLAGS = ["--batch-size", "20", "--batch-target-ms", "2", "--batch-pause-ms", "3"]
TARGETS = ("expand", "backfill", "after backfill")
WORKERS = 3


@dataclass
class Trial:
    number: int
    target: str
    url: str
    plan_path: Path
    #: Where the kill left the plan, as `zdm status` told it.
    died_in: str = ""
    then: str = ""


def zdm(*args: str, check_code: int | None = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "zdm.cli", *args], capture_output=True, text=True, timeout=60)
    if check_code is not None:
        assert done.returncode == check_code, f"zdm {' '.join(args)}: {done.returncode}\n{done.stderr}"
    return done


def start_and_kill(trial: Trial, rng: random.Random, nth_batch: int | None = None) -> None:
    """Run `zdm start --json`, watch its progress on stderr, kill -9 at the chosen moment."""
    process = subprocess.Popen(
        [sys.executable, "-m", "zdm.cli", "start", str(trial.plan_path), "--db", trial.url, "--json", *RUN_FLAGS],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    assert process.stderr is not None
    # The batch size grows when batches beat their target, but 800 rows starting at 20 a batch
    # take at least five batches however fast they run (20 + 40 + 80 + 160 + 320 < 800).
    nth_batch = nth_batch or rng.randint(1, 5)
    delay = rng.uniform(0, 0.02)
    batches, backfill_over = 0, False
    for line in process.stderr:
        event = json.loads(line) if line.startswith("{") else {}
        if event.get("event") == "backfill":
            batches += 1
            backfill_over = backfill_over or event["finished"]
        if (trial.target == "expand" and event.get("event") == "phase" and event["phase"] == "EXPANDING") or (
                trial.target == "backfill" and batches == nth_batch) or (
                trial.target == "after backfill" and backfill_over):
            time.sleep(delay)
            break
    process.kill()
    process.wait()
    process.stderr.close()


def wait_for_runner_gone(engine: sa.Engine) -> None:
    """The server frees a killed runner's advisory lock once it notices the dead client (milliseconds)."""
    if engine.dialect.name != "postgresql":
        return  # the kernel dropped the flock with the process
    deadline = time.monotonic() + 10
    with engine.connect() as connection:
        while connection.scalar(sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = :k AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
                {"k": ADVISORY_LOCK_KEY}):
            assert time.monotonic() < deadline, "the killed runner's lock was never released"
            connection.rollback()
            time.sleep(0.02)


def zdm_indexes(engine: sa.Engine) -> dict[str, bool]:
    """zdm-owned indexes on users and whether they are valid (SQLite's are always valid)."""
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            rows = connection.exec_driver_sql(
                "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE i.indrelid = 'users'::regclass AND c.relname LIKE 'zdm%%'").all()
        else:
            rows = [(name, True) for name in connection.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'zdm%'").scalars()]
    return dict(rows)


def check_status_tells_the_truth(engine: sa.Engine, record: dict[str, Any] | None) -> str:
    """Compare what `zdm status` says with the database; return where the kill left the plan."""
    with engine.connect() as connection:
        columns = {c["name"] for c in sa.inspect(connection).get_columns("users")}
        filled = set() if "email_address" not in columns else set(connection.exec_driver_sql(
            "SELECT id FROM users WHERE email_address IS NOT NULL").scalars())
        validated = connection.exec_driver_sql(
            "SELECT convalidated FROM pg_constraint WHERE conname LIKE 'zdm_nn%%'").scalar() \
            if engine.dialect.name == "postgresql" else None
    triggers = [name for name in zdm_objects(engine) if name.startswith(("zdm_tg", "zdm_fn"))]
    indexes = zdm_indexes(engine)
    if record is None:  # killed before the first phase was recorded
        assert "email_address" not in columns and not triggers and not indexes
        return "expand"
    steps, checkpoint = record["steps"], record["checkpoint"]
    expand = [s["executed"] for s in steps if s["phase"] == "EXPANDING"]
    assert all(expand) or not any(expand), f"expand is one transaction, recorded half: {expand}"
    expanded = all(expand)
    assert ("email_address" in columns) == expanded
    assert bool(triggers) == expanded, triggers
    assert not any(s["executed"] for s in steps if s["phase"] == "CONTRACTING")
    if record["phase"] == "EXPANDING":
        assert not any(s["executed"] for s in steps if s["phase"] == "MIGRATING") and not checkpoint
    else:
        assert record["phase"] == "MIGRATING" and expanded
    number = {id(s): i for i, s in enumerate(steps)}
    backfill = next(s for s in steps if s["backfill"])
    if backfill["executed"]:
        assert filled == set(range(1, ROWS + 1)), "the backfill is recorded done, but rows are missing"
    elif checkpoint.get("step") == number[id(backfill)]:
        last = checkpoint["last_key"][0] if checkpoint["last_key"] else 0
        assert filled == set(range(1, last + 1)), f"checkpoint at {last}, rows filled: {len(filled)}"
        assert checkpoint["rows_done"] == last
    else:
        assert filled == set()
    for step in steps:
        if step["description"].startswith("validate"):
            assert bool(validated) is step["executed"], "VALIDATE recorded and done must agree"
        if step["description"].startswith("index on"):
            in_flight = checkpoint.get("outside_transaction") and checkpoint.get("step") == number[id(step)]
            if step["executed"]:
                assert list(indexes.values()) == [True], indexes
            elif not in_flight:
                assert indexes == {}, f"an index exists but its step is neither executed nor in flight: {indexes}"
    if record["phase"] == "EXPANDING" or not expanded:
        return "expand"
    if not backfill["executed"]:
        return "backfill"
    return "finished" if all(s["executed"] for s in steps if s["phase"] != "CONTRACTING") else "after backfill"


def run_trial(trial: Trial, reset: Any) -> None:
    rng = random.Random(trial.number)
    reset(trial.url)
    model = users_schema(ROWS)
    model.table("users").indexes["users_email_ix"] = Index(("email",))
    original = model.copy()
    engine = setup(trial.url, model)
    dialect = engine.dialect.name
    plan = planfile.parse(PLAN)
    try:
        start_and_kill(trial, rng)
        wait_for_runner_gone(engine)
        records = json.loads(zdm("status", "--json", "--db", trial.url).stdout)["plans"]
        record = records[0] if records else None
        trial.died_in = check_status_tells_the_truth(engine, record)

        # The old app keeps writing while the plan lies interrupted.
        expanded = record is not None and all(s["executed"] for s in record["steps"] if s["phase"] == "EXPANDING")
        if expanded:
            apply_phases(plan, model, dialect, Phase.EXPANDING)
        old_app = App(engine, model)
        old_app.insert({"id": 50_000 + trial.number, "email": f"late-{trial.number}@x"})
        old_app.update(7, {"email": f"changed-{trial.number}@x"})

        # Then, alternately, resume or roll back (in this process: the CLI adds nothing to either).
        if trial.number % 2 == 0:
            trial.then = "resume"
            if trial.died_in == "finished":
                with pytest.raises(PlanStateError, match="already started"):
                    runner(engine, batch_size=20).start(plan)
            else:
                runner(engine, batch_size=20).start(plan)
            if not expanded:
                apply_phases(plan, model, dialect, Phase.EXPANDING)
            apply_phases(plan, model, dialect, Phase.MIGRATING)
            assert_agrees(engine, model)
            with engine.connect() as connection:
                after, checkpoint = state.load(connection, "crash")
                checkpoint = checkpoint.to_dict()
            assert after.is_started and checkpoint == {}
            assert list(zdm_indexes(engine).values()) == [True]
        else:
            trial.then = "rollback"
            if record is None:
                with pytest.raises(PlanStateError, match="no plan"):
                    runner(engine).rollback("crash")
            else:
                runner(engine).rollback("crash")
            if expanded:
                rollback_model(plan, model, dialect)
            assert_agrees(engine, model)
            assert model.table("users").shape() == original.table("users").shape()
            assert zdm_objects(engine) == [] and zdm_indexes(engine) == {}
    finally:
        engine.dispose()


def run_trials(urls: list[str], reset: Any, tmp_path: Path, count: int, reached: set[str]) -> list[Trial]:
    plan_path = tmp_path / "crash.json"
    plan_path.write_text(json.dumps(PLAN))
    trials = [Trial(n, TARGETS[n % len(TARGETS)], "", plan_path) for n in range(count)]

    def worker(slot: int) -> None:
        for trial in trials[slot::len(urls)]:
            trial.url = urls[slot] if "{n}" not in urls[slot] else urls[slot].format(n=trial.number)
            run_trial(trial, reset)

    with ThreadPoolExecutor(len(urls)) as pool:
        for done in [pool.submit(worker, slot) for slot in range(len(urls))]:
            done.result()
    died = {trial.died_in for trial in trials}
    summary = ", ".join(f"#{t.number} {t.target}->{t.died_in}/{t.then}" for t in trials)
    assert reached <= died, f"kills did not reach every phase: {summary}"
    return trials


def _reset_postgres(url: str) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        connection.exec_driver_sql(  # a killed runner's statement may still be finishing
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        connection.exec_driver_sql("DROP SCHEMA public CASCADE")
        connection.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()


@contextmanager
def _postgres_databases(server: ServerSource, count: int) -> Iterator[list[str]]:
    assert server.url is not None
    with ExitStack() as stack:
        yield [stack.enter_context(fresh_postgres_database(server.url)) for _ in range(count)]


def test_kill_9_during_start_postgresql(zdm_postgres_server: ServerSource, tmp_path: Path) -> None:
    with _postgres_databases(zdm_postgres_server, WORKERS) as urls:
        run_trials(urls, _reset_postgres, tmp_path, count=21, reached={"expand", "backfill", "after backfill"})


def test_kill_9_during_start_sqlite(tmp_path: Path) -> None:
    urls = [f"sqlite:///{tmp_path}/crash-{{n}}.db"] * WORKERS
    # After the backfill SQLite has one short transaction left (the index copy): kills rarely land there.
    run_trials(urls, lambda url: None, tmp_path, count=9, reached={"expand", "backfill"})


def test_status_of_a_plan_killed_mid_backfill_says_so(tmp_path: Path) -> None:
    """The human form of `zdm status` shows the interrupted backfill and where it stands."""
    url = f"sqlite:///{tmp_path}/status.db"
    plan_path = tmp_path / "crash.json"
    plan_path.write_text(json.dumps(PLAN))
    trial = Trial(0, "backfill", url, plan_path)
    engine = setup(url, users_schema(ROWS))
    start_and_kill(trial, random.Random(3), nth_batch=1)
    text = zdm("status", "--db", url).stdout
    with engine.connect() as connection:
        _, checkpoint = state.load(connection, "crash")
        checkpoint = checkpoint.to_dict()
    assert f"{checkpoint['rows_done']:,}/{ROWS:,} rows" in text and "(interrupted)" in text
    assert "crash: MIGRATING" in text


class StopAfterIndexBuild(Reporter):
    """Ctrl-C right after CREATE INDEX CONCURRENTLY ran, before zdm could record it."""

    def executed(self, connection: sa.Connection, action: Any, seconds: float) -> None:
        if isinstance(action, Statement) and action.sql.startswith("CREATE INDEX CONCURRENTLY"):
            raise KeyboardInterrupt


def test_index_built_outside_a_transaction_is_tracked_while_in_flight(zdm_postgres_url: str) -> None:
    """No transaction records a CONCURRENTLY index with its step: zdm marks it in flight first."""
    engine = setup(zdm_postgres_url, users_schema(50))
    plan = planfile.parse({"id": "name-ix", "operations": [
        {"op": "create_index", "table": "users", "name": "users_name_ix", "columns": ["name"]}]})
    for then in ("rollback", "resume"):
        with pytest.raises(KeyboardInterrupt):
            Runner(engine, StopAfterIndexBuild()).start(plan)
        (record,) = json.loads(zdm("status", "--json", "--db", zdm_postgres_url).stdout)["plans"]
        assert record["checkpoint"] == {"step": 0, "outside_transaction": True}
        assert not record["steps"][0]["executed"]
        assert "in flight: create index users_name_ix" in zdm("status", "--db", zdm_postgres_url).stdout
        with engine.connect() as connection:
            assert "users_name_ix" in {ix["name"] for ix in sa.inspect(connection).get_indexes("users")}
        if then == "rollback":
            runner(engine).rollback(plan.id)  # undoes the step it was not sure about
            with engine.connect() as connection:
                assert "users_name_ix" not in {ix["name"] for ix in sa.inspect(connection).get_indexes("users")}
        else:
            runner(engine).start(plan)  # runs it again: the leftover is dropped and rebuilt
            with engine.connect() as connection:
                valid = connection.exec_driver_sql(
                    "SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_name_ix'::regclass").scalar()
                recorded, checkpoint = state.load(connection, plan.id)
                checkpoint = checkpoint.to_dict()
            assert valid and recorded.is_started and checkpoint == {}


def test_status_tells_a_running_backfill_from_an_interrupted_one(zdm_database_url: str, tmp_path: Path) -> None:
    setup(zdm_database_url, users_schema(ROWS)).dispose()
    plan_path = tmp_path / "crash.json"
    plan_path.write_text(json.dumps(PLAN))
    process = subprocess.Popen(
        [sys.executable, "-m", "zdm.cli", "start", str(plan_path), "--db", zdm_database_url, "--json",
         "--batch-size", "20", "--batch-target-ms", "2", "--batch-pause-ms", "300"],  # 10 s of backfill or more
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    try:
        for line in process.stderr:
            if line.startswith("{") and json.loads(line)["event"] == "backfill":
                break
        running = zdm("status", "--db", zdm_database_url).stdout
        records = json.loads(zdm("status", "--json", "--db", zdm_database_url).stdout)["plans"]
    finally:
        process.kill()
        process.wait()
        process.stderr.close()
    assert "(a runner is at work: pid " in running and "(interrupted)" not in running, running
    expected = f"pid {process.pid}" if zdm_database_url.startswith("sqlite") else "application_name 'zdm'"
    assert expected in records[0]["runner"]  # PostgreSQL names the runner's backend
    engine = sa.create_engine(zdm_database_url)
    wait_for_runner_gone(engine)
    engine.dispose()
    assert "(interrupted)" in zdm("status", "--db", zdm_database_url).stdout


@pytest.mark.parametrize("then", ["rollback", "resume"])
def test_kill_9_while_a_vacuum_runs_then_rollback_or_resume(zdm_postgres_url: str, tmp_path: Path, then: str) -> None:
    """kill -9 of `zdm start` while a stretch's VACUUM runs on its own connection: the server goes on
    with a statement whose client is gone until it ends by itself, and that VACUUM holds SHARE UPDATE
    EXCLUSIVE. A `zdm rollback` (DROP TRIGGER) or resumed `zdm start` (CREATE INDEX CONCURRENTLY)
    run right after must not run out of their lock budget behind the dead runner's VACUUM."""
    from test_backfill import end_vacuums, slow_vacuums, vacuums_running

    model = users_schema(3000)
    model.table("users").indexes["users_email_ix"] = Index(("email",))
    engine = setup(zdm_postgres_url, model)
    slow_vacuums(engine)
    plan_path = tmp_path / "crash.json"
    plan_path.write_text(json.dumps(PLAN))
    process = subprocess.Popen(
        [sys.executable, "-m", "zdm.cli", "start", str(plan_path), "--db", zdm_postgres_url, "--json",
         "--batch-size", "100", "--batch-target-ms", "5", "--batch-pause-ms", "20", "--vacuum-every-pct", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not vacuums_running(engine):  # the first VACUUM comes after 1,000 rows (MIN_STRETCH)
            assert process.poll() is None and time.monotonic() < deadline, "no VACUUM was seen"
            time.sleep(0.01)
        process.kill()
        process.wait()
        wait_for_runner_gone(engine)
        plan = planfile.parse(PLAN)
        dialect = engine.dialect.name
        if then == "rollback":
            done = zdm("rollback", "crash", "--db", zdm_postgres_url, check_code=None)
            assert done.returncode == 0, done.stderr
            assert_agrees(engine, model)
            assert zdm_objects(engine) == [] and zdm_indexes(engine) == {}
        else:
            done = zdm("start", str(plan_path), "--db", zdm_postgres_url, "--vacuum-every-pct", "0", check_code=None)
            assert done.returncode == 0, done.stderr
            apply_phases(plan, model, dialect, Phase.EXPANDING, Phase.MIGRATING)
            assert_agrees(engine, model)
            assert list(zdm_indexes(engine).values()) == [True]
        assert vacuums_running(engine) == 0
    finally:
        process.kill()
        end_vacuums(engine)
        engine.dispose()
