"""The command line a newcomer and an operator meet (issue 14).

`zdm demo` never destroys what it did not make; `--json` everywhere, errors included, in the
documented shape; exit codes for bad URLs and signals; SIGTERM stops a run like Ctrl-C and
`zdm status` says so; `status --watch`, `history`, progress of long statements; shell completion;
wording; commands that do not need the plan compiler do not import it.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from support import setup, users_schema

from zdm import db, oracle, planfile, state
from zdm.cli import ERROR_KINDS, main
from zdm.plan import Checkpoint, HistoryEntry, MigrationPlan, MigrationStep, Phase
from zdm.report import HumanReporter, JsonReporter
from zdm.runner import Runner
from zdm.schemas import OUTPUT, PLAN, plan_schema_text
from zdm.status import Rate, Record, watch_fields, watch_text

OUTPUT_SCHEMA = json.loads(OUTPUT.read_text())
VALIDATOR = jsonschema.Draft202012Validator(OUTPUT_SCHEMA)

RENAME = {"id": "rename_email", "title": "users.email becomes email_address", "operations": [
    {"op": "rename_column", "table": "users", "column": "email", "new_name": "email_address"}]}
ACCOUNTS = {"id": "accounts_note", "operations": [
    {"op": "add_column", "table": "accounts", "column": "note_lower", "type": "TEXT", "from_column": "note",
     "transform": "lower"}]}
FAILING = {"id": "fails", "operations": [
    {"op": "add_column", "table": "users", "column": "nick", "type": "TEXT"},
    {"op": "sql", "table": "users", "up": "UPDATE no_such_table SET x = 1 WHERE id = 1", "down": "SELECT 1"}]}


def zdm(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def zdm_json(*args: str) -> tuple[int, dict[str, Any], str]:
    """A command with --json: stdout is one document of the documented shape, whose exit code is the process's."""
    code, out, err = zdm(*args, "--json")
    document = json.loads(out)
    VALIDATOR.validate(document)
    assert document["exit_code"] == code and document["ok"] is (code == 0), document
    assert all(line.startswith("{") for line in err.splitlines()), err  # stderr: JSON lines only
    return code, document, err


def write_plan(tmp_path: Path, plan: dict[str, Any]) -> str:
    path = tmp_path / f"{plan['id']}.json"
    path.write_text(json.dumps(plan))
    return str(path)


def snapshot(url: str) -> Any:
    """The whole database as a user sees it: schema, rows, every table, zdm's own records."""
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        names = sorted(sa.inspect(connection).get_table_names())
        records = (connection.execute(sa.select(state.migrations.c.id, state.migrations.c.phase,
                                                state.migrations.c.plan, state.migrations.c.checkpoint)).all()
                   if "zdm_migrations" in names else [])
        found = (oracle.read(connection), names, sorted(records))
    engine.dispose()
    return found


def accounts(url: str) -> None:
    engine = db.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE accounts (id INTEGER PRIMARY KEY, note TEXT)")
        connection.exec_driver_sql("INSERT INTO accounts VALUES (1, 'Hello'), (2, 'World')")
    engine.dispose()


def cli_process(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "zdm.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("{"):
            yield json.loads(line)


# -- 1. zdm demo destroys nothing it did not make ---------------------------------------------------
def test_demo_refuses_a_database_with_a_users_table_and_a_plan_in_flight(zdm_database_url: str) -> None:
    setup(zdm_database_url, users_schema(10)).dispose()
    accounts(zdm_database_url)
    engine = db.create_engine(zdm_database_url)
    Runner(engine).start(planfile.parse(ACCOUNTS))  # someone's plan in flight on another table
    before = snapshot(zdm_database_url)

    code, out, err = zdm("demo", "--db", zdm_database_url, "--rows", "20")
    assert (code, out) == (2, "")
    assert err.startswith("zdm: error: ") and err.count("\n") == 1, err
    assert "zdm_migrations" in err and "accounts_note" in err and "a database of its own" in err
    assert snapshot(zdm_database_url) == before  # nothing dropped, nothing added

    code, out, _ = zdm("status", "accounts_note", "--db", zdm_database_url)
    assert code == 0 and "accounts_note: MIGRATING" in out  # the plan in flight is still there
    assert Runner(engine).rollback("accounts_note").phase is Phase.ROLLED_BACK
    engine.dispose()


def test_demo_refuses_a_users_table_it_did_not_make(zdm_database_url: str) -> None:
    setup(zdm_database_url, users_schema(10)).dispose()
    before = snapshot(zdm_database_url)
    code, document, _ = zdm_json("demo", "--db", zdm_database_url, "--rows", "20")
    assert code == 2 and document["error"]["kind"] == "database_in_use"
    assert "already has a users table that the demo did not make" in document["error"]["message"]
    assert snapshot(zdm_database_url) == before


def test_demo_runs_again_where_it_ran_before(zdm_database_url: str) -> None:
    for _ in range(2):
        code, document, err = zdm_json("demo", "--db", zdm_database_url, "--rows", "30")
        assert code == 0, document
        assert document["plan"]["phase"] == "COMPLETE"
        assert document["snapshots"][0]["title"] == "before"
        assert {"phase", "step", "backfill"} <= {e["event"] for e in events(iter(err.splitlines()))}
    engine = sa.create_engine(zdm_database_url)
    with engine.connect() as connection:
        assert [r.id for r in connection.execute(sa.select(state.migrations.c.id))] == ["zdm-demo"]
        assert connection.execute(sa.text("SELECT count(*) FROM users")).scalar() == 32
    engine.dispose()


# -- 3. --json everywhere, one documented shape -------------------------------------------------------
def test_every_command_has_json() -> None:
    for name, command in main.commands.items():
        assert any("--json" in p.opts for p in command.params), name


def test_every_outcome_is_one_json_document(zdm_database_url: str, tmp_path: Path) -> None:
    setup(zdm_database_url, users_schema(30)).dispose()
    rename = write_plan(tmp_path, RENAME)
    url = ["--db", zdm_database_url]

    code, document, _ = zdm_json("validate", rename)
    assert code == 0 and document["operations"] == 1 and not document["checked_against_database"]
    code, document, _ = zdm_json("validate", rename, *url)
    assert code == 0 and document["checked_against_database"] and document["plan_id"] == "rename_email"
    code, document, _ = zdm_json("plan", rename, *url)
    assert code == 0 and document["plan"]["phase"] == "PENDING"
    code, document, err = zdm_json("start", rename, *url)
    assert code == 0 and document["plan"]["phase"] == "MIGRATING" and '"event": "backfill"' in err
    code, document, _ = zdm_json("status", *url)
    assert code == 0 and [p["id"] for p in document["plans"]] == ["rename_email"]
    code, document, _ = zdm_json("status", "rename_email", *url)  # one id: one object, not a list
    assert code == 0 and document["plan"]["id"] == "rename_email" and document["plan"]["activity"] == "waiting"
    code, document, _ = zdm_json("complete", "rename_email", *url, "--quiet")
    assert code == 0 and document["plan"]["phase"] == "COMPLETE"
    code, document, _ = zdm_json("history", "rename_email", *url)
    assert code == 0 and [p["phase"] for p in document["phases"]] == ["EXPANDING", "MIGRATING", "CONTRACTING",
                                                                        "COMPLETE"]

    errors = [
        (("start", rename, *url), 2, "plan_state"),  # already complete
        (("rollback", "rename_email", *url), 2, "plan_state"),
        (("status", "nope", *url), 2, "plan_state"),
        (("history", "nope", *url), 2, "plan_state"),
        (("validate", str(tmp_path / "missing.yaml")), 2, "plan_file"),
        (("status", "--db", "postgresql://u:secret@h:port/db"), 2, "database_url"),
        (("status", "--db", f"sqlite:///{tmp_path}/typo.db"), 1, "database"),
        (("start", "--frobnicate"), 2, "usage"),
        (("frobnicate",), 2, "usage"),
        (("apply", write_plan(tmp_path, FAILING), *url), 1, "failed"),  # a runtime failure, compensated
    ]
    for args, exit_code, kind in errors:
        code, document, err = zdm_json(*args)
        assert (code, document["error"]["kind"]) == (exit_code, kind), (args, document)
        assert ERROR_KINDS[kind][0] == exit_code
        assert "secret" not in json.dumps(document)
    code, document, _ = zdm_json("rollback", "fails", *url)
    assert code == 2 and "already rolled back" in document["error"]["message"]


def test_a_runtime_failure_with_json_ends_in_a_json_document(zdm_sqlite_url: str, tmp_path: Path) -> None:
    """Was: stdout empty, stderr ending in a plain-text line."""
    setup(zdm_sqlite_url, users_schema(10)).dispose()
    done = subprocess.run([sys.executable, "-m", "zdm.cli", "start", write_plan(tmp_path, FAILING), "--db",
                           zdm_sqlite_url, "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    document = json.loads(done.stdout)
    VALIDATOR.validate(document)
    assert document["error"]["kind"] == "failed" and "rolled back" in document["error"]["message"]
    progress = [json.loads(line) for line in done.stderr.splitlines()]  # no plain-text line
    assert any(e["event"] == "note" and "EXPANDING failed" in e["message"] for e in progress)


def test_rehearse_and_schema_with_json(zdm_sqlite_url: str, tmp_path: Path) -> None:
    setup(zdm_sqlite_url, users_schema(10)).dispose()
    code, document, _ = zdm_json("rehearse", write_plan(tmp_path, RENAME), "--db", zdm_sqlite_url, "--quiet")
    assert code == 0 and document["rehearsal"]["ok"] and document["rehearsal"]["plan"] == "rename_email"
    code, out, _ = zdm("schema", "--json")
    assert code == 0 and json.loads(out) == json.loads(PLAN.read_text())
    code, out, _ = zdm("schema", "--output")
    assert code == 0 and json.loads(out) == OUTPUT_SCHEMA


def test_the_output_schema_is_a_valid_schema_and_names_every_error_kind() -> None:
    jsonschema.Draft202012Validator.check_schema(OUTPUT_SCHEMA)
    assert OUTPUT_SCHEMA["$defs"]["Error"]["properties"]["error"]["properties"]["kind"]["enum"] == list(ERROR_KINDS)


# -- 4. exit codes and signals -------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["nonsense", "postgresql://u:secret@db.example:notaport/app", "mysql://u@h/db",
                                 "postgresql+nosuchdriver://u@h/db"])
def test_a_bad_database_url_is_bad_input(url: str, tmp_path: Path) -> None:
    for args in (["status"], ["start", write_plan(tmp_path, RENAME)], ["validate", write_plan(tmp_path, RENAME)]):
        code, out, err = zdm(*args, "--db", url)
        assert (code, out) == (2, ""), err
        assert err.startswith("zdm: error: ") and err.count("\n") == 1 and "secret" not in err, err


@pytest.mark.parametrize(("signal_number", "exit_code", "reason"),
                         [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_a_signal_stops_the_run_with_state_saved_and_status_says_interrupted(
        zdm_database_url: str, tmp_path: Path, signal_number: int, exit_code: int, reason: str) -> None:
    setup(zdm_database_url, users_schema(400)).dispose()
    plan = write_plan(tmp_path, RENAME)
    process = cli_process("start", plan, "--db", zdm_database_url, "--json", "--batch-size", "10",
                          "--batch-target-ms", "1", "--batch-pause-ms", "100")
    assert process.stderr is not None and process.stdout is not None
    for event in events(process.stderr):
        if event["event"] == "backfill":
            break
    process.send_signal(signal_number)
    out, err = process.communicate(timeout=60)
    assert process.returncode == exit_code, err
    document = json.loads(out)
    VALIDATOR.validate(document)
    assert document["error"]["kind"] == "interrupted" and document["exit_code"] == exit_code
    assert f"interrupted by {reason}: plan rename_email stopped during MIGRATING" in document["error"]["message"]
    assert all(line.startswith("{") for line in err.splitlines())

    code, document, _ = zdm_json("status", "rename_email", "--db", zdm_database_url)
    record = document["plan"]
    assert record["activity"] == "interrupted" and record["interrupted"]["reason"] == reason
    assert 0 < record["checkpoint"]["rows_done"] < 400  # the backfill's checkpoint was kept
    code, out, _ = zdm("status", "--db", zdm_database_url)
    assert f"interrupted during MIGRATING at {record['interrupted']['at']} ({reason})" in out

    code, out, _ = zdm("start", plan, "--db", zdm_database_url, "--quiet")  # resumes from the checkpoint
    assert code == 0 and out.startswith("rename_email: MIGRATING (")
    code, document, _ = zdm_json("history", "rename_email", "--db", zdm_database_url)
    migrating = [p for p in document["phases"] if p["phase"] == "MIGRATING"]
    assert [i["reason"] for i in migrating[0]["interruptions"]] == [reason]


def test_sigterm_in_human_mode_is_one_line(zdm_sqlite_url: str, tmp_path: Path) -> None:
    setup(zdm_sqlite_url, users_schema(400)).dispose()
    process = cli_process("start", write_plan(tmp_path, RENAME), "--db", zdm_sqlite_url, "--batch-size", "10",
                          "--batch-target-ms", "1", "--batch-pause-ms", "100")
    assert process.stderr is not None
    for line in process.stderr:
        if "backfill users:" in line or "backfill users.email_address" in line:
            break
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 143 and out == ""
    errors = [line for line in err.splitlines() if line.startswith("zdm: error:")]
    assert errors == [err.splitlines()[-1]] and "interrupted by SIGTERM" in errors[0], err


# -- 5. wording ----------------------------------------------------------------------------------------
def test_counts_read_right(zdm_sqlite_url: str, tmp_path: Path) -> None:
    setup(zdm_sqlite_url, users_schema(10)).dispose()
    code, out, _ = zdm("plan", write_plan(tmp_path, RENAME), "--db", zdm_sqlite_url)
    assert "MIGRATING (1 step)" in out and "1 steps" not in out
    zdm("start", write_plan(tmp_path, RENAME), "--db", zdm_sqlite_url, "--quiet")
    code, out, _ = zdm("rollback", "rename_email", "--db", zdm_sqlite_url, "--quiet")
    assert out == "rename_email: ROLLED_BACK (3 steps undone)\n"
    code, out, _ = zdm("status", "--db", zdm_sqlite_url)
    assert code == 0 and out.startswith("rename_email: ROLLED_BACK, 3 steps undone — ") and "(0%)" not in out
    _, out, _ = zdm("validate", write_plan(tmp_path, RENAME))
    assert out.endswith(": ok (1 operation)\n")


def test_the_plan_schema_offers_only_what_zdm_takes() -> None:
    schema = json.loads(PLAN.read_text())
    assert PLAN.read_text() == plan_schema_text(), "stale: run `python -m zdm.schemas`"
    types = schema["$defs"]["AddColumn"]["properties"]["type"]["examples"]
    assert "OTHER" not in schema["$defs"]["AddColumn"]["properties"]["type"]["description"]
    for column_type in types:  # every type the schema shows is accepted
        planfile.parse({"id": "x", "operations": [
            {"op": "add_column", "table": "t", "column": "c", "type": column_type}]})


def test_alembic_info_lines_stay_out_of_zdm_output(tmp_path: Path) -> None:
    """Alembic logs two INFO lines per MigrationContext; zdm's SQLite rebuilds make one each."""
    root = Path(__file__).parent.parent
    alembic = Path(sys.executable).parent / "alembic"
    database = tmp_path / "example.db"

    def upgrade(*args: str) -> str:
        done = subprocess.run([str(alembic), "-c", str(root / "alembic.ini"), "-x", f"db=sqlite:///{database}",
                               *args], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done.stderr

    upgrade("upgrade", "0002_add_email_lower")
    err = upgrade("-x", "zdm=complete", "upgrade", "0003_rename_email")
    assert "Running upgrade 0002_add_email_lower -> 0003_rename_email" in err  # Alembic's own lines stay
    rename = err[err.index("EXPANDING 0003_rename_email"):]
    assert "let the new app leave email out" in rename  # the step that rebuilds the table on SQLite
    assert "Context impl" not in rename and "Will assume" not in rename, rename


# -- operators: watch, history, long statements, completion -------------------------------------------
def test_status_watch_follows_a_backfill_until_it_leaves_the_phase(zdm_database_url: str, tmp_path: Path) -> None:
    setup(zdm_database_url, users_schema(300)).dispose()
    runner = cli_process("start", write_plan(tmp_path, RENAME), "--db", zdm_database_url, "--json",
                         "--batch-size", "10", "--batch-target-ms", "1", "--batch-pause-ms", "50")
    assert runner.stderr is not None
    for event in events(runner.stderr):
        if event["event"] == "backfill":
            break
    watcher = cli_process("status", "rename_email", "--watch", "--interval", "0.1", "--db", zdm_database_url,
                          "--json")
    out, err = watcher.communicate(timeout=120)
    runner.communicate(timeout=60)
    assert watcher.returncode == 0, out
    document = json.loads(out)
    VALIDATOR.validate(document)
    assert document["watched_phase"] == "MIGRATING" and document["plan"]["activity"] == "waiting"
    samples = [e for e in events(iter(err.splitlines())) if e["event"] == "watch"]
    backfilling = [s for s in samples if s["rows_done"] is not None]
    assert len(backfilling) >= 2
    assert [s["rows_done"] for s in backfilling] == sorted(s["rows_done"] for s in backfilling)
    assert any(s["rows_per_s"] and s["eta_s"] is not None for s in backfilling), backfilling
    assert all(s["throttling"] is None for s in samples)


def test_status_watch_of_an_interrupted_plan_says_so(zdm_sqlite_url: str) -> None:
    engine = setup(zdm_sqlite_url, users_schema(10))
    plan = Runner(engine).plan(planfile.parse(RENAME))
    plan.transition(Phase.EXPANDING, state.now())
    with engine.begin() as connection:  # a run that died mid-expand: the record, no runner
        state.ensure_table(connection)
        state.save(connection, plan)
    code, document, _ = zdm_json("status", "--watch", "--db", zdm_sqlite_url)  # the one plan in flight
    assert code == 1 and document["error"]["kind"] == "not_running"
    assert document["plan"]["activity"] == "interrupted" and document["watched_phase"] == "EXPANDING"
    engine.dispose()


def test_watch_shows_throttling_when_the_checkpoint_has_it() -> None:
    plan = MigrationPlan("p", "p", [MigrationStep(Phase.MIGRATING, "backfill users.x")], Phase.MIGRATING)
    record = Record(plan, Checkpoint.from_dict({"step": 0, "until": [9], "rows_done": 5, "rows_total": 10,
                                                "throttling": "throttled: replica lag 12 s > 1 s"}), runner="pid 1")
    fields = watch_fields(record, Rate(), 1.0)
    assert fields["throttling"] == "throttled: replica lag 12 s > 1 s"
    assert ", throttled: replica lag 12 s > 1 s" in watch_text(fields)


def test_history_gives_each_phase_its_start_end_and_duration(zdm_sqlite_url: str, tmp_path: Path) -> None:
    setup(zdm_sqlite_url, users_schema(10)).dispose()
    plan, url = write_plan(tmp_path, RENAME), ["--db", zdm_sqlite_url]
    for args in (("start", plan), ("rollback", "rename_email"), ("start", plan), ("complete", "rename_email")):
        assert zdm(*args, *url, "--quiet")[0] == 0
    code, document, _ = zdm_json("history", "rename_email", *url)
    assert code == 0
    phases = document["phases"]
    assert [p["phase"] for p in phases] == ["EXPANDING", "MIGRATING", "ROLLED_BACK", "EXPANDING", "MIGRATING",
                                            "CONTRACTING", "COMPLETE"]
    for before, after in itertools.pairwise(phases):
        assert before["end"] == after["start"] and before["duration_s"] >= 0
    assert phases[-1]["end"] is None and phases[-1]["duration_s"] is None
    _, out, _ = zdm("history", "rename_email", *url)
    assert out.splitlines()[1].split() == ["phase", "start", "end", "duration", "note"]
    assert out.count(" s\n") + out.count(" s ") >= 6  # every finished phase has a duration


def test_history_of_a_waiting_plan_runs_until_now(zdm_sqlite_url: str) -> None:
    plan = MigrationPlan("p", "p", [], Phase.MIGRATING, history=[
        HistoryEntry("2026-01-01T00:00:00.000+00:00", Phase.EXPANDING),
        HistoryEntry("2026-01-01T00:00:01.500+00:00", Phase.MIGRATING),
        HistoryEntry("2026-01-01T00:00:03.000+00:00", Phase.MIGRATING, f"{state.INTERRUPTED}SIGTERM")])
    import datetime as dt

    from zdm.status import phase_periods

    periods = phase_periods(plan, now=dt.datetime(2026, 1, 1, 0, 1, 1, 500000, tzinfo=dt.UTC))
    assert [(p["phase"], p["duration_s"]) for p in periods] == [("EXPANDING", 1.5), ("MIGRATING", 60.0)]
    assert periods[1]["interruptions"] == [{"at": "2026-01-01T00:00:03.000+00:00", "reason": "SIGTERM"}]


class BlockWhenItRuns(HumanReporter):
    """Takes SQLite's write lock the moment the runner reports the statement, and lets go once the
    long-statement line appeared: the statement surely waits, however fast the machine is."""

    def __init__(self, stream: io.StringIO, engine: sa.Engine, url: str) -> None:
        from rich.console import Console

        super().__init__(Console(file=stream, width=200), engine=engine, long_after_s=0.2, long_every_s=0.2)
        self.blocker = sa.create_engine(url, connect_args={"timeout": 30}).connect()
        self.shown = threading.Event()

    def statement(self, sql: str) -> None:
        if sql.startswith("INSERT INTO slow"):
            self.blocker.exec_driver_sql("BEGIN IMMEDIATE")
        super().statement(sql)

    def long_statement(self, fields: dict[str, Any]) -> None:
        super().long_statement(fields)
        if not self.shown.is_set():
            self.shown.set()
            self.blocker.exec_driver_sql("COMMIT")


def test_a_long_statement_reports_its_elapsed_time_sqlite(zdm_sqlite_url: str) -> None:
    engine = setup(zdm_sqlite_url, users_schema(5))
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE slow (n INTEGER)")
    stream = io.StringIO()
    reporter = BlockWhenItRuns(stream, engine, zdm_sqlite_url)
    plan = planfile.parse({"id": "slow", "operations": [
        {"op": "sql", "table": "slow", "up": "INSERT INTO slow VALUES (1)", "down": "DELETE FROM slow",
         "transactional": False}]})
    try:
        Runner(engine, reporter).apply(plan)
    finally:
        reporter.close()
        reporter.blocker.close()
    assert reporter.shown.is_set()
    assert "still running after 0 s: INSERT INTO slow VALUES (1)" in stream.getvalue(), stream.getvalue()
    engine.dispose()


def test_create_index_concurrently_reports_its_phase_postgresql(zdm_postgres_url: str, tmp_path: Path) -> None:
    setup(zdm_postgres_url, users_schema(50)).dispose()
    plan = write_plan(tmp_path, {"id": "name_ix", "operations": [
        {"op": "create_index", "table": "users", "name": "users_name_ix", "columns": ["name"]}]})
    blocker = sa.create_engine(zdm_postgres_url).connect()
    blocker.exec_driver_sql("UPDATE users SET name = name WHERE id = 1")  # a writer: the build waits for it
    process = cli_process("start", plan, "--db", zdm_postgres_url, "--json", "--lock-timeout", "60000")
    assert process.stderr is not None
    try:
        for event in events(process.stderr):
            if event["event"] == "long_statement":
                break
        assert event["sql"].startswith("CREATE INDEX CONCURRENTLY") and event["elapsed_s"] >= 2
        assert event["phase"] == "waiting for writers before build" and event["lockers_total"] >= 1
    finally:
        blocker.rollback()
        blocker.close()
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0 and json.loads(out)["plan"]["phase"] == "MIGRATING"


def test_json_reporter_reports_long_statements_as_events() -> None:
    stream = io.StringIO()
    reporter = JsonReporter(stream)
    reporter.long_statement({"sql": "ALTER TABLE t VALIDATE CONSTRAINT c", "elapsed_s": 12.0})
    assert json.loads(stream.getvalue()) == {"event": "long_statement", "sql": "ALTER TABLE t VALIDATE CONSTRAINT c",
                                             "elapsed_s": 12.0}


def test_shell_completion_of_commands_and_plan_ids(zdm_database_url: str, tmp_path: Path) -> None:
    setup(zdm_database_url, users_schema(5)).dispose()
    accounts(zdm_database_url)
    engine = db.create_engine(zdm_database_url)
    Runner(engine).start(planfile.parse(ACCOUNTS))
    Runner(engine).apply(planfile.parse(RENAME))
    engine.dispose()

    def complete(words: str, env: dict[str, str] | None = None) -> list[str]:
        result = CliRunner().invoke(main, [], prog_name="zdm", env={
            "_ZDM_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split(" ")) - 1),
            **(env or {})})
        return [line.split(",", 1)[1] for line in result.output.splitlines() if line]

    assert complete("zdm sta") == ["start", "status"]
    assert complete("zdm status ", {"ZDM_DATABASE_URL": zdm_database_url}) == ["accounts_note", "rename_email"]
    assert complete(f"zdm complete --db {zdm_database_url} ") == ["accounts_note"]  # only what can complete
    assert complete(f"zdm rollback --db {zdm_database_url} acc") == ["accounts_note"]
    assert complete("zdm status --db sqlite:////nonexistent/x.db ") == []  # no traceback, no database made
    script = CliRunner().invoke(main, [], prog_name="zdm", env={"_ZDM_COMPLETE": "bash_source"}).output
    assert "_ZDM_COMPLETE=bash_complete" in script


# -- 2. start-up: commands import only what they use ----------------------------------------------------
HEAVY = ("sqlalchemy", "pydantic", "alembic", "pglast", "psycopg", "rich", "yaml", "zdm.planfile", "zdm.runner")


def imported_by(*args: str) -> set[str]:
    probe = ("import sys, runpy; sys.argv = ['zdm', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('zdm.cli', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "ZDM_DATABASE_URL": ""})
    return set(done.stderr.strip().splitlines()[-1].split()) if done.stderr.strip() else set()


def test_help_and_schema_import_nothing_heavy() -> None:
    assert imported_by("--help") == set()
    assert imported_by("schema") == set()
    assert imported_by("status", "--help") == set()


def test_status_imports_no_plan_compiler(zdm_sqlite_url: str) -> None:
    setup(zdm_sqlite_url, users_schema(3)).dispose()
    assert imported_by("status", "--db", zdm_sqlite_url) == {"sqlalchemy"}


# -- a type change that keeps the name: the new app writes the old type until complete -----------------
def retype(column: str, type_: str, **more: str) -> dict[str, Any]:
    return {"id": f"retype_{column}", "operations": [
        {"op": "alter_column", "table": "prices", "column": column, "type": type_, **more}]}


def test_a_type_change_that_keeps_the_name_warns_when_the_new_type_accepts_more(zdm_database_url: str,
                                                                                tmp_path: Path) -> None:
    engine = db.create_engine(zdm_database_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE prices (id integer PRIMARY KEY, amount numeric(10,2), "
                                   "label varchar(20), code text)")
    engine.dispose()
    url = ["--db", zdm_database_url]
    wider = write_plan(tmp_path, retype("amount", "NUMERIC(12,4)"))
    for command in ("plan", "validate"):
        code, _, err = zdm(command, wider, *url)
        assert code == 0, err
        assert "prices.amount keeps its name, and NUMERIC(12,4) accepts values NUMERIC(10,2) does not (more " \
               "decimal places (2 -> 4)): until complete both app versions write the NUMERIC(10,2) column, so the " \
               "new app's values must fit it" in err and "give a new_name" in err, err
        code, document, _ = zdm_json(command, wider, *url)
        assert code == 0 and len(document["warnings"]) == 1 and "more decimal places" in document["warnings"][0]
    code, document, _ = zdm_json("validate", write_plan(tmp_path, retype("label", "TEXT")), *url)
    assert code == 0 and "longer text (20 -> no limit)" in document["warnings"][0]
    # Nothing to warn of: the new type's values fit the old one, or the new app writes a new column.
    for quiet in (retype("amount", "NUMERIC(8,2)"), retype("label", "VARCHAR(10)"),
                  retype("amount", "NUMERIC(12,4)", new_name="amount_precise")):
        code, _, err = zdm("plan", write_plan(tmp_path, quiet), *url)
        assert code == 0 and "warning" not in err, err
        code, document, _ = zdm_json("plan", write_plan(tmp_path, quiet), *url)
        assert code == 0 and document["warnings"] == []


@pytest.mark.parametrize(("old", "new", "why"), [
    ("UUID", "TEXT", "another kind of value"), ("INTEGER", "BIGINT", "larger numbers"),
    ("REAL", "DOUBLE PRECISION", "more precise"), ("NUMERIC(10,2)", "NUMERIC(12,2)", "larger numbers"),
    ("NUMERIC(10,2)", "NUMERIC", "any size"), ("CHAR(2)", "VARCHAR(5)", "longer text"),
    ("TEXT", "mood", None), ("BIGINT", "INTEGER", None), ("NUMERIC(12,4)", "NUMERIC(10,2)", None),
    ("VARCHAR(20)", "VARCHAR(10)", None), ("TEXT", "VARCHAR(3)", None)])
def test_which_type_changes_accept_values_the_old_type_does_not(old: str, new: str, why: str | None) -> None:
    from zdm import coltypes

    found = coltypes.wider_values(coltypes.parse(old), coltypes.parse(new))
    assert (found is None) if why is None else (found is not None and why in found), found


# -- a closed output pipe changes nothing the run does to the database -----------------------------------
@pytest.mark.parametrize("mode", ["human", "json"])
def test_a_closed_output_pipe_leaves_the_run_as_it_would_be(zdm_database_url: str, tmp_path: Path,
                                                            mode: str) -> None:
    """`zdm start ... 2>&1 | head -2`, where head exits at once: every write fails with EPIPE."""
    setup(zdm_database_url, users_schema(60)).dispose()
    plan = write_plan(tmp_path, RENAME)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before zdm writes anything
    try:
        process = subprocess.run([sys.executable, "-m", "zdm.cli", "start", plan, "--db", zdm_database_url,
                                  "--batch-size", "10", *(["--json"] if mode == "json" else [])],
                                 stdout=write_end, stderr=write_end, timeout=120)
    finally:
        os.close(write_end)
    assert process.returncode == 0
    code, document, _ = zdm_json("status", "rename_email", "--db", zdm_database_url)
    record = document["plan"]
    assert record["phase"] == "MIGRATING" and record["activity"] == "waiting" and record["interrupted"] is None
    assert record["steps_done"] == record["steps_total"] - 1  # all but contract's
    code, out, _ = zdm("complete", "rename_email", "--db", zdm_database_url, "--quiet")
    assert code == 0, out


def test_status_watch_without_an_id_follows_the_one_plan_in_flight_even_when_it_waits(zdm_database_url: str,
                                                                                        tmp_path: Path) -> None:
    setup(zdm_database_url, users_schema(10)).dispose()
    url = ["--db", zdm_database_url]
    code, out, err = zdm("start", write_plan(tmp_path, RENAME), *url, "--quiet")
    assert code == 0, err
    code, out, err = zdm("status", "--watch", *url)  # MIGRATING, waiting, no runner: the one in flight
    assert code == 0, err
    assert out.splitlines()[-1] == ("rename_email: MIGRATING done, waiting: deploy the new app, then "
                                    "`zdm complete rename_email` (or `zdm rollback rename_email`)")
    code, document, _ = zdm_json("status", "--watch", *url)
    assert code == 0 and document["plan"]["id"] == "rename_email" and document["watched_phase"] == "MIGRATING"
    code, out, err = zdm("start", write_plan(tmp_path, ACCOUNTS_FREE), *url, "--quiet")
    assert code == 0, err
    code, out, err = zdm("status", "--watch", *url)  # two in flight: which one?
    assert code == 2 and "--watch needs a plan id: 2 plans are in flight (" in err, err
    code, _, err = zdm("complete", "rename_email", *url, "--quiet")
    assert code == 0, err
    code, out, err = zdm("status", "--watch", *url)  # the other one is the only one in flight now
    assert code == 0 and out.splitlines()[-1].startswith("add_nick: MIGRATING done, waiting"), (out, err)


#: Another plan on the users table's neighbour: two plans in flight at once.
ACCOUNTS_FREE = {"id": "add_nick", "operations": [
    {"op": "create_table", "table": "nicks", "columns": [
        {"name": "id", "type": "INTEGER", "primary_key": True}, {"name": "nick", "type": "TEXT"}]}]}


# -- the README's samples are what zdm prints ------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


def readme_sample(command: str) -> list[str]:
    """The lines the README shows after ``$ <command>``, up to the next prompt or the block's end."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index(f"$ {command}") + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith(("$ ", "```")))
    return lines[start:end]


def shown_in(sample: list[str], real: list[str]) -> None:
    """Every line of the sample, in order, in the real output; `...` is lines left out, and a line
    ending ` ...` is the start of a real one."""
    at = 0
    for line in sample:
        if line.strip() in ("...", ""):
            continue
        prefix = line[:-4] if line.endswith(" ...") else None
        while at < len(real) and not (real[at] == line or (prefix is not None and real[at].startswith(prefix))):
            at += 1
        assert at < len(real), f"README line not in zdm's output (in order): {line!r}\n" + "\n".join(real)
        at += 1


def test_the_readme_sqlite_walk_through_shows_what_zdm_prints(tmp_path: Path) -> None:
    import sqlite3

    database = tmp_path / "zdm-try.db"
    with sqlite3.connect(database) as connection:  # as `sqlite3 /tmp/zdm-try.db < examples/users.sql`
        connection.executescript((ROOT / "examples" / "users.sql").read_text())
    connection.close()
    url = f"sqlite:///{database}"
    plan = str(ROOT / "plans" / "rename_email.yaml")
    code, out, err = zdm("plan", plan, "--db", url)
    assert code == 0, err
    shown_in(readme_sample("zdm plan plans/rename_email.yaml --db sqlite:////tmp/zdm-try.db"), out.splitlines())
    code, out, err = zdm("start", plan, "--db", url, "--quiet")
    assert code == 0, err
    assert out.splitlines() == readme_sample("zdm start plans/rename_email.yaml --db sqlite:////tmp/zdm-try.db")
    code, out, err = zdm("status", "--db", url)
    assert out.splitlines()[:2] == readme_sample("zdm status --db sqlite:////tmp/zdm-try.db")[:2]


# -- messages that say how to fix what they refuse --------------------------------------------------------
def test_a_quoted_fill_is_refused_with_how_to_write_it(zdm_database_url: str, tmp_path: Path) -> None:
    setup(zdm_database_url, users_schema(5)).dispose()
    for fill, hint in (("0", "write it without quotes: 0, not '0'"), ("x", None)):
        plan = {"id": "fill_age", "operations": [{"op": "set_not_null", "table": "users", "column": "age",
                                                  "fill": fill}]}
        code, _, err = zdm("validate", write_plan(tmp_path, plan), "--db", zdm_database_url)
        assert code == 2 and f"fill {fill!r} is not a valid INTEGER (an INTEGER is a whole number, not str " \
               f"{fill!r}" in err, err
        assert (hint in err) if hint else "without quotes" not in err, err


def test_a_sql_step_is_named_by_the_start_of_its_statement_cut_between_words() -> None:
    up = "ALTER TABLE orders ADD COLUMN token text DEFAULT md5(random()::text)"
    step = planfile.parse({"id": "s", "operations": [{"op": "sql", "table": "orders", "up": up,
                                                      "down": "ALTER TABLE orders DROP COLUMN token"}]})
    assert step.operations[0].describe() == "sql (expand): ALTER TABLE orders ADD COLUMN token text DEFAULT ..."
    short = planfile.parse({"id": "s", "operations": [{"op": "sql", "up": ["SELECT 1", "SELECT 2"],
                                                       "down": "SELECT 3"}]})
    assert short.operations[0].describe() == "sql (expand): SELECT 1 ..."
    alone = planfile.parse({"id": "s", "operations": [{"op": "sql", "up": "SELECT\n  1", "down": "SELECT 3"}]})
    assert alone.operations[0].describe() == "sql (expand): SELECT 1"


def test_a_refused_sql_step_names_its_statement_without_cutting_a_token(zdm_postgres_url: str,
                                                                        tmp_path: Path) -> None:
    engine = db.create_engine(zdm_postgres_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE orders (id integer PRIMARY KEY)")
    engine.dispose()
    plan = {"id": "token", "operations": [{"op": "sql", "table": "orders", "up": "ALTER TABLE orders ADD COLUMN "
                                           "token text DEFAULT md5(random()::text)",
                                           "down": "ALTER TABLE orders DROP COLUMN token"}]}
    code, _, err = zdm("validate", write_plan(tmp_path, plan), "--db", zdm_postgres_url)
    assert code == 2 and err.startswith("zdm: error: sql (expand): ALTER TABLE orders ADD COLUMN token text "
                                        "DEFAULT ...: ADD COLUMN token with a volatile default"), err
