"""zdm's backfill against a plain UPDATE, on the same machine, in the same run: time, WAL, table size.

For each table size (default 1M rows) fresh copies of the same table are migrated (a rename):

plain   ALTER TABLE ADD COLUMN + one UPDATE, no triggers: what an offline migration costs; the
        baseline of every ratio;
floor   the plan's expand (triggers and all), then the backfill's UPDATE as a single statement
        (with the backfill's mark, so the triggers skip it as they skip zdm's batches);
zdm     `zdm start` then `zdm complete` in subprocesses, default settings: keyset batches of
        ~--batch-target-ms each, a checkpoint per batch, a VACUUM every vacuum_every_pct (5) % of the rows; its
        progress (JSON lines on stderr) times the backfill and every batch, and wait4() gives the
        runner's peak memory (maxrss);
zdm-no-vacuum   the same with vacuum_every_pct 0 (the bloat of a backfill that never reclaims).

For every run: WAL written (pg_current_wal_lsn() before and after), the table's size
(pg_table_size) before and after, and its dead tuples after (pg_stat_user_tables, after the
statistics flush). Each run is repeated (--repeat, 3), interleaved with the others; times are medians.
Targets (issue 12): zdm backfill <= 1.2x plain; table after complete <= 1.5x
before. Results go to stdout and benchmarks/out/backfill.json.

    python benchmarks/backfill.py [--rows 1000000] [--db postgresql://postgres@127.0.0.1:5432/postgres]
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
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from bench_db import DEFAULT_SERVER, OUT, fresh_items_table, machine_load, own_server, server_url, throwaway_database

from zdm import db, planfile
from zdm.dialects import for_connection
from zdm.plan import Phase
from zdm.runner import Runner

TABLE = "items"
PLAN = {"id": "bench-backfill", "title": "items.email becomes items.email_address",
        "operations": [{"op": "rename_column", "table": TABLE, "column": "email", "new_name": "email_address"}]}


def floor_seconds(engine: sa.Engine) -> float:
    """Expand as zdm would, then the whole backfill as one UPDATE, marked as the backfill's."""
    plan = Runner(engine).plan(planfile.parse(PLAN))
    dialect = for_connection(engine)
    with engine.begin() as connection:
        for step in plan.steps_of(Phase.EXPANDING):
            for action in step.forward:
                action.run(connection, dialect)
    spec = next(step.backfill for step in plan.steps if step.backfill is not None)
    table = sa.table(spec.table, *[sa.column(c) for c in spec.assignments])
    update = table.update().values({c: sa.literal_column(e) for c, e in spec.assignments.items()})
    if spec.pending:
        update = update.where(sa.text(spec.pending))
    started = time.monotonic()
    with engine.begin() as connection:
        for sql in dialect.batch_begin(3_600_000):
            connection.exec_driver_sql(sql)
        connection.execute(update)
    return time.monotonic() - started


def plain_seconds(engine: sa.Engine) -> float:
    """No triggers, no batches: ADD COLUMN and one UPDATE, as an offline migration would."""
    started = time.monotonic()
    with engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE items ADD COLUMN email_address text"))
        connection.execute(sa.text("UPDATE items SET email_address = email"))
    return time.monotonic() - started


def wal_lsn(engine: sa.Engine) -> str:
    with engine.connect() as connection:
        return str(connection.scalar(sa.text("SELECT pg_current_wal_insert_lsn()")))


def wal_since(engine: sa.Engine, lsn: str) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(sa.text("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), :lsn)"),
                                     {"lsn": lsn}))


def table_size(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(sa.text("SELECT pg_table_size('items')")))


def dead_tuples(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT pg_stat_force_next_flush()"))
        connection.commit()
        time.sleep(0.5)
        connection.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        return int(connection.scalar(sa.text(
            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'items'")) or 0)


def zdm_run(url: sa.URL, target_ms: int, *extra: str) -> dict[str, Any]:
    """`zdm start` then `zdm complete` as a user runs them; times the backfill from its progress,
    and its peak memory."""
    with tempfile.TemporaryDirectory() as tmp:
        plan_path = Path(tmp) / "plan.json"
        plan_path.write_text(json.dumps(PLAN))
        database = url.render_as_string(hide_password=False)
        command = [sys.executable, "-m", "zdm.cli", "start", str(plan_path), "--json",
                   "--db", database, "--batch-target-ms", str(target_ms), *extra]
        started = time.monotonic()
        result = (Path(tmp) / "result.json").open("w+")  # --json: an error is a document on stdout
        process = subprocess.Popen(command, stdout=result, stderr=subprocess.PIPE, text=True)
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
        start_s = time.monotonic() - started
        if process.returncode != 0 or backfill_began is None or backfill_ended is None:
            result.seek(0)
            raise SystemExit(f"zdm start failed ({process.returncode}): {' | '.join(tail)} {result.read().strip()}")
        done = subprocess.run([sys.executable, "-m", "zdm.cli", "complete", PLAN["id"], "--quiet", "--db", database],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"zdm complete failed ({done.returncode}): {done.stderr.strip()}")
    return {
        "backfill_s": backfill_ended - backfill_began,
        "start_s": start_s,
        "batches": len(batches),
        "batch_ms": {"p50": statistics.median(batches), "p99": _percentile(batches, 99), "max": max(batches)},
        "batches_over_2x_target": sum(1 for ms in batches if ms > 2 * target_ms),
        "batch_rows": {"min": min(sizes), "median": statistics.median(sizes), "max": max(sizes)},
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux: kilobytes
    }


def _percentile(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(percent / 100 * (len(ordered) - 1)))]


RUNS = ("plain", "floor", "zdm", "zdm-no-vacuum")


def measure(url: sa.URL, rows: int, target_ms: int, repeat: int) -> dict[str, Any]:
    """Every run ``repeat`` times, interleaved (plain, floor, zdm, zdm-no-vacuum, plain, ...), so a
    busy moment of the machine does not fall on one run alone; times are the medians."""
    engine = db.create_engine(url)
    try:
        result: dict[str, Any] = {"rows": rows, "repeat": repeat, "load_before": machine_load()}
        samples: dict[str, list[float]] = {name: [] for name in RUNS}
        for round_ in range(1, repeat + 1):
            for name in RUNS:
                print(f"  {rows:,} rows, round {round_}/{repeat}: {name}...", file=sys.stderr, flush=True)
                fresh_items_table(engine, rows)
                with engine.begin() as connection:  # each run starts without the previous one's state
                    connection.execute(sa.text("DROP TABLE IF EXISTS zdm_migrations"))
                size_before, lsn = table_size(engine), wal_lsn(engine)
                if name == "floor":
                    samples[name].append(floor_seconds(engine))
                elif name == "plain":
                    samples[name].append(plain_seconds(engine))
                else:
                    run = zdm_run(url, target_ms, *(["--vacuum-every-pct", "0"] if name == "zdm-no-vacuum" else []))
                    samples[name].append(run["backfill_s"])
                    result[name] = run  # the batches of the last round
                result[f"{name}_disk"] = {"wal_bytes": wal_since(engine, lsn), "size_before": size_before,
                                          "size_after": table_size(engine), "dead_tuples": dead_tuples(engine)}
        result["samples_s"] = samples
        result["plain_s"], result["floor_s"] = statistics.median(samples["plain"]), statistics.median(samples["floor"])
        for name in ("zdm", "zdm-no-vacuum"):
            result[name]["backfill_s"] = statistics.median(samples[name])
        result["ratio_to_floor"] = result["zdm"]["backfill_s"] / result["floor_s"]
        result["ratio_to_plain"] = result["zdm"]["backfill_s"] / result["plain_s"]
        result["load_after"] = machine_load()
        return result
    finally:
        engine.dispose()


def mb(size: int) -> str:
    return f"{size / 2**20:,.0f} MB"


def report(results: list[dict[str, Any]], target_ms: int) -> list[str]:
    lines = [f"{'rows':>10}  {'plain':>8}  {'floor':>8}  {'zdm':>8}  {'/plain':>6}  {'/floor':>6}  {'batches':>7}  "
             f"{'batch ms p50/p99/max':>21}  {'>2x':>4}  {'peak RSS':>9}  load 1m"]
    for r in results:
        z = r["zdm"]
        ms = z["batch_ms"]
        lines.append(
            f"{r['rows']:>10,}  {r['plain_s']:>7.2f}s  {r['floor_s']:>7.2f}s  {z['backfill_s']:>7.2f}s  "
            f"{r['ratio_to_plain']:>6.2f}  {r['ratio_to_floor']:>6.2f}  {z['batches']:>7}  "
            f"{ms['p50']:>6.0f}/{ms['p99']:>5.0f}/{ms['max']:>6.0f}  {z['batches_over_2x_target']:>4}  "
            f"{z['peak_rss_mb']:>7.1f}MB  {r['load_before']['load_1m']:.1f}->{r['load_after']['load_1m']:.1f}")
    lines.append(f"plain = ADD COLUMN + one UPDATE, no triggers (the baseline); floor = expand + the backfill as one "
                 f"UPDATE; zdm = default settings; target batch {target_ms} ms; times: medians of "
                 f"{results[0]['repeat']} interleaved rounds")
    for r in results:
        lines.append(f"{r['rows']:,} rows, disk (start + complete for zdm):")
        for name in ("plain", "floor", "zdm", "zdm-no-vacuum"):
            d = r[f"{name}_disk"]
            lines.append(f"  {name:<14} WAL {mb(d['wal_bytes']):>8} ({d['wal_bytes'] / d['size_before']:.2f}x the "
                         f"table)  table {mb(d['size_before'])} -> {mb(d['size_after'])} "
                         f"({d['size_after'] / d['size_before']:.2f}x)  dead tuples {d['dead_tuples']:,}")
        plain, z, nv = r["plain_disk"], r["zdm_disk"], r["zdm-no-vacuum_disk"]
        no_vacuum_s = r["zdm-no-vacuum"]["backfill_s"]
        lines.append(f"  zdm WAL {z['wal_bytes'] / plain['wal_bytes']:.2f}x plain's; zdm without VACUUM "
                     f"{nv['size_after'] / nv['size_before']:.2f}x size, backfill {no_vacuum_s:.2f}s "
                     f"({no_vacuum_s / r['plain_s']:.2f}x plain)")
        floor = r["floor_disk"]
        lines.append(f"  floor {r['floor_s'] / r['plain_s']:.2f}x plain, WAL "
                     f"{floor['wal_bytes'] / plain['wal_bytes']:.2f}x: "
                     "what the dual-write trigger costs an UPDATE it skips (PostgreSQL locks each row for a "
                     "BEFORE ROW UPDATE trigger before it tests WHEN), without any batching")
        growth = z["size_after"] / z["size_before"]
        ok = r["ratio_to_plain"] <= 1.2 and growth <= 1.5
        lines.append(f"{r['rows']:,} rows: backfill {r['ratio_to_plain']:.2f}x plain (target <= 1.2), table after "
                     f"complete {growth:.2f}x before (target <= 1.5), longest batch {r['zdm']['batch_ms']['max']:.0f} "
                     f"ms: {'met' if ok else 'NOT met'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=DEFAULT_SERVER, help="local PostgreSQL server (a database is created on it)")
    parser.add_argument("--rows", default="1000000", help="comma-separated table sizes")
    parser.add_argument("--batch-target-ms", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every run; times are the medians")
    parser.add_argument("--own-server", action="store_true",
                        help="run on a server of its own (initdb): WAL figures undisturbed by other clients")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    sizes = [int(size) for size in args.rows.split(",")]
    results = []
    with own_server() if args.own_server else nullcontext(server_url(args.db)) as server, \
            throwaway_database(server, "backfill") as url:
        for rows in sizes:
            results.append(measure(url, rows, args.batch_target_ms, args.repeat))
    lines = report(results, args.batch_target_ms)
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "backfill.json"
    path.write_text(json.dumps({"batch_target_ms": args.batch_target_ms, "results": results,
                                "summary": lines}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
