"""Composite primary keys wherever zdm uses a key: backfill batches, dual-write triggers, the model, and
the widening of one column of the key.

``lines`` is keyed by (tenant, id). Its ``id`` is widened INTEGER -> BIGINT through start / rollback /
start / complete with the app workload writing in every window (old and new versions, on both
databases, compared with the model write by write); the backfill walks the composite key in batches
of 7; the unique index that becomes the primary key keeps the key's column order. A dual-column
type change of another column of the table (``qty`` to TEXT) goes through the same windows.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from support import Phase, apply_phases, assert_agrees, learn_catalogue, rollback_model, runner, zdm_objects
from test_workload import Interrupted, StopBefore
from workload import Client, Round, sqlite_app_engine

from zdm import planfile
from zdm.errors import PlanInvalid
from zdm.model import Column, ColumnType, Schema, Table


def lines_schema(rows: int = 30) -> Schema:
    lines = Table("lines", [Column("tenant", ColumnType.INTEGER, nullable=False, primary_key=True),
                            Column("id", ColumnType.INTEGER, nullable=False, primary_key=True),
                            Column("note", ColumnType.TEXT), Column("qty", ColumnType.INTEGER)])
    for i in range(1, rows + 1):
        lines.insert({"tenant": i % 3 + 1, "id": i, "note": f"line {i}", "qty": i})
    return Schema({"lines": lines})


def window(number: int, app: sa.Engine, model: Schema, original: Schema, final: Schema, *versions: str) -> Round:
    shapes = {"old": original, "new": final}
    # No upsert: ON CONFLICT (id) needs a unique index on id alone, which a composite key is not.
    clients = [Client(app, model, version, shapes[version].table("lines"), upserts=False) for version in versions]
    return Round(clients, reached=number, unreached=25 + number, breaking=number in (2, 4, 5))


@pytest.mark.parametrize("operation", [
    {"op": "alter_column", "table": "lines", "column": "id", "type": "BIGINT"},
    {"op": "alter_column", "table": "lines", "column": "qty", "type": "TEXT"},
], ids=["widen-key-column", "retype-other-column"])
def test_composite_key_under_the_app_workload(zdm_database_url: str, operation: dict[str, Any]) -> None:
    model = lines_schema()
    engine = sa.create_engine(zdm_database_url)
    with engine.begin() as connection:  # NOT NULL written out: SQLite lets a composite key's columns be NULL
        connection.exec_driver_sql("CREATE TABLE lines (tenant INTEGER NOT NULL, id INTEGER NOT NULL, note TEXT, "
                                   "qty INTEGER, PRIMARY KEY (tenant, id))")
        connection.execute(sa.text("INSERT INTO lines VALUES (:tenant, :id, :note, :qty)"), model.table("lines").rows)
    learn_catalogue(engine, model)
    app = sqlite_app_engine(zdm_database_url)
    dialect = engine.dialect.name
    plan = planfile.parse({"id": "composite", "operations": [operation]})
    original, final = model.copy(), model.copy()
    apply_phases(plan, final, dialect, Phase.EXPANDING, Phase.MIGRATING, Phase.CONTRACTING)
    run = runner(engine, batch_size=7)
    versions = ("old", "new") if operation["column"] == "id" else ("old",)  # TEXT qty: the new app after complete
    try:
        with pytest.raises(Interrupted):
            type(run)(engine, StopBefore(Phase.MIGRATING), run.overrides).start(plan)
        apply_phases(plan, model, dialect, Phase.EXPANDING)
        window(1, app, model, original, final, *versions).play(10_000)
        assert_agrees(engine, model)

        run.start(plan)
        apply_phases(plan, model, dialect, Phase.MIGRATING)
        assert_agrees(engine, model)
        window(2, app, model, original, final, *versions).play(20_000)
        assert_agrees(engine, model)

        run.rollback(plan.id)
        rollback_model(plan, model, dialect)
        assert_agrees(engine, model)
        assert zdm_objects(engine) == []
        window(3, app, model, original, final, "old").play(30_000)

        run.start(plan)
        apply_phases(plan, model, dialect, Phase.EXPANDING, Phase.MIGRATING)
        window(4, app, model, original, final, *versions).play(40_000)
        assert_agrees(engine, model)

        run.complete(plan.id)
        apply_phases(plan, model, dialect, Phase.CONTRACTING)
        assert_agrees(engine, model)
        assert zdm_objects(engine) == []
        for name, table in final.tables.items():
            assert model.table(name).catalogue() == table.catalogue()
        window(5, app, model, original, final, "new").play(50_000)
        assert_agrees(engine, model)
        with engine.connect() as connection:
            key = sa.inspect(connection).get_pk_constraint("lines")
            assert key["constrained_columns"] == ["tenant", "id"]  # the key's own order, not the columns'
            found = {c["name"]: str(c["type"]) for c in sa.inspect(connection).get_columns("lines")}
        assert found[operation["column"]] == operation["type"]
    finally:
        app.dispose()
        engine.dispose()


def test_a_foreign_key_to_a_composite_key_is_refused(zdm_database_url: str) -> None:
    """A multi-column foreign key to the key: one line, nothing runs."""
    engine = sa.create_engine(zdm_database_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE lines (tenant integer, id integer, PRIMARY KEY (tenant, id))")
            connection.exec_driver_sql("CREATE TABLE marks (id integer PRIMARY KEY, tenant integer, line integer, "
                                       "FOREIGN KEY (tenant, line) REFERENCES lines (tenant, id))")
        plan = planfile.parse({"id": "refused", "operations": [
            {"op": "alter_column", "table": "lines", "column": "id", "type": "BIGINT"}]})
        with pytest.raises(PlanInvalid, match="zdm widens single-column foreign keys only"):
            runner(engine).start(plan)
        plan = planfile.parse({"id": "refused", "operations": [
            {"op": "alter_column", "table": "lines", "column": "id", "type": "UUID", "up": "gen_random_uuid()"}]})
        with pytest.raises(PlanInvalid, match="changes a single-column key only to UUID"):
            runner(engine).start(plan)
        assert zdm_objects(engine) == []
    finally:
        engine.dispose()
