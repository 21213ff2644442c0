"""A backfill is not an app write: the table's own triggers stay quiet for its batches.

The input (found by a new user on PostgreSQL): a table with an ``updated_at``-style trigger and an
audit trigger. Every backfill (a rename, a type change, ``add_column`` from another column,
``set_not_null`` with ``fill``) updated every row, so the first trigger stamped all of them and the
second wrote one audit row per row, and neither a failed start nor ``zdm rollback`` took it back.
The app's own writes meanwhile must still fire both triggers.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from support import runner

from zdm import db, dialects, planfile
from zdm.backfill import BackfillProgress
from zdm.runner import Reporter

ROWS = 300
TABLES = [
    "CREATE TABLE accounts (id integer PRIMARY KEY, email text NOT NULL, team integer, touched integer NOT NULL "
    "DEFAULT 0, note text)",
    "CREATE TABLE audit (account integer, op text)",
    "INSERT INTO accounts (id, email, team) WITH RECURSIVE n(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM n "
    f"WHERE g < {ROWS}) SELECT g, 'u' || g || '@example.com', (g - 1) / 50 FROM n",
]
POSTGRES_TRIGGERS = [
    "CREATE FUNCTION accounts_touch() RETURNS trigger LANGUAGE plpgsql AS "
    "$$BEGIN NEW.touched := OLD.touched + 1; RETURN NEW; END$$",
    "CREATE TRIGGER accounts_touch BEFORE UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION accounts_touch()",
    "CREATE FUNCTION accounts_audit() RETURNS trigger LANGUAGE plpgsql AS "
    "$$BEGIN INSERT INTO audit VALUES (NEW.id, TG_OP); RETURN NEW; END$$",
    "CREATE TRIGGER accounts_audit AFTER UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION accounts_audit()",
]
SQLITE_TRIGGERS = [
    "CREATE TRIGGER accounts_audit AFTER UPDATE ON accounts FOR EACH ROW "
    "BEGIN INSERT INTO audit VALUES (NEW.id, 'UPDATE'); UPDATE accounts SET touched = touched + 1 "
    "WHERE id = NEW.id; END",
]
OPERATIONS = {
    "rename_column": {"op": "rename_column", "table": "accounts", "column": "email", "new_name": "email_address"},
    "alter_column": {"op": "alter_column", "table": "accounts", "column": "team", "type": "BIGINT"},
    "add_column": {"op": "add_column", "table": "accounts", "column": "email_lower", "type": "TEXT",
                   "from_column": "email", "transform": "lower"},
    "set_not_null": {"op": "set_not_null", "table": "accounts", "column": "note", "fill": "none"},
}
APP_UPDATED = 250  # a row the backfill has not reached when the app writes it


class AppWritesAfter(Reporter):
    """The app updates one row after the backfill's first batch: its triggers must fire."""

    def __init__(self, url: str) -> None:
        self.url, self.done = url, False

    def backfill(self, progress: BackfillProgress) -> None:
        if not self.done:
            self.done = True
            app = sa.create_engine(self.url)
            with app.begin() as connection:
                connection.exec_driver_sql(f"UPDATE accounts SET team = 99 WHERE id = {APP_UPDATED}")
            app.dispose()


def _engine(url: str) -> sa.Engine:
    engine = db.create_engine(url)
    triggers = POSTGRES_TRIGGERS if engine.dialect.name == "postgresql" else SQLITE_TRIGGERS
    with engine.begin() as connection:
        for statement in [*TABLES, *triggers]:
            connection.exec_driver_sql(statement)
    return engine


def _fired(engine: sa.Engine) -> tuple[list[Any], list[Any]]:
    """Ids whose row was touched, and ids with an audit row."""
    with engine.connect() as connection:
        touched = [row[0] for row in connection.exec_driver_sql(
            "SELECT id FROM accounts WHERE touched > 0 ORDER BY id")]
        audited = [row[0] for row in connection.exec_driver_sql("SELECT DISTINCT account FROM audit ORDER BY 1")]
    return touched, audited


@pytest.mark.parametrize("operation", OPERATIONS.values(), ids=list(OPERATIONS))
def test_the_backfill_fires_no_user_trigger_and_the_app_s_writes_still_do(zdm_database_url: str,
                                                                          operation: dict[str, Any]) -> None:
    engine = _engine(zdm_database_url)
    run = runner(engine, batch_size=50, batch_target_ms=5)
    run.reporter = AppWritesAfter(zdm_database_url)
    plan = planfile.parse({"id": "p", "operations": [operation]})
    run.start(plan)
    assert _fired(engine) == ([APP_UPDATED], [APP_UPDATED])
    run.rollback("p")
    assert _fired(engine) == ([APP_UPDATED], [APP_UPDATED])
    run.start(plan)
    run.complete("p")
    assert _fired(engine) == ([APP_UPDATED], [APP_UPDATED])
    engine.dispose()


def test_a_role_that_may_not_quiet_triggers_is_told_which_fire(zdm_postgres_url: str) -> None:
    """Without the privilege the batches fire the triggers; the run says so, naming them."""
    engine = _engine(zdm_postgres_url)
    database = engine.url.database
    name = f"zdm_plain_{uuid.uuid4().hex[:8]}"
    with engine.begin() as connection:
        connection.exec_driver_sql(f"DROP ROLE IF EXISTS {name}")
        connection.exec_driver_sql(f"CREATE ROLE {name} LOGIN")
        connection.exec_driver_sql(f"GRANT ALL ON DATABASE {database} TO {name}")
        connection.exec_driver_sql(f"GRANT ALL ON SCHEMA public TO {name}")
        connection.exec_driver_sql(f"ALTER TABLE accounts OWNER TO {name}")
        connection.exec_driver_sql(f"GRANT ALL ON audit TO {name}")
    plain = db.create_engine(engine.url.set(username=name))
    notes: list[str] = []

    class Notes(Reporter):
        def note(self, message: str) -> None:
            notes.append(message)

    run = runner(plain, batch_size=50)
    run.reporter = Notes()
    try:
        run.start(planfile.parse({"id": "p", "operations": [OPERATIONS["rename_column"]]}))
        assert any("accounts_audit, accounts_touch" in note and "session_replication_role" in note
                   for note in notes), notes
        assert len(_fired(engine)[0]) == ROWS
    finally:
        plain.dispose()
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP OWNED BY {name}")
            connection.exec_driver_sql(f"DROP ROLE {name}")
        engine.dispose()


def test_a_column_another_table_references_is_never_set_under_the_replica_role(zdm_postgres_url: str) -> None:
    """The replica role skips the RI triggers of either side of a foreign key: a backfill that sets
    a referenced column (ON UPDATE CASCADE, NO ACTION checks) keeps them, and the user's triggers fire."""
    engine = sa.create_engine(zdm_postgres_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE codes (id integer PRIMARY KEY, code text UNIQUE, other text)")
        connection.exec_driver_sql("CREATE TABLE refs (id integer PRIMARY KEY, "
                                   "code text REFERENCES codes (code) ON UPDATE CASCADE)")
        connection.exec_driver_sql("CREATE FUNCTION codes_touch() RETURNS trigger LANGUAGE plpgsql AS "
                                   "$$ BEGIN RETURN NEW; END $$")
        connection.exec_driver_sql("CREATE TRIGGER codes_touch BEFORE UPDATE ON codes FOR EACH ROW "
                                   "EXECUTE FUNCTION codes_touch()")
        dialect = dialects.for_connection(connection)
        quiet, note = dialect.user_triggers_quiet(connection, "codes", ["code"])
        assert not quiet and note is not None and "foreign key covers code" in note, note
        assert dialect.user_triggers_quiet(connection, "codes", ["other"]) == (True, None)
    engine.dispose()
