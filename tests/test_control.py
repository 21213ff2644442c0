"""Control from another terminal (issue 12): `zdm pause`, `zdm resume`, `zdm throttle` stored in the
state table and taken up by the runner before its next batch; `zdm status` says paused or
throttled and why; a resumed `start` uses the settings given now; throttling by app load
(active sessions, a probe query). Both databases, a real runner process.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from support import App, Phase, apply_phases, assert_agrees, setup, users_schema

from zdm import db, planfile, state
from zdm.backfill import BackfillProgress
from zdm.cli import main
from zdm.errors import PlanInvalid, ThrottleInvalid
from zdm.runner import Reporter, Runner
from zdm.throttle import Wait

RENAME = {"id": "rename_email", "operations": [
    {"op": "rename_column", "table": "users", "column": "email", "new_name": "email_address"}]}
SLOW = ["--batch-size", "10", "--batch-target-ms", "1", "--batch-pause-ms", "50"]


def zdm(*args: str) -> tuple[int, str, str]:
    from click.testing import CliRunner

    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def zdm_json(*args: str) -> tuple[int, dict[str, Any]]:
    import jsonschema

    from zdm.schemas import OUTPUT

    code, out, _ = zdm(*args, "--json")
    document = json.loads(out)
    jsonschema.Draft202012Validator(json.loads(OUTPUT.read_text())).validate(document)
    return code, document


def write_plan(tmp_path: Path, plan: dict[str, Any] = RENAME) -> str:
    path = tmp_path / f"{plan['id']}.json"
    path.write_text(json.dumps(plan))
    return str(path)


class Runs:
    """A `zdm start --json` in its own process; its stderr events read on a thread."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "zdm.cli", "start", *args, "--json"],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if line.startswith("{"):
                self.events.append((time.monotonic(), json.loads(line)))

    def wait_for(self, test: Any, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, event in list(self.events):
                if test(event):
                    return event
            assert self.process.poll() is None or any(test(e) for _, e in self.events), "the runner ended"
            time.sleep(0.05)
        raise AssertionError(f"no such event in {timeout} s: {[e for _, e in self.events][-5:]}")

    def finish(self, timeout: float = 60.0) -> dict[str, Any]:
        out, _ = self.process.communicate(timeout=timeout)
        self.reader.join(timeout=5)
        assert self.process.returncode == 0, (out, [e for _, e in self.events][-5:])
        return json.loads(out)


def rows_done(url: str) -> int:
    _code, document = zdm_json("status", "rename_email", "--db", url)
    return int(document["plan"]["checkpoint"].get("rows_done", 0))


# -- pause, resume, throttle from another terminal -------------------------------------------------------
def test_pause_resume_and_throttle_from_another_process(zdm_database_url: str, tmp_path: Path) -> None:
    model = users_schema(300)
    engine = setup(zdm_database_url, model)
    run = Runs(write_plan(tmp_path), "--db", zdm_database_url, *SLOW)
    run.wait_for(lambda e: e["event"] == "backfill")

    code, document = zdm_json("pause", "rename_email", "--db", zdm_database_url)
    assert code == 0 and document["control"]["paused"] is True and document["runner"]
    run.wait_for(lambda e: e["event"] == "throttle" and e["kind"] == "paused")
    held = rows_done(zdm_database_url)
    time.sleep(0.8)
    assert rows_done(zdm_database_url) == held < 300  # no batch while paused
    code, document = zdm_json("status", "rename_email", "--db", zdm_database_url)
    record = document["plan"]
    assert record["activity"] == "at_work" and record["control"]["paused"] is True
    assert record["throttling"].startswith("paused by `zdm pause`")
    code, out, _ = zdm("status", "rename_email", "--db", zdm_database_url)
    assert "  paused by `zdm pause` (" in out and "`zdm resume rename_email` continues" in out

    # the apps keep working while the backfill waits: rows it reached and rows it did not
    apply_phases(planfile.parse(RENAME), model, engine.dialect.name, Phase.EXPANDING)
    App(engine, model).insert({"id": 5000, "email": "during@pause"})
    App(engine, model).update(1, {"email": "old-app@reached"})
    App(engine, model).update(299, {"email": "old-app@unreached"})
    App(engine, model).update(298, {"email_address": "new-app@unreached"})
    App(engine, model).update(297, {"name": "unrelated"})

    # a slower pace, taken up before the next batch once resumed
    code, document = zdm_json("throttle", "rename_email", "--db", zdm_database_url, "--batch-pause-ms", "300")
    assert code == 0 and document["control"] == {**document["control"], "paused": True,
                                                 "settings": {"batch_pause_ms": 300}}
    code, out, _ = zdm("status", "rename_email", "--db", zdm_database_url)
    assert "throttle asked (" in out and "batch_pause_ms 300" in out
    resumed_at = time.monotonic()
    code, _ = zdm_json("resume", "rename_email", "--db", zdm_database_url)
    assert code == 0
    run.wait_for(lambda e: e["event"] == "throttle" and e["kind"] is None)
    time.sleep(1.0)
    batches = [at for at, e in run.events if e["event"] == "backfill" and at > resumed_at]
    gaps = [b - a for a, b in itertools.pairwise(batches)]
    assert gaps and min(gaps) >= 0.28, gaps  # the throttled pace, not the 50 ms the run began with
    zdm_json("throttle", "rename_email", "--db", zdm_database_url, "--batch-pause-ms", "0")
    document = run.finish()
    assert document["plan"]["phase"] == "MIGRATING"
    apply_phases(planfile.parse(RENAME), model, engine.dialect.name, Phase.MIGRATING)
    assert_agrees(engine, model)
    engine.dispose()


@pytest.mark.parametrize("args", [["pause"], ["resume"], ["throttle", "--batch-pause-ms", "5"]])
def test_control_of_a_plan_with_no_backfill_ahead_is_bad_input(zdm_database_url: str, tmp_path: Path,
                                                               args: list[str]) -> None:
    engine = setup(zdm_database_url, users_schema(20))
    code, out, err = zdm(*args[:1], "no_such_plan", *args[1:], "--db", zdm_database_url)
    assert (code, out) == (2, "") and err.count("\n") == 1 and "no plan 'no_such_plan'" in err
    Runner(engine).start(planfile.parse(RENAME))  # backfill done: the plan waits for complete
    with engine.connect() as connection:
        before = connection.execute(sa.select(state.migrations)).all()
    code, out, err = zdm(*args[:1], "rename_email", *args[1:], "--db", zdm_database_url)
    assert (code, out) == (2, "") and "no backfill ahead" in err and "its backfill is done" in err
    with engine.connect() as connection:
        assert connection.execute(sa.select(state.migrations)).all() == before
    engine.dispose()


def test_throttle_needs_something_to_change(zdm_sqlite_url: str) -> None:
    code, out, err = zdm("throttle", "rename_email", "--db", zdm_sqlite_url)
    assert (code, out) == (2, "") and "give at least one setting to change, or --reset" in err


# -- a resumed start ----------------------------------------------------------------------------------
class Notes(Reporter):
    """Notes and throttle events of an in-process run; optionally stops it after batch N (Ctrl-C)."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.notes: list[str] = []
        self.waits: list[Wait | None] = []
        self.batches: list[BackfillProgress] = []
        self.stop_after = stop_after

    def note(self, message: str) -> None:
        self.notes.append(message)

    def throttled(self, wait: Wait | None, waited_s: float) -> None:
        self.waits.append(wait)

    def backfill(self, progress: BackfillProgress) -> None:
        self.batches.append(progress)
        if self.stop_after is not None and len(self.batches) == self.stop_after:
            raise KeyboardInterrupt


def _interrupted(url: str, rows: int = 200) -> tuple[sa.Engine, Any, planfile.PlanFile]:
    model = users_schema(rows)
    engine = setup(url, model)
    plan = planfile.parse(RENAME)
    with pytest.raises(KeyboardInterrupt):
        Runner(engine, Notes(stop_after=2), {"batch_size": 10, "batch_pause_ms": 40}).start(plan)
    return engine, model, plan


def test_a_resumed_start_uses_the_settings_given_now(zdm_database_url: str) -> None:
    engine, model, plan = _interrupted(zdm_database_url)
    code, _ = zdm_json("throttle", plan.id, "--db", zdm_database_url, "--batch-pause-ms", "5000")
    assert code == 0
    notes = Notes()
    Runner(engine, notes, {"batch_size": 25}).start(plan)  # would take minutes at the throttled pace
    assert any("settings given now replace those of the interrupted run: batch_size 10 -> 25, "
               "batch_pause_ms 40 -> 0" in n for n in notes.notes), notes.notes
    assert any("dropped what `zdm throttle` set for the interrupted run (batch_pause_ms 5000)" in n
               for n in notes.notes), notes.notes
    with engine.connect() as connection:
        stored, _ = state.load(connection, plan.id)  # type: ignore[misc]
        assert state.read_control(connection, plan.id).empty
    assert stored.source["settings"] == {"batch_size": 25}
    apply_phases(plan, model, engine.dialect.name, Phase.EXPANDING, Phase.MIGRATING)
    assert_agrees(engine, model)
    engine.dispose()


def test_a_paused_plan_stays_paused_across_a_restart(zdm_database_url: str) -> None:
    engine, model, plan = _interrupted(zdm_database_url)
    code, document = zdm_json("pause", plan.id, "--db", zdm_database_url)
    assert code == 0 and document["runner"] is None
    code, out, _ = zdm("status", plan.id, "--db", zdm_database_url)
    assert "paused by `zdm pause`" in out and "interrupted during MIGRATING" in out
    notes = Notes()
    thread = threading.Thread(target=Runner(engine, notes, {"batch_size": 50}).start, args=(plan,))
    thread.start()
    deadline = time.monotonic() + 20
    while not any(w is not None and w.kind == "paused" for w in notes.waits) and time.monotonic() < deadline:
        time.sleep(0.05)
    done_before = len(notes.batches)
    time.sleep(0.5)
    assert any(w is not None and w.kind == "paused" for w in notes.waits) and len(notes.batches) == done_before
    assert any("is paused (" in n for n in notes.notes)
    zdm_json("resume", plan.id, "--db", zdm_database_url)
    thread.join(timeout=60)
    assert not thread.is_alive() and notes.waits[-1] is None
    apply_phases(plan, model, engine.dialect.name, Phase.EXPANDING, Phase.MIGRATING)
    assert_agrees(engine, model)
    engine.dispose()


def test_a_state_table_of_an_earlier_release_gets_its_control_column(zdm_database_url: str) -> None:
    engine, model, plan = _interrupted(zdm_database_url, rows=60)
    with engine.begin() as connection:  # as a release before issue 12 left it
        connection.execute(sa.text("ALTER TABLE zdm_migrations DROP COLUMN control"))
    code, out, _ = zdm("status", plan.id, "--db", zdm_database_url)
    assert code == 0 and "interrupted during MIGRATING" in out
    code, document = zdm_json("pause", plan.id, "--db", zdm_database_url)
    assert code == 0 and document["control"]["paused"] is True
    zdm_json("resume", plan.id, "--db", zdm_database_url)
    Runner(engine, Notes()).start(plan)
    apply_phases(plan, model, engine.dialect.name, Phase.EXPANDING, Phase.MIGRATING)
    assert_agrees(engine, model)
    engine.dispose()


# -- app load: a probe query, active sessions -----------------------------------------------------------
SLOW_PROBE = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) "
              "SELECT count(*) FROM c")


def _run_in_thread(engine: sa.Engine, plan: planfile.PlanFile, overrides: dict[str, Any]
                   ) -> tuple[threading.Thread, Notes, list[BaseException]]:
    notes, errors = Notes(), []

    def run() -> None:
        try:
            Runner(engine, notes, overrides).start(plan)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, notes, errors


def _wait_until(test: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_slow_probe_query_holds_the_backfill_until_its_limit_is_lifted(zdm_database_url: str) -> None:
    model = users_schema(100)
    engine = setup(zdm_database_url, model)
    plan = planfile.parse(RENAME)
    thread, notes, errors = _run_in_thread(engine, plan, {"batch_size": 10, "probe_query": SLOW_PROBE,
                                                          "max_probe_ms": 1})
    _wait_until(lambda: any(w is not None and w.kind == "probe" for w in notes.waits))
    wait = next(w for w in notes.waits if w is not None)
    assert wait.text().startswith("throttled: app load: probe query ") and wait.text().endswith(" ms > 1 ms")
    _wait_until(lambda: (zdm_json("status", plan.id, "--db", zdm_database_url)[1]["plan"]["throttling"] or "")
                .startswith("throttled: app load: probe query"))
    _code, out, _ = zdm("status", plan.id, "--db", zdm_database_url)
    assert "  throttled: app load: probe query " in out
    assert not notes.batches  # held before its first batch
    zdm_json("throttle", plan.id, "--db", zdm_database_url, "--max-probe-ms", "0")  # 0: no limit
    thread.join(timeout=60)
    assert not thread.is_alive() and not errors, errors
    assert notes.waits[-1] is None and notes.batches
    apply_phases(plan, model, engine.dialect.name, Phase.EXPANDING, Phase.MIGRATING)
    assert_agrees(engine, model)
    _, document = zdm_json("status", plan.id, "--db", zdm_database_url)
    assert document["plan"]["throttling"] is None


@pytest.fixture
def busy_sessions(zdm_postgres_url: str) -> Iterator[Any]:
    """Start ``n`` app sessions that each run a statement until released."""
    engine = sa.create_engine(zdm_postgres_url)
    threads: list[threading.Thread] = []
    release = threading.Event()

    def busy() -> None:
        with engine.connect() as connection:
            while not release.is_set():
                connection.execute(sa.text("SELECT pg_sleep(0.2)"))

    def start(n: int) -> None:
        for _ in range(n):
            threads.append(threading.Thread(target=busy))
            threads[-1].start()

    yield start
    release.set()
    for thread in threads:
        thread.join(timeout=5)
    engine.dispose()


def test_too_many_active_sessions_hold_the_backfill(zdm_postgres_url: str, busy_sessions: Any) -> None:
    model = users_schema(100)
    engine = setup(zdm_postgres_url, model)
    plan = planfile.parse(RENAME)
    busy_sessions(3)
    thread, notes, errors = _run_in_thread(engine, plan, {"batch_size": 10, "max_active_sessions": 1})
    _wait_until(lambda: any(w is not None and w.kind == "active_sessions" for w in notes.waits))
    wait = next(w for w in notes.waits if w is not None and w.kind == "active_sessions")
    assert wait.text().startswith("throttled: app load: ") and wait.text().endswith(" active sessions > 1")
    assert not notes.batches
    zdm_json("throttle", plan.id, "--db", zdm_postgres_url, "--max-active-sessions", "10")
    thread.join(timeout=60)
    assert not thread.is_alive() and not errors, errors
    apply_phases(plan, model, engine.dialect.name, Phase.EXPANDING, Phase.MIGRATING)
    assert_agrees(engine, model)


def test_the_backfill_does_not_count_its_own_vacuum_as_app_load(zdm_postgres_url: str, busy_sessions: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A stretch's VACUUM runs on a session of zdm's own beside the batches: with
    --max-active-sessions at what the app runs, counting it held the backfill for as long as its
    own VACUUM ran ("app load: 2 active sessions > 1"), which is what running it beside the
    batches was for not to do."""
    from test_backfill import end_vacuums, slow_vacuums, vacuums_running

    from zdm import backfill

    model = users_schema(1000)
    engine = setup(zdm_postgres_url, model)
    slow_vacuums(engine)
    monkeypatch.setattr(backfill, "MIN_STRETCH", 100)
    plan = planfile.parse(RENAME)
    busy_sessions(1)  # the app: one statement running at any time
    during_vacuum: list[int] = []

    class Watch(Notes):
        def backfill(self, progress: BackfillProgress) -> None:
            super().backfill(progress)
            if vacuums_running(engine):
                during_vacuum.append(progress.rows_done)

    watch = Watch()
    try:
        Runner(engine, watch, {"batch_size": 10, "batch_target_ms": 5, "batch_pause_ms": 20,
                               "vacuum_every_pct": 10, "max_active_sessions": 1}).start(plan)
        assert [w for w in watch.waits if w is not None] == []
        assert len(during_vacuum) >= 2  # batches went on beside it
    finally:
        end_vacuums(engine)
        engine.dispose()


@pytest.mark.parametrize(("overrides", "message"), [
    ({"max_active_sessions": 3}, "--max-active-sessions needs PostgreSQL"),
    ({"max_replica_lag_ms": 1000}, "--max-replica-lag needs PostgreSQL"),
])
def test_measures_sqlite_does_not_have_are_bad_input(zdm_sqlite_url: str, overrides: dict[str, Any],
                                                       message: str) -> None:
    engine = setup(zdm_sqlite_url, users_schema(10))
    with pytest.raises(ThrottleInvalid, match=message) as caught:
        Runner(engine, overrides=overrides).start(planfile.parse(RENAME))
    assert caught.value.exit_code == 2
    with engine.connect() as connection:  # nothing ran
        assert "email_address" not in [c["name"] for c in sa.inspect(connection).get_columns("users")]
        assert state.load(connection, "rename_email") is None


def test_bad_throttle_input_is_one_line_and_changes_nothing(zdm_database_url: str, tmp_path: Path) -> None:
    engine = setup(zdm_database_url, users_schema(10))
    plan = write_plan(tmp_path)
    cases = [
        (["--probe-query", "SELECT * FROM no_such_table", "--max-probe-ms", "5"], "--probe-query fails: "),
        (["--probe-query", "SELECT 1"], "probe_query and max_probe_ms go together"),
        (["--replica", "postgresql://u@h/db"], "--replica needs --max-replica-lag"),
        (["--replica", "nonsense", "--max-replica-lag", "5"], "--replica: not a database URL"),
    ]
    for args, message in cases:
        code, out, err = zdm("start", plan, "--db", zdm_database_url, "--quiet", *args)
        assert (code, out) == (2, ""), (args, err)
        assert err.startswith("zdm: error: ") and err.count("\n") == 1 and message in err, (args, err)
    with engine.connect() as connection:
        assert "email_address" not in [c["name"] for c in sa.inspect(connection).get_columns("users")]
        assert state.load(connection, "rename_email") is None
    with pytest.raises(PlanInvalid, match="probe_query and max_probe_ms go together"):
        Runner(engine, overrides={"max_probe_ms": 5}).start(planfile.parse(RENAME))
    engine.dispose()


def test_settings_in_the_plan_file_take_throttles_too(zdm_sqlite_url: str) -> None:
    plan = planfile.parse({**RENAME, "settings": {"probe_query": "SELECT 1", "max_probe_ms": 1000}})
    assert plan.settings.probe_query == "SELECT 1"
    with pytest.raises(planfile.PlanFileError, match="probe_query and max_probe_ms go together"):
        planfile.parse({**RENAME, "settings": {"probe_query": "SELECT 1"}})
    engine = setup(zdm_sqlite_url, users_schema(10))
    Runner(engine).start(plan)
    engine.dispose()
    db.create_engine(zdm_sqlite_url).dispose()


def test_throttle_refuses_limits_sqlite_cannot_measure(zdm_sqlite_url: str) -> None:
    engine, _, plan = _interrupted(zdm_sqlite_url, rows=40)
    for flag in ("--max-replica-lag", "--max-active-sessions"):
        code, out, err = zdm("throttle", plan.id, "--db", zdm_sqlite_url, flag, "5")
        assert (code, out) == (2, "") and f"{flag} needs PostgreSQL" in err and err.count("\n") == 1
    with engine.connect() as connection:
        assert state.read_control(connection, plan.id).empty
    engine.dispose()


def test_bad_control_input_is_one_line_in_a_process_of_its_own(zdm_sqlite_url: str) -> None:
    """As a shell runs it: nothing but the command's own modules imported."""
    setup(zdm_sqlite_url, users_schema(5)).dispose()
    done = subprocess.run([sys.executable, "-m", "zdm.cli", "pause", "nope", "--db", zdm_sqlite_url],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "zdm: error: no plan 'nope' in this database (`zdm status` lists the plans)\n"
