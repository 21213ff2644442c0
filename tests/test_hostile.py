"""Hostile input and unlucky faults (issue 16): refused before anything runs, never a lying status.

Each input the issue names is a case here, on SQLite and PostgreSQL: the command exits with the
documented code and one ``zdm: error:`` line, and the database is unchanged (rows, catalogue,
every named object, zdm's own records).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from support import Phase, apply_phases, assert_agrees, setup, users_schema, zdm_objects

from zdm import db, oracle, planfile, state, status
from zdm.cli import main
from zdm.dialects import for_connection
from zdm.model import Index, Schema
from zdm.runner import PlanStateError, Reporter, Runner, ZdmError
from zdm.status import format_record


def zdm(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def write_plan(tmp_path: Path, plan: dict[str, Any]) -> str:
    path = tmp_path / f"{plan['id']}.json"
    path.write_text(json.dumps(plan))
    return str(path)


def snapshot(url: str) -> Any:
    """Everything a user and zdm see: schema and rows, every named object, zdm's records."""
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        names = sorted(sa.inspect(connection).get_table_names())
        records = (connection.execute(sa.select(state.migrations.c.id, state.migrations.c.phase,
                                                state.migrations.c.plan, state.migrations.c.checkpoint)).all()
                   if "zdm_migrations" in names else [])
        found = (oracle.read(connection), names, sorted(records),
                 sorted(for_connection(connection).object_names(connection).items()))
    engine.dispose()
    return found


def refused(url: str, plan_path: str, *words: str) -> str:
    """validate --db and start both refuse with one line (exit 2) naming ``words``; nothing changes."""
    before = snapshot(url)
    for command in (("validate", plan_path, "--db", url), ("start", plan_path, "--db", url)):
        code, _, err = zdm(*command)
        assert code == 2, (command, code, err)
        assert err.startswith("zdm: error: ") and err.count("\n") == 1, err
        assert all(word in err for word in words), (words, err)
    assert snapshot(url) == before
    return err


# -- kind 2: names a plan creates that already exist ---------------------------------------------
def neighbours(url: str) -> None:
    """Another table with a unique index, a view and a trigger (PostgreSQL: also a sequence, a
    function, a type and a check constraint) whose names a plan may try to reuse."""
    engine = db.create_engine(url)
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT, "
                                   "balance INTEGER CONSTRAINT accounts_positive CHECK (balance >= 0))")
        connection.exec_driver_sql("CREATE UNIQUE INDEX accounts_email_uq ON accounts (email)")
        connection.exec_driver_sql("INSERT INTO accounts VALUES (1, 'a@example.com', 5)")
        connection.exec_driver_sql("CREATE VIEW active_users AS SELECT id, email FROM users")
        if postgres:
            connection.exec_driver_sql("CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS "
                                       "$$ BEGIN RETURN NEW; END $$")
            connection.exec_driver_sql("CREATE TRIGGER users_audit BEFORE UPDATE ON users "
                                       "FOR EACH ROW EXECUTE FUNCTION touch()")
            connection.exec_driver_sql("CREATE SEQUENCE order_seq")
            connection.exec_driver_sql("CREATE TYPE mood AS ENUM ('ok', 'sad')")
        else:
            connection.exec_driver_sql("CREATE TRIGGER users_audit AFTER UPDATE ON users "
                                       "BEGIN SELECT 1; END")
    engine.dispose()


USERS_EMAIL = {"table": "users", "columns": ["email"]}
TAKEN = [  # (operation, the name it reuses, what holds it, databases where it is taken)
    ({"op": "create_index", "name": "accounts_email_uq", **USERS_EMAIL}, "index accounts_email_uq on accounts"),
    ({"op": "create_index", "name": "accounts", **USERS_EMAIL}, "table accounts"),
    ({"op": "create_index", "name": "active_users", **USERS_EMAIL}, "view active_users"),
    ({"op": "create_index", "name": "users_audit", **USERS_EMAIL}, "trigger users_audit on users"),
    ({"op": "add_unique", "name": "accounts_email_uq", **USERS_EMAIL}, "accounts_email_uq on accounts"),
    ({"op": "add_unique", "name": "accounts", **USERS_EMAIL}, "table accounts"),
    ({"op": "add_check", "table": "users", "name": "active_users", "condition": "age >= 0"}, "view active_users"),
    ({"op": "add_check", "table": "users", "name": "accounts_email_uq", "condition": "age >= 0"},
     "accounts_email_uq on accounts"),
    ({"op": "add_foreign_key", "table": "users", "name": "accounts", "columns": ["age"], "ref_table": "accounts",
      "ref_columns": ["id"]}, "table accounts"),
    ({"op": "create_table", "table": "active_users", "columns": [{"name": "id", "type": "INTEGER"}]},
     "view active_users"),
    ({"op": "create_table", "table": "accounts_email_uq", "columns": [{"name": "id", "type": "INTEGER"}]},
     "accounts_email_uq on accounts"),
    ({"op": "rename_table", "table": "users", "new_name": "active_users"}, "view active_users"),
    ({"op": "rename_table", "table": "users", "new_name": "accounts_email_uq"}, "accounts_email_uq on accounts"),
]
POSTGRES_ONLY = [
    ({"op": "create_index", "name": "order_seq", **USERS_EMAIL}, "sequence order_seq"),
    ({"op": "create_index", "name": "touch", **USERS_EMAIL}, "function touch"),
    ({"op": "create_table", "table": "mood", "columns": [{"name": "id", "type": "INTEGER"}]}, "type mood"),
    ({"op": "add_check", "table": "users", "name": "accounts_positive", "condition": "age >= 0"},
     "constraint accounts_positive on accounts"),
]
SQLITE_ONLY = [  # SQLite compares names without case
    ({"op": "create_index", "name": "ACCOUNTS_EMAIL_UQ", **USERS_EMAIL}, "index accounts_email_uq on accounts"),
]


def test_a_name_taken_by_any_object_is_refused_before_anything_runs(zdm_database_url: str, tmp_path: Path) -> None:
    """The issue's case: create_index named like another table's unique index passed validate, and
    start dropped that index (duplicates then went in). Named like a table, start failed and the
    plan could never be rolled back. Now every such name is refused by validate and start, and
    the other table's index still refuses duplicates."""
    url = zdm_database_url
    setup(url, users_schema(rows=5))
    neighbours(url)
    postgres = url.startswith("postgresql")
    cases = TAKEN + (POSTGRES_ONLY if postgres else SQLITE_ONLY)
    for number, (operation, holder) in enumerate(cases):
        path = write_plan(tmp_path, {"id": f"taken{number}", "operations": [operation]})
        name = operation.get("name") or operation.get("new_name") or operation["table"]
        err = refused(url, path, "operation 1 ", repr(name), holder)
        assert "Traceback" not in err
    engine = db.create_engine(url)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO accounts VALUES (2, 'a@example.com', 1)")
    engine.dispose()


def test_two_operations_of_one_plan_creating_one_name_are_refused(zdm_database_url: str, tmp_path: Path) -> None:
    url = zdm_database_url
    setup(url, users_schema(rows=5))
    path = write_plan(tmp_path, {"id": "twice", "operations": [
        {"op": "create_index", "name": "users_by_age", "table": "users", "columns": ["age"]},
        {"op": "add_unique", "name": "users_by_age", "table": "users", "columns": ["code"]}]})
    refused(url, path, "operation 2 ", "'users_by_age'", "operation 1 of this plan")


def test_a_free_name_still_runs(zdm_database_url: str, tmp_path: Path) -> None:
    """The check refuses taken names only: the same plans with free names start and roll back."""
    url = zdm_database_url
    setup(url, users_schema(rows=5))
    neighbours(url)
    before = snapshot(url)
    path = write_plan(tmp_path, {"id": "free", "operations": [
        {"op": "create_index", "name": "users_email_ix", **USERS_EMAIL},
        {"op": "add_check", "table": "users", "name": "users_age_ok", "condition": "age >= 0"},
        {"op": "create_table", "table": "orders", "columns": [{"name": "id", "type": "INTEGER"}]}]})
    assert zdm("start", path, "--db", url)[0] == 0
    assert zdm("rollback", "free", "--db", url)[0] == 0
    after = snapshot(url)
    assert after[0] == before[0]
    assert [o for o in after[3] if "zdm_migrations" not in o[1]] == before[3]


# -- kind 1: a status that lies, and commands that trust it ---------------------------------------
class Killed(BaseException):
    """kill -9 at a statement boundary: nothing after it runs, nothing is compensated."""


class KillAt(Reporter):
    """Counts the boundaries of a run (after each statement, after each commit); kills at number ``at``."""

    def __init__(self, at: int | None = None) -> None:
        self.at, self.seen = at, 0

    def _boundary(self) -> None:
        if self.seen == self.at:
            raise Killed(self.seen)
        self.seen += 1

    def executed(self, connection: sa.Connection, action: Any, seconds: float) -> None:
        self._boundary()

    def committed(self) -> None:
        self._boundary()


#: A rename with an index (PostgreSQL copies it CONCURRENTLY, outside a transaction), a NOT NULL with
#: fill (a fill trigger, a NOT VALID check validated later) and a check validated in migrate.
KILL_PLAN = {"id": "kills", "operations": [
    {"op": "rename_column", "table": "users", "column": "email", "new_name": "email_address"},
    {"op": "set_not_null", "table": "users", "column": "name", "fill": "nobody"},
    {"op": "add_check", "table": "users", "name": "users_age_ok", "condition": "age >= 0"}]}


def fresh(url: str) -> tuple[sa.Engine, Schema]:
    """An empty database with the users table (an index on email), and its model."""
    if url.startswith("postgresql"):
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with engine.connect() as connection:
            connection.exec_driver_sql("DROP SCHEMA public CASCADE")
            connection.exec_driver_sql("CREATE SCHEMA public")
        engine.dispose()
    else:
        Path(sa.make_url(url).database or "").unlink(missing_ok=True)
    model = users_schema(rows=120)
    model.table("users").indexes["users_email_ix"] = Index(("email",))
    for row in model.table("users").rows:  # no NULL to fill: a rollback then restores every row as it was
        row["name"] = row["name"] or "someone"
    return setup(url, model), model


def run(engine: sa.Engine, command: str, plan: planfile.PlanFile, kill_at: int | None = None) -> int:
    """Run ``command`` killed at boundary ``kill_at`` (None: to the end); the boundaries passed."""
    reporter = KillAt(kill_at)
    runner = Runner(engine, reporter, overrides={"batch_size": 37})
    try:
        getattr(runner, command)(plan if command in ("start", "apply") else plan.id)
    except Killed:
        assert kill_at is not None
    else:
        assert kill_at is None, f"{command} ended before boundary {kill_at}"
    return reporter.seen


COMMANDS = ("start", "rollback", "complete", "apply")


def test_a_kill_at_every_statement_boundary_leaves_a_status_that_tells_the_truth(zdm_database_url: str) -> None:
    """The issue's case: a kill after rollback's last compensation, before ROLLED_BACK was recorded,
    left status saying MIGRATING and `complete` ran SET NOT NULL with the fill trigger gone.

    For start, rollback, complete and apply, the run is killed at every boundary in turn (after each
    statement, after each commit). Then status must tell the truth: a plan it shows as waiting,
    with no disagreement, completes into the declared shape; any other is refused by complete
    and finished by rollback into the original shape, every row intact, no zdm object left."""
    url = zdm_database_url
    plan = planfile.parse(KILL_PLAN)
    engine, model = fresh(url)
    dialect = engine.dialect.name
    original = model.copy()
    final = model.copy()
    apply_phases(plan, final, dialect, Phase.EXPANDING, Phase.MIGRATING, Phase.CONTRACTING)
    boundaries = {}
    for command in COMMANDS:
        engine.dispose()
        engine, _ = fresh(url)
        if command in ("rollback", "complete"):
            run(engine, "start", plan)
        boundaries[command] = run(engine, command, plan)
    kills = 0
    for command, count in boundaries.items():
        for at in range(count):
            engine.dispose()
            engine, _ = fresh(url)
            if command in ("rollback", "complete"):
                run(engine, "start", plan)
            run(engine, command, plan, kill_at=at)
            kills += 1
            (record,) = status.read(engine)
            where = f"{command} killed at boundary {at}: {format_record(record)}"
            phase, trusted = record.plan.phase, record.activity == "waiting" and not record.disagrees
            if phase in (Phase.CONTRACTING, Phase.COMPLETE) or (trusted and (command == "complete" or at % 2)):
                if phase is not Phase.COMPLETE:
                    run(engine, "complete", plan)
                assert_agrees(engine, final)
                continue
            if phase is not Phase.ROLLED_BACK and not trusted:
                with pytest.raises(PlanStateError):
                    Runner(engine).complete(plan.id)
                if command in ("start", "apply") and at % 2 and not record.plan.rolling_back:
                    run(engine, "start", plan)  # resume, then complete
                    run(engine, "complete", plan)
                    assert_agrees(engine, final)
                    continue
            if phase is not Phase.ROLLED_BACK:
                run(engine, "rollback", plan)
            assert_agrees(engine, original)
            assert zdm_objects(engine) == [], where
    engine.dispose()
    assert kills == sum(boundaries.values()) and all(boundaries.values())


def test_an_index_a_blocked_rollback_left_invalid_is_not_made_the_tables_index(zdm_postgres_url: str) -> None:
    """The issue's case: an idle transaction blocks the rollback of a rename, whose DROP INDEX
    CONCURRENTLY is cancelled after marking the copied index INVALID. Status said started, and
    complete made the INVALID index the table's index. Now status names the INVALID index,
    complete refuses before taking any lock, and a rollback once the session is gone finishes."""
    url = zdm_postgres_url
    plan = planfile.parse({"id": "blocked", "operations": [KILL_PLAN["operations"][0]]})
    engine, model = fresh(url)
    run(engine, "start", plan)
    idle = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with idle.connect() as session:
        session.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        session.exec_driver_sql("SELECT count(*) FROM users").scalar()  # then idle in transaction
        with pytest.raises(ZdmError):
            Runner(engine, overrides={"lock_timeout_ms": 200, "lock_retries": 0}).rollback(plan.id)
        with engine.connect() as connection:
            invalid = connection.exec_driver_sql(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE NOT i.indisvalid").scalars().all()
        assert invalid, "the blocked DROP INDEX CONCURRENTLY left no INVALID index: the case is not reproduced"
        (record,) = status.read(engine)
        assert record.activity == "waiting" and record.disagrees == [
            f"index {invalid[0]} on users is INVALID (a build or drop was interrupted)"]
        assert f"the database disagrees with the record: index {invalid[0]}" in format_record(record)
        code, _, err = zdm("complete", plan.id, "--db", url)
        assert code == 2 and err.count("\n") == 1 and f"index {invalid[0]} on users is INVALID" in err, err
    idle.dispose()
    run(engine, "rollback", plan)
    assert_agrees(engine, model)
    assert zdm_objects(engine) == []
    engine.dispose()


# -- kind 5: passwords never printed ---------------------------------------------------------------
PASSWORD = "Pl4nt3dS3cr3t"


def test_a_planted_password_appears_in_no_output_of_any_command(zdm_postgres_url: str, tmp_path: Path) -> None:
    """The issue's cases (`zdm demo` printed the whole URL, a malformed URL was echoed whole,
    `?password=` was shown in `cannot connect to`), and every other command, human and --json,
    successes and errors: the planted password is in no output and not in zdm's record."""
    server = sa.make_url(zdm_postgres_url)  # trust auth: a password in the URL is accepted and ignored
    good = [server.set(password=PASSWORD).render_as_string(hide_password=False),
            server.update_query_dict({"password": PASSWORD}).render_as_string(hide_password=False)]
    bad = [f"postgresql://u:{PASSWORD}@127.0.0.1:abc/db", f"postgresql://u:{PASSWORD}@[::1/db",
           f"postgresql://u:{PASSWORD}@127.0.0.1:abc/db?password={PASSWORD}",
           f"postgresql+nodriver://u:{PASSWORD}@h/db?sslpassword={PASSWORD}",
           f"postgresql://u@127.0.0.1:1/db?password={PASSWORD}&sslmode=disable",
           server.set(password=PASSWORD, database="no_such_db_zdm").render_as_string(hide_password=False)]
    outputs: list[str] = []

    def every(*args: str, url: str) -> None:
        for extra in ((), ("--json",)):
            code, out, err = zdm(*args, "--db", url, *extra)
            outputs.append(f"{args} {code}\n{out}\n{err}")

    every("demo", "--rows", "20", url=good[0])
    every("demo", "--rows", "20", url=good[1])
    engine = db.create_engine(zdm_postgres_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP SCHEMA public CASCADE")
        connection.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()
    setup(zdm_postgres_url, users_schema(rows=20)).dispose()
    path = write_plan(tmp_path, {"id": "secret", "operations": [KILL_PLAN["operations"][0]]})
    for url in good:
        for command in (("validate", path), ("plan", path), ("start", path), ("status",), ("history", "secret"),
                        ("rollback", "secret"), ("apply", path), ("status", "secret")):
            every(*command, url=url)
    for url in bad:
        for command in (("validate", path), ("start", path), ("status",), ("demo",), ("rehearse", path)):
            every(*command, url=url)
    engine = db.create_engine(zdm_postgres_url)
    with engine.connect() as connection:
        outputs += [str(row) for row in connection.execute(sa.select(state.migrations))]
    engine.dispose()
    assert len(outputs) > 60 and any("Pl4nt" not in o and "***" in o for o in outputs)
    leaked = [o for o in outputs if PASSWORD in o]
    assert not leaked, leaked[0]
