"""What hangs on a column reaches the column that replaces it, and an app write never fails meanwhile.

Each test here is one of the small inputs of issue 9, on both databases where the feature exists:
an update of an unrelated column on a row the backfill has not reached (also after a runner was
killed mid-backfill), a type change of a NOT NULL column with a default and a comment, each item a
type change must carry on PostgreSQL (collation, statistics target, storage, grants, sequence,
identity, constraints, foreign keys both ways, indexes of every kind), and user objects that use
the column: carried where the database can (a rename in place), refused before anything runs,
with one line naming them, where it cannot.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from support import runner, zdm_objects

from zdm import db, planfile
from zdm.backfill import BackfillProgress
from zdm.runner import PlanInvalid, Reporter, Runner


def engine_with(url: str, *statements: str) -> sa.Engine:
    engine = db.create_engine(url)
    with engine.begin() as connection:
        for statement in statements:
            connection.exec_driver_sql(statement)
    return engine


def plan(*operations: dict[str, Any], plan_id: str = "p") -> planfile.PlanFile:
    return planfile.parse({"id": plan_id, "operations": list(operations)})


def rows(engine: sa.Engine, sql: str) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.exec_driver_sql(sql)]


# -- fault 1: an app write that does not touch the changed column ----------------------------------------
USERS = ["CREATE TABLE users (id integer PRIMARY KEY, email text NOT NULL, last_seen text, score integer)",
         "INSERT INTO users (id, email, last_seen) WITH RECURSIVE n(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM n "
         "WHERE g < {}) SELECT g, 'u' || g || '@example.com', 'never' FROM n"]
RENAME_EMAIL = {"op": "rename_column", "table": "users", "column": "email", "new_name": "email_address"}


def _users(url: str, count: int) -> sa.Engine:
    return engine_with(url, USERS[0], USERS[1].format(count))


class AfterBatches(Reporter):
    """Calls ``then`` once, after the backfill's ``count``-th batch committed."""

    def __init__(self, count: int, then: Any) -> None:
        self.count, self.then, self.seen = count, then, 0

    def backfill(self, progress: BackfillProgress) -> None:
        self.seen += 1
        if self.seen == self.count:
            self.then()


def test_an_update_of_another_column_on_a_row_the_backfill_has_not_reached(zdm_database_url: str) -> None:
    """The issue's input: while `zdm start` backfills a rename of a NOT NULL column, an update of
    last_seen on a row near the end failed on zdm's check (PostgreSQL)."""
    engine = _users(zdm_database_url, 2000)
    app = sa.create_engine(zdm_database_url)
    failures: list[str] = []

    def update_unreached() -> None:
        try:
            with app.begin() as connection:
                connection.exec_driver_sql("UPDATE users SET last_seen = 'now' WHERE id = 1990")
                connection.exec_driver_sql("INSERT INTO users (id, email) VALUES (5001, 'old@app')")
        except sa.exc.DBAPIError as exc:
            failures.append(str(exc.orig))

    run = Runner(engine, AfterBatches(2, update_unreached), {"batch_size": 200, "batch_target_ms": 5})
    run.start(plan(RENAME_EMAIL))
    assert failures == []
    assert rows(engine, "SELECT email, email_address, last_seen FROM users WHERE id IN (1990, 5001) ORDER BY id") == [
        ("u1990@example.com", "u1990@example.com", "now"), ("old@app", "old@app", None)]
    run.complete("p")
    assert rows(engine, "SELECT count(*) FROM users WHERE email_address IS NULL") == [(0,)]
    app.dispose()


class Killed(BaseException):
    """A runner stopped as kill -9 would stop it: no compensation, state and checkpoint saved."""


def test_app_writes_keep_working_after_a_runner_is_killed_mid_backfill(zdm_database_url: str) -> None:
    """After the kill, updates of other columns on rows the backfill never reached must work (they failed
    until someone resumed the runner), and bring those rows up to date."""
    engine = _users(zdm_database_url, 600)

    def kill() -> None:
        raise Killed

    with pytest.raises(Killed):
        Runner(engine, AfterBatches(1, kill), {"batch_size": 100}).start(plan(RENAME_EMAIL))
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE users SET last_seen = 'seen' WHERE id >= 590")
    assert rows(engine, "SELECT count(*) FROM users WHERE id >= 590 AND email_address = email") == [(11,)]
    runner(engine).start(plan(RENAME_EMAIL))  # resumed
    runner(engine).complete("p")
    assert rows(engine, "SELECT count(*) FROM users WHERE email_address IS NULL OR last_seen IS NULL") == [(0,)]
    assert zdm_objects(engine) == []


# -- fault 2: complete drops what the column had --------------------------------------------------------
def test_a_type_change_keeps_default_not_null_and_comment(zdm_database_url: str) -> None:
    """qty integer NOT NULL DEFAULT 1 with a comment, to BIGINT: after complete the default and the comment
    were gone, and `INSERT INTO items(id) VALUES (3)` failed on NOT NULL."""
    postgres = zdm_database_url.startswith("postgresql")
    engine = engine_with(zdm_database_url,
                         "CREATE TABLE items (id integer PRIMARY KEY, qty integer NOT NULL DEFAULT 1)",
                         "INSERT INTO items (id, qty) VALUES (1, 5), (2, 7)",
                         *(["COMMENT ON COLUMN items.qty IS 'units ordered'"] if postgres else []))
    runner(engine).start(plan({"op": "alter_column", "table": "items", "column": "qty", "type": "BIGINT"}))
    runner(engine).complete("p")
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO items (id) VALUES (3)")
        column = next(c for c in sa.inspect(connection).get_columns("items") if c["name"] == "qty")
    assert rows(engine, "SELECT id, qty FROM items ORDER BY id") == [(1, 5), (2, 7), (3, 1)]
    assert isinstance(column["type"], sa.BigInteger) and not column["nullable"]
    if postgres:
        assert column["comment"] == "units ordered"
    assert zdm_objects(engine) == []


@pytest.fixture
def role(zdm_postgres_url: str) -> Iterator[str]:
    """A throwaway role to hold column grants (roles belong to the whole server)."""
    name = f"zdm_reader_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(zdm_postgres_url)
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE ROLE {name}")
    yield name
    with admin.begin() as connection:
        connection.exec_driver_sql(f"DROP OWNED BY {name}")
        connection.exec_driver_sql(f"DROP ROLE {name}")
    admin.dispose()


CATALOG = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid),
       col_description(a.attrelid, a.attnum), co.collname, NULLIF(a.attstattarget, -1), a.attstorage,
       a.attidentity, a.attacl::text, pg_get_serial_sequence('accounts', a.attname)
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 100
WHERE a.attrelid = 'accounts'::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attname
"""
CONSTRAINTS = """
SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
WHERE conrelid IN ('accounts'::regclass, 'orders'::regclass) ORDER BY 1, 2
"""
INDEXES = "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index " \
          "WHERE indrelid = 'accounts'::regclass ORDER BY 1"


def _postgres_catalog(engine: sa.Engine) -> tuple[list[Any], ...]:
    return rows(engine, CATALOG), rows(engine, CONSTRAINTS), rows(engine, INDEXES)


def _accounts(url: str, role: str) -> sa.Engine:
    return engine_with(
        url,
        "CREATE TABLE teams (id bigint PRIMARY KEY)",
        "INSERT INTO teams VALUES (1), (2)",
        "CREATE TABLE accounts (id integer PRIMARY KEY, code integer NOT NULL DEFAULT 7, "
        "ticket serial, seq integer GENERATED BY DEFAULT AS IDENTITY, team integer REFERENCES teams (id), "
        'name text COLLATE "C", CONSTRAINT accounts_code_key UNIQUE (code), CONSTRAINT accounts_code_check '
        "CHECK (code >= 0))",
        "CREATE TABLE orders (id integer PRIMARY KEY, account_code integer REFERENCES accounts (code) "
        "ON DELETE CASCADE)",
        "CREATE INDEX accounts_code_expr_ix ON accounts ((code * 2)) WHERE code > 0",
        "CREATE INDEX accounts_code_name_ix ON accounts (code DESC, name)",
        "COMMENT ON COLUMN accounts.code IS 'the account code'",
        "ALTER TABLE accounts ALTER COLUMN code SET STATISTICS 500",
        "ALTER TABLE accounts ALTER COLUMN name SET STORAGE MAIN",
        f"GRANT SELECT (code, name, ticket, seq, team) ON accounts TO {role}",
        "INSERT INTO accounts (id, code, team, name) VALUES (1, 10, 1, 'a'), (2, 20, 2, 'b')",
        "INSERT INTO orders VALUES (1, 10), (2, 20)",
    )


@pytest.mark.parametrize("column,new_type", [("code", "BIGINT"), ("ticket", "BIGINT"), ("seq", "BIGINT"),
                                             ("team", "BIGINT"), ("name", "TEXT")])
def test_a_type_change_carries_everything_attached_to_the_column(zdm_postgres_url: str, role: str, column: str,
                                                                new_type: str) -> None:
    """The catalog after complete is the one before, but for the column's type (and, for the identity,
    nothing else either): default, NOT NULL, comment, collation, statistics target, storage, grants,
    owned sequence or identity (with its next value), UNIQUE and CHECK constraints under their names,
    foreign keys from it and to it, and every index, expression and partial ones included."""
    engine = _accounts(zdm_postgres_url, role)
    before = _postgres_catalog(engine)
    operation = {"op": "alter_column", "table": "accounts", "column": column, "type": new_type}
    if column == "name":
        operation["new_name"] = "full_name"  # TEXT to TEXT needs a new name: a rename through a new column
    runner(engine).start(plan(operation))
    runner(engine).rollback("p")
    assert _postgres_catalog(engine) == before
    runner(engine).start(plan(operation))
    runner(engine).complete("p")
    after = _postgres_catalog(engine)
    type_name = {"BIGINT": "bigint", "TEXT": "text"}[new_type]
    final_name = operation.get("new_name", column)
    expected = [(final_name, type_name, *row[2:]) if row[0] == column else row for row in before[0]]
    assert after[0] == sorted(expected, key=lambda row: row[0])
    assert after[1] == before[1] and after[2] == [
        (name, re.sub(rf"\b{column}\b", final_name, definition)) for name, definition in before[2]]
    with engine.begin() as connection:  # the sequences go on where they were; the constraints hold
        connection.exec_driver_sql("INSERT INTO accounts (id, code, team) VALUES (3, 30, 1)")
        assert connection.exec_driver_sql("SELECT ticket, seq FROM accounts WHERE id = 3").one() == (3, 3)
    for bad in ("INSERT INTO accounts (id, code) VALUES (4, 10)", "INSERT INTO accounts (id, code) VALUES (4, -1)",
                "INSERT INTO accounts (id, code, team) VALUES (4, 40, 9)", "INSERT INTO orders VALUES (3, 99)"):
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
            connection.exec_driver_sql(bad)
    with engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM accounts WHERE id = 1")  # ON DELETE CASCADE still there
    assert rows(engine, "SELECT id FROM orders") == [(2,)]
    assert zdm_objects(engine) == []


def test_a_rename_keeps_everything_in_place(zdm_postgres_url: str, role: str) -> None:
    """A rename keeps the column itself: the catalog after complete is the one before with the new name."""
    engine = _accounts(zdm_postgres_url, role)
    before = _postgres_catalog(engine)
    runner(engine).start(plan({"op": "rename_column", "table": "accounts", "column": "code", "new_name": "number"}))
    runner(engine).complete("p")
    after = _postgres_catalog(engine)
    assert after[0] == sorted([("number", *row[1:]) if row[0] == "code" else row for row in before[0]],
                              key=lambda row: row[0])
    assert after[1] == [(table, name, re.sub(r"\bcode\b", "number", definition))
                        for table, name, definition in before[1]]
    assert zdm_objects(engine) == []


# -- fault 3: user objects that use the column ------------------------------------------------------------
LOWER = ("CREATE FUNCTION lower_email() RETURNS trigger LANGUAGE plpgsql AS "
         "$$BEGIN NEW.email := lower(NEW.email); RETURN NEW; END$$")


@pytest.mark.parametrize("trigger", ["users_lower_email", "zz_lower_email"])
@pytest.mark.parametrize("operation", [RENAME_EMAIL, {"op": "alter_column", "table": "users", "column": "email",
                                                      "type": "TEXT", "new_name": "login"}],
                         ids=["rename", "type change with a new name"])
def test_a_trigger_whose_code_uses_the_column_is_refused(zdm_postgres_url: str, trigger: str,
                                                        operation: dict[str, Any]) -> None:
    """Its function names NEW.email: after complete every write would fail with 'record "new" has no field';
    during the window the two columns would disagree. Refused before anything runs, naming it."""
    engine = _users(zdm_postgres_url, 10)
    with engine.begin() as connection:
        connection.exec_driver_sql(LOWER)
        connection.exec_driver_sql(f"CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE ON users "
                                   "FOR EACH ROW EXECUTE FUNCTION lower_email()")
    with pytest.raises(PlanInvalid, match=rf"^trigger {trigger} \(function lower_email\(\)\) on users uses email"):
        runner(engine).start(plan(operation))
    columns = rows(engine, "SELECT column_name FROM information_schema.columns WHERE table_name = 'users' "
                           "ORDER BY ordinal_position")
    assert zdm_objects(engine) == [] and columns == [("id",), ("email",), ("last_seen",), ("score",)]


def test_a_trigger_that_runs_before_zdm_s_is_carried_by_a_type_change(zdm_postgres_url: str) -> None:
    """Without a new name the column keeps its name, and a BEFORE trigger that fires before zdm's (triggers
    fire in name order) edits NEW.score before zdm's trigger copies it: both columns agree."""
    engine = _users(zdm_postgres_url, 10)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE FUNCTION positive() RETURNS trigger LANGUAGE plpgsql AS "
                                   "$$BEGIN NEW.score := abs(NEW.score); RETURN NEW; END$$")
        connection.exec_driver_sql("CREATE TRIGGER users_positive BEFORE INSERT OR UPDATE ON users "
                                   "FOR EACH ROW EXECUTE FUNCTION positive()")
    runner(engine).start(plan({"op": "alter_column", "table": "users", "column": "score", "type": "BIGINT"}))
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO users (id, email, score) VALUES (100, 'a@x', -5)")
        assert connection.exec_driver_sql("SELECT score, score_zdm_new FROM users WHERE id = 100").one() == (5, 5)
    runner(engine).complete("p")
    with engine.begin() as connection:  # the trigger still works on the new column
        connection.exec_driver_sql("INSERT INTO users (id, email, score) VALUES (101, 'b@x', -7)")
    assert rows(engine, "SELECT id, score FROM users WHERE id >= 100 ORDER BY id") == [(100, 5), (101, 7)]


def test_sqlite_refuses_a_user_trigger_that_names_the_renamed_column(zdm_sqlite_url: str) -> None:
    """During the window, the new app's insert leaves the old column out: a trigger reading NEW.email would
    see NULL (SQLite's NEW is the row as inserted) and write it back. Refused before anything runs."""
    engine = engine_with(zdm_sqlite_url, USERS[0], "INSERT INTO users (id, email) VALUES (1, 'A@X')",
                         "CREATE TRIGGER users_lower AFTER INSERT ON users BEGIN "
                         "UPDATE users SET email = lower(NEW.email) WHERE id = NEW.id; END")
    with pytest.raises(PlanInvalid, match=r"^trigger users_lower on users uses email"):
        runner(engine).start(plan(RENAME_EMAIL))
    assert zdm_objects(engine) == []


def test_sqlite_renames_views_and_indexes_with_the_column(zdm_sqlite_url: str) -> None:
    """SQLite's RENAME COLUMN rewrites the indexes and views that use the column."""
    engine = engine_with(zdm_sqlite_url, USERS[0], "INSERT INTO users (id, email) VALUES (1, 'A@X')",
                         "CREATE VIEW emails AS SELECT email FROM users",
                         "CREATE INDEX users_lower_ix ON users (lower(email)) WHERE email LIKE '%@%'")
    runner(engine).start(plan(RENAME_EMAIL))
    with engine.begin() as connection:  # the new app
        connection.exec_driver_sql("INSERT INTO users (id, email_address) VALUES (2, 'B@X')")
    runner(engine).complete("p")
    assert rows(engine, "SELECT * FROM emails ORDER BY 1") == [("A@X",), ("B@X",)]
    assert rows(engine, "SELECT sql FROM sqlite_master WHERE name = 'users_lower_ix'") == [
        ("CREATE INDEX users_lower_ix ON users (lower(email_address)) WHERE email_address LIKE '%@%'",)]


DEPENDENTS = {
    "view": ("CREATE VIEW codes AS SELECT code FROM items", r"rule _RETURN on view codes uses items.code"),
    "rule": ("CREATE RULE no_zero AS ON INSERT TO items WHERE NEW.code = 0 DO INSTEAD NOTHING",
             r"rule no_zero on table items uses items.code"),
    "policy": ("CREATE POLICY positive ON items USING (code > 0)", r"policy positive on table items uses items.code"),
    "generated column": ("ALTER TABLE items ADD COLUMN double_code integer GENERATED ALWAYS AS (code * 2) STORED",
                         r"default value for column double_code of table items uses items.code"),
    "publication": ("CREATE PUBLICATION items_codes FOR TABLE items (id, code)",
                    r"publication of table items in publication items_codes uses items.code"),
    "statistics": ("CREATE STATISTICS items_stats ON code, id FROM items",
                   r"statistics object (public\.)?items_stats uses items.code"),
}


@pytest.mark.parametrize("kind", DEPENDENTS)
def test_what_a_type_change_cannot_carry_is_refused_before_anything_runs(zdm_postgres_url: str, kind: str) -> None:
    statement, refused = DEPENDENTS[kind]
    engine = engine_with(zdm_postgres_url, "CREATE TABLE items (id integer PRIMARY KEY, code integer)",
                         "INSERT INTO items VALUES (1, 5)", statement)
    before = rows(engine, "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'items' "
                          "ORDER BY ordinal_position")
    with pytest.raises(PlanInvalid, match=f"^{refused}.*drop it before the change and create it again after"):
        runner(engine).start(plan({"op": "alter_column", "table": "items", "column": "code", "type": "BIGINT"}))
    assert rows(engine, "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'items' "
                        "ORDER BY ordinal_position") == before
    assert zdm_objects(engine) == []
    if kind == "publication":
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP PUBLICATION items_codes")


@pytest.mark.parametrize("kind", ["view", "rule", "policy", "generated column", "statistics"])
def test_a_rename_carries_what_uses_the_column(zdm_postgres_url: str, kind: str) -> None:
    """PostgreSQL keeps views, rules, policies, generated columns and statistics by the column's number:
    a rename in place carries them all."""
    statement, _ = DEPENDENTS[kind]
    engine = engine_with(zdm_postgres_url, "CREATE TABLE items (id integer PRIMARY KEY, code integer)",
                         "INSERT INTO items VALUES (1, 5)", statement)
    runner(engine).start(plan({"op": "rename_column", "table": "items", "column": "code", "new_name": "number"}))
    runner(engine).complete("p")
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO items (id, number) VALUES (2, 6)")
    assert rows(engine, "SELECT id, number FROM items ORDER BY id") == [(1, 5), (2, 6)]
    assert zdm_objects(engine) == []


def test_concurrent_app_writes_never_fail_during_start_of_a_type_change(zdm_database_url: str) -> None:
    """An app updates other columns, and inserts leaving the column out, while the backfill of a type change
    of a NOT NULL column runs: no write fails."""
    engine = engine_with(zdm_database_url,
                         "CREATE TABLE items (id integer PRIMARY KEY, qty integer NOT NULL DEFAULT 1, note text)")
    with engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO items (id, qty) VALUES (:i, :i)"), [{"i": i} for i in range(1, 1501)])
    app = sa.create_engine(zdm_database_url, connect_args={"timeout": 30} if "sqlite" in zdm_database_url else {})
    stop, failures, writes = threading.Event(), [], [0]

    def client() -> None:
        key = 10_000
        while not stop.is_set():
            key += 1
            try:
                with app.begin() as connection:
                    connection.exec_driver_sql(f"UPDATE items SET note = 'x' WHERE id = {1500 - key % 1500}")
                    connection.exec_driver_sql(f"INSERT INTO items (id) VALUES ({key})")
                writes[0] += 1
            except sa.exc.OperationalError:  # SQLite: the database is locked by a batch; retried by apps
                time.sleep(0.01)
            except sa.exc.DBAPIError as exc:
                failures.append(str(exc.orig))

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        runner(engine, batch_size=50, batch_pause_ms=5).start(
            plan({"op": "alter_column", "table": "items", "column": "qty", "type": "BIGINT"}))
    finally:
        stop.set()
        thread.join(10)
    assert failures == [] and writes[0] > 0
    runner(engine).complete("p")
    assert rows(engine, "SELECT count(*) FROM items WHERE qty IS NULL") == [(0,)]
    app.dispose()
