"""Replica lag during a backfill, with and without --max-replica-lag (issue 12).

Starts its own primary (initdb) and a streaming replica of it (pg_basebackup -R) on free ports
(zdm.testing.replica), builds --rows rows on the primary, and runs `zdm start` of a rename twice
on fresh copies: with default settings, then with --max-replica-lag (default 1000 ms). A thread
samples the lag every 50 ms, as the primary sees it (pg_stat_replication.replay_lag) and as the
replica sees it (now() - pg_last_xact_replay_timestamp() while it has WAL to replay); the
script prints the max and p99 of each, the backfill time, and the time zdm spent waiting.

    python benchmarks/replica_lag.py [--rows 1000000] [--max-replica-lag 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from bench_db import OUT, fresh_items_table, machine_load

from zdm import db, planfile
from zdm.backfill import BackfillProgress
from zdm.dialects.postgresql import PostgresDialect
from zdm.runner import Reporter, Runner
from zdm.testing.replica import pair_unavailable, streaming_pair
from zdm.throttle import Wait

PLAN = {"id": "bench-replica", "operations": [
    {"op": "rename_column", "table": "items", "column": "email", "new_name": "email_address"}]}


class Timing(Reporter):
    def __init__(self) -> None:
        self.began: float | None = None
        self.ended: float | None = None
        self.waited_s = 0.0
        self.waits = 0

    def backfill(self, progress: BackfillProgress) -> None:
        now = time.monotonic()
        self.began = self.began or now
        if progress.finished:
            self.ended = now

    def throttled(self, wait: Wait | None, waited_s: float) -> None:
        if wait is None:
            self.waited_s += waited_s
            self.waits += 1


def build(engine: sa.Engine, rows: int) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE IF EXISTS zdm_migrations"))
    fresh_items_table(engine, rows)


def run(primary: str, replica: str, rows: int, overrides: dict[str, Any]) -> dict[str, Any]:
    engine = db.create_engine(primary)
    replica_engine = db.create_engine(replica)
    build(engine, rows)
    time.sleep(2)  # the replica catches up with the build
    dialect = PostgresDialect(engine.dialect)
    seen_primary: list[float] = []
    seen_replica: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        with engine.connect() as on_primary, replica_engine.connect() as on_replica:
            while not stop.is_set():
                seen_primary.extend(v or 0.0 for v in dialect.replica_lags(on_primary).values())
                seen_replica.append(dialect.replay_lag_ms(on_replica))
                on_primary.rollback()
                on_replica.rollback()
                time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    timing = Timing()
    try:
        Runner(engine, timing, overrides).start(planfile.parse(PLAN))
    finally:
        stop.set()
        sampler.join()
        engine.dispose()
        replica_engine.dispose()
    assert timing.began is not None and timing.ended is not None
    return {"settings": overrides, "backfill_s": round(timing.ended - timing.began, 2),
            "waited_s": round(timing.waited_s, 2), "waits": timing.waits,
            "lag_primary_ms": _stats(seen_primary), "lag_replica_ms": _stats(seen_replica)}


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values) or [0.0]
    return {"max": round(ordered[-1], 1), "p99": round(ordered[round(0.99 * (len(ordered) - 1))], 1),
            "median": round(statistics.median(ordered), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--max-replica-lag", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if (why := pair_unavailable()) is not None:
        raise SystemExit(f"cannot start a primary with a replica: {why}")
    load_before = machine_load()
    with streaming_pair() as pair:
        results = []
        for label, overrides in (("default", {}), (f"--max-replica-lag {args.max_replica_lag}",
                                                   {"max_replica_lag_ms": args.max_replica_lag})):
            print(f"  {label}: {args.rows:,} rows...", file=sys.stderr, flush=True)
            results.append({"run": label, **run(pair.primary_url, pair.replica_url, args.rows, overrides)})
    lines = [f"{args.rows:,} rows, load {load_before['load_1m']:.1f} on {load_before['cores']} cores"]
    for r in results:
        p, q = r["lag_primary_ms"], r["lag_replica_ms"]
        lines.append(f"{r['run']:<26} backfill {r['backfill_s']:>6.2f}s (waited {r['waited_s']:.2f}s in "
                     f"{r['waits']} waits)  replica lag max {p['max']:,.0f} ms / p99 {p['p99']:,.0f} ms "
                     f"(pg_stat_replication), max {q['max']:,.0f} ms / p99 {q['p99']:,.0f} ms (on the replica)")
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "replica_lag.json").write_text(json.dumps({"results": results, "summary": lines}, indent=2))


if __name__ == "__main__":
    main()
