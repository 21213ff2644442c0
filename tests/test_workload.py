"""Every operation of the catalogue under the app workload, on SQLite and PostgreSQL.

For each operation, old-version and new-version clients (see workload.py) do every kind of write
in every window of the migration: after expand with the backfill not begun (a runner stopped
there, as a kill would leave it), after ``start``, after ``rollback`` (the old app alone), after a
second ``start``, and after ``complete`` (the new app alone). The reference model says what each
write must do; the database must agree, write by write, and the whole catalogue must agree after
each window. Rollback must restore the catalogue exactly, and no zdm object may be left.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from support import Phase, apply_phases, assert_agrees, learn_catalogue, rollback_model, runner, setup, zdm_objects
from workload import TYPED_POSTGRESQL, Client, Round, Values, sqlite_app_engine, workload_schema

from zdm import planfile
from zdm.model import Column, ColumnType
from zdm.plan import MigrationPlan
from zdm.runner import Reporter


class Interrupted(BaseException):
    """The runner stopped as a kill would stop it: nothing compensated, state saved."""


class StopBefore(Reporter):
    def __init__(self, phase: Phase) -> None:
        self.at = phase

    def phase(self, plan: MigrationPlan, phase: Phase) -> None:
        if phase is self.at:
            raise Interrupted


def digits(column: str, column_type: ColumnType, n: int) -> Any:
    """``code`` holds digits while it is text, so that a conversion to INTEGER always succeeds."""
    return f"{n:05d}" if column.startswith("code") and column_type == ColumnType.TEXT else None


@dataclass
class Case:
    name: str
    operations: list[dict[str, Any]]
    table: str = "users"
    new_table: str | None = None  # the name the new app uses (rename_table)
    values: Values | None = None
    setup_sql: list[str] = field(default_factory=list)
    #: Columns the apps keep non-NULL, and in which windows (1 after expand ... 5 after complete).
    no_nulls: tuple[str, ...] = ()
    no_nulls_in: tuple[int, ...] = (1,)
    #: The databases that have the case's types (empty: both).
    databases: tuple[str, ...] = ()
    #: What ``setup_sql`` did to the rows, done to the model.
    model_rows: Callable[[Any], None] | None = None
    #: The windows whose apps upsert (INSERT ... ON CONFLICT needs a key or unique index to name).
    upserts_in: tuple[int, ...] = (1, 2, 3, 4, 5)


def op(kind: str, **fields: Any) -> dict[str, Any]:
    return {"op": kind, "table": "users", **fields}


ORDER_STATUS = "CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped')"

CASES = [
    Case("rename_not_null_unique_referenced", [op("rename_column", column="email", new_name="email_address")]),
    Case("rename_with_default_indexed", [op("rename_column", column="name", new_name="display_name")]),
    Case("rename_checked", [op("rename_column", column="age", new_name="years")]),
    Case("rename_foreign_key", [op("rename_column", column="team_id", new_name="team")]),
    Case("two_renames_one_not_null", [op("rename_column", column="code", new_name="ref_code"),
                                      op("rename_column", column="email", new_name="login")]),
    Case("alter_not_null_default", [op("alter_column", column="qty", type="BIGINT")]),
    Case("alter_bigint_to_text", [op("alter_column", column="score", type="TEXT")]),
    Case("alter_text_to_integer_renamed", [op("alter_column", column="code", type="INTEGER", new_name="code_num")],
         values=digits),
    Case("alter_checked", [op("alter_column", column="age", type="BIGINT")]),
    Case("alter_foreign_key", [op("alter_column", column="team_id", type="BIGINT")]),
    # The key of teams, with users.team_id (ON DELETE SET NULL) widened alongside (tests/test_widen_key.py
    # has the parent and two referencing tables written at once).
    Case("alter_primary_key", [{"op": "alter_column", "table": "teams", "column": "id", "type": "BIGINT"}],
         table="teams"),
    Case("add_column", [op("add_column", column="nickname", type="TEXT")]),
    # real types (workload.TYPED): in place, dual column, added
    Case("alter_varchar_to_text_in_place", [op("alter_column", column="handle", type="TEXT")]),
    Case("alter_numeric_precision_in_place", [op("alter_column", column="price", type="NUMERIC(14,2)")]),
    Case("alter_numeric_scale_dual", [op("alter_column", column="price", type="NUMERIC(12,4)")]),
    Case("alter_varchar_narrower_renamed", [op("alter_column", column="handle", type="VARCHAR(30)",
                                               new_name="handle_short")]),
    Case("alter_uuid_to_text", [op("alter_column", column="ref", type="TEXT")], databases=("postgresql",)),
    Case("alter_timestamp_to_timestamptz", [op("alter_column", column="created_at", type="TIMESTAMPTZ")],
         databases=("postgresql",)),
    Case("add_column_numeric_default", [op("add_column", column="balance", type="NUMERIC(12,2)", nullable=False,
                                           default="0.00")]),
    Case("add_column_uuid", [op("add_column", column="external_id", type="UUID")], databases=("postgresql",)),
    Case("add_column_array", [op("add_column", column="labels", type="VARCHAR(20)[]")], databases=("postgresql",)),
    Case("add_column_enum", [op("add_column", column="stage", type="order_status")], databases=("postgresql",),
         setup_sql=[ORDER_STATUS]),
    Case("alter_text_to_enum", [op("alter_column", column="name", type="order_status", default="new")],
         databases=("postgresql",),
         setup_sql=[ORDER_STATUS, "UPDATE users SET name = 'paid' WHERE name IS NOT NULL",
                    "ALTER TABLE users ALTER COLUMN name SET DEFAULT 'new'"],
         model_rows=lambda m: [r.update(name="paid") for r in m.table("users").rows if r["name"] is not None],
         values=lambda column, _, n: ("new", "paid", "shipped")[n % 3] if column == "name" else None),
    # The label is usable by both apps once start returns; rollback keeps it (PostgreSQL cannot drop one).
    Case("add_enum_value", [op("add_enum_value", column="stage", value="refunded", after="paid")],
         databases=("postgresql",), setup_sql=[ORDER_STATUS, "ALTER TABLE users ADD COLUMN stage order_status"],
         model_rows=lambda m: m.table("users").add_column(Column("stage", m.types["order_status"])),
         values=lambda column, t, n: t.labels[n % len(t.labels)] if column == "stage" else None),
    Case("create_table_typed", [{"op": "create_table", "table": "invoices", "columns": [
        {"name": "id", "type": "INTEGER", "primary_key": True}, {"name": "number", "type": "VARCHAR(12)"},
        {"name": "total", "type": "NUMERIC(12,2)", "nullable": False, "default": "0.00"},
        {"name": "due", "type": "DATE"}]}]),
    Case("add_column_not_null_default", [op("add_column", column="active", type="BOOLEAN", nullable=False,
                                            default=True)]),
    Case("add_column_derived", [op("add_column", column="email_lower", type="TEXT", from_column="email",
                                   transform="lower")]),
    Case("drop_column", [op("drop_column", column="legacy_flag")]),
    Case("set_not_null_fill", [op("set_not_null", column="name", fill="unknown")]),
    # Without fill, NULLs written before the check stands make start refuse, as it should.
    Case("set_not_null", [op("set_not_null", column="score")], no_nulls=("score",), no_nulls_in=(1, 3)),
    # NULLs written while the column allows them make rollback refuse, as it should.
    Case("drop_not_null", [op("drop_not_null", column="email")], no_nulls=("email",), no_nulls_in=(1, 2)),
    Case("set_default", [op("set_default", column="name", default="someone")]),
    Case("drop_default", [op("drop_default", column="name")]),
    # The apps respect the new check (on SQLite it holds from migrate's rebuild, and a row that
    # breaks it then fails the plan, as designed): their ages stay below 500 however many writes.
    Case("add_check", [op("add_check", name="users_age_max", condition="age < 500")],
         values=lambda column, _, n: n % 400 + 1 if column == "age" else None),
    Case("add_unique", [op("add_unique", name="users_code_key", columns=["code"])]),
    Case("add_foreign_key", [op("add_foreign_key", name="users_qty_team_fk", columns=["qty"], ref_table="teams",
                                ref_columns=["id"])],
         values=lambda column, _, n: n % 4 + 1 if column == "qty" else None),  # qty names a team
    Case("drop_constraint", [op("drop_constraint", name="users_age_check")]),
    # ids unique, and never NULL while nothing refuses it (after rollback), so that start may run again.
    Case("add_primary_key", [{"op": "add_primary_key", "table": "events", "columns": ["id"]}], table="events",
         values=lambda column, _, n: n if column == "id" else None, no_nulls=("id",), no_nulls_in=(3,),
         upserts_in=(5,)),
    Case("create_index", [op("create_index", name="users_score_ix", columns=["score"])]),
    Case("drop_index", [op("drop_index", name="users_name_ix")]),
    Case("create_table", [{"op": "create_table", "table": "audit", "columns": [
        {"name": "id", "type": "INTEGER", "primary_key": True}, {"name": "what", "type": "TEXT"}]}]),
    Case("drop_table", [{"op": "drop_table", "table": "orders"}], table="orders"),
    Case("rename_table", [op("rename_table", new_name="members")], new_table="members"),
    Case("sql", [{"op": "sql", "table": "users", "up": "CREATE VIEW adults AS SELECT id, email FROM users "
                  "WHERE age >= 18", "down": "DROP VIEW adults"}]),
]


def window(number: int, app: sa.Engine, model: Any, case: Case, original: Any, final: Any, *versions: str) -> Round:
    """The clients of the app versions that run in window ``number``, and what they write there."""
    found = {"old": original.tables.get(case.table), "new": final.tables.get(case.new_table or case.table)}
    through_a_view = case.new_table is not None and app.dialect.name == "sqlite"
    clients = [Client(app, model, version, found[version], case.values,
                      upserts=not (version == "old" and through_a_view) and number in case.upserts_in)
               for version in versions if found[version] is not None]
    return Round(clients, reached=number, unreached=29 + number,
                 avoid_null=frozenset(case.no_nulls if number in case.no_nulls_in else ()),
                 breaking=number in (2, 4, 5))  # once every rule the plan adds stands, on both databases


#: What marks a case as one about real types: a typed column of the workload, or a type's name.
TYPE_WORDS = (*(f'"{name}"' for name in TYPED_POSTGRESQL), "VARCHAR", "NUMERIC", "UUID", "DATE", "TIMESTAMPTZ",
              '[]"', "order_status", "INTERVAL")


def about_types(case: Case) -> bool:
    written = json.dumps([case.operations, case.setup_sql])
    return bool(case.databases) or any(word in written for word in TYPE_WORDS)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_both_app_versions_keep_working(zdm_database_url: str, case: Case) -> None:
    if case.databases and "" not in case.databases and sa.make_url(zdm_database_url).get_backend_name() \
            not in case.databases:
        pytest.skip("the database lacks the type")
    # The real-type columns cost a third of a case's time (every window writes each column): only
    # the cases about types get them.
    model = workload_schema(typed=sa.make_url(zdm_database_url).get_backend_name() if about_types(case) else None)
    engine = setup(zdm_database_url, model)
    with engine.begin() as connection:
        for sql in case.setup_sql:
            connection.exec_driver_sql(sql)
    learn_catalogue(engine, model)
    if case.model_rows is not None:
        case.model_rows(model)
    app = sqlite_app_engine(zdm_database_url)
    dialect = engine.dialect.name
    plan = planfile.parse({"id": case.name.replace("_", "-"), "operations": case.operations})
    original = model.copy()
    final = model.copy()
    apply_phases(plan, final, dialect, Phase.EXPANDING, Phase.MIGRATING, Phase.CONTRACTING)
    run = runner(engine, batch_size=7)
    try:
        # expand committed, the backfill not begun: every original row is one it has not reached
        with pytest.raises(Interrupted):
            type(run)(engine, StopBefore(Phase.MIGRATING), run.overrides).start(plan)
        apply_phases(plan, model, dialect, Phase.EXPANDING)
        assert_agrees(engine, model)
        window(1, app, model, case, original, final, "old", "new").play(10_000)
        assert_agrees(engine, model)

        run.start(plan)  # resumed: the backfill runs
        apply_phases(plan, model, dialect, Phase.MIGRATING)
        assert_agrees(engine, model)
        window(2, app, model, case, original, final, "old", "new").play(20_000)
        assert_agrees(engine, model)

        run.rollback(plan.id)
        rollback_model(plan, model, dialect)
        assert_agrees(engine, model)
        restored = model.copy()
        for name, table in original.tables.items():  # the catalogue exactly as it was
            assert restored.table(name).catalogue() == table.catalogue()
        assert zdm_objects(engine) == []
        window(3, app, model, case, original, final, "old").play(30_000)

        run.start(plan)
        apply_phases(plan, model, dialect, Phase.EXPANDING, Phase.MIGRATING)
        window(4, app, model, case, original, final, "old", "new").play(40_000)
        assert_agrees(engine, model)

        run.complete(plan.id)
        apply_phases(plan, model, dialect, Phase.CONTRACTING)
        assert_agrees(engine, model)
        assert zdm_objects(engine) == []
        for name, table in final.tables.items():  # the schema the plan declares, nothing less
            assert model.table(name).catalogue() == table.catalogue()
        window(5, app, model, case, original, final, "new").play(50_000)
        assert_agrees(engine, model)
    finally:
        app.dispose()
        engine.dispose()
