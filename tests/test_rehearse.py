"""`zdm rehearse` as a team meets it before a deploy: a verdict, its reasons, and the database as it was.

A rehearsal that passes must leave every row where it was; one that should fail (a long ACCESS
EXCLUSIVE lock, a rewrite of a big table, a `down` that does not undo its `up`) must fail with
exit code 1 and say which statement broke which promise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import sqlalchemy as sa
from click.testing import CliRunner
from support import assert_agrees, runner, setup, users_schema, zdm_objects

from zdm import db, planfile
from zdm.cli import main
from zdm.schemas import OUTPUT
from zdm.testing import assert_reversible

OUTPUT_SCHEMA = json.loads(OUTPUT.read_text())
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

RENAME = """\
id: rename_email
operations:
  - {op: rename_column, table: users, column: email, new_name: email_address}
"""
#: bigint -> text rewrites the whole table under ACCESS EXCLUSIVE; the down rewrites it back.
#: zdm refuses it unless the author vouches (assume_safe); the rehearsal shows they were wrong.
WIDEN = """\
id: widen_n
operations:
  - op: sql
    table: events
    up: ALTER TABLE events ALTER COLUMN n TYPE text
    down: ALTER TABLE events ALTER COLUMN n TYPE bigint USING n::bigint
    assume_safe: true
"""
#: The down neither drops the column nor leaves the rows alone.
LOSSY = """\
id: lossy
operations:
  - op: sql
    table: users
    up: ALTER TABLE users ADD COLUMN note TEXT DEFAULT 'x'
    down: UPDATE users SET name = 'lost' WHERE id IN (1, 2, 3)
"""


def rehearse(*args: str) -> tuple[int, str]:
    # A fixed width: the report's columns shrink to fit, and the tests read whole cells.
    result = CliRunner().invoke(main, ["rehearse", *args, "--quiet"], env={"COLUMNS": "200"})
    if "--json" not in args:
        return result.exit_code, result.stdout
    document = json.loads(result.stdout)  # the rehearsal, inside zdm's JSON document
    assert document["command"] == "rehearse" and document["ok"] is (result.exit_code == 0), document
    assert document["exit_code"] == result.exit_code
    return result.exit_code, json.dumps(document["rehearsal"])


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    return str(path)


def statements(report: dict[str, Any], phase: str) -> list[dict[str, Any]]:
    return next(p["statements"] for p in report["phases"] if p["phase"] == phase)


def test_rename_rehearsal_keeps_every_promise_on_postgresql(zdm_postgres_url: str, tmp_path: Path) -> None:
    model = users_schema(120)
    engine = setup(zdm_postgres_url, model)
    code, out = rehearse(write(tmp_path, RENAME), "--db", zdm_postgres_url, "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["ok"] and report["lock_tracing"] and report["restored"] and report["violations"] == []
    assert [p["phase"] for p in report["phases"]] == ["EXPANDING", "MIGRATING", "ROLLED_BACK"]
    add_column = statements(report, "EXPANDING")[0]
    assert add_column["sql"].startswith("ALTER TABLE users ADD COLUMN email_address")
    assert {"relation": "users", "mode": "AccessExclusiveLock"} in add_column["locks"]
    assert 0 < add_column["held_ms"] < 500
    backfill = statements(report, "MIGRATING")[0]
    assert backfill["rows"] == 120 and not backfill["traced"]
    assert not any(s["rewrote"] for p in report["phases"] for s in p["statements"])
    assert [(p["moment"], p["shape"], p["ok"]) for p in report["probes"]] == [
        ("after expand", "old", True), ("after expand", "new", True), ("MIGRATING", "old", True),
        ("MIGRATING", "new", True)]
    assert_agrees(engine, model)
    assert zdm_objects(engine) == []

    code, out = rehearse(write(tmp_path, RENAME), "--db", zdm_postgres_url)  # a rolled-back plan rehearses again
    assert code == 0, out
    assert "ACCESS EXCLUSIVE users" in out and "rollback: restored" in out and "OK: every statement" in out
    engine.dispose()


def test_long_access_exclusive_lock_fails_the_rehearsal(zdm_postgres_url: str, tmp_path: Path) -> None:
    engine = sa.create_engine(zdm_postgres_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE events (id bigint PRIMARY KEY, payload text, n bigint)")
        connection.exec_driver_sql("INSERT INTO events SELECT g, md5(g::text), g FROM generate_series(1, 50000) g")
    code, out = rehearse(write(tmp_path, WIDEN), "--db", zdm_postgres_url, "--lock-timeout", "10", "--json")
    assert code == 1, out
    report = json.loads(out)
    assert {v["kind"] for v in report["violations"]} == {"lock", "rewrite"}
    alter = statements(report, "EXPANDING")[0]
    assert {"relation": "events", "mode": "AccessExclusiveLock"} in alter["locks"]
    assert alter["held_ms"] > 10 and alter["rewrote"] == ["events"]
    assert report["restored"]  # reversible, and still not safe to run
    with engine.connect() as connection:
        assert sa.inspect(connection).get_columns("events")[2]["type"].python_type is int
    assert_reversible(zdm_postgres_url, WIDEN_PLAN)
    engine.dispose()


WIDEN_PLAN = {"id": "widen_n", "operations": [
    {"op": "sql", "table": "events", "up": "ALTER TABLE events ALTER COLUMN n TYPE text",
     "down": "ALTER TABLE events ALTER COLUMN n TYPE bigint USING n::bigint", "assume_safe": True}]}


def test_non_reversible_sql_step_fails_the_rehearsal(zdm_postgres_url: str, tmp_path: Path) -> None:
    setup(zdm_postgres_url, users_schema(120)).dispose()
    code, out = rehearse(write(tmp_path, LOSSY), "--db", zdm_postgres_url)
    assert code == 1, out
    assert "rollback: did NOT restore the snapshot" in out
    assert "users.note: was absent, now TEXT NULL DEFAULT 'x'::text" in out
    assert "users: same 120 rows, but their values changed" in out
    assert "FAILED: 1 broken promise" in out


def test_sqlite_rehearsal_without_lock_tracing(zdm_sqlite_url: str, tmp_path: Path) -> None:
    model = users_schema(120)
    engine = setup(zdm_sqlite_url, model)
    plan = write(tmp_path, RENAME)
    # This test is about what the SQLite report says, not about this machine's disk: a CI runner's
    # fsync stall once held a 120-row rebuild's write lock for 637 ms, past the default budget.
    budget = ("--lock-timeout", "10000")
    code, out = rehearse(plan, "--db", zdm_sqlite_url, *budget)
    assert code == 0, out
    assert "no lock tracing" in out and "DATABASE WRITE" in out and "rollback: restored" in out
    assert_agrees(engine, model)

    code, out = rehearse(plan, "--db", zdm_sqlite_url, "--json", "--complete", *budget)
    assert code == 0, out
    report = json.loads(out)
    assert report["ok"] and report["completed"] and not report["lock_tracing"]
    assert [p["phase"] for p in report["phases"]] == ["EXPANDING", "MIGRATING", "ROLLED_BACK", "CONTRACTING"]
    rebuild = next(s for s in statements(report, "EXPANDING") if s["rewrote"])
    assert rebuild["rewrote"] == ["users"] and "rebuild table" in rebuild["sql"]
    assert ("COMPLETE", "new", True) in [(p["moment"], p["shape"], p["ok"]) for p in report["probes"]]
    with engine.connect() as connection:
        assert "email" not in {c["name"] for c in sa.inspect(connection).get_columns("users")}
    engine.dispose()


def test_a_failing_step_is_reported_and_the_database_left_as_it_was(zdm_sqlite_url: str, tmp_path: Path) -> None:
    model = users_schema(20)
    engine = setup(zdm_sqlite_url, model)
    plan = write(tmp_path, "id: broken\noperations:\n  - {op: sql, table: users, up: SELECT no_such_function(), "
                           "down: SELECT 1}\n")
    code, out = rehearse(plan, "--db", zdm_sqlite_url, "--json")
    assert code == 1, out
    report = json.loads(out)
    assert [v["kind"] for v in report["violations"]] == ["failed"]
    assert "no_such_function" in report["violations"][0]["message"] and report["restored"]
    assert_agrees(engine, model)
    engine.dispose()


def test_an_invalid_plan_exits_2_before_anything_runs(zdm_sqlite_url: str, tmp_path: Path) -> None:
    setup(zdm_sqlite_url, users_schema(5)).dispose()
    plan = write(tmp_path, "id: nope\noperations:\n  - {op: drop_column, table: users, column: missing}\n")
    result = CliRunner().invoke(main, ["rehearse", plan, "--db", zdm_sqlite_url, "--quiet"])
    assert result.exit_code == 2 and "has no column 'missing'" in result.stderr


#: Checks every row while the lock is held; outside a transaction its locks are gone before they can be read.
CHECK_OUTSIDE = """\
id: n_checked
operations:
  - op: sql
    table: events
    up: ALTER TABLE events ADD CONSTRAINT payload_md5 CHECK (length(md5(payload)) = 32)
    down: ALTER TABLE events DROP CONSTRAINT payload_md5
    assume_safe: true
    transactional: false
"""
#: Outside a transaction too, but of kinds that let writes through: they may take longer than the budget.
CONCURRENT_OUTSIDE = """\
id: n_indexed
operations:
  - {op: create_index, table: events, name: events_n_ix, columns: [n]}
  - op: sql
    table: events
    up: [CREATE INDEX CONCURRENTLY events_payload_ix ON events (payload), VACUUM ANALYZE events]
    down: DROP INDEX CONCURRENTLY events_payload_ix
    transactional: false
"""


def events(url: str, rows: int) -> sa.Engine:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE events (id bigint PRIMARY KEY, payload text, n bigint)")
        connection.exec_driver_sql(f"INSERT INTO events SELECT g, md5(g::text), g FROM generate_series(1, {rows}) g")
    return engine


def test_a_statement_outside_a_transaction_counts_for_as_long_as_it_ran(zdm_postgres_url: str,
                                                                       tmp_path: Path) -> None:
    events(zdm_postgres_url, 20_000).dispose()
    code, out = rehearse(write(tmp_path, CHECK_OUTSIDE), "--db", zdm_postgres_url, "--lock-timeout", "5", "--json")
    assert code == 1, out
    report = json.loads(out)
    add = statements(report, "EXPANDING")[0]
    assert add["locks"] == [{"relation": "events", "mode": "UnreadLock"}] and not add["traced"]
    assert add["held_ms"] > 5
    assert {v["kind"] for v in report["violations"]} == {"lock"}
    message = report["violations"][0]["message"]
    assert message.startswith("EXPANDING: ALTER TABLE events ADD CONSTRAINT payload_md5") and \
        "outside a transaction, where its locks on events cannot be read" in message
    assert report["restored"]

    code, out = rehearse(write(tmp_path, CONCURRENT_OUTSIDE), "--db", zdm_postgres_url, "--lock-timeout", "5",
                         "--json")
    assert code == 0, out
    built = [s for s in statements(json.loads(out), "EXPANDING") if s["sql"].startswith("CREATE INDEX CONCURRENTLY")]
    assert len(built) == 2 and all(s["locks"] == [] and s["held_ms"] > 0 for s in built)
    assert max(s["held_ms"] for s in built) > 5  # over the budget, and still no broken promise


VIEW = """\
id: adult_view
operations:
  - {op: sql, table: users, up: "CREATE VIEW adult_users AS SELECT id, email FROM users WHERE age >= 18",
     down: SELECT 1}
"""
DROPS_VIEW = """\
id: drops_view
operations:
  - {op: sql, table: users, up: SELECT 1, down: DROP VIEW adult_users}
"""
TRIGGER = """\
id: stamp
operations:
  - op: sql
    table: users
    up:
      - "CREATE FUNCTION stamp_users() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$"
      - CREATE TRIGGER users_stamp BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION stamp_users()
    down: SELECT 1
"""


def test_rollback_check_names_a_view_left_behind_or_lost(zdm_database_url: str, tmp_path: Path) -> None:
    setup(zdm_database_url, users_schema(20)).dispose()
    code, out = rehearse(write(tmp_path, VIEW), "--db", zdm_database_url)
    assert code == 1, out
    assert "rollback: did NOT restore the snapshot" in out and "view adult_users: was absent, now present" in out

    code, out = rehearse(write(tmp_path, RENAME), "--db", zdm_database_url)  # a view over the table is kept as it was
    assert code == 0, out

    code, out = rehearse(write(tmp_path, DROPS_VIEW), "--db", zdm_database_url)
    assert code == 1, out
    assert "view adult_users: was present, now absent" in out


def test_rollback_check_names_a_trigger_and_function_left_behind(zdm_postgres_url: str, tmp_path: Path) -> None:
    setup(zdm_postgres_url, users_schema(20)).dispose()
    code, out = rehearse(write(tmp_path, TRIGGER), "--db", zdm_postgres_url, "--json")
    assert code == 1, out
    assert json.loads(out)["differences"] == ["function stamp_users(): was absent, now present",
                                              "trigger users_stamp on users: was absent, now present"]


def test_a_started_or_complete_plan_is_refused_with_its_state(zdm_postgres_url: str, tmp_path: Path) -> None:
    engine = setup(zdm_postgres_url, users_schema(20))
    plan = write(tmp_path, RENAME)

    def refused() -> str:
        result = CliRunner().invoke(main, ["rehearse", plan, "--db", zdm_postgres_url, "--quiet"])
        assert result.exit_code == 2, result.output
        return result.stderr

    runner(engine).start(planfile.load(plan))
    assert "plan 'rename_email' is already started (MIGRATING) in this database" in refused()
    runner(engine).complete("rename_email")
    assert "plan 'rename_email' is already complete in this database" in refused()
    engine.dispose()


def users_sql(url: str) -> sa.Engine:
    """examples/users.sql, where users.name of row 3 is NULL."""
    engine = db.create_engine(url)
    lines = (EXAMPLES / "users.sql").read_text().splitlines()
    with engine.begin() as connection:
        for statement in "\n".join(line for line in lines if not line.lstrip().startswith("--")).split(";"):
            if statement.strip():
                connection.exec_driver_sql(statement)
    return engine


#: The fill as in examples/set_not_null.yaml, and a `down` that damages another column of the same rows.
FILL_AND_LOSSY = """\
id: fill_and_lossy
operations:
  - {op: set_not_null, table: users, column: name, fill: unknown}
  - {op: sql, table: users, up: SELECT 1, down: "UPDATE users SET email = 'lost' WHERE id = 1"}
"""


def test_set_not_null_fill_is_given_back_by_rollback(zdm_database_url: str, tmp_path: Path) -> None:
    engine = users_sql(zdm_database_url)
    code, out = rehearse(str(EXAMPLES / "set_not_null.yaml"), "--db", zdm_database_url, "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["restored"] and report["differences"] == []
    assert any(note.startswith("users.name: values filled by set_not_null fill are NULL again after rollback")
               for note in report["notes"])
    with engine.begin() as connection:
        assert connection.exec_driver_sql("SELECT name FROM users WHERE id = 3").scalar() is None
    assert assert_reversible(zdm_database_url, EXAMPLES / "set_not_null.yaml").restored

    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE users SET name = NULL WHERE id = 3")
    code, out = rehearse(write(tmp_path, FILL_AND_LOSSY), "--db", zdm_database_url)
    assert code == 1, out
    assert "users: same 3 rows, but their values changed" in out and "users.name: values filled" in out
    engine.dispose()


def test_rolling_back_drop_not_null_scans_without_blocking_writes(zdm_postgres_url: str, tmp_path: Path) -> None:
    """SET NOT NULL alone would scan the table under ACCESS EXCLUSIVE: the rollback validates a check first."""
    setup(zdm_postgres_url, users_schema(50)).dispose()
    plan = write(tmp_path, "id: dnn\noperations:\n  - {op: drop_not_null, table: users, column: email}\n")
    code, out = rehearse(plan, "--db", zdm_postgres_url, "--json")
    assert code == 0, out
    undo = [s["sql"] for s in statements(json.loads(out), "ROLLED_BACK")]
    kinds = [next((k for k in ("NOT VALID", "VALIDATE", "SET NOT NULL", "DROP CONSTRAINT") if k in sql), "check")
             for sql in undo]
    assert kinds == ["check", "DROP CONSTRAINT", "NOT VALID", "VALIDATE", "SET NOT NULL", "DROP CONSTRAINT"], undo


def unrelated_update_fault(dialect: str) -> str:
    """A plan that breaks an app's write to an unrelated column of a row the backfill has not reached.

    ``add_column`` with ``from_column`` fills email_lower on insert, on a change of email and in the
    backfill, not on a write to another column; the ``sql`` step then refuses a NULL email_lower on
    any update: the shape of issue 9's fault (a zdm CHECK on the shadow, NOT VALID, before the backfill
    filled it). After the backfill every row has its value, so only a probe before it can see it.
    """
    if dialect == "postgresql":
        up = "ALTER TABLE users ADD CONSTRAINT email_lower_nn CHECK (email_lower IS NOT NULL) NOT VALID"
        down = "ALTER TABLE users DROP CONSTRAINT email_lower_nn"
    else:  # SQLite adds no constraint to a table: a trigger refuses the same rows
        up = ("CREATE TRIGGER email_lower_nn BEFORE UPDATE ON users WHEN NEW.email_lower IS NULL "
              "BEGIN SELECT RAISE(ABORT, 'email_lower_nn: email_lower is NULL'); END")
        down = "DROP TRIGGER email_lower_nn"
    return f"""\
id: email_lower_checked
operations:
  - {{op: add_column, table: users, column: email_lower, type: TEXT, from_column: email, transform: lower}}
  - op: sql
    table: users
    up: "{up}"
    down: "{down}"
    assume_safe: true
"""


def test_a_write_to_an_unrelated_column_of_an_unreached_row_is_probed(zdm_database_url: str, tmp_path: Path) -> None:
    model = users_schema(120)
    engine = setup(zdm_database_url, model)
    plan = write(tmp_path, unrelated_update_fault(engine.dialect.name))
    code, out = rehearse(plan, "--db", zdm_database_url, "--json")
    assert code == 1, out
    report = json.loads(out)
    probes = {(p["moment"], p["shape"]): p for p in report["probes"]}
    assert [p["ok"] for p in report["probes"]] == [False, False, True, True]
    for shape in ("old", "new"):
        failed = probes[("after expand", shape)]["detail"]
        assert failed.startswith("update name of the row id=120: ") and "email_lower_nn" in failed, failed
        assert probes[("MIGRATING", shape)]["detail"].startswith("read, update name of the row id=120, insert")
    messages = [v["message"] for v in report["violations"] if v["kind"] == "probe"]
    assert [m.split(":")[:3] for m in messages] == [
        ["after expand", " the old shape of users failed", " update name of the row id=120"],
        ["after expand", " the new shape of users failed", " update name of the row id=120"]]
    assert report["restored"] and {v["kind"] for v in report["violations"]} == {"probe"}
    assert_agrees(engine, model)
    assert zdm_objects(engine) == []

    code, out = rehearse(plan, "--db", zdm_database_url)
    assert code == 1, out
    assert "FAILED: 2 broken promises" in out and "probe: after expand: the old shape of users failed: update name" \
        in " ".join(out.split())
    engine.dispose()


#: A nullable column with a default: the new app's insert may leave its new name out.
RENAME_NAME = """\
id: rename_name
operations:
  - {op: rename_column, table: users, column: name, new_name: full_name}
"""


def test_probes_write_unrelated_columns_and_leave_optional_ones_out(zdm_database_url: str, tmp_path: Path) -> None:
    """The rename keeps its promise with every probe: after expand no row is backfilled yet."""
    model = users_schema(120)
    engine = setup(zdm_database_url, model)
    budget = ("--lock-timeout", "10000")  # about the probes, not this machine's disk (see the SQLite test)
    for text, probe_column, unrelated in ((RENAME, "email", "name"), (RENAME_NAME, "name", "email")):
        code, out = rehearse(write(tmp_path, text), "--db", zdm_database_url, "--json", *budget)
        assert code == 0, out
        report = json.loads(out)
        assert [(p["moment"], p["shape"], p["ok"]) for p in report["probes"]] == [
            ("after expand", "old", True), ("after expand", "new", True), ("MIGRATING", "old", True),
            ("MIGRATING", "new", True)]
        details = [p["detail"] for p in report["probes"]]
        assert all(f"update {unrelated} of the row id=120, insert leaving out " in d for d in details), details
        if probe_column == "name":  # optional: a second insert leaves it out as well
            assert all("insert leaving out every optional column" in d for d in details), details
        assert details[0].endswith(f"update {probe_column}, read back")
        assert report["restored"]
    assert_agrees(engine, model)
    engine.dispose()


DEPENDS = """\
id: depends
operations:
  - {op: rename_column, table: users, column: email, new_name: email_address}
  - {op: drop_column, table: users, column: legacy_flag}
"""


def test_the_report_names_user_objects_that_use_a_changed_column(zdm_database_url: str, tmp_path: Path) -> None:
    engine = setup(zdm_database_url, users_schema(20))
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE VIEW active_users AS SELECT id, email FROM users WHERE age >= 18")
        connection.exec_driver_sql("CREATE VIEW flagged AS SELECT id FROM users WHERE legacy_flag")
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("ALTER TABLE users ADD CONSTRAINT users_email_check CHECK (email <> '')")
    code, out = rehearse(write(tmp_path, DEPENDS), "--db", zdm_database_url, "--json", "--lock-timeout", "10000")
    assert code == 0, out
    notes = [n for n in json.loads(out)["notes"] if "users." in n and "set_not_null" not in n]
    expected = ["view active_users uses users.email (kept: renamed in place)",
                "view flagged uses users.legacy_flag (complete fails while it uses the column: drop it first)"]
    if engine.dialect.name == "postgresql":
        expected.insert(1, "check constraint users_email_check uses users.email (kept: renamed in place)")
    assert notes == expected

    code, out = rehearse(write(tmp_path, DEPENDS), "--db", zdm_database_url, "--lock-timeout", "10000")
    assert code == 0, out
    assert "note: view active_users uses users.email (kept: renamed in place)" in out
    engine.dispose()


LOWER_EMAIL = """\
CREATE FUNCTION lower_email() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.email := lower(NEW.email); RETURN NEW; END $$;
CREATE TRIGGER users_lower_email BEFORE INSERT OR UPDATE ON users FOR EACH ROW EXECUTE FUNCTION lower_email()
"""


def test_a_plan_a_user_trigger_cannot_follow_is_refused_before_anything_runs(zdm_postgres_url: str,
                                                                               tmp_path: Path) -> None:
    engine = setup(zdm_postgres_url, users_schema(20))
    with engine.begin() as connection:
        connection.exec_driver_sql(LOWER_EMAIL)
    result = CliRunner().invoke(main, ["rehearse", write(tmp_path, RENAME), "--db", zdm_postgres_url, "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "trigger users_lower_email (function lower_email()) on users uses " \
        "email, which zdm cannot keep in step with email_address: drop the trigger before this change" in result.stderr
    with engine.connect() as connection:
        assert "zdm_migrations" not in sa.inspect(connection).get_table_names()
        assert "email_address" not in {c["name"] for c in sa.inspect(connection).get_columns("users")}
    engine.dispose()


#: A safe foreign key: every member's team exists. The probes must write team ids the key accepts.
TEAMS = ("CREATE TABLE teams (id int primary key, name text)", "INSERT INTO teams VALUES (1,'a'),(2,'b')",
         "CREATE TABLE members (id int primary key, team_id int, qty int)",
         "INSERT INTO members VALUES (1,1,1),(2,2,1)")
ADD_FK = """\
id: fk
operations:
  - {op: add_foreign_key, table: members, name: members_team_fk, columns: [team_id], ref_table: teams,
     ref_columns: [id]}
"""


def test_probes_write_values_a_foreign_key_accepts(zdm_database_url: str, tmp_path: Path) -> None:
    engine = db.create_engine(zdm_database_url)
    with engine.begin() as connection:
        for statement in TEAMS:
            connection.exec_driver_sql(statement)
    code, out = rehearse(write(tmp_path, ADD_FK), "--db", zdm_database_url, "--json", "--lock-timeout", "10000")
    assert code == 0, out
    report = json.loads(out)
    assert report["probes"] and all(p["ok"] is True for p in report["probes"]), report["probes"]
    assert report["restored"] and report["violations"] == []
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT id, team_id, qty FROM members ORDER BY id").all() == [
            (1, 1, 1), (2, 2, 1)]
        assert not sa.inspect(connection).get_foreign_keys("members")
    engine.dispose()


# -- probes write a value of every type zdm knows (finding 3 of the new-user test) ---------------------
#: Required columns (NOT NULL, no default) of every family, so every probe insert names them: each
#: needs a value that fits its exact type. Then nullable ones zdm makes no value for, left out.
KINDS_PG = ("CREATE TYPE mood AS ENUM ('calm', 'busy')", "CREATE DOMAIN short3 AS varchar(3)",
            "CREATE DOMAIN positive AS integer CHECK (VALUE > 0)",
            "CREATE TABLE kinds (id integer PRIMARY KEY, a text, v3 varchar(3) NOT NULL, c4 char(4) NOT NULL, "
            "n62 numeric(6,2) NOT NULL, n33 numeric(3,3) NOT NULL, n numeric NOT NULL, r real NOT NULL, "
            "d double precision NOT NULL, s smallint NOT NULL, b bigint NOT NULL, f boolean NOT NULL, "
            "ts timestamp NOT NULL, tz timestamptz NOT NULL, dt date NOT NULL, tm time NOT NULL, "
            "iv interval NOT NULL, u uuid NOT NULL, by bytea NOT NULL, j json NOT NULL, jb jsonb NOT NULL, "
            "ta text[] NOT NULL, ia integer[] NOT NULL, m mood NOT NULL, sh short3 NOT NULL, "
            "cash money, pos positive)",
            "INSERT INTO kinds VALUES (1, 'x', 'abc', 'abcd', 1.5, 0.5, 7, 1.5, 2.5, 3, 4, true, '2001-01-01', "
            "'2001-01-01Z', '2001-01-01', '01:02:03', '1 day', gen_random_uuid(), 'x', '{}', '{}', '{a}', '{1}', "
            "'busy', 'ab', 3, 4)")
KINDS_SQLITE = ("CREATE TABLE kinds (id integer PRIMARY KEY, a text, v3 varchar(3) NOT NULL, c4 char(4) NOT NULL, "
                "n62 numeric(6,2) NOT NULL, n33 numeric(3,3) NOT NULL, n numeric NOT NULL, r real NOT NULL, "
                "d double precision NOT NULL, s smallint NOT NULL, b bigint NOT NULL, f boolean NOT NULL, "
                "ts timestamp NOT NULL, dt date NOT NULL, tm time NOT NULL, by blob NOT NULL, j json NOT NULL, "
                "odd)",
                "INSERT INTO kinds VALUES (1, 'x', 'abc', 'abcd', 1.5, 0.5, 7, 1.5, 2.5, 3, 4, 1, "
                "'2001-01-01 00:00:00.000000', '2001-01-01', '01:02:03.000000', x'78', '{}', NULL)")
RENAME_A = "id: kinds\noperations:\n  - {op: rename_column, table: kinds, column: a, new_name: a2}\n"


def kinds(url: str, required: str | None = None) -> sa.Engine:
    engine = db.create_engine(url)
    with engine.begin() as connection:
        for statement in KINDS_PG if engine.dialect.name == "postgresql" else KINDS_SQLITE:
            connection.exec_driver_sql(statement)
        if required:
            connection.exec_driver_sql(required)
    return engine


def test_probes_write_a_value_of_every_type_and_leave_out_nullable_ones_they_cannot(zdm_database_url: str,
                                                                                    tmp_path: Path) -> None:
    engine = kinds(zdm_database_url)
    code, out = rehearse(write(tmp_path, RENAME_A), "--db", zdm_database_url, "--json", "--lock-timeout", "10000")
    assert code == 0, out
    report = json.loads(out)
    assert [(p["moment"], p["shape"], p["ok"]) for p in report["probes"]] == [
        ("after expand", "old", True), ("after expand", "new", True), ("MIGRATING", "old", True),
        ("MIGRATING", "new", True)], report["probes"]
    assert report["judged"] and report["ok"] and report["restored"]
    code, out = rehearse(write(tmp_path, RENAME_A), "--db", zdm_database_url, "--lock-timeout", "10000")
    assert code == 0 and "OK: every statement kept the promise" in out, out
    engine.dispose()


def test_a_probe_not_judged_is_not_ok_and_exits_3(zdm_database_url: str, tmp_path: Path) -> None:
    """A required column of a type zdm makes no value for: no promise is shown kept, so no OK."""
    postgres = zdm_database_url.startswith("postgresql")
    engine = kinds(zdm_database_url, "ALTER TABLE kinds ALTER cash SET NOT NULL" if postgres else
                   "CREATE TABLE odd (id integer PRIMARY KEY, a text, g NOT NULL)")
    plan = RENAME_A if postgres else RENAME_A.replace("kinds", "odd")
    if not postgres:
        with engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO odd VALUES (1, 'x', 'POINT(1 1)')")
    code, out = rehearse(write(tmp_path, plan), "--db", zdm_database_url, "--lock-timeout", "10000")
    assert code == 3, out
    column = "cash of type MONEY" if postgres else "g of type"
    assert f"not judged: probes skipped: no sample value for the required column {column}" in out
    assert "NOT JUDGED: no promise broken, but 1 probe could not be judged" in out and "OK:" not in out
    result = CliRunner().invoke(main, ["rehearse", write(tmp_path, plan), "--db", zdm_database_url, "--quiet",
                                       "--json", "--lock-timeout", "10000"])
    document = json.loads(result.stdout)
    assert result.exit_code == 3 and document["exit_code"] == 3 and document["ok"] is False
    assert document["error"]["kind"] == "not_judged" and document["rehearsal"]["judged"] is False
    assert document["rehearsal"]["restored"] and not document["rehearsal"]["violations"]
    jsonschema.validate(document, OUTPUT_SCHEMA)
    engine.dispose()


#: Widening a primary key widens the foreign keys' columns too: the rehearsal compares both tables.
PARENT_CHILD = ("CREATE TABLE parent (id integer PRIMARY KEY, name text)",
                "CREATE TABLE child (id integer PRIMARY KEY, parent_id integer NOT NULL REFERENCES parent (id), "
                "qty integer)",
                "CREATE TABLE bystander (id integer PRIMARY KEY, name text)",
                "INSERT INTO parent VALUES (1, 'a'), (2, 'b')",
                "INSERT INTO child VALUES (1, 1, 1), (2, 2, 1), (3, 2, 2)")
WIDEN_KEY = "id: widen_parent\noperations:\n  - {op: alter_column, table: parent, column: id, type: BIGINT}\n"


def test_a_key_widening_rehearsal_compares_and_probes_the_referencing_tables(zdm_database_url: str,
                                                                             tmp_path: Path) -> None:
    engine = db.create_engine(zdm_database_url)
    with engine.begin() as connection:
        for statement in PARENT_CHILD:
            connection.exec_driver_sql(statement)
    code, out = rehearse(write(tmp_path, WIDEN_KEY), "--db", zdm_database_url, "--json", "--lock-timeout", "10000")
    assert code == 0, out
    report = json.loads(out)
    assert report["rows"] == {"child": 3, "parent": 2} and report["restored"]
    assert {(p["table"], p["ok"]) for p in report["probes"]} == {("child", True), ("parent", True)}
    engine.dispose()
