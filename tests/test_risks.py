"""Raw SQL that would stall or break a busy PostgreSQL app is refused before anything runs.

The catalogue's operations take their locks briefly by construction; a `sql` step could take any.
zdm reads each statement with PostgreSQL's parser: a long lock, a rewrite, or (before contract)
a rename or drop the old app still needs stops the run with one line naming the statement's risk
and the operation that does it safely, unless the author vouches with `assume_safe: true`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from support import assert_agrees, setup, users_schema
from test_cli import snapshot, zdm

from zdm.risks import lock_risks

RISKY = [
    ("ALTER TABLE users ALTER COLUMN score TYPE text", "op alter_column"),
    ("ALTER TABLE users ALTER COLUMN name SET NOT NULL", "op set_not_null"),
    ("ALTER TABLE users ADD CONSTRAINT c CHECK (score > 0)", "op add_check"),
    ("ALTER TABLE users ADD CONSTRAINT f FOREIGN KEY (age) REFERENCES ages (id)", "op add_foreign_key"),
    ("ALTER TABLE users ADD CONSTRAINT u UNIQUE (email)", "op add_unique"),
    ("ALTER TABLE users ADD COLUMN token uuid DEFAULT gen_random_uuid()", "volatile default rewrites users"),
    ("ALTER TABLE users ADD COLUMN n bigserial", "rewrites users"),
    ("ALTER TABLE users ADD COLUMN d int GENERATED ALWAYS AS (age * 2) STORED", "rewrites users"),
    ("ALTER TABLE users SET UNLOGGED", "rewrites users"),
    ("CREATE INDEX users_age_ix ON users (age) WHERE age >= 18", "op create_index"),
    ("CREATE UNIQUE INDEX users_email_ix ON users (email)", "op create_index"),
    ("VACUUM FULL users", "VACUUM FULL rewrites"),
    ("CLUSTER users USING users_pkey", "CLUSTER rewrites users"),
    ("REINDEX TABLE users", "REINDEX ... CONCURRENTLY"),
    ("LOCK TABLE users IN SHARE MODE", "blocks writes"),
    ("ALTER TABLE users RENAME COLUMN email TO mail", "op rename_column"),
    ("ALTER TABLE users RENAME TO people", "op rename_table"),
    ("ALTER TABLE users DROP COLUMN legacy_flag", "op drop_column"),
    ("DROP TABLE users", "op drop_table"),
    ("SELECT 1; ALTER TABLE users ALTER COLUMN age TYPE bigint", "op alter_column"),  # not only the first
]
HARMLESS = [
    "ALTER TABLE users ADD COLUMN note text",
    "ALTER TABLE users ADD COLUMN seen timestamptz NOT NULL DEFAULT now()",  # constant per statement: no rewrite
    "ALTER TABLE users ADD CONSTRAINT c CHECK (score > 0) NOT VALID",
    "ALTER TABLE users VALIDATE CONSTRAINT c",
    "ALTER TABLE users ADD CONSTRAINT u UNIQUE USING INDEX users_email_ix",
    "CREATE INDEX CONCURRENTLY users_age_ix ON users (age)",
    "REINDEX TABLE CONCURRENTLY users",
    "LOCK TABLE users IN SHARE UPDATE EXCLUSIVE MODE",
    "UPDATE users SET name = 'x' WHERE id = 1",
    "CREATE TABLE audit (id int PRIMARY KEY, at int); CREATE INDEX audit_at_ix ON audit (at)",  # nobody uses it yet
    "CREATE VIEW adults AS SELECT id FROM users WHERE age >= 18",
    "this is not SQL at all",  # left to the server, which names the syntax error
]


@pytest.mark.parametrize(("statement", "hint"), RISKY)
def test_risky_statements_are_named_with_the_safe_form(statement: str, hint: str) -> None:
    risks = lock_risks([statement], old_app_running=True)
    assert len(risks) == 1 and hint in risks[0], risks


@pytest.mark.parametrize("statement", HARMLESS)
def test_harmless_statements_pass(statement: str) -> None:
    assert lock_risks([statement], old_app_running=True) == []


def test_renames_and_drops_are_the_contract_phase_s_business() -> None:
    assert lock_risks(["ALTER TABLE users DROP COLUMN legacy_flag", "DROP TABLE users"], old_app_running=False) == []


def plan(tmp_path: Path, up: str, down: str, *, assume_safe: bool = False) -> str:
    path = tmp_path / "raw.yaml"
    path.write_text(f"id: raw\noperations:\n  - op: sql\n    table: users\n    up: {up}\n    down: {down}\n"
                    + ("    assume_safe: true\n" if assume_safe else ""))
    return str(path)


def _indexes(url: str) -> set[str]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        names = {ix["name"] for ix in sa.inspect(connection).get_indexes("users")}
    engine.dispose()
    return names


def test_a_blocking_index_build_is_refused_on_postgresql_and_native_on_sqlite(
        zdm_database_url: str, tmp_path: Path) -> None:
    """SQLite has no concurrent build and no lock queue: a plain CREATE INDEX is its native form."""
    model = users_schema(20)
    engine = setup(zdm_database_url, model)
    path = plan(tmp_path, "CREATE INDEX users_age_ix ON users (age)", "DROP INDEX users_age_ix")
    if engine.dialect.name == "postgresql":
        before = snapshot(zdm_database_url)
        for command in ("plan", "start", "apply"):
            code, out, err = zdm(command, path, "--db", zdm_database_url)
            assert (code, out) == (2, ""), (command, err)
            assert err.startswith("zdm: error: ") and err.count("\n") == 1, err
            assert "CREATE INDEX on users without CONCURRENTLY blocks writes" in err and "op create_index" in err
            assert "assume_safe: true" in err
            assert snapshot(zdm_database_url) == before
        # The author vouches: it runs, and rolls back like any step.
        path = plan(tmp_path, "CREATE INDEX users_age_ix ON users (age)", "DROP INDEX users_age_ix", assume_safe=True)
    code, _, err = zdm("start", path, "--db", zdm_database_url, "--quiet")
    assert code == 0, err
    assert "users_age_ix" in _indexes(zdm_database_url)
    assert zdm("rollback", "raw", "--db", zdm_database_url, "--quiet")[0] == 0
    assert "users_age_ix" not in _indexes(zdm_database_url)
    assert_agrees(engine, model)
    engine.dispose()


def test_a_blocking_down_is_refused_too(zdm_postgres_url: str, tmp_path: Path) -> None:
    """A rollback runs while the app is live: its statements keep the same promise."""
    setup(zdm_postgres_url, users_schema(5)).dispose()
    path = plan(tmp_path, "ALTER TABLE users ADD COLUMN note text",
                "ALTER TABLE users ALTER COLUMN score TYPE text")
    before = snapshot(zdm_postgres_url)
    code, _, err = zdm("start", path, "--db", zdm_postgres_url)
    assert code == 2 and "ALTER COLUMN score TYPE can rewrite users" in err, err
    assert snapshot(zdm_postgres_url) == before
