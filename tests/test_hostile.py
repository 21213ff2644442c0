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
from support import setup, users_schema

from zdm import db, oracle, state
from zdm.cli import main
from zdm.dialects import for_connection


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
