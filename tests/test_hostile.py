"""Hostile input and unlucky faults (issue 16): refused before anything runs, never a lying status.

Each input the issue names is a case here, on SQLite and PostgreSQL: the command exits with the
documented code and one ``zdm: error:`` line, and the database is unchanged (rows, catalogue,
every named object, zdm's own records).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import Phase, apply_phases, assert_agrees, setup, users_schema, zdm_objects

from zdm import db, oracle, planfile, state, status
from zdm.actions import Rebuild, Statement
from zdm.cli import main
from zdm.dialects import for_connection, mint, object_name, shadow_column
from zdm.model import Index, Schema
from zdm.operations import CATALOGUE
from zdm.runner import PlanStateError, Reporter, Runner, ZdmError
from zdm.state import RunnerBusy
from zdm.status import format_record


def zdm(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


#: PostgreSQL's state as one digest, read in one query: every relation of the schema with its file
#: (a rewrite shows), columns, defaults, constraints (validated or not), indexes (valid or not),
#: triggers, functions (their code), types, comments, sequences' values, and every row with its
#: version (ctid, xmin: a row rewritten with the same values shows too).
POSTGRES_STATE = """
SELECT md5(concat_ws('|',
 (SELECT string_agg(concat_ws(',', c.relname, c.relkind, c.relfilenode, c.relpersistence, c.reloptions::text,
   c.relacl::text, obj_description(c.oid)), ';' ORDER BY c.relname) FROM pg_class c WHERE c.relnamespace = s.oid),
 (SELECT string_agg(concat_ws(',', c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
   a.attnotnull, a.attisdropped, a.attidentity, a.attgenerated, a.attcollation, pg_get_expr(d.adbin, d.adrelid),
   col_description(c.oid, a.attnum)), ';' ORDER BY c.relname, a.attnum)
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid LEFT JOIN pg_attrdef d
  ON d.adrelid = a.attrelid AND d.adnum = a.attnum WHERE c.relnamespace = s.oid AND a.attnum > 0),
 (SELECT string_agg(concat_ws(',', co.conname, co.conrelid::regclass::text, pg_get_constraintdef(co.oid),
   co.convalidated), ';' ORDER BY co.conname, co.conrelid) FROM pg_constraint co WHERE co.connamespace = s.oid),
 (SELECT string_agg(concat_ws(',', pg_get_indexdef(i.indexrelid), i.indisvalid, i.indisready), ';'
   ORDER BY i.indexrelid::regclass::text) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
   WHERE c.relnamespace = s.oid),
 (SELECT string_agg(concat_ws(',', pg_get_triggerdef(t.oid), t.tgenabled), ';' ORDER BY t.tgname, t.tgrelid)
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relnamespace = s.oid AND NOT t.tgisinternal),
 (SELECT string_agg(concat_ws(',', p.proname, pg_get_function_identity_arguments(p.oid), md5(p.prosrc)), ';'
   ORDER BY p.proname, p.oid) FROM pg_proc p WHERE p.pronamespace = s.oid),
 (SELECT string_agg(concat_ws(',', t.typname, t.typtype), ';' ORDER BY t.typname)
  FROM pg_type t WHERE t.typnamespace = s.oid),
 (SELECT string_agg(concat_ws(',', e.enumtypid::regtype::text, e.enumlabel, e.enumsortorder), ';'
   ORDER BY e.enumtypid, e.enumsortorder) FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid
   WHERE t.typnamespace = s.oid),
 (SELECT string_agg(concat_ws(',', q.sequencename, q.last_value), ';' ORDER BY q.sequencename)
  FROM pg_sequences q WHERE q.schemaname = s.nspname),
 (SELECT string_agg(query_to_xml(format('SELECT ctid, xmin, * FROM %I.%I ORDER BY ctid', s.nspname, c.relname),
   false, false, '')::text, ';' ORDER BY c.relname) FROM pg_class c WHERE c.relnamespace = s.oid
   AND c.relkind IN ('r', 'p'))))
FROM pg_namespace s WHERE s.nspname = current_schema()
"""


def postgres_state(connection: sa.Connection) -> str:
    """One digest of everything ``POSTGRES_STATE`` reads; equal digests: nothing changed."""
    return str(connection.execute(sa.text(POSTGRES_STATE)).scalar())


def state_of(url: str) -> str:
    """SQLite: a digest of the file's bytes; PostgreSQL: ``postgres_state``."""
    if not url.startswith("postgresql"):
        return hashlib.sha256(Path(sa.make_url(url).database or "").read_bytes()).hexdigest()
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        found = postgres_state(connection)
    engine.dispose()
    return found


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
    before = state_of(url)
    for command in (("validate", plan_path, "--db", url), ("start", plan_path, "--db", url)):
        code, _, err = zdm(*command)
        assert code == 2, (command, code, err)
        assert err.startswith("zdm: error: ") and err.count("\n") == 1, err
        assert all(word in err for word in words), (words, err)
    assert state_of(url) == before
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


def old_sync_name(plan_id: str, table: str, *parts: str) -> str:
    """How names were minted before: parts joined by ``_`` (``-`` made ``_``), cut at 55 characters."""
    readable = "_".join(("zdm_tg", plan_id.replace("-", "_"), table, *parts))
    return readable if len(readable) <= 55 else f"{readable[:46]}_{hashlib.sha1(readable.encode()).hexdigest()[:8]}"


def test_names_zdm_mints_are_unambiguous_and_fit() -> None:
    """Joined parts, cut names and case (SQLite) cannot make two different parts mint one name."""
    assert old_sync_name("a", "b_c", "x") == old_sync_name("a_b", "c", "x")  # the collision of old
    assert mint("a", "b_c", "x") != mint("a_b", "c", "x")
    assert mint("p-1", "t") != mint("p_1", "t") and mint("P1", "t").lower() != mint("p1", "t").lower()
    assert mint("p1", "users", "email") == "p1_users_email"  # plain parts stay readable, no hash
    long_a, long_b = "c" * 50 + "_one", "c" * 50 + "_two"
    names = {object_name("zdm_tg", mint("plan", "users", column), part)
             for column in (long_a, long_b, "x" * 63) for part in ("ins", "a")}
    assert len(names) == 6 and all(len(name.encode()) <= 63 for name in names)
    assert all(name.startswith("zdm_tg_plan_users_ccc") for name in names if "ccc" in name)
    shadows = {shadow_column(column) for column in ("d" * 60 + "xyz", "d" * 60 + "xyw", "d" * 63, "short")}
    assert len(shadows) == 4 and all(len(s) <= 63 and s.endswith("_zdm_new") for s in shadows)
    assert "__" not in mint("plain", "parts") and "__" in mint("not_plain", "parts")  # never equal


def test_plans_whose_old_names_collided_both_start_and_complete(zdm_database_url: str, tmp_path: Path) -> None:
    """Plan ``a`` on table ``b_c`` and plan ``a_b`` on table ``c`` minted one trigger (and, on
    PostgreSQL, one function) name: the second plan's objects took the first's. Now each has its own."""
    url = zdm_database_url
    engine = db.create_engine(url)
    with engine.begin() as connection:
        for table in ("b_c", "c"):
            connection.exec_driver_sql(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, x INTEGER)")
            connection.exec_driver_sql(f"INSERT INTO {table} VALUES (1, NULL), (2, 5)")
    fills = {"b_c": 0, "c": 7}
    plans = {"a": "b_c", "a_b": "c"}
    for plan_id, table in plans.items():
        path = write_plan(tmp_path, {"id": plan_id, "operations": [
            {"op": "set_not_null", "table": table, "column": "x", "fill": fills[table]}]})
        code, _, err = zdm("start", path, "--db", url)
        assert code == 0, err
    assert len({name for name in zdm_objects(engine) if "_tg_" in name}) >= 2
    with engine.begin() as connection:  # the old app writes NULL into both tables: each fill its own
        for table in plans.values():
            connection.exec_driver_sql(f"INSERT INTO {table} VALUES (3, NULL)")
    for plan_id in plans:
        code, _, err = zdm("complete", plan_id, "--db", url)
        assert code == 0, err
    with engine.connect() as connection:
        for table, fill in fills.items():
            assert connection.exec_driver_sql(f"SELECT id, x FROM {table} ORDER BY id").all() == [
                (1, fill), (2, 5), (3, fill)]
            assert not {c["name"]: c for c in sa.inspect(connection).get_columns(table)}["x"]["nullable"]
    assert zdm_objects(engine) == []
    engine.dispose()


def test_a_user_object_named_like_a_name_zdm_mints_is_refused_and_survives(zdm_database_url: str,
                                                                          tmp_path: Path) -> None:
    """A trigger (SQLite, PostgreSQL) or function (PostgreSQL) of the user's that happens to bear
    the name zdm gives its own: start would have clobbered it, or rollback dropped it. Refused
    before anything runs (validate and start, exit 2, one line); it is still there, unchanged."""
    url = zdm_database_url
    engine = setup(url, users_schema(rows=5))
    path = write_plan(tmp_path, {"id": "fill-it", "operations": [
        {"op": "set_not_null", "table": "users", "column": "name", "fill": "anon"}]})
    with engine.connect() as connection:
        compiled = planfile.compile_plan(planfile.load(Path(path)), connection)
    sql = " ".join(str(action) for step in compiled.steps for action in step.forward)
    minted = sorted(set(re.findall(r"\bzdm_(?:fn|tg)_\w+", sql)))
    assert minted and all("fill_it" in name for name in minted), minted
    postgres = engine.dialect.name == "postgresql"
    for name in minted:
        with engine.begin() as connection:
            if postgres and "_fn_" in name:
                connection.exec_driver_sql(f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS "
                                           "$$ BEGIN RETURN NEW; END $$")
                holder = f"function {name}"
            elif postgres:
                connection.exec_driver_sql("CREATE FUNCTION mine() RETURNS trigger LANGUAGE plpgsql AS "
                                           "$$ BEGIN RETURN NEW; END $$")
                connection.exec_driver_sql(f"CREATE TRIGGER {name} BEFORE UPDATE ON users "
                                           "FOR EACH ROW EXECUTE FUNCTION mine()")
                holder = f"trigger {name} on users"
            else:
                connection.exec_driver_sql(f"CREATE TRIGGER {name} AFTER UPDATE ON users BEGIN SELECT 1; END")
                holder = f"trigger {name} on users"
        refused(url, path, "operation 1 ", repr(name), holder)
        with engine.begin() as connection:  # still there: the next name is tried alone
            if postgres and "_fn_" in name:
                assert "zdm" not in str(connection.exec_driver_sql(
                    f"SELECT prosrc FROM pg_proc WHERE proname = '{name}'").scalar())
                connection.exec_driver_sql(f"DROP FUNCTION {name}()")
            else:
                connection.exec_driver_sql(f"DROP TRIGGER {name}" + (" ON users" if postgres else ""))
                if postgres:
                    connection.exec_driver_sql("DROP FUNCTION mine()")
    engine.dispose()


def test_a_table_named_like_the_copy_a_sqlite_rebuild_sets_aside_is_refused(zdm_sqlite_url: str,
                                                                           tmp_path: Path) -> None:
    """SQLite rebuilds a table by moving it aside under a name of zdm's: a table of the user's so
    named is refused before anything runs, and stays."""
    url = zdm_sqlite_url
    engine = setup(url, users_schema(rows=5))
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE zdm_rebuild_users (kept TEXT)")
        connection.exec_driver_sql("INSERT INTO zdm_rebuild_users VALUES ('mine')")
    path = write_plan(tmp_path, {"id": "chk", "operations": [
        {"op": "add_check", "table": "users", "name": "users_age_ok", "condition": "age >= 0"}]})
    refused(url, path, "zdm_rebuild_users", "table")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT kept FROM zdm_rebuild_users").all() == [("mine",)]
    engine.dispose()


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


def test_status_and_complete_see_an_object_of_zdm_dropped_by_hand(zdm_database_url: str) -> None:
    """On both databases the record is checked against the database: a trigger or index copy of a
    waiting plan dropped by hand shows in status (`disagrees`), complete refuses naming it (exit 2,
    one line), and rollback still restores the table."""
    url = zdm_database_url
    plan = planfile.parse(KILL_PLAN)
    engine, model = fresh(url)
    run(engine, "start", plan)
    (record,) = status.read(engine)
    assert record.activity == "waiting" and record.disagrees == [], record.disagrees
    objects = zdm_objects(engine)
    trigger = next(name for name in objects if name.startswith("zdm_tg_") and "name_nn" in name)
    index = re.findall(r"\bzdm_ix_\w+", " ".join(str(a) for step in record.plan.steps for a in step.forward))[0]
    engine.dispose()
    for kind, name in (("trigger", trigger), ("index", index)):
        engine, model = fresh(url)
        run(engine, "start", plan)
        with engine.begin() as connection:
            on = " ON users" if kind == "trigger" and engine.dialect.name == "postgresql" else ""
            connection.exec_driver_sql(f"DROP {kind.upper()} {name}{on}")
        (record,) = status.read(engine)
        assert record.disagrees == [f"{kind} {name} on users is missing"], record.disagrees
        code, _, err = zdm("complete", plan.id, "--db", url)
        assert code == 2 and err.count("\n") == 1 and f"{kind} {name} on users is missing" in err, err
        run(engine, "rollback", plan)
        assert_agrees(engine, model)
        assert zdm_objects(engine) == []
        engine.dispose()


def test_the_sqlite_record_is_read_against_sqlite_master_and_the_columns(tmp_path: Path) -> None:
    """What SQLite statements and rebuilds leave is followed through renames and drops; a string a
    trigger writes is not mistaken for a statement; what is gone since is named, nothing else."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'track.db'}")
    actions: list[Any] = [Statement(sql) for sql in (
        "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT)",
        'ALTER TABLE t ADD COLUMN "b" TEXT', "ALTER TABLE t ADD COLUMN c TEXT", "ALTER TABLE t RENAME COLUMN c TO d",
        "CREATE INDEX zdm_ix_one ON t (b)", "CREATE INDEX zdm_ix_gone ON t (a)", "DROP INDEX IF EXISTS zdm_ix_gone",
        "CREATE TRIGGER zdm_tg_one AFTER INSERT ON t BEGIN UPDATE t SET a = 'CREATE INDEX fake ON t (a)' "
        "WHERE id = NEW.id; END",
        "CREATE VIEW v AS SELECT * FROM t", "ALTER TABLE t RENAME TO u")]
    with engine.begin() as connection:
        for action in actions:
            connection.exec_driver_sql(action.sql)
        dialect = for_connection(connection)
        assert dialect.missing_objects(connection, actions) == []
        connection.exec_driver_sql("DROP TRIGGER zdm_tg_one")
        connection.exec_driver_sql("DROP VIEW v")
        connection.exec_driver_sql("ALTER TABLE u DROP COLUMN d")
        assert sorted(dialect.missing_objects(connection, actions)) == [
            "column u.d is missing", "trigger zdm_tg_one on u is missing", "view v is missing"]
        rebuilt = Rebuild("u", create_checks=[{"name": "u_ok", "condition": "id > 0"}], create_indexes=[
            {"name": "zdm_ix_two", "columns": ["a"], "unique": False}])
        assert dialect.missing_objects(connection, [rebuilt]) == [
            "index zdm_ix_two on u is missing", "constraint u_ok on u is missing"]
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


# -- kind 3: values that change silently or fail late -----------------------------------------------
BOOL = {"table": "users", "column": "flag", "type": "BOOLEAN"}
VALUES = [  # (operation, words of the one-line refusal)
    ({"op": "add_column", **BOOL, "default": "false"}, "not str 'false'"),
    ({"op": "add_column", **BOOL, "default": "no"}, "not str 'no'"),
    ({"op": "add_column", **BOOL, "default": 0}, "not int 0"),
    ({"op": "set_not_null", "table": "users", "column": "legacy_flag", "fill": "false"}, "not str 'false'"),
    ({"op": "add_column", "table": "users", "column": "n", "type": "INTEGER", "default": 2147483648},
     "out of the range of INTEGER"),
    ({"op": "add_column", "table": "users", "column": "n", "type": "BIGINT", "default": 2**63},
     "out of the range of BIGINT"),
    ({"op": "add_column", "table": "users", "column": "n", "type": "INTEGER", "default": 3.9}, "not float 3.9"),
    ({"op": "add_column", "table": "users", "column": "n", "type": "INTEGER", "default": "7"}, "not str '7'"),
    ({"op": "set_not_null", "table": "users", "column": "age", "fill": 2147483648}, "out of the range of INTEGER"),
    ({"op": "set_not_null", "table": "users", "column": "name", "fill": {"a": 1}}, "not dict"),
    ({"op": "set_default", "table": "users", "column": "name", "default": 5}, "not int 5"),
    ({"op": "set_default", "table": "users", "column": "name", "default": "a\x00b"}, "NUL"),
    ({"op": "set_default", "table": "users", "column": "profile", "default": {"x": float("nan")}},
     "not JSON compliant"),
    ({"op": "create_table", "table": "t2", "columns": [{"name": "b", "type": "BOOLEAN", "default": "true"}]},
     "not str 'true'"),
]
SETTINGS = [  # settings that became 1 ms, failed after expand ran, or slept for days
    ({"lock_timeout_ms": True}, "lock_timeout_ms"), ({"lock_timeout_ms": 10**12}, "lock_timeout_ms"),
    ({"batch_size": 10**30}, "batch_size"), ({"batch_pause_ms": 10**30}, "batch_pause_ms"),
    ({"lock_retries": -1}, "lock_retries"), ({"batch_target_ms": "100"}, "batch_target_ms"),
]


def test_plan_values_are_converted_by_strict_rules_before_anything_runs(zdm_database_url: str, tmp_path: Path) -> None:
    url = zdm_database_url
    setup(url, users_schema(rows=5)).dispose()
    for number, (operation, words) in enumerate(VALUES):
        path = write_plan(tmp_path, {"id": f"value{number}", "operations": [operation]})
        refused(url, path, words)
    add = {"op": "add_column", "table": "users", "column": "nick", "type": "TEXT"}
    for number, (given_settings, words) in enumerate(SETTINGS):
        path = write_plan(tmp_path, {"id": f"setting{number}", "settings": given_settings, "operations": [add]})
        refused(url, path, words)
    for flag in ("--lock-timeout", "--batch-size", "--batch-pause-ms"):
        path = write_plan(tmp_path, {"id": "flags", "operations": [add]})
        code, _, err = zdm("start", path, "--db", url, flag, str(10**30))
        assert code == 2 and err.startswith("zdm: error: ") and err.count("\n") == 1, err


def test_a_fill_that_holds_the_dollar_quote_tag_is_stored_as_written(zdm_database_url: str, tmp_path: Path) -> None:
    """A fill of ``$zdm$`` ended the trigger function's dollar-quoted body early on PostgreSQL."""
    url = zdm_database_url
    engine = setup(url, users_schema(rows=10))
    fill = "$zdm$'; DROP TABLE users; --$zdm_$"
    path = write_plan(tmp_path, {"id": "dollar", "operations": [
        {"op": "set_not_null", "table": "users", "column": "name", "fill": fill}]})
    code, _, err = zdm("start", path, "--db", url)
    assert code == 0, err
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO users (id, email, name) VALUES (1000, 'x', NULL)")
        stored = connection.exec_driver_sql("SELECT name FROM users WHERE id IN (7, 1000)").scalars().all()
    assert stored == [fill, fill]
    assert zdm("complete", "dollar", "--db", url)[0] == 0
    engine.dispose()


# -- kind 4: tracebacks and hangs ------------------------------------------------------------------
def alias_bomb() -> str:
    """About 600 bytes that expand to 9^9 strings when built."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(8):
        prev, name = chr(97 + level), chr(98 + level)
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + "\n"


ADD = "  - {op: add_column, table: users, column: nick, type: TEXT}\n"
FILES = [  # (file name, content, words of the one-line refusal)
    ("bomb.yaml", alias_bomb(), "anchors and aliases"),
    ("deep.yaml", "id: x\noperations: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested more than"),
    ("deep.json", '{"id": "x", "operations": ' + "[" * 50_000 + "]" * 50_000 + "}", "nested more than"),
    ("dup.yaml", f"id: x\noperations:\n  - {{op: drop_table, table: users}}\noperations:\n{ADD}",
     "key 'operations' given twice"),
    ("dup.json", '{"id": "x", "operations": [{"op": "drop_table", "table": "users"}], "operations": []}',
     "key 'operations' given twice"),
    ("inf.yaml", "id: x\noperations:\n  - {op: add_column, table: users, column: n, type: INTEGER, default: .inf}\n",
     "default inf is not a valid INTEGER"),
    ("sql.yaml", 'id: x\noperations:\n  - {op: sql, up: "", down: "SELECT 1"}\n', "`up` needs a statement"),
    ("title.yaml", f'id: x\ntitle: "ok\\nusers: MIGRATING forged \\u001b[31mred"\noperations:\n{ADD}', "title"),
    ("big.yaml", "id: x\noperations:\n" + ADD * 20_000, "larger than 1,000,000 bytes"),
    ("many.yaml", "id: x\noperations:\n" + ADD * 201, "operations"),
    ("bytes.yaml", "id: x\x00\xff", "not UTF-8"),
]


def test_hostile_plan_files_are_refused_in_one_line_quickly(zdm_database_url: str, tmp_path: Path) -> None:
    url = zdm_database_url
    setup(url, users_schema(rows=5)).dispose()
    for name, content, words in FILES:
        path = tmp_path / name
        path.write_bytes(content.encode("utf-8", "surrogateescape") if name != "bytes.yaml"
                         else b"id: x\x00\xff\xfe")
        started = time.monotonic()
        err = refused(url, str(path), words)
        assert time.monotonic() - started < 10, (name, err)
        assert "\x1b" not in err and "Traceback" not in err


def test_a_malformed_port_is_one_line() -> None:
    code, _, err = zdm("status", "--db", "postgresql://u:p@127.0.0.1:abc/db")
    assert code == 2 and err.startswith("zdm: error: not a database URL") and err.count("\n") == 1, err


def test_status_escapes_what_it_prints(zdm_database_url: str, tmp_path: Path) -> None:
    """A title stored before titles were checked (or written by hand) cannot forge a line or an escape code."""
    url = zdm_database_url
    engine = setup(url, users_schema(rows=5))
    path = write_plan(tmp_path, {"id": "forged", "operations": [
        {"op": "add_column", "table": "users", "column": "nick", "type": "TEXT"}]})
    assert zdm("start", path, "--db", url)[0] == 0
    with engine.begin() as connection:
        plan, _ = state.load(connection, "forged")
        plan.title = "ok\nother: COMPLETE, all done \x1b[2J\x1b[31mred\r"
        state.save(connection, plan)
    engine.dispose()
    for command in (("status",), ("status", "forged"), ("history", "forged")):
        code, out, err = zdm(*command, "--db", url)
        assert code == 0 and "\x1b" not in out + err and "\r" not in out, out
        assert not any(line.startswith("other:") for line in out.splitlines()), out


# -- kind 4: the fuzz test -------------------------------------------------------------------------
NAMES = st.sampled_from(["users", "email", "name", "age", "legacy_flag", "profile", "created_at", "id", "nick",
                         "accounts_email_uq", "zdm_migrations", "Users", "1bad", "a b", "", "x" * 70]
                        ) | st.text(max_size=6)
FUZZ_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8),
    st.sampled_from(["false", "no", "$zdm$", "now()", "'", "2026-01-01T00:00:00", "2026-01-01T00:00:00+02:00",
                     '{"a": 1}', "\x1b[31m", "a\nb"]),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.lists(st.integers(), max_size=2))
OPERATION = st.fixed_dictionaries(
    {"op": st.sampled_from([*sorted(op.model_fields["op"].default for op in CATALOGUE), "nope"]),
     "table": NAMES},
    optional={"column": NAMES, "new_name": NAMES, "name": NAMES, "from_column": NAMES, "ref_table": NAMES,
              "type": st.sampled_from(["TEXT", "INTEGER", "BIGINT", "BOOLEAN", "TIMESTAMP", "JSON", "OTHER", "DATE"]),
              "default": FUZZ_VALUES, "fill": FUZZ_VALUES, "unique": FUZZ_VALUES, "nullable": FUZZ_VALUES,
              "transform": FUZZ_VALUES,
              "columns": st.lists(NAMES, max_size=3), "ref_columns": st.lists(NAMES, max_size=2),
              "condition": st.sampled_from(["age >= 0", "age > 1000", "1/0 = 1", "x;", "nope(", "name IS NOT NULL"]),
              "up": st.sampled_from(["SELECT 1", "", "SELEC", "CREATE INDEX fz_ix ON users (age)", ["SELECT 1"]]),
              "down": st.sampled_from(["SELECT 1", "DROP INDEX IF EXISTS fz_ix", "", []]),
              "phase": st.sampled_from(["expand", "migrate", "contract", "later"]), "extra": FUZZ_VALUES})
SETTING = st.sampled_from(["lock_timeout_ms", "lock_retries", "batch_size", "batch_target_ms", "batch_pause_ms", "x"])
PLANS = st.fixed_dictionaries(
    {"id": st.sampled_from(["fz", "fz-2"]) | st.text(max_size=5), "operations": st.lists(OPERATION, max_size=3)},
    optional={"title": st.text(max_size=12), "settings": st.dictionaries(SETTING, FUZZ_VALUES, max_size=2)})
#: A plan (as JSON or YAML) or raw bytes, as a plan file's name and content.
PLAN_FILES = st.one_of(
    PLANS.map(lambda plan: ("plan.json", json.dumps(plan).encode())),
    PLANS.map(lambda plan: ("plan.yaml", yaml.safe_dump(plan, allow_unicode=True).encode())),
    st.tuples(st.sampled_from(["raw.yaml", "raw.json"]), st.binary(max_size=200)))
DOCUMENTED = {0, 1, 2}
#: 1,000 per database in the suite (about 20 ms each: the state before and after is one digest);
#: ZDM_FUZZ_EXAMPLES sets another number.
FUZZ_EXAMPLES = int(os.environ.get("ZDM_FUZZ_EXAMPLES", "1000"))


def test_the_postgres_state_digest_sees_every_change(zdm_postgres_url: str) -> None:
    """What the fuzz test's one-query digest must see: each change below alters it, an untouched
    database does not."""
    url = zdm_postgres_url
    setup(url, users_schema(rows=5)).dispose()
    changes = [
        "UPDATE users SET name = name WHERE id = 2",  # same values, a new row version
        "COMMENT ON COLUMN users.age IS 'years'", "ALTER TABLE users ALTER COLUMN name SET DEFAULT 'x'",
        "ALTER TABLE users ADD CONSTRAINT users_age_ok CHECK (age >= 0) NOT VALID",
        "ALTER TABLE users VALIDATE CONSTRAINT users_age_ok",
        "CREATE FUNCTION zdm_fn_x() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
        "CREATE TRIGGER zdm_tg_x BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION zdm_fn_x()",
        "ALTER TABLE users DISABLE TRIGGER zdm_tg_x", "CREATE INDEX users_age_ix ON users (age)",
        "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'users_age_ix'::regclass",
        "ALTER TABLE users ADD COLUMN nick TEXT", "ALTER TABLE users ALTER COLUMN nick TYPE VARCHAR(5)",
        "CREATE TYPE mood AS ENUM ('ok')", "ALTER TYPE mood ADD VALUE 'sad'", "CREATE SEQUENCE s",
        "SELECT nextval('s')", "VACUUM FULL users", "CREATE VIEW v AS SELECT id FROM users"]
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        before = postgres_state(connection)
        assert postgres_state(connection) == before
        for change in changes:
            connection.exec_driver_sql(change)
            after = postgres_state(connection)
            assert after != before, change
            before = after
    engine.dispose()


def test_fuzzed_plans_give_one_line_a_documented_code_and_an_unchanged_database(
        zdm_database_url: str, tmp_path: Path) -> None:
    """Hypothesis over the plan schema (ops, names, values, settings) plus raw bytes, at least 1,000
    plans per database: `zdm start` never shows a traceback; a refusal (exit 2) is one `zdm: error:`
    line and leaves the database byte-identical; a failure (exit 1) is one line and compensates;
    a plan that starts (exit 0) rolls back with exit 0."""
    url = zdm_database_url
    setup(url, users_schema(rows=5)).dispose()
    sqlite_file = None if url.startswith("postgresql") else Path(sa.make_url(url).database or "")
    reader = sa.create_engine(url)  # one pooled connection reads the state before and after each plan

    def state_of_database() -> Any:
        """SQLite: the file's bytes (byte-identical, literally); PostgreSQL: one digest of the schema,
        every object and every row with its version (``POSTGRES_STATE``), in one query."""
        if sqlite_file:
            return hashlib.sha256(sqlite_file.read_bytes()).hexdigest()
        with reader.connect() as connection:
            return postgres_state(connection)

    base = state_of_database()
    seen = {"refused": 0, "failed": 0, "started": 0}

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(PLAN_FILES)
    def one(plan_file: tuple[str, bytes]) -> None:
        name, content = plan_file
        path = tmp_path / name
        path.write_bytes(content)
        code, out, err = zdm("start", str(path), "--db", url)
        assert code in DOCUMENTED and "Traceback" not in out + err, (content, code, out, err)
        if code == 0:
            seen["started"] += 1
            plan_id = json.loads(content)["id"] if name.endswith(".json") else yaml.safe_load(content)["id"]
            rolled = zdm("rollback", plan_id, "--db", url)
            assert rolled[0] == 0, (content, rolled)
            reset(url)
            return
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("zdm: error: "), (content, err)
        assert "\x1b" not in err
        if code == 2:
            seen["refused"] += 1
            assert state_of_database() == base, content
        else:
            seen["failed"] += 1
            reset(url)

    def reset(url: str) -> None:
        engine = db.create_engine(url)
        with engine.begin() as connection:
            for table in ("zdm_migrations", "users", "fz_table"):
                connection.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
            for name in for_connection(connection).object_names(connection):
                if name.startswith("zdm_fn") and engine.dialect.name == "postgresql":
                    connection.exec_driver_sql(f"DROP FUNCTION IF EXISTS {name} CASCADE")
        engine.dispose()
        setup(url, users_schema(rows=5)).dispose()
        nonlocal base
        base = state_of_database()

    one()
    reader.dispose()
    assert seen["refused"] >= FUZZ_EXAMPLES // 2, seen


# -- kind 7: SQLite specifics ------------------------------------------------------------------------
def test_renaming_a_column_another_tables_foreign_key_references(zdm_database_url: str, tmp_path: Path) -> None:
    """The issue's case: `parent.code` renamed while `child.parent_code REFERENCES parent(code)`; on
    SQLite start and complete passed, then every insert into child failed "foreign key mismatch"."""
    url = zdm_database_url
    engine = db.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE parent (id INTEGER PRIMARY KEY, code TEXT UNIQUE)")
        connection.exec_driver_sql("CREATE TABLE child (id INTEGER PRIMARY KEY, "
                                   "parent_code TEXT REFERENCES parent(code))")
        connection.exec_driver_sql("INSERT INTO parent VALUES (1, 'a'), (2, 'b')")
        connection.exec_driver_sql("INSERT INTO child VALUES (1, 'a')")
    path = write_plan(tmp_path, {"id": "fk", "operations": [
        {"op": "rename_column", "table": "parent", "column": "code", "new_name": "ref"}]})
    for command in (("start", path), ("complete", "fk")):
        code, _, err = zdm(*command, "--db", url)
        assert code == 0, err
    app = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with app.begin() as connection:
        if app.dialect.name == "sqlite":
            connection.exec_driver_sql("PRAGMA foreign_keys = ON")
            assert connection.exec_driver_sql("PRAGMA foreign_key_check").all() == []
        connection.exec_driver_sql("INSERT INTO child VALUES (2, 'b')")
    with pytest.raises(sa.exc.IntegrityError), app.begin() as connection:
        if app.dialect.name == "sqlite":
            connection.exec_driver_sql("PRAGMA foreign_keys = ON")
        connection.exec_driver_sql("INSERT INTO child VALUES (3, 'zz')")
    app.dispose()
    engine.dispose()


def test_the_sqlite_runner_lock_is_the_database_files_not_its_paths(tmp_path: Path) -> None:
    """A hard link in another directory (or a relative path) reaches the same database: one runner."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = setup(url, users_schema(rows=5))
    (tmp_path / "elsewhere").mkdir()
    os.link(tmp_path / "app.db", tmp_path / "elsewhere" / "same.db")
    other = db.create_engine(f"sqlite:///{tmp_path / 'elsewhere' / 'same.db'}")
    with state.runner_lock(engine):
        with pytest.raises(RunnerBusy), state.runner_lock(other):
            pass
        assert state.runner_at_work(other) is not None
    with state.runner_lock(other):
        pass
    other.dispose()
    engine.dispose()


# -- kind 6: the blocker named rightly -------------------------------------------------------------
def test_the_blocker_of_an_index_build_is_the_old_snapshot_on_another_table(zdm_postgres_url: str,
                                                                              tmp_path: Path) -> None:
    """The issue's case: CREATE INDEX CONCURRENTLY waits for an idle REPEATABLE READ transaction
    that only read another table; zdm said "the blocking session had finished" while it was open."""
    url = zdm_postgres_url
    engine = setup(url, users_schema(rows=20))
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE teams (id integer PRIMARY KEY)")
    reporter = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"application_name": "slow-report"})
    path = write_plan(tmp_path, {"id": "ix", "settings": {"lock_timeout_ms": 400, "lock_retries": 0}, "operations": [
        {"op": "create_index", "table": "users", "name": "users_age_ix", "columns": ["age"]}]})
    with reporter.connect() as session:
        session.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        session.exec_driver_sql("SELECT count(*) FROM teams").scalar()
        pid = session.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        code, _, err = zdm("start", path, "--db", url)
    last = err.splitlines()[-1]  # progress before it, on stderr too
    assert code == 1 and last.startswith("zdm: error: "), err
    assert f"blocked by pid {pid} (application_name 'slow-report'" in last and "had finished" not in err, err
    reporter.dispose()
    engine.dispose()


def test_a_session_queued_behind_zdm_is_not_named(zdm_postgres_url: str, tmp_path: Path) -> None:
    """zdm waits for ACCESS EXCLUSIVE behind a reader; a second reader queues behind zdm. Only the
    first is named: the second blocks nobody (it got its lock only once zdm gave up)."""
    url = zdm_postgres_url
    engine = setup(url, users_schema(rows=20))
    blocker = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"application_name": "blocker"})
    queued = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"application_name": "queued"})
    path = write_plan(tmp_path, {"id": "col", "settings": {"lock_timeout_ms": 1500, "lock_retries": 0},
                                 "operations": [{"op": "set_default", "table": "users", "column": "age",
                                                 "default": 3}]})
    with blocker.connect() as first, queued.connect() as second:
        first.exec_driver_sql("SELECT count(*) FROM users").scalar()
        pid = first.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        second.exec_driver_sql("SET lock_timeout = '5s'")

        def queue_behind_zdm() -> None:
            with engine.connect() as look:
                while not look.exec_driver_sql("SELECT count(*) FROM pg_locks WHERE NOT granted "
                                               "AND mode = 'AccessExclusiveLock'").scalar():
                    time.sleep(0.02)
                    look.rollback()
            second.exec_driver_sql("SELECT count(*) FROM users").scalar()  # waits for zdm, then gets it

        late = threading.Thread(target=queue_behind_zdm)
        late.start()
        code, _, err = zdm("start", path, "--db", url)
        late.join()
    assert code == 1, err
    assert f"blocked by pid {pid} (application_name 'blocker'" in err and "'queued'" not in err, err
    blocker.dispose()
    queued.dispose()
    engine.dispose()
