"""Operations of one plan whose copies involve the same existing index or constraint (breaker finding 1)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from support import runner

from zdm import db, planfile


def table(url: str, extra: str = "") -> sa.Engine:
    engine = db.create_engine(url)
    key = "serial" if engine.dialect.name == "postgresql" else "INTEGER"
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE TABLE t (id {key} PRIMARY KEY, a int, b int, c int{extra})")
        connection.exec_driver_sql("CREATE INDEX t_ab ON t (a, b)")
        for i in range(1, 30):
            connection.exec_driver_sql(f"INSERT INTO t (a, b, c) VALUES ({i}, {i + 1}, {i + 2})")
    return engine


def indexes(engine: sa.Engine) -> dict[str, list[Any]]:
    with engine.connect() as connection:
        inspector = sa.inspect(connection)
        return {ix["name"]: ix["column_names"] for ix in inspector.get_indexes("t")}


PLANS = {
    "two-alters": [{"op": "alter_column", "table": "t", "column": "a", "type": "BIGINT"},
                   {"op": "alter_column", "table": "t", "column": "b", "type": "BIGINT"}],
    "rename-and-alter": [{"op": "rename_column", "table": "t", "column": "a", "new_name": "a2"},
                         {"op": "alter_column", "table": "t", "column": "b", "type": "BIGINT"}],
    "alter-and-rename": [{"op": "alter_column", "table": "t", "column": "b", "type": "BIGINT"},
                         {"op": "rename_column", "table": "t", "column": "a", "new_name": "a2"}],
    "alter-with-new-names": [{"op": "alter_column", "table": "t", "column": "a", "type": "BIGINT", "new_name": "a2"},
                             {"op": "alter_column", "table": "t", "column": "b", "type": "BIGINT"}],
    "both-with-new-names": [
        {"op": "alter_column", "table": "t", "column": "a", "type": "BIGINT", "new_name": "a2"},
        {"op": "alter_column", "table": "t", "column": "b", "type": "BIGINT", "new_name": "b2"}],
}


@pytest.mark.parametrize("operations", PLANS.values(), ids=PLANS.keys())
def test_two_changed_columns_of_one_index(zdm_database_url: str, operations: list[dict[str, Any]]) -> None:
    engine = table(zdm_database_url)
    plan = planfile.parse({"id": "ab", "operations": operations})
    run = runner(engine)
    run.start(plan)
    run.rollback(plan.id)
    assert indexes(engine) == {"t_ab": ["a", "b"]}
    run.start(plan)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE t SET b = 100 WHERE id = 3")
    run.complete(plan.id)
    names = {op["column"]: op.get("new_name", op["column"]) for op in operations}
    names.setdefault("b", "b")
    assert indexes(engine) == {"t_ab": [names["a"], names["b"]]}
    with engine.connect() as connection:
        assert connection.exec_driver_sql(f"SELECT {names['a']}, {names['b']} FROM t WHERE id = 3").one() == (3, 100)


def test_a_unique_constraint_a_check_and_a_foreign_key_over_two_changed_columns(zdm_database_url: str) -> None:
    """The same for the constraints: one copy over both new columns, which takes the name."""
    engine = table(zdm_database_url, ", CONSTRAINT t_ab_uq UNIQUE (a, b), CONSTRAINT t_ck CHECK (a < b)")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE child (id int PRIMARY KEY, a int, b int, "
                                   "CONSTRAINT child_fk FOREIGN KEY (a, b) REFERENCES t (a, b))")
        connection.exec_driver_sql("INSERT INTO child VALUES (1, 1, 2)")
    plan = planfile.parse({"id": "ab", "operations": PLANS["two-alters"]})
    run = runner(engine)
    run.start(plan)
    run.complete(plan.id)
    with engine.connect() as connection:
        inspector = sa.inspect(connection)
        assert [(u["name"], u["column_names"]) for u in inspector.get_unique_constraints("t")] == [
            ("t_ab_uq", ["a", "b"])]
        assert [c["name"] for c in inspector.get_check_constraints("t")] == ["t_ck"]
        assert [(k["name"], k["constrained_columns"], k["referred_columns"])
                for k in inspector.get_foreign_keys("child")] == [("child_fk", ["a", "b"], ["a", "b"])]
        assert {c["name"]: str(c["type"]) for c in inspector.get_columns("t")}["b"] == "BIGINT"
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO t (a, b) VALUES (5, 1)")  # the check holds
    if engine.dialect.name == "postgresql":  # SQLite enforces foreign keys only when asked to
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO child VALUES (2, 1, 1)")  # so does the foreign key
