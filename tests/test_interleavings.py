"""Random interleavings of old-app and new-app writes during a migration, on both databases.

The workload test (test_workload.py) writes one of each kind, in order; here Hypothesis draws
whole sequences of writes of every kind (inserts naming any subset of columns, updates of any
column, upserts, deletes) from either app version, with awkward values (quotes, unicode, empty
strings, NULLs, values equal to a default, duplicates), on rows the backfill has and has not
reached, and how the migration ends (rollback or complete). Each write must do in the database
what the reference model says it does (succeed with the same row, or be refused), and the triggers
must leave nothing behind. A disagreement is shrunk to the shortest sequence that shows it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import Phase, apply_phases, assert_agrees, rollback_model, runner, setup, zdm_objects
from workload import Client, sqlite_app_engine, workload_schema

from zdm import planfile
from zdm.model import ColumnType
from zdm.runner import Reporter

OPERATIONS = [
    {"op": "rename_column", "table": "users", "column": "email", "new_name": "email_address"},  # NOT NULL, unique
    {"op": "rename_column", "table": "users", "column": "name", "new_name": "display_name"},  # default 'anon'
    {"op": "alter_column", "table": "users", "column": "code", "type": "INTEGER", "new_name": "code_num"},
    {"op": "alter_column", "table": "users", "column": "qty", "type": "BIGINT"},  # NOT NULL DEFAULT 1
]
ROWS = 12

text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=8)
#: A value as a write names it: a fresh one of the column's type, NULL, an awkward text, a default, a duplicate.
kinds = st.one_of(st.sampled_from(["fresh", "null", "default", "same"]), text)
write = st.tuples(
    st.sampled_from(["old", "new"]),
    st.sampled_from(["insert", "update", "update", "upsert", "delete"]),
    st.integers(0, 10_000),  # which row
    st.lists(st.tuples(st.integers(0, 50), kinds), max_size=5),  # which columns, with what
)
plan_ids = itertools.count()


class StopBeforeBackfill(Reporter):
    def phase(self, plan: Any, phase: Phase) -> None:
        if phase is Phase.MIGRATING:
            raise KeyboardInterrupt


def reset(engine: sa.Engine) -> None:
    with engine.begin() as connection:
        metadata = sa.MetaData()
        metadata.reflect(connection)
        metadata.drop_all(connection)


def named(client: Client, fields: list[tuple[int, Any]], number: int) -> dict[str, Any]:
    """The values a write names: columns of the client's version, picked by index."""
    known = [n for n in client.view.columns if n != "id" and n in client.physical.columns]
    values: dict[str, Any] = {}
    for pick, kind in fields:
        column = known[pick % len(known)]
        column_type = client.physical.column(column).type
        if kind == "null":
            values[column] = None
        elif kind == "default":
            values[column] = client.physical.column(column).default_value()
        elif kind == "same":  # the value another row has: a duplicate where the column is unique
            values[column] = next((row[column] for row in client.physical.rows), None)
        elif isinstance(kind, str) and kind != "fresh" and column_type == ColumnType.TEXT \
                and not column.startswith("code"):
            values[column] = kind
        else:
            values[column] = client.fresh(column, number)
    return values


def digits(column: str, column_type: ColumnType, n: int) -> Any:
    return f"{n:05d}" if column.startswith("code") and column_type == ColumnType.TEXT else None


def play(app: sa.Engine, model: Any, original: Any, final: Any, writes: list[Any], base: int) -> None:
    clients = {"old": Client(app, model, "old", original.table("users"), digits),
               "new": Client(app, model, "new", final.table("users"), digits)}
    for number, (version, kind, pick, fields) in enumerate(writes, base):
        client = clients[version]
        keys = sorted(row["id"] for row in client.physical.rows)
        key = keys[pick % len(keys)] if kind in ("update", "delete") or pick % 2 else number
        values = named(client, fields, number)
        if kind == "insert":
            client.insert({"id": number, **values})
        elif kind == "update" and values:
            client.update(key, values)
        elif kind == "upsert":
            client.upsert({"id": key, **values})
        elif kind == "delete":
            client.delete(key)
    assert_agrees(app, model)


@settings(max_examples=int(os.environ.get("ZDM_INTERLEAVINGS", "12")), deadline=None,
          derandomize=os.environ.get("CI") == "true",  # CI replays the same examples; local runs explore
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(before_backfill=st.lists(write, max_size=6), after=st.lists(write, min_size=1, max_size=8),
       complete=st.booleans())
def test_any_interleaving_of_old_and_new_writes_agrees_with_the_model(
        zdm_database_url: str, before_backfill: list[Any], after: list[Any], complete: bool) -> None:
    engine = sa.create_engine(zdm_database_url)
    reset(engine)
    engine.dispose()
    model = workload_schema(ROWS)
    engine = setup(zdm_database_url, model)
    app = sqlite_app_engine(zdm_database_url)
    dialect = engine.dialect.name
    plan = planfile.parse({"id": f"mix-{next(plan_ids)}", "operations": OPERATIONS})
    original, final = model.copy(), model.copy()
    apply_phases(plan, final, dialect, Phase.EXPANDING, Phase.MIGRATING, Phase.CONTRACTING)
    try:
        with contextlib.suppress(KeyboardInterrupt):  # stopped before the backfill: no row reached yet
            type(runner(engine))(engine, StopBeforeBackfill(), {"batch_size": 5}).start(plan)
        apply_phases(plan, model, dialect, Phase.EXPANDING)
        play(app, model, original, final, before_backfill, base=1_000)
        runner(engine, batch_size=5).start(plan)
        apply_phases(plan, model, dialect, Phase.MIGRATING)
        assert_agrees(engine, model)
        play(app, model, original, final, after, base=2_000)
        if complete:
            runner(engine).complete(plan.id)
            apply_phases(plan, model, dialect, Phase.CONTRACTING)
        else:
            runner(engine).rollback(plan.id)
            rollback_model(plan, model, dialect)
        assert_agrees(engine, model)
        assert zdm_objects(engine) == []
    finally:
        app.dispose()
        engine.dispose()

