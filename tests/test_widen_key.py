"""alter_column on a primary key: INTEGER -> BIGINT with the foreign keys that point at it.

The app workload (workload.py) writes to the parent and to two referencing tables (one ON DELETE
CASCADE, one ON DELETE SET NULL) in every window of start / rollback / start / complete, old and
new app versions, on both databases, compared with the model write by write. After complete the
catalogue is the one the plan declares, the sequence goes on past 2^31, and no zdm object is left.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa
from support import Phase, apply_phases, assert_agrees, learn_catalogue, rollback_model, runner, setup, zdm_objects
from test_workload import Interrupted, StopBefore
from workload import Client, Round, sqlite_app_engine

from zdm import planfile
from zdm.model import Column, ColumnType, ForeignKey, Index, Schema, Table
from zdm.runner import Reporter
from zdm.testing.databases import fresh_postgres_database

PLAN = {"id": "widen-orders", "operations": [{"op": "alter_column", "table": "orders", "column": "id",
                                               "type": "BIGINT"}]}
TABLES = ("orders", "items", "shipments")


def orders_schema(rows: int = 40) -> Schema:
    """``orders`` (the key to widen), ``items`` (NOT NULL, ON DELETE CASCADE, indexed) and
    ``shipments`` (nullable, ON DELETE SET NULL) referencing it."""
    orders = Table("orders", [Column("id", ColumnType.INTEGER, nullable=False, primary_key=True),
                              Column("note", ColumnType.TEXT), Column("total", ColumnType.INTEGER)])
    orders.checks["orders_total_check"] = "total >= 0"
    items = Table("items", [Column("id", ColumnType.INTEGER, nullable=False, primary_key=True),
                            Column("order_id", ColumnType.INTEGER, nullable=False),
                            Column("qty", ColumnType.INTEGER, default=1)])
    items.foreign_keys["items_order_id_fkey"] = ForeignKey(("order_id",), "orders", ("id",), "CASCADE")
    items.indexes["items_order_ix"] = Index(("order_id",))
    shipments = Table("shipments", [Column("id", ColumnType.INTEGER, nullable=False, primary_key=True),
                                    Column("order_id", ColumnType.INTEGER), Column("carrier", ColumnType.TEXT)])
    shipments.foreign_keys["shipments_order_id_fkey"] = ForeignKey(("order_id",), "orders", ("id",), "SET NULL")
    for i in range(1, rows + 1):
        orders.insert({"id": i, "note": f"order {i}", "total": i * 3})
    for i in range(1, 2 * rows):
        items.insert({"id": i, "order_id": i % rows + 1, "qty": i})
    for i in range(1, rows // 2):
        shipments.insert({"id": i, "order_id": i * 2 if i % 5 else None, "carrier": f"c{i}"})
    return Schema({"orders": orders, "items": items, "shipments": shipments})


def references(column: str, column_type: ColumnType, n: int) -> Any:
    """A referencing column names an order that mostly exists (an orphan now and then, refused alike)."""
    return n % 45 + 1 if column == "order_id" else None


def serial(engine: sa.Engine) -> None:
    """Give orders.id a sequence as ``serial`` does (SQLite: the rowid already numbers new rows)."""
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE SEQUENCE orders_id_seq AS integer OWNED BY orders.id")
        connection.exec_driver_sql("ALTER TABLE orders ALTER COLUMN id SET DEFAULT nextval('orders_id_seq')")
        connection.exec_driver_sql("SELECT setval('orders_id_seq', 1000)")


def window(number: int, app: sa.Engine, model: Schema, original: Schema, final: Schema, *versions: str) -> Round:
    shapes = {"old": original, "new": final}
    clients = [Client(app, model, version, shapes[version].table(name), references)
               for version in versions for name in TABLES]
    return Round(clients, reached=number, unreached=29 + number, breaking=number in (2, 4, 5))


def test_widen_key_under_the_app_workload(zdm_database_url: str) -> None:
    model = orders_schema()
    engine = setup(zdm_database_url, model)
    serial(engine)
    learn_catalogue(engine, model)
    app = sqlite_app_engine(zdm_database_url)
    dialect = engine.dialect.name
    plan = planfile.parse(PLAN)
    original, final = model.copy(), model.copy()
    apply_phases(plan, final, dialect, Phase.EXPANDING, Phase.MIGRATING, Phase.CONTRACTING)
    run = runner(engine, batch_size=7)
    try:
        with pytest.raises(Interrupted):  # expand committed, no row backfilled: every row is unreached
            type(run)(engine, StopBefore(Phase.MIGRATING), run.overrides).start(plan)
        apply_phases(plan, model, dialect, Phase.EXPANDING)
        assert_agrees(engine, model)
        window(1, app, model, original, final, "old", "new").play(10_000)
        assert_agrees(engine, model)

        run.start(plan)
        apply_phases(plan, model, dialect, Phase.MIGRATING)
        assert_agrees(engine, model)
        window(2, app, model, original, final, "old", "new").play(20_000)
        assert_agrees(engine, model)

        run.rollback(plan.id)
        rollback_model(plan, model, dialect)
        assert_agrees(engine, model)
        for name, table in original.tables.items():
            assert model.table(name).catalogue() == table.catalogue()
        assert zdm_objects(engine) == []
        window(3, app, model, original, final, "old").play(30_000)
        assert_agrees(engine, model)

        run.start(plan)
        apply_phases(plan, model, dialect, Phase.EXPANDING, Phase.MIGRATING)
        window(4, app, model, original, final, "old", "new").play(40_000)
        assert_agrees(engine, model)

        run.complete(plan.id)
        apply_phases(plan, model, dialect, Phase.CONTRACTING)
        assert_agrees(engine, model)
        assert zdm_objects(engine) == []
        for name, table in final.tables.items():
            assert model.table(name).catalogue() == table.catalogue()
        expected = ColumnType.INTEGER if dialect == "sqlite" else ColumnType.BIGINT  # SQLite's rowid is 64-bit
        assert final.table("orders").column("id").type == expected
        assert final.table("items").column("order_id").type == ColumnType.BIGINT
        assert final.table("shipments").column("order_id").type == ColumnType.BIGINT
        window(5, app, model, original, final, "new").play(50_000)
        assert_agrees(engine, model)
        assert_sequence_goes_past_int32(engine)
    finally:
        app.dispose()
        engine.dispose()


def assert_sequence_goes_past_int32(engine: sa.Engine) -> None:
    """An order numbered past 2^31 by the database itself, and an item referring to it."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            before = connection.scalar(sa.text("SELECT last_value FROM orders_id_seq"))
            assert before >= 1000  # the value was kept through the swap
            connection.exec_driver_sql("SELECT setval('orders_id_seq', 3000000000)")
        else:
            connection.exec_driver_sql("INSERT INTO orders (id, note, total) VALUES (3000000000, 'big', 1)")
        key = connection.scalar(sa.text("INSERT INTO orders (note, total) VALUES ('next', 1) RETURNING id"))
        assert key == 3000000001
        connection.execute(sa.text("INSERT INTO items (id, order_id, qty) VALUES (900000, :k, 1)"), {"k": key})
        assert connection.scalar(sa.text("SELECT order_id FROM items WHERE id = 900000")) == key


def _catalog(connection: sa.Connection) -> dict[str, Any]:
    """What a user sees of the three tables on PostgreSQL, column order aside."""
    def rows(sql: str) -> list[tuple[Any, ...]]:
        return sorted(tuple(r) for r in connection.execute(sa.text(sql)))

    return {
        "columns": rows("SELECT table_name, column_name, data_type, is_nullable, column_default FROM "
                        "information_schema.columns WHERE table_schema = current_schema() "
                        "AND table_name IN ('orders', 'items', 'shipments')"),
        "constraints": rows("SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
                            "WHERE conrelid IN ('orders'::regclass, 'items'::regclass, 'shipments'::regclass)"),
        "indexes": rows("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                        "AND tablename IN ('orders', 'items', 'shipments')"),
        "sequences": rows("SELECT sequencename, data_type::text, max_value, last_value FROM pg_sequences "
                          "WHERE schemaname = current_schema()"),
        "owned": rows("SELECT pg_get_serial_sequence('orders', 'id')"),
    }


DDL = """
CREATE TABLE orders (id {serial} PRIMARY KEY, note text, total integer CHECK (total >= 0));
CREATE TABLE items (id integer PRIMARY KEY, order_id {ref} NOT NULL REFERENCES orders ON DELETE CASCADE, qty integer);
CREATE INDEX items_order_ix ON items (order_id);
CREATE TABLE shipments (id integer PRIMARY KEY, order_id {ref} REFERENCES orders ON DELETE SET NULL, carrier text);
INSERT INTO orders (note, total) SELECT 'o' || g, g FROM generate_series(1, 50) g;
INSERT INTO items SELECT g, mod(g, 50) + 1, g FROM generate_series(1, 120) g;
INSERT INTO shipments SELECT g, mod(g, 50) + 1, 'c' FROM generate_series(1, 30) g
"""


@pytest.mark.parametrize("kind", ["serial", "BY DEFAULT", "ALWAYS"])
def test_widened_key_reads_as_created_bigint(zdm_postgres_url: str, zdm_postgres_server: Any, kind: str) -> None:
    """After complete, the catalogue equals that of the same tables created with a bigint key."""
    narrow, wide = ("serial", "bigserial") if kind == "serial" else (
        f"integer GENERATED {kind} AS IDENTITY", f"bigint GENERATED {kind} AS IDENTITY")
    engine = sa.create_engine(zdm_postgres_url)
    with fresh_postgres_database(zdm_postgres_server.url) as other_url:
        reference = sa.create_engine(other_url)
        _compare_with_created_bigint(engine, reference, narrow, wide)


def _compare_with_created_bigint(engine: sa.Engine, reference: sa.Engine, narrow: str, wide: str) -> None:
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(DDL.format(serial=narrow, ref="integer"))
        with reference.begin() as connection:
            connection.exec_driver_sql(DDL.format(serial=wide, ref="bigint"))
        run = runner(engine, batch_size=16)
        plan = planfile.parse(PLAN)
        run.start(plan)
        run.rollback(plan.id)
        run.start(plan)
        run.complete(plan.id)
        with engine.connect() as connection, reference.connect() as other:
            assert _catalog(connection) == _catalog(other)
        assert zdm_objects(engine) == []
    finally:
        engine.dispose()
        reference.dispose()


@pytest.mark.parametrize(("ddl", "operation", "message"), [
    ("CREATE TABLE orders (id integer, region integer, PRIMARY KEY (id, region))", {"type": "TEXT"},
     "orders.id is part of the composite primary key ('id', 'region'); zdm widens one of its columns from "
     "INTEGER to BIGINT"),
    ("CREATE TABLE orders (id integer PRIMARY KEY)", {"type": "TEXT"},
     "orders.id is the primary key; zdm changes a key from INTEGER to BIGINT, or from INTEGER or BIGINT to UUID "
     "with `up`, not from INTEGER to TEXT"),
    ("CREATE TABLE orders (id integer PRIMARY KEY)", {"new_name": "order_id"},
     "orders.id is the primary key: widening it keeps its name, values and default (drop new_name, "
     "up_transform, down_transform, up and default)"),
    ("CREATE TABLE orders (id integer PRIMARY KEY, parent integer REFERENCES orders (id))", {},
     "of orders refers to its own key; zdm does not widen a self-referencing key"),
])
def test_what_cannot_be_widened_is_refused(zdm_database_url: str, ddl: str, operation: dict[str, Any],
                                           message: str) -> None:
    """One line naming what is wrong; nothing runs."""
    from zdm.errors import PlanInvalid

    engine = sa.create_engine(zdm_database_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(ddl)
        plan = planfile.parse({"id": "refused", "operations": [
            {"op": "alter_column", "table": "orders", "column": "id", "type": "BIGINT", **operation}]})
        with pytest.raises(PlanInvalid) as caught:
            runner(engine).start(plan)
        assert message in str(caught.value)
        assert zdm_objects(engine) == []
        with engine.connect() as connection:
            assert "id_zdm_new" not in [c["name"] for c in sa.inspect(connection).get_columns("orders")]
    finally:
        engine.dispose()


def test_no_app_query_fails_and_no_write_waits_past_the_budget(zdm_postgres_url: str) -> None:
    """App clients insert orders and items and update both, without pause, through start and complete."""
    engine = sa.create_engine(zdm_postgres_url)
    with engine.begin() as connection:
        connection.exec_driver_sql(DDL.format(serial="serial", ref="integer")
                                   .replace("generate_series(1, 50)", "generate_series(1, 3000)")
                                   .replace("generate_series(1, 120)", "generate_series(1, 6000)"))
    # Server-side prepared statements (psycopg prepares a query after 5 runs) that return the key fail
    # once per session after the swap, "cached plan must not change result type": PostgreSQL fixes a
    # prepared statement's result type, and any type change of the column (zdm's or ALTER TYPE's)
    # changes it (README, "Widening a primary key"). These clients prepare nothing.
    app = sa.create_engine(zdm_postgres_url, pool_size=4, connect_args={"prepare_threshold": None})
    errors: list[str] = []
    latencies: list[float] = []
    stop = threading.Event()

    def client(n: int) -> None:
        k = 0
        while not stop.is_set():
            k += 1
            began = time.perf_counter()
            try:
                with app.begin() as connection:
                    key = connection.scalar(sa.text("INSERT INTO orders (note, total) VALUES ('a', 1) RETURNING id"))
                    connection.execute(sa.text("INSERT INTO items VALUES (:i, :o, 1)"), {"i": 10**6 * (n + 1) + k,
                                                                                         "o": key})
                    connection.execute(sa.text("UPDATE orders SET total = total + 1 WHERE id = :o"),
                                       {"o": k % 3000 + 1})
                    connection.execute(sa.text("UPDATE items SET qty = qty + 1 WHERE order_id = :o"), {"o": key})
            except sa.exc.DBAPIError as exc:
                errors.append(str(exc.orig).splitlines()[0])
            latencies.append(time.perf_counter() - began)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(3)]
    budget_ms = 500
    try:
        for thread in threads:
            thread.start()
        run = runner(engine, batch_size=500, lock_timeout_ms=budget_ms)
        plan = planfile.parse(PLAN)
        run.start(plan)
        run.complete(plan.id)
        time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        app.dispose()
    assert errors == []
    assert len(latencies) > 20
    assert max(latencies) < budget_ms / 1000 + 1.0, max(latencies)
    with engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT count(*) FROM items i LEFT JOIN orders o ON o.id = i.order_id "
                                         "WHERE o.id IS NULL")) == 0
        assert connection.scalar(sa.text("SELECT data_type FROM information_schema.columns "
                                         "WHERE table_name = 'items' AND column_name = 'order_id'")) == "bigint"
    engine.dispose()


def test_sqlite_keeps_the_rowid_key_and_its_autoincrement_counter(zdm_sqlite_url: str) -> None:
    """SQLite: the key stays INTEGER PRIMARY KEY AUTOINCREMENT (already 64-bit), its counter (a deleted
    highest id) survives, the referencing columns become BIGINT by rebuilds that keep every foreign key."""
    engine, app = sa.create_engine(zdm_sqlite_url), sqlite_app_engine(zdm_sqlite_url)
    with engine.begin() as connection:
        for sql in DDL.replace("{serial}", "INTEGER PRIMARY KEY AUTOINCREMENT").replace(" PRIMARY KEY,", ",", 1) \
                .replace("{ref}", "integer").replace("generate_series(1, 50) g", "series").split(";"):
            if "series" in sql:
                sql = "WITH RECURSIVE series(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM series WHERE g < 50) " + sql
            connection.exec_driver_sql(sql.replace("generate_series(1, 120) g", "series")
                                       .replace("generate_series(1, 30) g", "series"))
    with app.begin() as connection:
        connection.exec_driver_sql("DELETE FROM orders WHERE id = 50")  # the counter stays at 50
    run = runner(engine, batch_size=16)
    plan = planfile.parse(PLAN)
    run.start(plan)
    run.rollback(plan.id)
    run.start(plan)
    run.complete(plan.id)
    with app.begin() as connection:
        tables = dict(connection.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'table'")).all())
        assert "id INTEGER PRIMARY KEY AUTOINCREMENT" in tables["orders"]
        assert "order_id BIGINT NOT NULL REFERENCES orders ON DELETE CASCADE" in tables["items"]
        assert "order_id BIGINT REFERENCES orders ON DELETE SET NULL" in tables["shipments"]
        assert connection.scalar(sa.text("INSERT INTO orders (note) VALUES ('n') RETURNING id")) == 51
        assert connection.execute(sa.text("PRAGMA foreign_key_check")).all() == []
        connection.exec_driver_sql("DELETE FROM orders WHERE id = 7")  # the foreign keys still act
        assert connection.scalar(sa.text("SELECT count(*) FROM items WHERE order_id = 7")) == 0
        assert connection.scalar(sa.text("SELECT count(*) FROM shipments WHERE order_id IS NULL")) >= 1
    assert zdm_objects(engine) == []
    engine.dispose()
    app.dispose()


def test_rollback_from_every_phase(zdm_database_url: str) -> None:
    """Right after expand (a runner killed before the backfill), and after a complete that could not
    get its lock (PostgreSQL: another session holds items): the tables are as they were."""
    model = orders_schema(rows=12)
    engine = setup(zdm_database_url, model)
    serial(engine)
    learn_catalogue(engine, model)
    dialect = engine.dialect.name
    plan = planfile.parse(PLAN)
    run = runner(engine, batch_size=5, lock_timeout_ms=100, lock_retries=1)
    try:
        with pytest.raises(Interrupted):
            type(run)(engine, StopBefore(Phase.MIGRATING), run.overrides).start(plan)
        run.rollback(plan.id)
        assert_agrees(engine, model)
        assert zdm_objects(engine) == []
        if dialect != "postgresql":
            return
        run.start(plan)
        blocker = engine.connect()
        blocker.exec_driver_sql("LOCK TABLE items IN ROW EXCLUSIVE MODE")  # an app's open write transaction
        try:
            with pytest.raises(Exception, match="CONTRACTING failed"):
                run.complete(plan.id)
        finally:
            blocker.rollback()
            blocker.close()
        with engine.connect() as connection:
            assert connection.scalar(sa.text("SELECT phase FROM zdm_migrations")) == "MIGRATING"
        run.rollback(plan.id)
        assert_agrees(engine, model)
        assert zdm_objects(engine) == []
        with engine.connect() as connection:
            found = connection.scalar(sa.text("SELECT data_type FROM pg_sequences WHERE sequencename = 'orders_id_seq'"
                                              ))
        assert found == "integer"
    finally:
        engine.dispose()


def test_zdm_plan_names_each_referencing_column_and_refusals_exit_2(zdm_database_url: str, tmp_path: Any) -> None:
    from click.testing import CliRunner

    from zdm.cli import main

    engine = setup(zdm_database_url, orders_schema(rows=3))
    engine.dispose()
    plan = tmp_path / "widen.yaml"
    plan.write_text("id: widen\noperations:\n  - {op: alter_column, table: orders, column: id, type: BIGINT}\n")
    result = CliRunner().invoke(main, ["plan", str(plan), "--db", zdm_database_url])
    assert result.exit_code == 0, result.stderr
    for column in ("items.order_id_zdm_new", "shipments.order_id_zdm_new"):
        assert f"add column {column} (refers to orders.id)" in result.stdout
    if "postgresql" in zdm_database_url:
        assert "PRIMARY KEY USING INDEX" in result.stdout
    refused = tmp_path / "refused.yaml"
    refused.write_text("id: refused\noperations:\n  - {op: alter_column, table: orders, column: id, type: TEXT}\n")
    result = CliRunner().invoke(main, ["start", str(refused), "--db", zdm_database_url])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "from INTEGER to BIGINT, or from INTEGER or BIGINT to UUID" in result.stderr


def _app_transaction_beside(url: str, command: Any, name: str, first: str, then: list[str]) -> list[str]:
    """An app transaction runs ``first``, ``command`` starts on a thread of its own (it waits for a
    lock the app holds), then the app runs ``then`` and commits. Returns what failed, on either side
    ("deadlock detected" when they lock in opposite orders)."""
    app = sa.create_engine(url, connect_args={"prepare_threshold": None})
    failed: list[str] = []

    def run() -> None:
        try:
            command()
        except Exception as exc:  # what the test reports
            failed.append(f"{name}: {exc}")

    zdm = threading.Thread(target=run)
    try:
        with app.begin() as connection:
            connection.execute(sa.text(first))
            zdm.start()
            time.sleep(0.5)  # zdm is waiting for a lock now
            try:
                for sql in then:
                    connection.execute(sa.text(sql))
            except sa.exc.DBAPIError as exc:
                failed.append(f"app: {str(exc.orig).splitlines()[0]}")
                raise
    except sa.exc.DBAPIError:
        pass
    finally:
        if zdm.ident is not None:  # started
            zdm.join()
        app.dispose()
    return failed


@pytest.mark.parametrize("stopped", ["after expand", "after start"])
def test_a_rollback_locks_the_key_table_before_the_tables_that_refer_to_it(zdm_postgres_url: str,
                                                                           stopped: str) -> None:
    """An app transaction writes an order, then (while the rollback waits for that order's table) a
    shipment and an item of it, the order apps write in. The rollback's undo takes the key's table
    first: it waits, the app goes on and commits. Before, it dropped the referencing tables' triggers
    and foreign-key copies first (ACCESS EXCLUSIVE on them, then on orders): "deadlock detected"."""
    engine = sa.create_engine(zdm_postgres_url)
    with engine.begin() as connection:
        connection.exec_driver_sql(DDL.format(serial="serial", ref="integer"))
    plan = planfile.parse(PLAN)
    run = runner(engine, lock_timeout_ms=5000)  # longer than deadlock_timeout (1 s): a cycle is found
    if stopped == "after expand":
        with pytest.raises(Interrupted):
            type(run)(engine, StopBefore(Phase.MIGRATING), run.overrides).start(plan)
    else:
        run.start(plan)
    failed = _app_transaction_beside(zdm_postgres_url, lambda: run.rollback(plan.id), "rollback",
                                     "UPDATE orders SET note = 'paid' WHERE id = 1",
                                     ["INSERT INTO shipments VALUES (1000, 1, 'post')",
                                      "INSERT INTO items VALUES (1000, 1, 2)"])
    assert failed == []
    assert zdm_objects(engine) == []
    with engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT qty FROM items WHERE id = 1000")) == 2
    engine.dispose()


@pytest.mark.parametrize("first", ["SELECT note FROM orders WHERE id = 1",
                                   "UPDATE orders SET note = 'paid' WHERE id = 1"])
def test_complete_of_a_foreign_key_column_locks_the_referenced_table_first(zdm_postgres_url: str, first: str) -> None:
    """items.order_id INTEGER -> BIGINT: the swap drops the old column and its foreign key, which takes
    ACCESS EXCLUSIVE on orders too. An app transaction reads (or writes) an order, then (while
    complete waits) adds an item of it, as an ORM does. complete held items and only SHARE ROW
    EXCLUSIVE of orders, then waited for ACCESS EXCLUSIVE on orders behind the app, which waited
    for items: "deadlock detected"."""
    engine = sa.create_engine(zdm_postgres_url)
    with engine.begin() as connection:
        connection.exec_driver_sql(DDL.format(serial="serial", ref="integer"))
    plan = planfile.parse({"id": "items-bigint", "operations": [
        {"op": "alter_column", "table": "items", "column": "order_id", "type": "BIGINT"}]})
    run = runner(engine, lock_timeout_ms=5000)  # longer than deadlock_timeout (1 s): a cycle is found
    run.start(plan)
    failed = _app_transaction_beside(zdm_postgres_url, lambda: run.complete(plan.id), "complete", first,
                                     ["INSERT INTO items VALUES (1000, 1, 2)"])
    assert failed == []
    assert zdm_objects(engine) == []
    with engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT qty FROM items WHERE id = 1000")) == 2
        assert connection.scalar(sa.text(
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'items' AND column_name = 'order_id'"
        )) == "bigint"
    engine.dispose()


def test_a_complete_that_fails_at_the_swap_is_undone_and_can_run_again(zdm_postgres_url: str) -> None:
    """items.order_id INTEGER -> BIGINT; the swap fails (here: its first statement raises, as a lock
    budget spent or a failed check does) after contract added and validated the constraints (the
    validation outside a transaction): what contract added goes, the plan waits in MIGRATING, and
    complete runs again. Then the same with complete killed after the validation and `zdm rollback`
    (a step outside a transaction is undone outside one: no LOCK TABLE there)."""
    engine = sa.create_engine(zdm_postgres_url)
    with engine.begin() as connection:
        connection.exec_driver_sql(DDL.format(serial="serial", ref="integer"))
    plan = planfile.parse({"id": "items-bigint", "operations": [
        {"op": "alter_column", "table": "items", "column": "order_id", "type": "BIGINT"}]})
    run = runner(engine)
    run.start(plan)
    before = zdm_objects(engine)

    class FailAt(Reporter):
        def __init__(self, what: str, error: type[BaseException]) -> None:
            self.what, self.error = what, error

        def step(self, step: Any) -> None:
            if step.description.startswith(self.what):
                raise self.error(f"stopped at {step.description}")

    with pytest.raises(Exception, match="nothing was dropped, the plan is MIGRATING again"):
        type(run)(engine, FailAt("drop items.order_id", RuntimeError), run.overrides).complete(plan.id)
    assert zdm_objects(engine) == before  # the constraints contract added are gone, the window's objects stay
    with pytest.raises(KeyboardInterrupt):  # killed between the validation and the swap
        type(run)(engine, FailAt("drop items.order_id", KeyboardInterrupt), run.overrides).complete(plan.id)
    assert zdm_objects(engine) != before
    run.rollback(plan.id)
    assert zdm_objects(engine) == []
    run.start(plan)
    run.complete(plan.id)
    assert zdm_objects(engine) == []
    with engine.connect() as connection:
        assert connection.scalar(sa.text(
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'items' AND column_name = 'order_id'"
        )) == "bigint"
    engine.dispose()
