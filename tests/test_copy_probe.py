"""Every index and constraint copy a type change builds is known to build before anything runs (breaker
finding 4): a WHERE clause, expression or CHECK with an operator the new type lacks is refused by
``validate`` and ``start``, and the database is left as it was."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from support import runner, zdm_objects

from zdm import db, planfile
from zdm.cli import main
from zdm.errors import PlanInvalid

CASES = {
    "enum-in-a-where-clause": (
        ["CREATE TYPE st AS ENUM ('new', 'shipped')",
         "CREATE TABLE t (id serial PRIMARY KEY, ref int, status st)",
         "CREATE UNIQUE INDEX t_ref_active ON t (ref) WHERE status <> 'shipped'"],
        {"column": "status", "type": "TEXT"}, "index t_ref_active"),
    "an-expression": (
        ["CREATE TABLE t (id serial PRIMARY KEY, a int)", "CREATE INDEX t_a1 ON t ((a + 1))"],
        {"column": "a", "type": "TEXT"}, "index t_a1"),
    "a-check": (
        ["CREATE TABLE t (id serial PRIMARY KEY, a int CONSTRAINT t_a_positive CHECK (a > 0))"],
        {"column": "a", "type": "TEXT"}, "constraint t_a_positive"),
}


@pytest.mark.parametrize(("setup", "change", "named"), CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("zdm_database_url", ["postgresql"], indirect=True)
def test_a_copy_that_cannot_build_is_refused_before_anything_runs(zdm_database_url: str, setup: list[str],
                                                                  change: dict[str, str], named: str,
                                                                  tmp_path: object) -> None:
    engine = db.create_engine(zdm_database_url)
    with engine.begin() as connection:
        for statement in setup:
            connection.exec_driver_sql(statement)
        connection.exec_driver_sql("INSERT INTO t (id) SELECT g FROM generate_series(1, 20) g")
    before = sa.inspect(engine).get_columns("t")
    plan = {"id": "p", "operations": [{"op": "alter_column", "table": "t", **change}]}
    with pytest.raises(PlanInvalid, match=f"{named} on t cannot be built on the new TEXT column"):
        runner(engine).start(planfile.parse(plan))
    path = f"{tmp_path}/p.yaml"
    with open(path, "w") as out:
        json.dump(plan, out)
    result = CliRunner().invoke(main, ["validate", path, "--db", zdm_database_url])
    assert result.exit_code == 2, result.output
    assert f"{named} on t cannot be built" in result.output
    assert len(result.output.strip().splitlines()) == 1
    engine.dispose()
    engine = db.create_engine(zdm_database_url)
    assert [c["name"] for c in sa.inspect(engine).get_columns("t")] == [c["name"] for c in before]
    assert zdm_objects(engine) == []
    with engine.connect() as connection:
        left = connection.exec_driver_sql("SELECT count(*) FROM pg_class WHERE relname = 'zdm_copy_probe'")
        assert left.scalar() == 0


@pytest.mark.parametrize("zdm_database_url", ["postgresql"], indirect=True)
def test_a_copy_that_builds_is_not_refused(zdm_database_url: str) -> None:
    """The probe does not refuse what builds: a WHERE clause and an expression of an INTEGER made BIGINT."""
    engine = db.create_engine(zdm_database_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (id serial PRIMARY KEY, ref int, status int)")
        connection.exec_driver_sql("CREATE INDEX t_active ON t (ref) WHERE status <> 3")
        connection.exec_driver_sql("CREATE INDEX t_lower ON t ((status + 1))")
    plan = planfile.parse({"id": "p", "operations": [{"op": "alter_column", "table": "t", "column": "status",
                                                      "type": "BIGINT"}]})
    run = runner(engine)
    run.start(plan)
    run.complete(plan.id)
    assert {ix["name"] for ix in sa.inspect(engine).get_indexes("t")} == {"t_active", "t_lower"}
