"""Before complete drops the old column, every row's new value is checked to be the conversion of the
old one (breaker finding 7): a change zdm could not follow is named by key instead of lost."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from support import runner

from zdm import db, planfile
from zdm.errors import MigrationFailed
from zdm.plan import Phase

HELPER_TRIGGER = [
    "CREATE FUNCTION fix_row(r t) RETURNS t LANGUAGE plpgsql AS $$ BEGIN r.email := upper(r.email); RETURN r; END $$",
    "CREATE FUNCTION norm() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW := fix_row(NEW); RETURN NEW; END $$",
    "CREATE TRIGGER zz_norm BEFORE INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION norm()",
]


def table(url: str) -> sa.Engine:
    engine = db.create_engine(url)
    key = "serial" if engine.dialect.name == "postgresql" else "INTEGER"
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE TABLE t (id {key} PRIMARY KEY, email varchar(255), n int)")
        for i in range(1, 11):
            connection.exec_driver_sql(f"INSERT INTO t (email, n) VALUES ('A{i}@X', {i})")
    return engine


def phase(engine: sa.Engine, plan_id: str) -> Phase:
    return next(plan.phase for plan, _ in runner(engine).status() if plan.id == plan_id)


@pytest.mark.parametrize("zdm_database_url", ["postgresql"], indirect=True)
def test_a_trigger_that_changes_the_column_through_a_function_is_caught_at_complete(zdm_database_url: str) -> None:
    engine = table(zdm_database_url)
    with engine.begin() as connection:
        for statement in HELPER_TRIGGER:
            connection.exec_driver_sql(statement)
    plan = planfile.parse({"id": "p", "operations": [
        {"op": "alter_column", "table": "t", "column": "email", "type": "VARCHAR(100)"}]})
    run = runner(engine)
    run.start(plan)
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO t (id, email) VALUES (50, 'MiXeD@x')")
    with pytest.raises(MigrationFailed, match=r"rows of t whose email_zdm_new is not the conversion of email.*id=50"):
        run.complete(plan.id)
    assert phase(engine, plan.id) is Phase.MIGRATING
    with engine.begin() as connection:  # what the message says: drop the trigger, let zdm convert again
        connection.exec_driver_sql("DROP TRIGGER zz_norm ON t")
        connection.exec_driver_sql("UPDATE t SET email_zdm_new = NULL WHERE id = 50")
    run.complete(plan.id)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT email FROM t WHERE id = 50").scalar() == "MIXED@X"


CHANGES: dict[str, tuple[dict[str, Any], str]] = {
    "same-name": ({"column": "email", "type": "VARCHAR(100)"}, "email_zdm_new"),
    "new-name": ({"column": "n", "type": "BIGINT", "new_name": "n2"}, "n2"),
}


@pytest.mark.parametrize(("change", "shadow"), CHANGES.values(), ids=CHANGES.keys())
def test_a_new_column_written_out_of_step_is_named_and_the_plan_stays_migrating(
        zdm_database_url: str, change: dict[str, Any], shadow: str) -> None:
    """On both databases: a row whose new column holds what its old one does not convert to. The
    legitimate writes of both app versions (the new app's to the new name included) pass."""
    engine = table(zdm_database_url)
    plan = planfile.parse({"id": "p", "operations": [{"op": "alter_column", "table": "t", **change}]})
    run = runner(engine)
    run.start(plan)
    column = change["column"]
    value = 7 if column == "n" else "'b@y'"
    with engine.begin() as connection:
        connection.exec_driver_sql(f"UPDATE t SET {column} = {value} WHERE id = 1")  # the old app
        if shadow == "n2":
            connection.exec_driver_sql("UPDATE t SET n2 = 8 WHERE id = 2")  # the new app
            connection.exec_driver_sql("INSERT INTO t (id, email, n2) VALUES (40, 'c', 9)")
    with engine.begin() as connection:  # a write that leaves the pair out of step (no trigger fires)
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("SET LOCAL session_replication_role = replica")
            connection.exec_driver_sql(f"UPDATE t SET {shadow} = {value} WHERE id = 3")
        else:  # SQLite has no switch for triggers: zdm's are set aside for the write
            triggers = connection.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").all()
            for name, _sql in triggers:
                connection.exec_driver_sql(f"DROP TRIGGER {name}")
            connection.exec_driver_sql(f"UPDATE t SET {shadow} = {value} WHERE id = 3")
            for _name, sql in triggers:
                connection.exec_driver_sql(sql)
    with pytest.raises(MigrationFailed, match=rf"whose {shadow} is not the conversion of {column}.*id=3"):
        run.complete(plan.id)
    assert phase(engine, plan.id) is Phase.MIGRATING
    with engine.begin() as connection:
        connection.exec_driver_sql(f"UPDATE t SET {column} = {value} WHERE id = 3")
    run.complete(plan.id)
    final = change.get("new_name", column)
    with engine.connect() as connection:
        rows = dict(connection.exec_driver_sql(f"SELECT id, {final} FROM t WHERE id IN (1, 2, 3, 40)").all())
    expected = {1: 7, 2: 8, 3: 7, 40: 9} if final == "n2" else {1: "b@y", 3: "b@y"}
    assert {k: rows[k] for k in expected} == expected
