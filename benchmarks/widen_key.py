"""Widening a primary key under live traffic: zdm against a plain ALTER TABLE ... TYPE bigint, same run.

Three tables are created fresh for each scenario: ``orders`` (``id serial PRIMARY KEY``) with
--rows rows (default 1,000,000), and two tables referring to it with --rows rows each, ``items``
(``order_id integer NOT NULL REFERENCES orders ON DELETE CASCADE``, indexed) and ``shipments``
(``order_id integer REFERENCES orders ON DELETE SET NULL``). --clients client processes (default
4) insert orders, items and shipments and update orders and items as fast as they can, timing
every transaction and counting every error.

zdm     ``alter_column orders.id -> BIGINT``: start (expand, three backfills, the unique index
        CONCURRENTLY, checks and foreign keys NOT VALID + VALIDATE), then complete (one brief swap).
plain   ``ALTER TABLE ... ALTER COLUMN ... TYPE bigint`` on the three columns (the parent first) and
        ``ALTER SEQUENCE ... AS bigint``, in one transaction: every table and index rewritten under
        ACCESS EXCLUSIVE; run again when PostgreSQL ends it as a deadlock's victim.

Printed per scenario: client transactions and errors, p50 / p99 / max latency during the change,
the change's total time, and the longest transaction of zdm's (the lock it held, at most).
Targets: zero client errors; max client latency <= lock budget + 100 ms. The ratios compare both
scenarios of this run. Clients prepare no statements server-side (``prepare_threshold=None``):
PostgreSQL refuses a prepared statement whose result type changed ("cached plan must not change
result type"), once per session, for any type change of a column it returns, zdm's or plain.

    python benchmarks/widen_key.py [--rows 1000000] [--clients 4] [--db postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from typing import Any

import sqlalchemy as sa
from bench_db import DEFAULT_SERVER, OUT, machine_load, server_url, throwaway_database

from zdm import db, planfile
from zdm.plan import MigrationPlan, MigrationStep
from zdm.runner import Reporter, Runner

PLAN = {"id": "widen", "operations": [{"op": "alter_column", "table": "orders", "column": "id", "type": "BIGINT"}]}
PLAIN = [  # the parent first, as the apps lock it
    "ALTER TABLE orders ALTER COLUMN id TYPE bigint",
    "ALTER TABLE items ALTER COLUMN order_id TYPE bigint",
    "ALTER TABLE shipments ALTER COLUMN order_id TYPE bigint",
    "ALTER SEQUENCE orders_id_seq AS bigint",
]
SCHEMA = """
CREATE TABLE orders (id serial PRIMARY KEY, note text, total integer NOT NULL DEFAULT 0);
CREATE TABLE items (id bigserial PRIMARY KEY, order_id integer NOT NULL REFERENCES orders ON DELETE CASCADE,
                    qty integer NOT NULL DEFAULT 1);
CREATE INDEX items_order_ix ON items (order_id);
CREATE TABLE shipments (id bigserial PRIMARY KEY, order_id integer REFERENCES orders ON DELETE SET NULL, carrier text);
INSERT INTO orders (note, total) SELECT 'order ' || g, g FROM generate_series(1, {rows}) g;
INSERT INTO items (order_id, qty) SELECT mod(g * 7, {rows}) + 1, g FROM generate_series(1, {rows}) g;
INSERT INTO shipments (order_id, carrier) SELECT mod(g * 13, {rows}) + 1, 'c' FROM generate_series(1, {rows}) g;
ANALYZE
"""


def client(url: str, rows: int, seed: int, stop: Any, results: Any) -> None:
    """Insert an order, an item and a shipment for it, update an old order and the new item: one
    transaction, timed; errors kept with the time they happened."""
    engine = sa.create_engine(url, connect_args={"prepare_threshold": None}, pool_size=1)
    timings: list[tuple[float, float, str | None]] = []
    n = seed
    while not stop.is_set():
        n += 7919
        began = time.perf_counter()
        error = None
        try:
            with engine.begin() as connection:
                order = connection.scalar(sa.text("INSERT INTO orders (note) VALUES ('live') RETURNING id"))
                item = connection.scalar(sa.text("INSERT INTO items (order_id) VALUES (:o) RETURNING id"), {"o": order})
                connection.execute(sa.text("INSERT INTO shipments (order_id, carrier) VALUES (:o, 'x')"), {"o": order})
                connection.execute(sa.text("UPDATE orders SET total = total + 1 WHERE id = :o"), {"o": n % rows + 1})
                connection.execute(sa.text("UPDATE items SET qty = qty + 1 WHERE id = :i"), {"i": item})
        except sa.exc.DBAPIError as exc:
            error = str(exc.orig).splitlines()[0]
        timings.append((began, time.perf_counter() - began, error))
        time.sleep(0.002)
    results.put(timings)
    engine.dispose()


class Timed(Reporter):
    """Times each step zdm runs (a transaction holds its locks at most that long)."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []
        self._began: float | None = None
        self._what = ""

    def step(self, step: MigrationStep) -> None:
        self._close()
        self._began, self._what = time.perf_counter(), step.description

    def _close(self) -> None:
        if self._began is not None:
            self.steps.append((self._what, time.perf_counter() - self._began))
            self._began = None

    def phase(self, plan: MigrationPlan, phase: Any) -> None:
        self._close()


def scenario(name: str, server: sa.URL, rows: int, clients: int, budget_ms: int) -> dict[str, Any]:
    with throwaway_database(server, f"widen_{name}") as url:
        engine = db.create_engine(url.render_as_string(hide_password=False))
        began = time.perf_counter()
        with engine.begin() as connection:
            for statement in SCHEMA.format(rows=rows).split(";"):
                if statement.strip():
                    connection.exec_driver_sql(statement)
        print(f"{name}: {3 * rows:,} rows loaded in {time.perf_counter() - began:.1f} s", file=sys.stderr)
        stop, results = mp.Event(), mp.Queue()
        plain_url = url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        processes = [mp.Process(target=client, args=(plain_url, rows, seed, stop, results))
                     for seed in range(clients)]
        for process in processes:
            process.start()
        time.sleep(2.0)  # the clients warm up
        reporter = Timed()
        change_began = time.perf_counter()
        if name == "zdm":
            run = Runner(engine, reporter, overrides={"lock_timeout_ms": budget_ms, "batch_size": 5000})
            plan = planfile.parse(PLAN)
            run.start(plan)
            run.complete(plan.id)
            reporter._close()
        else:  # retried, as a person would, when PostgreSQL picks it as a deadlock's victim
            for attempt in range(1, 6):
                try:
                    with engine.begin() as connection:
                        for statement in PLAIN:
                            connection.exec_driver_sql(statement)
                    break
                except sa.exc.OperationalError as exc:
                    print(f"plain: attempt {attempt} failed: {str(exc.orig).splitlines()[0]}", file=sys.stderr)
                    reporter.steps.append((f"failed attempt {attempt}", 0.0))
        change_ended = time.perf_counter()
        time.sleep(1.0)
        stop.set()
        timings = [t for _ in processes for t in results.get()]
        for process in processes:
            process.join()
        with engine.connect() as connection:
            types = sorted(connection.execute(sa.text(
                "SELECT table_name || '.' || column_name || ' ' || data_type FROM information_schema.columns "
                "WHERE (table_name, column_name) IN (('orders', 'id'), ('items', 'order_id'), "
                "('shipments', 'order_id'))")).scalars())
        engine.dispose()
    during = [(latency, error) for start, latency, error in timings
              if start + latency >= change_began and start <= change_ended]
    latencies = sorted(latency for latency, _ in during) or [0.0]
    errors = [error for _, _, error in timings if error]
    locks = [seconds for what, seconds in reporter.steps  # backfills, index builds and VALIDATE block no writes
             if not what.startswith(("backfill", "validate")) and " index " not in f" {what} "]
    return {
        "scenario": name, "change_s": change_ended - change_began, "transactions": len(timings),
        "during": len(during), "errors": len(errors), "error_kinds": sorted(set(errors))[:3],
        "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "max_ms": 1000 * latencies[-1], "longest_lock_step_ms": 1000 * max(locks, default=0.0),
        "steps": [(what, round(seconds * 1000, 1)) for what, seconds in reporter.steps], "types": types,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--lock-budget-ms", type=int, default=2000)
    parser.add_argument("--db", default=DEFAULT_SERVER)
    args = parser.parse_args()
    server = server_url(args.db)
    found = []
    for name in ("zdm", "plain"):
        found.append(scenario(name, server, args.rows, args.clients, args.lock_budget_ms))
        print(json.dumps({k: v for k, v in found[-1].items() if k != "steps"}), file=sys.stderr)
    zdm, plain = found
    print(f"widen orders.id INTEGER -> BIGINT with 2 referencing tables, {args.rows:,} rows each, "
          f"{args.clients} app clients, lock budget {args.lock_budget_ms} ms; machine load {machine_load()}")
    print(f"{'scenario':<8} {'change s':>9} {'txns during':>12} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'longest lock step ms':>21}")
    for r in found:
        print(f"{r['scenario']:<8} {r['change_s']:>9.1f} {r['during']:>12} {r['errors']:>7} {r['p50_ms']:>8.1f} "
              f"{r['p99_ms']:>8.1f} {r['max_ms']:>8.1f} {r['longest_lock_step_ms']:>21.1f}")
        for kind in r["error_kinds"]:
            print(f"  {r['scenario']} error: {kind}")
    print(f"zdm/plain: total time x{zdm['change_s'] / plain['change_s']:.2f}, "
          f"max client latency x{zdm['max_ms'] / max(plain['max_ms'], 0.001):.3f} "
          f"(plain stalled clients up to {plain['max_ms'] / 1000:.1f} s)")
    target = args.lock_budget_ms + 100
    print(f"targets: zdm client errors {zdm['errors']} (target 0); zdm max latency {zdm['max_ms']:.0f} ms "
          f"(target <= {target} ms): {'met' if zdm['errors'] == 0 and zdm['max_ms'] <= target else 'NOT met'}")
    print("zdm steps (ms):", file=sys.stderr)
    for what, ms in zdm["steps"]:
        print(f"  {ms:>10.1f}  {what}", file=sys.stderr)
    OUT.mkdir(exist_ok=True)
    (OUT / "widen_key.json").write_text(json.dumps({"rows": args.rows, "clients": args.clients, "results": found},
                                                   indent=2))


if __name__ == "__main__":
    main()
