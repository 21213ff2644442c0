"""zdm's backfill against the floor: one UPDATE of the whole table, on the same machine, in the same run.

For each table size (default 1M and 5M rows) three fresh copies of the same table are migrated:

floor   the plan's expand (triggers and all), then the backfill's UPDATE as a single statement:
        the least work the change can cost with the app's triggers in place;
zdm     `zdm start` in a subprocess: keyset batches of ~--batch-target-ms each, a checkpoint per
        batch; its progress (JSON lines on stderr) times the backfill and every batch, and
        wait4() gives the runner's peak memory (maxrss);
plain   ALTER TABLE ADD COLUMN + one UPDATE, no triggers: what an offline migration would cost.

Targets: zdm <= 1.5x the floor; each batch <= 2x the target duration; peak memory at 5M within
10% of 1M. Results go to stdout and benchmarks/out/backfill.json.

    python benchmarks/backfill.py [--rows 1000000,5000000] [--db postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from bench_db import DEFAULT_SERVER, OUT, machine_load, server_url, throwaway_database

from zdm import db, planfile
from zdm.plan import Phase
from zdm.runner import Runner

TABLE = "items"
PLAN = {"id": "bench-backfill", "title": "items.email becomes items.email_address",
        "operations": [{"op": "rename_column", "table": TABLE, "column": "email", "new_name": "email_address"}]}


def create_table(engine: sa.Engine, rows: int) -> None:
    """``rows`` rows of (id, email NOT NULL, note), vacuumed, analyzed and checkpointed: a fresh start."""
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE IF EXISTS items"))
        connection.execute(sa.text("CREATE TABLE items (id bigint PRIMARY KEY, email text NOT NULL, note text)"))
        connection.execute(sa.text("INSERT INTO items SELECT g, 'user' || g || '@example.com', 'note' "
                                   "FROM generate_series(1, :rows) g"), {"rows": rows})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text("VACUUM ANALYZE items"))
        connection.execute(sa.text("CHECKPOINT"))


def floor_seconds(engine: sa.Engine) -> float:
    """Expand as zdm would, then the whole backfill as one UPDATE."""
    plan = Runner(engine).plan(planfile.parse(PLAN))
    with engine.begin() as connection:
        for step in plan.steps_of(Phase.EXPANDING):
            for action in step.forward:
                connection.exec_driver_sql(action)
    spec = next(step.backfill for step in plan.steps if step.backfill is not None)
    table = sa.table(spec.table, *[sa.column(c) for c in spec.assignments])
    update = table.update().values({c: sa.literal_column(e) for c, e in spec.assignments.items()})
    if spec.pending:
        update = update.where(sa.text(spec.pending))
    started = time.monotonic()
    with engine.begin() as connection:
        connection.execute(update)
    return time.monotonic() - started


def plain_seconds(engine: sa.Engine) -> float:
    """No triggers, no batches: ADD COLUMN and one UPDATE, as an offline migration would."""
    started = time.monotonic()
    with engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE items ADD COLUMN email_address text"))
        connection.execute(sa.text("UPDATE items SET email_address = email"))
    return time.monotonic() - started


def zdm_run(url: sa.URL, target_ms: int) -> dict[str, Any]:
    """`zdm start` as a user runs it; times the backfill from its progress, and its peak memory."""
    with tempfile.TemporaryDirectory() as tmp:
        plan_path = Path(tmp) / "plan.json"
        plan_path.write_text(json.dumps(PLAN))
        command = [sys.executable, "-m", "zdm.cli", "start", str(plan_path), "--json",
                   "--db", url.render_as_string(hide_password=False), "--batch-target-ms", str(target_ms)]
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert process.stderr is not None
        backfill_began = backfill_ended = None
        batches: list[float] = []
        sizes: list[int] = []
        tail: list[str] = []
        for line in process.stderr:
            now = time.monotonic()
            event = json.loads(line) if line.startswith("{") else {"event": "text", "line": line}
            tail = [*tail, line.strip()][-5:]
            if event["event"] == "step" and event["description"].startswith("backfill"):
                backfill_began = now
            elif event["event"] == "backfill" and event["finished"]:
                backfill_ended = now
            elif event["event"] == "backfill":
                batches.append(event["batch_ms"])
                sizes.append(event["batch_size"])
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0 or backfill_began is None or backfill_ended is None:
        raise SystemExit(f"zdm start failed ({process.returncode}): {' | '.join(tail)}")
    return {
        "backfill_s": backfill_ended - backfill_began,
        "start_s": time.monotonic() - started,
        "batches": len(batches),
        "batch_ms": {"p50": statistics.median(batches), "p99": _percentile(batches, 99), "max": max(batches)},
        "batches_over_2x_target": sum(1 for ms in batches if ms > 2 * target_ms),
        "batch_rows": {"min": min(sizes), "median": statistics.median(sizes), "max": max(sizes)},
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux: kilobytes
    }


def _percentile(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(percent / 100 * (len(ordered) - 1)))]


def measure(url: sa.URL, rows: int, target_ms: int) -> dict[str, Any]:
    engine = db.create_engine(url)
    try:
        result: dict[str, Any] = {"rows": rows, "load_before": machine_load()}
        for name in ("floor", "zdm", "plain"):
            print(f"  {rows:,} rows: building the table for {name}...", file=sys.stderr, flush=True)
            create_table(engine, rows)
            with engine.begin() as connection:  # each run starts without the previous one's state
                connection.execute(sa.text("DROP TABLE IF EXISTS zdm_migrations"))
            if name == "floor":
                result["floor_s"] = floor_seconds(engine)
            elif name == "zdm":
                result["zdm"] = zdm_run(url, target_ms)
            else:
                result["plain_s"] = plain_seconds(engine)
            with engine.begin() as connection:  # the plan's functions go with the table's triggers
                connection.execute(sa.text("DROP TABLE items"))
                connection.execute(sa.text("DROP FUNCTION IF EXISTS zdm_fn_bench_backfill_items_email_address()"))
            print(f"  {rows:,} rows: {name} done", file=sys.stderr, flush=True)
        result["ratio_to_floor"] = result["zdm"]["backfill_s"] / result["floor_s"]
        result["ratio_to_plain"] = result["zdm"]["backfill_s"] / result["plain_s"]
        result["load_after"] = machine_load()
        return result
    finally:
        engine.dispose()


def report(results: list[dict[str, Any]], target_ms: int) -> list[str]:
    lines = [f"{'rows':>10}  {'floor':>8}  {'zdm':>8}  {'ratio':>5}  {'plain':>8}  {'ratio':>5}  {'batches':>7}  "
             f"{'batch ms p50/p99/max':>21}  {'>2x':>4}  {'peak RSS':>9}  load 1m"]
    for r in results:
        z = r["zdm"]
        ms = z["batch_ms"]
        lines.append(
            f"{r['rows']:>10,}  {r['floor_s']:>7.2f}s  {z['backfill_s']:>7.2f}s  {r['ratio_to_floor']:>5.2f}  "
            f"{r['plain_s']:>7.2f}s  {r['ratio_to_plain']:>5.2f}  {z['batches']:>7}  "
            f"{ms['p50']:>6.0f}/{ms['p99']:>5.0f}/{ms['max']:>6.0f}  {z['batches_over_2x_target']:>4}  "
            f"{z['peak_rss_mb']:>7.1f}MB  {r['load_before']['load_1m']:.1f}->{r['load_after']['load_1m']:.1f}")
    lines.append(f"floor = expand + the backfill as one UPDATE (same triggers); plain = ADD COLUMN + one UPDATE, "
                 f"no triggers; target batch {target_ms} ms")
    if len(results) > 1:
        smallest, largest = results[0], results[-1]
        growth = largest["zdm"]["peak_rss_mb"] / smallest["zdm"]["peak_rss_mb"]
        lines.append(f"peak memory {largest['rows']:,} vs {smallest['rows']:,} rows: {growth:.3f}x "
                     f"({'within' if growth <= 1.10 else 'NOT within'} 10%)")
    for r in results:
        ok = r["ratio_to_floor"] <= 1.5 and r["zdm"]["batch_ms"]["max"] <= 2 * target_ms
        lines.append(f"{r['rows']:,} rows: backfill {r['ratio_to_floor']:.2f}x the floor (target <= 1.5), longest "
                     f"batch {r['zdm']['batch_ms']['max']:.0f} ms (target <= {2 * target_ms}): "
                     f"{'met' if ok else 'NOT met'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=DEFAULT_SERVER, help="local PostgreSQL server (a database is created on it)")
    parser.add_argument("--rows", default="1000000,5000000", help="comma-separated table sizes")
    parser.add_argument("--batch-target-ms", type=int, default=100)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    sizes = [int(size) for size in args.rows.split(",")]
    results = []
    with throwaway_database(server_url(args.db), "backfill") as url:
        for rows in sizes:
            results.append(measure(url, rows, args.batch_target_ms))
    lines = report(results, args.batch_target_ms)
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "backfill.json"
    path.write_text(json.dumps({"batch_target_ms": args.batch_target_ms, "results": results,
                                "summary": lines}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
