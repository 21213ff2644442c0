"""The rest of the catalogue through the same start / rollback / start / complete cycle, both databases.

Constraints and indexes are not in the reference model, so each case also checks the database for
the outcome a user relies on: the NOT NULL really refuses NULL, the unique index really refuses a
duplicate, and so on. Failure cases check that bad data is named before anything is dropped.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from support import (
    App,
    Phase,
    apply_phases,
    assert_agrees,
    learn_catalogue,
    runner,
    setup,
    users_schema,
    zdm_objects,
)
from test_operations import Case, run_cycle

from zdm import db, planfile
from zdm.model import Column, ColumnType, Table
from zdm.runner import MigrationFailed, PlanInvalid


def _filled(app: App, base: int) -> None:
    assert app.read(base + 1, "name") == "unknown"  # the old app wrote NULL
    assert app.read(7, "name") == "unknown"  # backfilled
    assert app.read(3, "name") == "unknown"  # updated to NULL by the old app


def _default(app: App, base: int) -> None:
    assert app.read(base + 1, "name") == "someone"


CASES = [
    Case("set_not_null_fill",
         [{"op": "set_not_null", "table": "users", "column": "name", "fill": "unknown"}],
         old_insert={"email": "o@x", "name": None}, new_insert={"email": "n@x", "name": "N"},
         old_update={"name": None}, check=_filled),
    Case("set_not_null",
         [{"op": "set_not_null", "table": "users", "column": "score"}],
         old_insert={"email": "o@x", "score": 1}, new_insert={"email": "n@x", "score": 2}, new_update={"score": 3}),
    Case("drop_not_null",
         [{"op": "drop_not_null", "table": "users", "column": "email"}],
         old_insert={"email": "o@x"}, new_insert={"email": "n@x", "name": "N"}, new_update={"name": "M"}),
    Case("set_default",
         [{"op": "set_default", "table": "users", "column": "name", "default": "someone"}],
         old_insert={"email": "o@x"}, new_insert={"email": "n@x", "name": "N"}, check=_default),
    Case("drop_default",
         [{"op": "drop_default", "table": "users", "column": "name"}],
         old_insert={"email": "o@x", "name": "O"}, new_insert={"email": "n@x"}),
    Case("create_index",
         [{"op": "create_index", "table": "users", "name": "users_email_uq", "columns": ["email"], "unique": True}],
         old_insert={"email": "o{n}@x"}, new_insert={"email": "n{n}@x"}),
    Case("drop_index",
         [{"op": "drop_index", "table": "users", "name": "users_name_ix"}],
         old_insert={"email": "o@x"}, new_insert={"email": "n@x"},
         setup_sql=["CREATE INDEX users_name_ix ON users (name)"]),
    Case("sql",
         [{"op": "sql", "table": "users", "up": "CREATE VIEW adults AS SELECT id, email FROM users WHERE age >= 18",
           "down": "DROP VIEW adults"}],
         old_insert={"email": "o@x"}, new_insert={"email": "n@x"}),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cycle(zdm_database_url: str, case: Case) -> None:
    run_cycle(zdm_database_url, case)


def _columns(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as connection:
        return {c["name"]: c for c in sa.inspect(connection).get_columns("users")}


def _indexes(engine: sa.Engine) -> set[str]:
    with engine.connect() as connection:
        return {ix["name"] for ix in sa.inspect(connection).get_indexes("users")}


def _plan(*operations: dict[str, Any]) -> planfile.PlanFile:
    return planfile.parse({"id": "p", "operations": list(operations)})


def test_set_not_null_is_enforced_after_complete(zdm_database_url: str) -> None:
    engine = setup(zdm_database_url, users_schema(30))
    runner(engine).apply(_plan({"op": "set_not_null", "table": "users", "column": "name", "fill": "?"}))
    assert not _columns(engine)["name"]["nullable"]
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO users (id, email, name) VALUES (999, 'x', NULL)")
    assert zdm_objects(engine) == []


def test_set_not_null_without_fill_names_the_null_rows(zdm_database_url: str) -> None:
    model = users_schema(30)
    engine = setup(zdm_database_url, model)
    with pytest.raises(MigrationFailed, match=r"users.name is NULL in rows .*id=7.*id=14.*rolled back"):
        runner(engine).start(_plan({"op": "set_not_null", "table": "users", "column": "name"}))
    assert_agrees(engine, model)
    assert _columns(engine)["name"]["nullable"] and zdm_objects(engine) == []


def test_drop_not_null_lets_the_new_app_write_null_and_refuses_a_lossy_rollback(zdm_database_url: str) -> None:
    engine = setup(zdm_database_url, users_schema(10))
    run = runner(engine)
    run.start(_plan({"op": "drop_not_null", "table": "users", "column": "email"}))
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO users (id) VALUES (500)")
    with pytest.raises(MigrationFailed, match=r"rows with NULL in users.email .*id=500"):
        run.rollback("p")
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE users SET email = 'filled' WHERE id = 500")
    run.rollback("p")
    assert not _columns(engine)["email"]["nullable"]


def test_unique_index_names_duplicates_and_leaves_nothing(zdm_database_url: str) -> None:
    model = users_schema(10)
    engine = setup(zdm_database_url, model)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE users SET name = 'same' WHERE id IN (2, 3)")
    model.table("users").update({"id": 2}, {"name": "same"})
    model.table("users").update({"id": 3}, {"name": "same"})
    with pytest.raises(MigrationFailed, match=r"duplicate values for unique index users_name_uq: name='same', rows=2"):
        runner(engine).start(_plan({"op": "create_index", "table": "users", "name": "users_name_uq",
                                    "columns": ["name"], "unique": True}))
    assert "users_name_uq" not in _indexes(engine)
    assert_agrees(engine, model)


def test_created_index_is_real_and_dropped_index_gone(zdm_database_url: str) -> None:
    engine = setup(zdm_database_url, users_schema(10))
    runner(engine).apply(_plan({"op": "create_index", "table": "users", "name": "users_email_uq",
                                "columns": ["email"], "unique": True}))
    assert "users_email_uq" in _indexes(engine)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO users (id, email) VALUES (99, ' User1@Example.COM ')")
    runner(engine).apply(planfile.parse({"id": "q", "operations": [
        {"op": "drop_index", "table": "users", "name": "users_email_uq"}]}))
    assert "users_email_uq" not in _indexes(engine)


@pytest.mark.parametrize(("operation", "message"), [
    ({"op": "drop_index", "table": "users", "name": "nope"}, "has no index 'nope'"),
    ({"op": "drop_constraint", "table": "users", "name": "users_emial_uq"}, "has no constraint 'users_emial_uq'"),
    ({"op": "set_not_null", "table": "users", "column": "email"}, "already NOT NULL"),
    ({"op": "drop_not_null", "table": "users", "column": "name"}, "already nullable"),
    ({"op": "set_default", "table": "users", "column": "score", "default": "abc"}, "not a valid BIGINT"),
    ({"op": "create_index", "table": "users", "name": "i", "columns": ["nope"]}, "no column 'nope'"),
])
def test_invalid_operations_are_refused(zdm_database_url: str, operation: dict[str, Any], message: str) -> None:
    from zdm.runner import PlanInvalid

    engine = setup(zdm_database_url, users_schema(3))
    with pytest.raises(PlanInvalid, match=message):
        runner(engine).start(_plan(operation))


def test_sql_needs_a_down_before_contract() -> None:
    with pytest.raises(planfile.PlanFileError, match="needs `down`"):
        _plan({"op": "sql", "up": "SELECT 1"})
    assert _plan({"op": "sql", "up": "SELECT 1", "phase": "contract"}).operations[0].down is None


def _code_converted(app: App, base: int) -> None:
    assert app.read(base + 1, "code_zdm_new") == 77  # the old app's text, converted
    assert app.read(12, "code_zdm_new") == 12  # backfilled from '00012'


def _code_renamed(app: App, base: int) -> None:
    assert app.read(base + 2, "code") == "12"  # the new app's integer, readable by the old app
    assert app.read(base + 1, "code_num") == 77


def _prefs(app: App, base: int) -> None:
    assert app.read(base + 1, "prefs_json") == {"y": 2}
    assert app.read(base + 2, "prefs") == '{"x": [1, 2]}'
    assert app.read(11, "prefs_json") == {"n": 11}


ALTER_CASES = [
    Case("alter_text_to_integer",
         [{"op": "alter_column", "table": "users", "column": "code", "type": "INTEGER"}],
         old_insert={"email": "o@x", "code": "00077"}, new_insert={"email": "n@x", "code": "5"},
         old_update={"code": "00003"}, final_columns={"code"}, gone={"code_zdm_new"}, check=_code_converted),
    Case("alter_text_to_integer_renamed",
         [{"op": "alter_column", "table": "users", "column": "code", "type": "INTEGER", "new_name": "code_num"}],
         old_insert={"email": "o@x", "code": "00077"}, new_insert={"email": "n@x", "code_num": 12},
         new_update={"code_num": 4}, final_columns={"code_num"}, gone={"code"}, check=_code_renamed),
    Case("alter_integer_to_bigint",
         [{"op": "alter_column", "table": "users", "column": "age", "type": "BIGINT"}],
         old_insert={"email": "o@x", "age": 40}, new_insert={"email": "n@x", "age": 41}, old_update={"age": 2**30},
         final_columns={"age"}),
    Case("alter_text_to_json",
         [{"op": "alter_column", "table": "users", "column": "prefs", "type": "JSON", "new_name": "prefs_json"}],
         old_insert={"email": "o@x", "prefs": '{"y": 2}'}, new_insert={"email": "n@x", "prefs_json": {"x": [1, 2]}},
         old_update={"prefs": "[1]"}, final_columns={"prefs_json"}, gone={"prefs"}, check=_prefs),
]


@pytest.mark.parametrize("case", ALTER_CASES, ids=[c.name for c in ALTER_CASES])
def test_alter_column_cycle(zdm_database_url: str, case: Case) -> None:
    run_cycle(zdm_database_url, case)


def test_unconvertible_values_are_named_before_anything_is_dropped(zdm_database_url: str) -> None:
    from zdm import state
    from zdm.plan import Phase

    model = users_schema(20)
    engine = setup(zdm_database_url, model)
    plan = _plan({"op": "alter_column", "table": "users", "column": "code", "type": "INTEGER"})
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE users SET code = 'abc' WHERE id = 5")
    model.table("users").update({"id": 5}, {"code": "abc"})
    with pytest.raises(MigrationFailed, match=r"that to_integer cannot convert.*id=5, code='abc'.*rolled back"):
        runner(engine).start(plan)
    assert_agrees(engine, model)
    assert zdm_objects(engine) == []

    with engine.begin() as connection:  # fixed; but the old app writes a bad value mid-migration
        connection.exec_driver_sql("UPDATE users SET code = '5' WHERE id = 5")
    runner(engine).start(plan)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE users SET code = 'x9' WHERE id = 6")
    with engine.begin() as connection:  # beyond 32 bits: the write goes through, the check names it
        connection.exec_driver_sql("UPDATE users SET code = '99999999999' WHERE id = 7")
    with pytest.raises(MigrationFailed, match=r"id=6, code='x9'; id=7, code='99999999999'.*MIGRATING again"):
        runner(engine).complete(plan.id)
    with engine.connect() as connection:
        assert state.load(connection, plan.id)[0].phase is Phase.MIGRATING
        assert connection.exec_driver_sql("SELECT code FROM users WHERE id = 6").scalar() == "x9"  # nothing lost


def _teams(model: Any) -> None:
    from zdm.model import Column, ColumnType, Table

    teams = model.add_table(Table("teams", [Column("id", ColumnType.INTEGER, nullable=False, primary_key=True),
                                            Column("name", ColumnType.TEXT)]))
    for age in range(0, 100):
        teams.insert({"id": age, "name": f"team {age}"})


def _legacy(model: Any) -> None:
    from zdm.model import Column, ColumnType, Table

    legacy = model.add_table(Table("legacy", [Column("id", ColumnType.INTEGER, nullable=False, primary_key=True)]))
    legacy.insert({"id": 1})


CONSTRAINT_CASES = [
    Case("add_check", [{"op": "add_check", "table": "users", "name": "users_age_ck", "condition": "age >= 0"}],
         old_insert={"email": "o@x", "age": 1}, new_insert={"email": "n@x", "age": 2}, old_update={"age": 3}),
    Case("add_unique", [{"op": "add_unique", "table": "users", "name": "users_email_key", "columns": ["email"]}],
         old_insert={"email": "o{n}@x"}, new_insert={"email": "n{n}@x"}),
    Case("add_foreign_key",
         [{"op": "add_foreign_key", "table": "users", "name": "users_age_fk", "columns": ["age"],
           "ref_table": "teams", "ref_columns": ["id"]}],
         old_insert={"email": "o@x", "age": 20}, new_insert={"email": "n@x", "age": 21}, more_tables=_teams),
    Case("create_table",
         [{"op": "create_table", "table": "audit", "columns": [
             {"name": "id", "type": "INTEGER", "primary_key": True},
             {"name": "event", "type": "TEXT", "nullable": False, "default": "created"},
             {"name": "at", "type": "TIMESTAMP"}]}],
         old_insert={"email": "o@x"}, new_insert={"email": "n@x"}),
    Case("drop_not_null_column_with_default",
         [{"op": "drop_column", "table": "users", "column": "email", "default": "none@x"}],
         old_insert={"email": "o@x"}, new_insert={"name": "new app, no email"}, gone={"email"}),
    Case("drop_table", [{"op": "drop_table", "table": "legacy"}],
         old_insert={"email": "o@x"}, new_insert={"email": "n@x"}, more_tables=_legacy),
]


@pytest.mark.parametrize("case", CONSTRAINT_CASES, ids=[c.name for c in CONSTRAINT_CASES])
def test_constraint_and_table_cycle(zdm_database_url: str, case: Case) -> None:
    run_cycle(zdm_database_url, case)


def test_check_names_breaking_rows_then_enforces_and_can_be_dropped(zdm_database_url: str) -> None:
    model = users_schema(20)
    engine = setup(zdm_database_url, model)
    check = _plan({"op": "add_check", "table": "users", "name": "users_age_ck", "condition": "age < 30"})
    with pytest.raises(MigrationFailed, match=r"rows of users break check users_age_ck: id=\d+.*rolled back"):
        runner(engine).start(check)
    assert_agrees(engine, model)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE users SET age = 1 WHERE age >= 30")
    runner(engine).start(check)
    runner(engine).complete(check.id)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
        connection.exec_driver_sql("UPDATE users SET age = 99 WHERE id = 1")
    drop = planfile.parse({"id": "q", "operations": [
        {"op": "drop_constraint", "table": "users", "name": "users_age_ck"}]})
    runner(engine).apply(drop)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE users SET age = 99 WHERE id = 1")


def test_foreign_key_names_orphans(zdm_database_url: str) -> None:
    model = users_schema(20)
    _teams(model)
    model.table("teams").rows = [r for r in model.table("teams").rows if r["id"] != 25]
    engine = setup(zdm_database_url, model)
    plan = _plan({"op": "add_foreign_key", "table": "users", "name": "users_age_fk", "columns": ["age"],
                  "ref_table": "teams", "ref_columns": ["id"]})
    with pytest.raises(MigrationFailed, match=r"rows of users point to no row of teams: id=7, age=25"):
        runner(engine).start(plan)
    assert_agrees(engine, model)
    assert zdm_objects(engine) == []


def test_rename_table_keeps_the_old_name_working_until_complete(zdm_database_url: str) -> None:
    from support import apply_phases, rollback_model

    from zdm.plan import Phase

    model = users_schema(20)
    engine = setup(zdm_database_url, model)
    dialect = engine.dialect.name
    plan = _plan({"op": "rename_table", "table": "users", "new_name": "accounts"})
    # SQLite counts no changed rows for writes through INSTEAD OF triggers (a documented limit)
    old, new = App(engine, model, "users", rowcount=dialect != "sqlite"), App(engine, model, "accounts")
    run = runner(engine)
    for cycle, finish in ((1, "rollback"), (2, "complete")):
        run.start(plan)
        apply_phases(plan, model, dialect, Phase.EXPANDING, Phase.MIGRATING)
        old.insert({"id": 100 * cycle, "email": "old app"})  # through the view, defaults applied
        new.insert({"id": 100 * cycle + 1, "email": "new app"})
        old.update(3, {"name": f"old {cycle}"})
        new.update(4, {"name": f"new {cycle}"})
        assert old.read(100 * cycle + 1, "email") == "new app" and new.read(100 * cycle, "name") == "anon"
        assert_agrees(engine, model)
        if finish == "rollback":
            run.rollback(plan.id)
            rollback_model(plan, model, dialect)
        else:
            run.complete(plan.id)
            apply_phases(plan, model, dialect, Phase.CONTRACTING)
        assert_agrees(engine, model)
        assert zdm_objects(engine) == []
    with pytest.raises(sa.exc.DBAPIError), engine.begin() as connection:
        connection.exec_driver_sql("SELECT * FROM users")


def test_percent_signs_survive_every_driver(zdm_database_url: str) -> None:
    """psycopg reads % as a placeholder even without parameters; statements must not care."""
    engine = setup(zdm_database_url, users_schema(12))
    runner(engine).apply(_plan(
        {"op": "sql", "table": "users", "up": "UPDATE users SET name = '100%' WHERE name LIKE 'user 1%'",
         "down": "UPDATE users SET name = 'user 1' WHERE name = '100%'",
         "assume_safe": True},  # a bulk write, on 12 rows
        {"op": "set_default", "table": "users", "column": "code", "default": "50%"},
    ))
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO users (id, email) VALUES (99, 'x')")
        names = connection.execute(sa.text("SELECT count(*) FROM users WHERE name = '100%'")).scalar()
        code = connection.execute(sa.text("SELECT code FROM users WHERE id = 99")).scalar()
    assert (names, code) == (4, "50%")  # users 1, 10, 11, 12


def test_colons_in_defaults_and_conditions_survive_rebuilds(zdm_database_url: str) -> None:
    """SQLAlchemy's text() reads ':word' as a bind parameter, which DDL renders as NULL."""
    engine = db.create_engine(zdm_database_url)
    with engine.begin() as connection:
        db.run_sql(connection, "CREATE TABLE t (id INTEGER PRIMARY KEY, label TEXT DEFAULT 'x :y', "
                   "code TEXT CHECK (code NOT LIKE '%:tmp%'), tag TEXT, n INTEGER)")
        connection.exec_driver_sql("INSERT INTO t (id, code) VALUES (1, 'a')")
    runner(engine).apply(_plan(  # each of these rebuilds the table on SQLite
        {"op": "set_not_null", "table": "t", "column": "n", "fill": 0},
        {"op": "set_default", "table": "t", "column": "tag", "default": "at :noon"},
        {"op": "add_check", "table": "t", "name": "t_code_ck", "condition": "code NOT LIKE '%:bad%'"},
    ))
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO t (id, code, n) VALUES (2, 'b', 1)")
        row = connection.execute(sa.text("SELECT label, tag FROM t WHERE id = 2")).one()
    assert tuple(row) == ("x :y", "at :noon")
    for code in ("1:tmp1", "1:bad1"):
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
            connection.execute(sa.text("INSERT INTO t (id, code, n) VALUES (3, :code, 1)"), {"code": code})
    engine.dispose()


def test_an_index_behind_a_constraint_is_dropped_as_the_constraint(zdm_postgres_url: str) -> None:
    from zdm.runner import PlanInvalid

    engine = setup(zdm_postgres_url, users_schema(3))
    with engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE users ADD CONSTRAINT users_code_uq UNIQUE (code)")
    with pytest.raises(PlanInvalid, match="index 'users_code_uq' backs a constraint of 'users': use drop_constraint"):
        runner(engine).apply(_plan({"op": "drop_index", "table": "users", "name": "users_code_uq"}))
    runner(engine).apply(_plan({"op": "drop_constraint", "table": "users", "name": "users_code_uq"}))
    with engine.connect() as connection:
        assert sa.inspect(connection).get_unique_constraints("users") == []


def test_sqlite_rebuild_refuses_to_drop_a_column_a_trigger_uses(zdm_sqlite_url: str) -> None:
    """SQLite's DROP COLUMN refuses it; the rebuild must too, or the app's next write would fail.
    It is refused before anything runs."""
    model = users_schema(3)
    engine = setup(zdm_sqlite_url, model)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE audit (msg TEXT)")
        connection.exec_driver_sql("CREATE TRIGGER users_flag_audit AFTER UPDATE ON users BEGIN "
                                   "INSERT INTO audit (msg) VALUES ('flag ' || coalesce(NEW.legacy_flag, '?')); END")
    with pytest.raises(PlanInvalid, match="trigger users_flag_audit uses column legacy_flag"):
        runner(engine).apply(_plan({"op": "drop_column", "table": "users", "column": "legacy_flag"}))
    App(engine, model).update(1, {"name": "still works"})
    model.add_table(Table("audit", [Column("msg", ColumnType.TEXT)]))
    model.table("audit").insert({"msg": "flag 0"})
    assert_agrees(engine, model)


def test_a_step_outside_a_transaction_is_applied_and_undone(zdm_database_url: str) -> None:
    """transactional: false must still commit (SQLite's BEGIN IMMEDIATE once swallowed it)."""
    model = users_schema(5)
    engine = setup(zdm_database_url, model)
    plan = _plan({"op": "sql", "table": "users", "up": "UPDATE users SET age = age + 1",
                  "down": "UPDATE users SET age = age - 1", "transactional": False,
                  "assume_safe": True})  # bulk writes, on 5 rows
    original = [row["age"] for row in model.table("users").sorted_rows()]

    def ages() -> list[int]:
        with engine.connect() as connection:
            return list(connection.execute(sa.text("SELECT age FROM users ORDER BY id")).scalars())

    runner(engine).start(plan)
    assert ages() == [age + 1 for age in original]
    runner(engine).rollback(plan.id)
    assert ages() == original


def test_json_defaults(zdm_database_url: str) -> None:
    """SQLAlchemy renders no JSON literal: a JSON default must still reach both databases intact."""
    model = users_schema(2)
    engine = setup(zdm_database_url, model)
    runner(engine).apply(_plan(
        {"op": "create_table", "table": "prefs", "columns": [
            {"name": "id", "type": "INTEGER", "primary_key": True},
            {"name": "data", "type": "JSON", "default": {"theme": "dark", "n": [1, 2]}}]},
        {"op": "add_column", "table": "users", "column": "settings", "type": "JSON", "default": {"beta": False}},
    ))
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO prefs (id) VALUES (1)")
        data = connection.execute(sa.select(sa.column("data", sa.JSON)).select_from(sa.table("prefs"))).scalar()
        settings = connection.execute(sa.select(sa.column("settings", sa.JSON)).select_from(sa.table("users"))).all()
    assert data == {"theme": "dark", "n": [1, 2]} and settings == [({"beta": False},), ({"beta": False},)]


RICH_SQLITE = [
    "CREATE TABLE teams (id INTEGER PRIMARY KEY, name TEXT)",
    "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL COLLATE NOCASE, name TEXT, big INTEGER, "
    "team_id INTEGER REFERENCES teams(id) ON DELETE CASCADE)",
    "CREATE UNIQUE INDEX users_email_uq ON users (email)",
    "CREATE INDEX users_lower_name_ix ON users (lower(name))",
    "CREATE INDEX users_name_desc_ix ON users (name DESC)",
    "CREATE INDEX users_big_ix ON users (big) WHERE big > 0",
    "INSERT INTO teams VALUES (1, 't')",
    "INSERT INTO users VALUES (1, 'a@x', 'A', NULL, 1)",
]


@pytest.mark.parametrize("then", ["complete", "rollback"])
def test_sqlite_rebuilds_keep_collations_key_actions_and_indexes_as_written(zdm_sqlite_url: str, then: str) -> None:
    """Reflection misses COLLATE, ON DELETE, expression indexes and sort orders; a rebuild must not."""
    engine = db.create_engine(zdm_sqlite_url)
    with engine.begin() as connection:
        for statement in RICH_SQLITE:
            connection.exec_driver_sql(statement)

    def indexes() -> dict[str, str]:
        with engine.connect() as connection:
            return dict(connection.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL").all())

    original = indexes()
    run = runner(engine)
    if then == "complete":  # set NOT NULL rebuilds the table at contract
        plan = _plan({"op": "set_not_null", "table": "users", "column": "big", "fill": 0})
        run.start(plan)
        run.complete(plan.id)
    else:  # a rename rebuilds it at start (email NULL for the new app) and back at rollback
        plan = _plan({"op": "rename_column", "table": "users", "column": "email", "new_name": "login"})
        run.start(plan)
        run.rollback(plan.id)
    assert indexes() == original
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:  # still case-insensitive
        connection.exec_driver_sql("INSERT INTO users (id, email, big) VALUES (2, 'A@X', 1)")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:  # PRAGMA outside BEGIN
        connection.exec_driver_sql("PRAGMA foreign_keys = ON")
        connection.exec_driver_sql("DELETE FROM teams WHERE id = 1")
        assert connection.exec_driver_sql("SELECT count(*) FROM users").scalar() == 0  # still cascades
    engine.dispose()


def test_a_type_change_carries_the_column_indexes(zdm_database_url: str) -> None:
    """The new column takes the old one's name at contract, and its indexes theirs."""
    model = users_schema(10)
    engine = setup(zdm_database_url, model)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE INDEX users_code_ix ON users (code)")
        connection.exec_driver_sql("CREATE UNIQUE INDEX users_code_id_uq ON users (code, id)")
    learn_catalogue(engine, model)
    plan = _plan({"op": "alter_column", "table": "users", "column": "code", "type": "INTEGER"})
    runner(engine).start(plan)
    runner(engine).complete(plan.id)
    apply_phases(plan, model, engine.dialect.name, Phase.EXPANDING, Phase.MIGRATING, Phase.CONTRACTING)
    assert_agrees(engine, model)
    with engine.connect() as connection:
        indexes = sa.inspect(connection).get_indexes("users")
    found = {ix["name"]: (ix["column_names"], bool(ix["unique"])) for ix in indexes}
    assert found == {"users_code_ix": (["code"], False), "users_code_id_uq": (["code", "id"], True)}
    assert zdm_objects(engine) == []
