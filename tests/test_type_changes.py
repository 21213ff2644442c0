"""The issue's ``orders`` table, changed the cheapest safe way the two types allow, on both databases.

In place where the database keeps every value as it is (PostgreSQL: metadata only, the table's
storage unchanged); the dual-column path for the rest. After every phase the database agrees with
the reference model, which carries the exact types (Decimal at the column's scale, aware datetimes...).
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from support import apply_phases, assert_agrees, rollback_model, runner

from zdm import db, introspect, oracle, planfile
from zdm.cli import main
from zdm.dialects import for_connection
from zdm.model import Schema
from zdm.plan import Phase

ORDERS = {
    "postgresql": "CREATE TABLE orders (id serial PRIMARY KEY, customer_email varchar(255) NOT NULL, "
                  "amount numeric(10,2) NOT NULL, placed_at timestamptz NOT NULL DEFAULT now(), ref uuid, "
                  "status varchar(20) DEFAULT 'new', noted timestamp)",
    "sqlite": "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_email VARCHAR(255) NOT NULL, "
              "amount NUMERIC(10, 2) NOT NULL, status VARCHAR(20) DEFAULT 'new', noted TIMESTAMP)",
}
STATUS_ENUM = "CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped')"


def orders(url: str) -> tuple[sa.Engine, Schema]:
    """An engine on a fresh ``orders`` table with a few rows, and the model read from it."""
    engine = db.create_engine(url)
    name = engine.dialect.name
    with engine.begin() as connection:
        if name == "postgresql":
            connection.exec_driver_sql(STATUS_ENUM)
        connection.exec_driver_sql(ORDERS[name])
        for i in range(1, 8):
            row: dict[str, Any] = {"customer_email": f"c{i}@example.com", "amount": Decimal(f"{i}9.95"),
                                   "status": "new" if i % 2 else "paid", "noted": dt.datetime(2024, 2, 29, i)}
            if name == "postgresql":
                row["ref"] = uuid.UUID(int=i)
            connection.execute(sa.Table("orders", sa.MetaData(), autoload_with=connection).insert().values(row))
        model = oracle.read(connection)
    return engine, model


def write(engine: sa.Engine, model: Schema, values: dict[str, Any], key: int | None = None) -> None:
    """An app's insert (``key`` None) or update, on the database and the model alike."""
    table = sa.Table("orders", sa.MetaData(), autoload_with=engine)
    if key is None and "placed_at" in table.c:  # the model does not evaluate now()
        values = {"placed_at": dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=dt.UTC), **values}
    with engine.begin() as connection:
        if key is None:
            new_id = connection.execute(table.insert().values(values).returning(table.c.id)).scalar_one()
            model.insert("orders", {"id": new_id, **values})
        else:
            connection.execute(table.update().where(table.c.id == key).values(values))
            model.update("orders", {"id": key}, values)


def storage(engine: sa.Engine) -> int | None:
    with engine.connect() as connection:
        return for_connection(connection).storage_ids(connection, ["orders"]).get("orders")


IN_PLACE = [  # (change, a value only the new type takes or None, databases)
    ({"column": "status", "type": "TEXT"}, {"status": "x" * 40}, ("postgresql", "sqlite")),
    ({"column": "customer_email", "type": "VARCHAR(320)"}, {"customer_email": "e" * 300}, ("postgresql", "sqlite")),
    ({"column": "amount", "type": "NUMERIC(14,2)"}, {"amount": Decimal("123456789012.25")}, ("postgresql", "sqlite")),
    ({"column": "noted", "type": "TIMESTAMPTZ"},
     {"noted": dt.datetime(2024, 3, 1, 8, tzinfo=dt.timezone(dt.timedelta(hours=14)))}, ("postgresql",)),
]


@pytest.mark.parametrize(("change", "wide", "databases"), IN_PLACE, ids=[c[0]["type"] for c in IN_PLACE])
def test_a_widening_change_runs_in_place(zdm_database_url: str, change: dict[str, Any], wide: dict[str, Any],
                                         databases: tuple[str, ...]) -> None:
    engine, model = orders(zdm_database_url)
    name = engine.dialect.name
    if name not in databases:
        pytest.skip(f"{name} has no such type")
    plan = planfile.parse({"id": "widen", "operations": [{"op": "alter_column", "table": "orders", **change}]})
    run = runner(engine)
    before = storage(engine)
    for attempt in ("rollback", "complete"):
        run.start(plan)
        apply_phases(plan, model, name, Phase.EXPANDING, Phase.MIGRATING)
        write(engine, model, {"customer_email": "old@app", "amount": Decimal("1.50"), "status": "paid"})
        write(engine, model, {"status": "shipped"}, key=1)
        assert_agrees(engine, model)
        if attempt == "rollback":
            run.rollback(plan.id)
            rollback_model(plan, model, name)
            assert_agrees(engine, model)
            continue
        run.complete(plan.id)
        apply_phases(plan, model, name, Phase.CONTRACTING)
        assert_agrees(engine, model)
    write(engine, model, {"customer_email": "new@app", "amount": Decimal("2.00"), **wide})
    write(engine, model, wide, key=2)
    assert_agrees(engine, model)
    with engine.connect() as connection:
        assert oracle.read(connection).table("orders").column(change["column"]).type.name == change["type"]
    if name == "postgresql":
        assert storage(engine) == before  # no rewrite


@pytest.mark.parametrize("database_change", [
    ("status", "TEXT", "in place, metadata only"), ("amount", "NUMERIC(14,2)", "in place, metadata only"),
    ("amount", "NUMERIC(12,4)", "dual-write triggers"), ("customer_email", "VARCHAR(50)", "dual-write triggers"),
], ids=lambda v: f"{v[0]}-{v[1]}")
def test_zdm_plan_shows_the_path_chosen(zdm_database_url: str, tmp_path: Any, database_change: tuple[str, ...]) -> None:
    engine, _ = orders(zdm_database_url)
    column, new_type, shown = database_change
    path = tmp_path / "plan.yaml"
    path.write_text(f"id: t\noperations:\n  - {{op: alter_column, table: orders, column: {column}, "
                    f"type: '{new_type}'}}\n")
    result = CliRunner().invoke(main, ["plan", str(path), "--db", zdm_database_url])
    assert result.exit_code == 0, result.stderr
    if engine.dialect.name == "sqlite" and shown.startswith("in place"):
        shown = "in place, one rebuild"
    assert shown in result.stdout, result.stdout


DUAL = [  # (changes in order, old-app values, new-app values, databases)
    ([{"column": "amount", "type": "NUMERIC(12,4)"}], {"amount": Decimal("12345678.99")},
     {"amount": Decimal("-0.00005")}, ("postgresql", "sqlite")),
    ([{"column": "ref", "type": "TEXT"}, {"column": "ref", "type": "UUID"}], {"ref": uuid.UUID(int=99)},
     {"ref": "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"}, ("postgresql",)),
    ([{"column": "status", "type": "TEXT"}, {"column": "status", "type": "order_status"}], {"status": "paid"},
     {"status": "shipped"}, ("postgresql",)),
    ([{"column": "customer_email", "type": "VARCHAR(50)"}], {"customer_email": "short@old"},
     {"customer_email": "short@new"}, ("postgresql", "sqlite")),
    # wall-clock times of a named zone: an hour that occurs twice, then one that does not exist
    ([{"column": "noted", "type": "TIMESTAMPTZ", "zone": "Europe/Paris"}], {"noted": dt.datetime(2024, 10, 27, 2, 30)},
     {"noted": dt.datetime(2024, 3, 31, 2, 30, tzinfo=dt.timezone(dt.timedelta(hours=-12)))}, ("postgresql",)),
    ([{"column": "placed_at", "type": "TIMESTAMP", "zone": "Pacific/Kiritimati"}],
     {"placed_at": dt.datetime(2024, 2, 29, 23, tzinfo=dt.UTC)}, {"placed_at": dt.datetime(2024, 3, 31, 2, 30)},
     ("postgresql",)),
]


@pytest.mark.parametrize(("changes", "old_values", "new_values", "databases"), DUAL,
                         ids=["numeric-12-4", "uuid-text-uuid", "text-enum", "varchar-narrower", "timestamptz-paris",
                              "timestamp-kiritimati"])
def test_other_changes_take_the_dual_column_path(zdm_database_url: str, changes: list[dict[str, Any]],
                                                 old_values: dict[str, Any], new_values: dict[str, Any],
                                                 databases: tuple[str, ...]) -> None:
    """start / rollback / start / complete, old-app writes during the window, the model after each."""
    engine, model = orders(zdm_database_url)
    name = engine.dialect.name
    if name not in databases:
        pytest.skip(f"{name} has no such type")
    run = runner(engine)
    for number, change in enumerate(changes):
        plan = planfile.parse({"id": f"change{number}", "operations": [
            {"op": "alter_column", "table": "orders", **change}]})
        for attempt in ("rollback", "complete"):
            run.start(plan)
            apply_phases(plan, model, name, Phase.EXPANDING, Phase.MIGRATING)
            write(engine, model, {"customer_email": "old@app", "amount": Decimal("1.50"), **old_values})
            write(engine, model, old_values, key=3)
            assert_agrees(engine, model)
            if attempt == "rollback":
                run.rollback(plan.id)
                rollback_model(plan, model, name)
            else:
                run.complete(plan.id)
                apply_phases(plan, model, name, Phase.CONTRACTING)
            assert_agrees(engine, model)
    write(engine, model, {"customer_email": "new@app", "amount": Decimal("2.00"), **new_values})
    write(engine, model, new_values, key=4)
    assert_agrees(engine, model)
    with engine.connect() as connection:
        assert oracle.read(connection).table("orders").column(changes[-1]["column"]).type.name == changes[-1]["type"]


def test_a_narrowing_change_names_the_rows_that_do_not_fit(zdm_database_url: str) -> None:
    """VARCHAR(255) -> VARCHAR(20): nothing is cut; the check after the backfill names the keys, and
    the failed start leaves the database as it was."""
    engine, model = orders(zdm_database_url)
    write(engine, model, {"customer_email": "a-much-longer-address@example.com"}, key=5)
    plan = planfile.parse({"id": "narrow", "operations": [
        {"op": "alter_column", "table": "orders", "column": "customer_email", "type": "VARCHAR(20)"}]})
    with pytest.raises(Exception, match=r"cast to VARCHAR\(20\) cannot convert.*id=5, customer_email="):
        runner(engine).start(plan)
    assert_agrees(engine, model)
    with engine.connect() as connection:
        assert oracle.read(connection).table("orders").column("customer_email").type.name == "VARCHAR(255)"


def test_in_place_is_cheap_on_a_large_table(zdm_database_url: str) -> None:
    """100,000 rows: the in-place changes keep the table's storage (no rewrite) and each finishes
    well inside the lock budget (500 ms), where a rewrite would take the table for its whole copy."""
    engine = db.create_engine(zdm_database_url)
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's in-place change is a rebuild")
    with engine.begin() as connection:
        connection.exec_driver_sql(ORDERS["postgresql"])
        connection.exec_driver_sql(
            "INSERT INTO orders (customer_email, amount, status, noted, ref) SELECT 'c' || i || '@example.com', "
            "i / 100.0, 'new', timestamp '2024-02-29' + i * interval '1 minute', gen_random_uuid() "
            "FROM generate_series(1, 100000) AS i")
    before = storage(engine)
    plan = planfile.parse({"id": "widen", "operations": [
        {"op": "alter_column", "table": "orders", "column": "status", "type": "TEXT"},
        {"op": "alter_column", "table": "orders", "column": "customer_email", "type": "VARCHAR(320)"},
        {"op": "alter_column", "table": "orders", "column": "amount", "type": "NUMERIC(14,2)"},
        {"op": "alter_column", "table": "orders", "column": "noted", "type": "TIMESTAMPTZ"}]})
    run = runner(engine, lock_timeout_ms=500)
    run.start(plan)
    started = time.monotonic()
    run.complete(plan.id)
    elapsed = time.monotonic() - started
    assert storage(engine) == before
    assert elapsed < 0.5, f"complete took {elapsed:.3f}s"
    with engine.connect() as connection:
        found = introspect.read_table(connection, "orders")
    assert {c: found.column(c).type.name for c in ("status", "customer_email", "amount", "noted")} == {
        "status": "TEXT", "customer_email": "VARCHAR(320)", "amount": "NUMERIC(14,2)", "noted": "TIMESTAMPTZ"}


@pytest.mark.parametrize(("column", "new_type", "refused"), [
    ("status", "VARCHAR(20)", True), ("status", "character varying(20)", True), ("status", "TEXT", False),
    ("status", "VARCHAR(21)", False), ("amount", "NUMERIC(10, 2)", True), ("amount", "NUMERIC(10,3)", False),
])
def test_the_same_type_is_a_no_op_whatever_its_spelling(zdm_database_url: str, column: str, new_type: str,
                                                       refused: bool) -> None:
    """Types compare by value: ``VARCHAR(20)`` -> ``VARCHAR(20)`` is refused as a no-op, ``VARCHAR(20)`` -> ``TEXT``
    is a change (each parse gives a new object, so an identity test would take every type for a new one)."""
    _, model = orders(zdm_database_url)
    plan = planfile.parse({"id": "t", "operations": [
        {"op": "alter_column", "table": "orders", "column": column, "type": new_type}]})
    problems = plan.operations[0].check(model)
    assert any("is already" in p for p in problems) == refused, problems


def test_a_new_enum_value_is_usable_as_soon_as_start_returns(zdm_postgres_url: str, tmp_path: Any) -> None:
    """ALTER TYPE ... ADD VALUE runs in a step of its own outside a transaction: a later step of the
    same start (a column whose default is the new label) and an app right after start both use it,
    which PostgreSQL refuses in the transaction that added it. Rollback keeps the label (PostgreSQL
    cannot drop one; `zdm plan` says so) and every row written with it; start again adds nothing."""
    engine = db.create_engine(zdm_postgres_url)
    with engine.begin() as connection:
        connection.exec_driver_sql(STATUS_ENUM)
        connection.exec_driver_sql("CREATE TABLE tickets (id serial PRIMARY KEY, status order_status NOT NULL "
                                   "DEFAULT 'new')")
        connection.exec_driver_sql("INSERT INTO tickets (status) VALUES ('new'), ('paid'), ('shipped')")
        model = oracle.read(connection)
    path = tmp_path / "plan.yaml"
    path.write_text("id: refunds\noperations:\n"
                    "  - {op: add_enum_value, table: tickets, column: status, value: refunded, after: paid}\n"
                    "  - {op: add_column, table: tickets, column: was, type: order_status, default: refunded}\n")
    shown = CliRunner().invoke(main, ["plan", str(path), "--db", zdm_postgres_url])
    assert shown.exit_code == 0, shown.stderr
    assert "ADD VALUE IF NOT EXISTS 'refunded' AFTER 'paid';\n  -- (runs outside a transaction)" in shown.stdout
    assert "a rollback keeps it: PostgreSQL cannot drop an enum value" in shown.stdout
    assert "PostgreSQL cannot drop an enum value: a rollback leaves 'refunded' in order_status" in shown.stderr
    plan = planfile.load(path)
    run = runner(engine)

    def labels() -> list[str]:
        with engine.connect() as connection:
            return list(connection.exec_driver_sql("SELECT enum_range(NULL::order_status)::text[]").scalar_one())

    def app_writes(status: str, key: int) -> None:  # another session, right after start
        with engine.begin() as connection:
            new_id = connection.execute(sa.text("INSERT INTO tickets (status) VALUES (CAST(:s AS order_status)) "
                                                "RETURNING id"), {"s": status}).scalar_one()
            connection.execute(sa.text("UPDATE tickets SET status = CAST(:s AS order_status) WHERE id = :k"),
                               {"s": status, "k": key})
        model.insert("tickets", {"id": new_id, "status": status})
        model.update("tickets", {"id": key}, {"status": status})

    for attempt in ("rollback", "complete"):
        run.start(plan)
        apply_phases(plan, model, "postgresql", Phase.EXPANDING, Phase.MIGRATING)
        assert labels() == ["new", "paid", "refunded", "shipped"]
        app_writes("refunded", 1)
        assert_agrees(engine, model)
        if attempt == "rollback":
            run.rollback(plan.id)
            rollback_model(plan, model, "postgresql")
            assert labels() == ["new", "paid", "refunded", "shipped"]  # kept: PostgreSQL cannot drop a label
        else:
            run.complete(plan.id)
            apply_phases(plan, model, "postgresql", Phase.CONTRACTING)
        assert_agrees(engine, model)
    assert "refunded" in model.types["order_status"].labels


@pytest.mark.parametrize(("fields", "message"), [
    ({"column": "status", "value": "refunded"}, "orders.status is VARCHAR(20), not of an enum type"),
    ({"column": "stage", "value": "refunded", "before": "lost"}, "'lost' is not a label of order_status"),
], ids=["not-an-enum", "unknown-label"])
def test_add_enum_value_refuses_in_one_line(zdm_database_url: str, tmp_path: Any, fields: dict[str, str],
                                            message: str) -> None:
    engine, _ = orders(zdm_database_url)
    if "before" in fields:
        if engine.dialect.name != "postgresql":
            pytest.skip("SQLite has no enums")
        with engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE orders ADD COLUMN stage order_status")
    path = tmp_path / "plan.yaml"
    path.write_text(f"id: t\noperations:\n  - {{op: add_enum_value, table: orders, "
                    f"{', '.join(f'{k}: {v}' for k, v in fields.items())}}}\n")
    result = CliRunner().invoke(main, ["plan", str(path), "--db", zdm_database_url])
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert result.stderr.startswith("zdm: error:") and result.stderr.count("\n") == 1, result.stderr


def test_timestamps_convert_in_the_named_zone_whatever_the_session(zdm_postgres_url: str) -> None:
    """An app whose sessions run in Asia/Tokyo writes during the window: the triggers convert in the
    plan's zone (Europe/Paris for noted, UTC for placed_at), as the backfill and the model do, not in
    the writer's session zone."""
    engine, model = orders(zdm_postgres_url)
    plan = planfile.parse({"id": "zones", "operations": [
        {"op": "alter_column", "table": "orders", "column": "noted", "type": "TIMESTAMPTZ", "zone": "Europe/Paris"},
        {"op": "alter_column", "table": "orders", "column": "placed_at", "type": "TIMESTAMP"}]})
    tokyo = sa.create_engine(engine.url, connect_args={"options": "-c TimeZone=Asia/Tokyo"})
    try:
        runner(engine).start(plan)
        apply_phases(plan, model, "postgresql", Phase.EXPANDING, Phase.MIGRATING)
        write(tokyo, model, {"customer_email": "tokyo@app", "amount": Decimal("1.00"),
                             "noted": dt.datetime(2024, 7, 14, 12)})
        write(tokyo, model, {"noted": dt.datetime(2024, 1, 1), "placed_at": dt.datetime(2024, 1, 1, tzinfo=dt.UTC)},
              key=2)
        assert_agrees(engine, model)
        runner(engine).complete(plan.id)
        apply_phases(plan, model, "postgresql", Phase.CONTRACTING)
        assert_agrees(engine, model)
        with engine.connect() as connection:
            row = connection.execute(sa.text("SELECT noted, placed_at FROM orders WHERE id = 2")).one()
        assert row == (dt.datetime(2023, 12, 31, 23, tzinfo=dt.UTC), dt.datetime(2024, 1, 1))
    finally:
        tokyo.dispose()


@pytest.mark.parametrize(("change", "shown"), [
    ({"column": "noted", "type": "TIMESTAMPTZ"}, "in place, metadata only: values read as UTC"),
    ({"column": "noted", "type": "TIMESTAMPTZ", "zone": "Etc/UTC"}, "in place, metadata only: values read as UTC"),
    ({"column": "noted", "type": "TIMESTAMPTZ", "zone": "Europe/Paris"}, "dual-write triggers"),
    ({"column": "noted", "type": "TIMESTAMPTZ", "zone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ({"column": "status", "type": "TEXT", "zone": "Europe/Paris"}, "`zone` is for a change between TIMESTAMP and "
                                                                   "TIMESTAMPTZ, not VARCHAR(20) -> TEXT"),
], ids=["utc", "etc-utc", "paris", "unknown-zone", "not-timestamps"])
def test_a_zone_chooses_the_path(zdm_database_url: str, tmp_path: Any, change: dict[str, str], shown: str) -> None:
    """In place only when the TIMESTAMP values are UTC (zdm runs the change in UTC); another zone
    changes every value: dual column. SQLite has no TIMESTAMPTZ: one line, exit 2."""
    engine, _ = orders(zdm_database_url)
    path = tmp_path / "plan.yaml"
    path.write_text(f"id: t\noperations:\n  - {{op: alter_column, table: orders, "
                    f"{', '.join(f'{k}: {v}' for k, v in change.items())}}}\n")
    result = CliRunner().invoke(main, ["plan", str(path), "--db", zdm_database_url])
    if engine.dialect.name == "sqlite" and change["type"] == "TIMESTAMPTZ" and "unknown" not in shown:
        shown = "SQLite has no type TIMESTAMPTZ"
    if "zone" in shown or "no type" in shown:
        assert result.exit_code == 2 and result.stderr.startswith("zdm: error:"), result.stderr
        assert shown in result.stderr and result.stderr.count("\n") == 1, result.stderr
    else:
        assert result.exit_code == 0 and shown in result.stdout, result.stderr + result.stdout


@pytest.mark.parametrize(("index", "refused"), [
    ("CREATE INDEX events_day_ix ON events ((at::date))", "functions in index expression must be marked IMMUTABLE"),
    ("CREATE INDEX events_recent_ix ON events (id) WHERE at > '2020-01-01'",
     "functions in index predicate must be marked IMMUTABLE"),
    ("CREATE INDEX events_at_ix ON events (at)", None),
])
def test_an_in_place_change_is_tried_on_an_empty_copy_before_anything_runs(
        zdm_postgres_url: str, index: str, refused: str | None) -> None:
    """TIMESTAMP -> TIMESTAMPTZ in place under an index whose expression is not immutable for
    TIMESTAMPTZ would fail at complete, after the deploy: refused before anything runs instead."""
    from zdm.errors import PlanInvalid

    engine = db.create_engine(zdm_postgres_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE events (id integer PRIMARY KEY, at timestamp)")
        connection.exec_driver_sql("INSERT INTO events VALUES (1, '2024-03-31 02:30')")
        connection.exec_driver_sql(index)
    plan = planfile.parse({"id": "tz", "operations": [
        {"op": "alter_column", "table": "events", "column": "at", "type": "TIMESTAMPTZ"}]})
    if refused:
        with pytest.raises(PlanInvalid, match=refused):
            runner(engine).start(plan)
        with engine.connect() as connection:
            assert sa.inspect(connection).get_columns("events")[1]["type"].__class__.__name__ == "TIMESTAMP"
            assert sa.inspect(connection).get_temp_table_names() == []
    else:
        runner(engine).apply(plan)
        with engine.connect() as connection:
            assert sa.inspect(connection).get_columns("events")[1]["type"].timezone
    engine.dispose()
