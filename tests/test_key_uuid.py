"""alter_column on a primary key: INTEGER -> UUID through the plan's ``up``, with the foreign keys that point at it.

A referencing column takes the parent's new key of the row it refers to (a join), whatever ``up``
is: with ``md5(id::text)::uuid`` the reference model predicts every value (the app workload, old
version, writes the parent and both children in every window of start / rollback / start /
complete); with ``gen_random_uuid()`` nothing can predict them, so app threads write parents and
children throughout and each child must still name its own parent afterwards. SQLite has no UUID:
refused before anything runs.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from support import Phase, apply_phases, assert_agrees, learn_catalogue, rollback_model, runner, setup, zdm_objects
from test_widen_key import DDL, _catalog, orders_schema, serial, window
from test_workload import Interrupted, StopBefore
from workload import sqlite_app_engine

from zdm import planfile
from zdm.coltypes import Family
from zdm.errors import PlanInvalid
from zdm.testing.databases import fresh_postgres_database

MD5 = {"id": "to-uuid", "operations": [{"op": "alter_column", "table": "orders", "column": "id", "type": "UUID",
                                         "up": "md5(id::text)::uuid"}]}
RANDOM = {"id": "to-uuid", "operations": [{"op": "alter_column", "table": "orders", "column": "id", "type": "UUID",
                                            "up": "gen_random_uuid()"}]}


def md5_uuid(n: int) -> uuid.UUID:
    return uuid.UUID(hashlib.md5(str(n).encode()).hexdigest())


def test_key_to_uuid_under_the_app_workload(zdm_postgres_url: str) -> None:
    """The old app writes orders, items and shipments in every window; the model agrees write by write."""
    model = orders_schema(rows=30)
    engine = setup(zdm_postgres_url, model)
    serial(engine)
    learn_catalogue(engine, model)
    app = sqlite_app_engine(zdm_postgres_url)
    plan = planfile.parse(MD5)
    original, final = model.copy(), model.copy()
    apply_phases(plan, final, "postgresql", Phase.EXPANDING, Phase.MIGRATING, Phase.CONTRACTING)
    run = runner(engine, batch_size=7)
    try:
        with pytest.raises(Interrupted):  # expand committed, no row backfilled
            type(run)(engine, StopBefore(Phase.MIGRATING), run.overrides).start(plan)
        apply_phases(plan, model, "postgresql", Phase.EXPANDING)
        window(1, app, model, original, final, "old").play(10_000)
        assert_agrees(engine, model)

        run.start(plan)
        apply_phases(plan, model, "postgresql", Phase.MIGRATING)
        assert_agrees(engine, model)
        window(2, app, model, original, final, "old").play(20_000)
        assert_agrees(engine, model)

        run.rollback(plan.id)
        rollback_model(plan, model, "postgresql")
        assert_agrees(engine, model)
        assert zdm_objects(engine) == []
        with engine.connect() as connection:
            assert connection.scalar(sa.text("SELECT data_type FROM pg_sequences")) == "integer"

        run.start(plan)
        apply_phases(plan, model, "postgresql", Phase.EXPANDING, Phase.MIGRATING)
        window(4, app, model, original, final, "old").play(40_000)
        assert_agrees(engine, model)

        run.complete(plan.id)
        apply_phases(plan, model, "postgresql", Phase.CONTRACTING)
        assert_agrees(engine, model)
        assert zdm_objects(engine) == []
        for name, table in final.tables.items():
            assert model.table(name).catalogue() == table.catalogue()
        for table, column in (("orders", "id"), ("items", "order_id"), ("shipments", "order_id")):
            assert model.table(table).column(column).type.family is Family.UUID
        originals = [row for row in model.table("orders").rows if str(row["note"]).startswith("order ")]
        assert originals and all(row["id"] == md5_uuid(int(row["note"].split()[1])) for row in originals)
    finally:
        app.dispose()
        engine.dispose()
    # The new app: a UUID it makes itself (md5 leaves the key without a default), a child that refers to it.
    with sa.create_engine(zdm_postgres_url).begin() as connection:
        key = uuid.uuid4()
        connection.execute(sa.text("INSERT INTO orders (id, note, total) VALUES (:k, 'new', 1)"), {"k": key})
        connection.execute(sa.text("INSERT INTO items (id, order_id, qty) VALUES (900000, :k, 1)"), {"k": key})
        assert connection.scalar(sa.text("SELECT order_id FROM items WHERE id = 900000")) == key
        assert connection.scalar(sa.text("SELECT id FROM orders WHERE note = 'order 3'")) == md5_uuid(3)
        assert connection.scalar(sa.text("SELECT count(*) FROM pg_sequences")) == 0  # gone with the old key
        with pytest.raises(sa.exc.IntegrityError), connection.begin_nested():
            connection.execute(sa.text("INSERT INTO items (id, order_id) VALUES (900001, :k)"),
                               {"k": uuid.uuid4()})


def test_random_uuid_children_follow_their_parent_under_load(zdm_postgres_url: str) -> None:
    """``gen_random_uuid()``: app threads insert orders with items and shipments and update them through
    start / rollback / start / complete; each child still names its own order (an order's ``total`` is
    its own number, a child's ``qty``/``carrier`` the number of the order it was written for)."""
    engine = sa.create_engine(zdm_postgres_url)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE orders (id serial PRIMARY KEY, note text, total integer);"
            "CREATE TABLE items (id serial PRIMARY KEY, order_id integer NOT NULL REFERENCES orders "
            "ON DELETE CASCADE, qty integer); CREATE INDEX items_order_ix ON items (order_id);"
            "CREATE TABLE shipments (id serial PRIMARY KEY, order_id integer REFERENCES orders ON DELETE SET NULL, "
            "carrier text);"
            "INSERT INTO orders (note, total) SELECT 'o', g FROM generate_series(1, 400) g;"
            "INSERT INTO items (order_id, qty) SELECT mod(g, 400) + 1, mod(g, 400) + 1 FROM generate_series(1, 900) g;"
            "INSERT INTO shipments (order_id, carrier) SELECT g, g::text FROM generate_series(1, 300) g")
    app = sa.create_engine(zdm_postgres_url, pool_size=3, connect_args={"prepare_threshold": None})
    errors: list[str] = []
    stop = threading.Event()

    def client(n: int) -> None:
        # Key-agnostic, as an app that passes keys through: the key a write returns (an integer, a UUID
        # after complete) goes into the children; original orders are found by their total.
        k = 0
        while not stop.is_set():
            k += 1
            number, original = 10**6 * (n + 1) + k, k % 400 + 1
            try:
                with app.begin() as connection:
                    key = connection.scalar(sa.text("INSERT INTO orders (note, total) VALUES ('a', :t) RETURNING id"),
                                            {"t": number})
                    connection.execute(sa.text("INSERT INTO items (order_id, qty) VALUES (:o, :t), "
                                               "((SELECT id FROM orders WHERE total = :p), :p)"),
                                       {"o": key, "t": number, "p": original})
                    connection.execute(sa.text("INSERT INTO shipments (order_id, carrier) VALUES (:o, :t)"),
                                       {"o": key, "t": str(number)})
                    connection.execute(sa.text("UPDATE orders SET note = 'b' WHERE total = :p"), {"p": original})
                    if k % 7 == 0:
                        connection.execute(sa.text("DELETE FROM orders WHERE id = :o"), {"o": key})
            except sa.exc.DBAPIError as exc:
                errors.append(str(exc.orig).splitlines()[0])
            time.sleep(0.02)  # an app between requests: zdm's brief locks find a gap

    threads = [threading.Thread(target=client, args=(n,)) for n in range(2)]
    plan = planfile.parse(RANDOM)
    run = runner(engine, batch_size=50, lock_timeout_ms=1000)
    try:
        for thread in threads:
            thread.start()
        run.start(plan)
        run.rollback(plan.id)
        assert zdm_objects(engine) == []
        run.start(plan)
        with engine.connect() as connection:  # before the swap: the new columns join as the old ones do
            assert connection.scalar(sa.text(
                "SELECT count(*) FROM items i JOIN orders o ON o.id = i.order_id "
                "WHERE i.order_id_zdm_new IS DISTINCT FROM o.id_zdm_new")) == 0
        run.complete(plan.id)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        app.dispose()
    assert errors == []
    with engine.connect() as connection:
        def count(sql: str) -> int:
            return int(connection.scalar(sa.text(sql)) or 0)

        assert count("SELECT count(*) FROM orders") > 400
        assert count("SELECT count(*) FROM items i JOIN orders o ON o.id = i.order_id WHERE o.total <> i.qty") == 0
        assert count("SELECT count(*) FROM items i LEFT JOIN orders o ON o.id = i.order_id WHERE o.id IS NULL") == 0
        assert count("SELECT count(*) FROM shipments s JOIN orders o ON o.id = s.order_id "
                     "WHERE o.total::text <> s.carrier") == 0
        assert count("SELECT count(DISTINCT id) FROM orders") == count("SELECT count(*) FROM orders")
        assert count("SELECT count(*) FROM pg_constraint WHERE NOT convalidated") == 0
        key = connection.scalar(sa.text("INSERT INTO orders (note) VALUES ('default') RETURNING id"))
        assert isinstance(key, uuid.UUID)  # gen_random_uuid() is the key's default now
        connection.rollback()
    assert zdm_objects(engine) == []
    engine.dispose()


def test_uuid_key_reads_as_created_uuid(zdm_postgres_url: str, zdm_postgres_server: Any) -> None:
    """After complete, the catalogue equals that of the same tables created with a UUID key."""
    engine = sa.create_engine(zdm_postgres_url)
    with fresh_postgres_database(zdm_postgres_server.url) as other_url:
        reference = sa.create_engine(other_url)
        try:
            with engine.begin() as connection:
                connection.exec_driver_sql(DDL.format(serial="serial", ref="integer"))
            with reference.begin() as connection:
                created = DDL.format(serial="uuid DEFAULT gen_random_uuid()", ref="uuid")
                connection.exec_driver_sql(created.split(";\nINSERT")[0])
            run = runner(engine, batch_size=16)
            plan = planfile.parse(RANDOM)
            run.start(plan)
            run.complete(plan.id)
            with engine.connect() as connection, reference.connect() as other:
                assert _catalog(connection) == _catalog(other)
                assert connection.scalar(sa.text("SELECT count(*) FROM items i JOIN orders o ON o.id = i.order_id")) \
                    == 120
        finally:
            engine.dispose()
            reference.dispose()


@pytest.mark.parametrize(("ddl", "operation", "message"), [
    ("CREATE TABLE orders (id integer PRIMARY KEY)", {},
     "orders.id is the primary key: changing it to UUID needs `up`, an expression giving each row's new key"),
    ("CREATE TABLE orders (id integer PRIMARY KEY, code text)", {"up": "md5(code)::uuid"},
     "orders.id: `up` may read id only, not code"),
    ("CREATE TABLE orders (id integer PRIMARY KEY CHECK (id > 0))", {"up": "gen_random_uuid()"},
     "CHECK orders_id_check of orders reads a column that becomes UUID"),
    ("CREATE TABLE orders (id integer PRIMARY KEY)", {"up": "gen_random_uuid()", "default": "x"},
     "changing it to UUID keeps its name; `up` gives the new values"),
    ("CREATE TABLE orders (id integer PRIMARY KEY)", {"type": "BIGINT", "up": "id"},
     "widening it keeps its name, values and default"),
    ("CREATE TABLE orders (id integer PRIMARY KEY, n integer)", {"column": "n", "type": "BIGINT", "up": "n"},
     "orders.n: `up` is for a primary key changed to UUID"),
    ("CREATE TABLE orders (id integer PRIMARY KEY); CREATE TABLE items (id integer PRIMARY KEY, "
     "order_id integer REFERENCES orders DEFERRABLE INITIALLY DEFERRED)", {"up": "gen_random_uuid()"},
     "foreign key items_order_id_fkey of items is DEFERRABLE: a row written before the orders row"),
])
def test_what_cannot_become_uuid_is_refused(zdm_postgres_url: str, ddl: str, operation: dict[str, Any],
                                            message: str) -> None:
    engine = sa.create_engine(zdm_postgres_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(ddl)
        plan = planfile.parse({"id": "refused", "operations": [
            {"op": "alter_column", "table": "orders", "column": "id", "type": "UUID", **operation}]})
        with pytest.raises(PlanInvalid) as caught:
            runner(engine).start(plan)
        assert message in str(caught.value)
        assert zdm_objects(engine) == []
    finally:
        engine.dispose()


def test_sqlite_refuses_a_uuid_key(zdm_sqlite_url: str, tmp_path: Any) -> None:
    """SQLite has no UUID type: one line, exit 2, the database untouched."""
    from click.testing import CliRunner

    from zdm.cli import main

    engine = setup(zdm_sqlite_url, orders_schema(rows=3))
    with engine.connect() as connection:
        before = connection.execute(sa.text("SELECT name, sql FROM sqlite_master ORDER BY name")).all()
    plan = tmp_path / "uuid.yaml"
    plan.write_text("id: u\noperations:\n  - {op: alter_column, table: orders, column: id, type: UUID, "
                    "up: 'gen_random_uuid()'}\n")
    result = CliRunner().invoke(main, ["start", str(plan), "--db", zdm_sqlite_url])
    assert result.exit_code == 2
    assert result.stderr.startswith("zdm: error:") and result.stderr.strip().count("\n") == 0
    assert "SQLite has no type UUID" in result.stderr
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT name, sql FROM sqlite_master ORDER BY name")).all() == before
    engine.dispose()

