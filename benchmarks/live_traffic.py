"""Live traffic during a migration: zdm against the naive way, on the same table, with the same clients.

A table of --rows rows (default 1,000,000) is created fresh for each scenario, and --clients client
processes (default 4, half old-version, half new-version) do point reads, updates and inserts
on it as fast as a short think time allows, timing every call. The change is the same in every
scenario: rename the NOT NULL, indexed column ``email`` to ``email_address``, make ``note`` NOT
NULL (the old app still inserts NULLs), and index ``balance``.

The clients write the way real apps do, not only the columns the change is about: updates of
the renamed column, updates of an unrelated column (``last_seen = now()``, half of them on the
last 1% of keys, which a backfill walking the key upwards reaches last, so during a backfill they
meet rows it has not reached yet), inserts that name every column, and inserts that leave
columns out and rely on their defaults (``balance``, ``last_seen``; the old app leaves ``note``
out too). Errors are counted per kind of call.

zdm                 `start` (expand, backfills, validations, CONCURRENTLY indexes), the deploy
                    (old clients switch to the new column), then `complete`.
naive-transaction   Alembic's default on PostgreSQL: ADD COLUMN, one UPDATE per column, SET NOT
                    NULL, CREATE INDEX, DROP the old column, in one transaction; then the deploy.
naive-statements    the same statements, each committing on its own (a hand-run script).

Old-version clients use ``email``; new-version clients use ``email_address`` once it exists
(zdm: from the end of expand; naive: from the end of the migration); after the deploy every
client is new. Per phase the script prints client ops, errors and p50 / p99 / max latency, and
writes benchmarks/out/live_traffic.json and live_traffic.png (latency over time, phases marked).

Targets: zero client errors during the zdm migration; max client latency <= lock budget + 100 ms.

zdm-throttled       zdm with --probe-query (a short range read) and --max-probe-ms twice the baseline
                    p99 of the scenario before it (issue 12): the backfill waits while the app is slow.

Per zdm scenario it also prints app throughput and p99 during the migration as ratios of the
baseline (the first seconds, clients only). Issue 12's target: throttled p99 <= 2x baseline.

    python benchmarks/live_traffic.py [--rows 1000000] [--clients 4] [--db postgresql://postgres@127.0.0.1:5432/postgres]
    python benchmarks/live_traffic.py --scenarios zdm,zdm-throttled
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from bench_db import DEFAULT_SERVER, OUT, libpq, machine_load, server_url, throwaway_database

from zdm import db, planfile
from zdm.plan import MigrationPlan, MigrationStep, Phase
from zdm.runner import Reporter, Runner

PLAN = {
    "id": "live",
    "title": "accounts: email -> email_address, note NOT NULL, index on balance",
    "operations": [
        {"op": "rename_column", "table": "accounts", "column": "email", "new_name": "email_address"},
        {"op": "set_not_null", "table": "accounts", "column": "note", "fill": "-"},
        {"op": "create_index", "table": "accounts", "name": "accounts_balance_ix", "columns": ["balance"]},
    ],
}
#: The same change written the naive way, as an Alembic revision would emit it.
NAIVE = [
    ("ADD COLUMN", "ALTER TABLE accounts ADD COLUMN email_address text"),
    ("UPDATE email_address", "UPDATE accounts SET email_address = email"),
    ("UPDATE note", "UPDATE accounts SET note = '-' WHERE note IS NULL"),
    ("SET NOT NULL email_address", "ALTER TABLE accounts ALTER COLUMN email_address SET NOT NULL"),
    ("SET NOT NULL note", "ALTER TABLE accounts ALTER COLUMN note SET NOT NULL"),
    ("CREATE INDEX email_address", "CREATE INDEX accounts_email_address_ix ON accounts (email_address)"),
    ("CREATE INDEX balance", "CREATE INDEX accounts_balance_ix ON accounts (balance)"),
    ("DROP COLUMN email", "ALTER TABLE accounts DROP COLUMN email"),
]
OLD_ONLY, BOTH, NEW_ONLY = 0, 1, 2  # which column the clients use: see Client.column
READ, UPDATE, TOUCH, INSERT, INSERT_DEFAULTS = 0, 1, 2, 3, 4
KINDS = {READ: "read", UPDATE: "update email", TOUCH: "update last_seen (unrelated)", INSERT: "insert every column",
         INSERT_DEFAULTS: "insert leaving columns out"}
#: Cumulative share of each kind of call.
MIX = ((0.5, READ), (0.7, UPDATE), (0.85, TOUCH), (0.925, INSERT), (1.0, INSERT_DEFAULTS))
#: The last keys a backfill reaches: half the unrelated updates go there.
TAIL = 0.01


# -- clients (separate processes: their timing must not share the runner's interpreter) -----------------
def client(conninfo: str, number: int, version: str, rows: int, mode: Any, ready: Any, stop: Any, results: Any,
           think_ms: float) -> None:
    """One app process. Each call is timed; failures are kept with their message."""
    import psycopg
    from psycopg import sql

    def statements(column: str) -> dict[int, Any]:
        name = sql.Identifier(column)
        return {
            READ: sql.SQL("SELECT id, {}, note FROM accounts WHERE id = %s").format(name),
            UPDATE: sql.SQL("UPDATE accounts SET {} = %s, balance = balance + 1 WHERE id = %s").format(name),
            TOUCH: sql.SQL("UPDATE accounts SET last_seen = now() WHERE id = %s"),
            INSERT: sql.SQL("INSERT INTO accounts ({}, note, balance, last_seen) VALUES (%s, %s, 0, now())"
                            ).format(name),
            # The old app leaves note out as well (NULL); the new app knows it is required.
            INSERT_DEFAULTS: sql.SQL("INSERT INTO accounts ({}) VALUES (%s)" if column == "email" else
                                     "INSERT INTO accounts ({}, note) VALUES (%s, 'n')").format(name),
        }

    by_column = {"email": statements("email"), "email_address": statements("email_address")}
    rng = random.Random(number)
    tail = max(1, rows - int(rows * TAIL) + 1)
    samples: list[tuple[float, float, int, bool, bool, bool]] = []
    errors: list[tuple[float, str, int]] = []
    connection = psycopg.connect(conninfo, autocommit=True, application_name=f"app-{version}-{number}")
    with ready.get_lock():
        ready.value += 1
    while not stop.is_set():
        new = mode.value == NEW_ONLY or (version == "new" and mode.value == BOTH)
        sqls = by_column["email_address" if new else "email"]
        dice = rng.random()
        kind = next(k for share, k in MIX if dice < share)
        key = rng.randint(tail, rows) if kind == TOUCH and rng.random() < 0.5 else rng.randint(1, rows)
        email = f"new-{number}-{len(samples)}@example.com"
        started = time.monotonic()
        try:
            if kind == READ:
                connection.execute(sqls[READ], (key,)).fetchone()
            elif kind == UPDATE:
                connection.execute(sqls[UPDATE], (f"u{key}-{number}@example.com", key))
            elif kind == TOUCH:
                connection.execute(sqls[TOUCH], (key,))
            elif kind == INSERT:  # the old app leaves note NULL now and then; the new app knows it is required
                connection.execute(sqls[INSERT], (email, None if not new and rng.random() < 0.5 else "n"))
            else:
                connection.execute(sqls[INSERT_DEFAULTS], (email,))
            ok = True
        except psycopg.Error as exc:
            ok = False
            errors.append((started, " ".join(str(exc).split())[:160], kind))
            if connection.broken:
                connection = psycopg.connect(conninfo, autocommit=True, application_name=f"app-{version}-{number}")
        samples.append((started, (time.monotonic() - started) * 1000, kind, ok, new, kind == TOUCH and key >= tail))
        time.sleep(think_ms / 1000)
    connection.close()
    results.put((number, samples, errors))


class Clients:
    def __init__(self, url: sa.URL, count: int, rows: int, think_ms: float) -> None:
        context = mp.get_context("spawn")
        self.mode, self.ready = context.Value("i", OLD_ONLY), context.Value("i", 0)
        self.stop, self.results = context.Event(), context.Queue()
        versions = ["old" if n < count // 2 else "new" for n in range(count)]
        self.processes = [
            context.Process(target=client, args=(libpq(url), n, versions[n], rows, self.mode, self.ready, self.stop,
                                                 self.results, think_ms), daemon=True)
            for n in range(count)]

    def start(self) -> None:
        for process in self.processes:
            process.start()
        deadline = time.monotonic() + 60
        while self.ready.value < len(self.processes):  # every client connected
            if time.monotonic() > deadline or not all(p.is_alive() for p in self.processes):
                raise SystemExit("the client processes did not start")
            time.sleep(0.05)

    def finish(self) -> tuple[list[tuple[float, float, int, bool, bool, bool]], list[tuple[float, str, int]]]:
        self.stop.set()
        samples, errors = [], []
        for _ in self.processes:  # drain before joining, or a full pipe blocks the child forever
            _, client_samples, client_errors = self.results.get(timeout=120)
            samples += client_samples
            errors += client_errors
        for process in self.processes:
            process.join(30)
        return samples, errors


# -- scenarios ------------------------------------------------------------------------------------------
@dataclass
class Timeline:
    """Phase boundaries, in seconds since the scenario began."""

    started: float = field(default_factory=time.monotonic)
    marks: list[tuple[float, str, bool]] = field(default_factory=list)
    ended: float = 0.0

    def mark(self, label: str, migrating: bool) -> None:
        self.marks.append((time.monotonic() - self.started, label, migrating))

    def end(self) -> None:
        self.ended = time.monotonic() - self.started


class PhaseMarks(Reporter):
    """Marks zdm's phases and steps on the timeline; expand's end lets the new clients in."""

    def __init__(self, timeline: Timeline, clients: Clients) -> None:
        self.timeline, self.clients = timeline, clients

    def phase(self, plan: MigrationPlan, phase: Phase) -> None:
        if phase is Phase.MIGRATING:
            self.clients.mode.value = BOTH
        if phase in (Phase.EXPANDING, Phase.CONTRACTING):
            self.timeline.mark(phase.value.lower(), migrating=True)

    def step(self, step: MigrationStep) -> None:
        if step.phase is Phase.MIGRATING:
            self.timeline.mark(step.description.split(" for ")[0], migrating=True)


def reset(engine: sa.Engine, rows: int) -> None:
    """A fresh copy of the table: same rows, same index, vacuumed and checkpointed."""
    with engine.begin() as connection:
        connection.execute(sa.text("DROP SCHEMA public CASCADE"))
        connection.execute(sa.text("CREATE SCHEMA public"))
        connection.execute(sa.text(
            "CREATE TABLE accounts (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
            "email text NOT NULL, note text, balance integer NOT NULL DEFAULT 0, last_seen timestamptz)"))
        connection.execute(sa.text(
            "INSERT INTO accounts (id, email, note) OVERRIDING SYSTEM VALUE "
            "SELECT g, 'user' || g || '@example.com', CASE WHEN g % 10 = 0 THEN NULL ELSE 'n' END "
            "FROM generate_series(1, :rows) g"), {"rows": rows})
        connection.execute(sa.text("SELECT setval(pg_get_serial_sequence('accounts', 'id'), :rows)"), {"rows": rows})
        connection.execute(sa.text("CREATE INDEX accounts_email_ix ON accounts (email)"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text("VACUUM ANALYZE accounts"))
        connection.execute(sa.text("CHECKPOINT"))


#: The throttled run's probe: a short range read, as an app's cheap, representative query.
PROBE = "SELECT count(*), max(balance) FROM accounts WHERE id BETWEEN 1000 AND 1050"


def run_zdm(engine: sa.Engine, clients: Clients, timeline: Timeline, args: argparse.Namespace,
            throttled: bool = False) -> dict[str, Any]:
    settings: dict[str, Any] = {"lock_timeout_ms": args.lock_timeout_ms}
    if throttled:
        settings.update(probe_query=PROBE, max_probe_ms=max(1, round(args.max_probe_ms)))
    runner = Runner(engine, PhaseMarks(timeline, clients), settings)
    plan_file = planfile.parse(PLAN)
    began = time.monotonic()
    runner.start(plan_file)
    started_s = time.monotonic() - began
    timeline.mark("deploy: both versions", migrating=False)
    time.sleep(args.deploy_s / 2)
    clients.mode.value = NEW_ONLY
    timeline.mark("deploy: new version only", migrating=False)
    time.sleep(args.deploy_s / 2)
    began = time.monotonic()
    runner.complete(plan_file.id)
    completed_s = time.monotonic() - began
    timeline.mark("after", migrating=False)
    time.sleep(args.after_s)
    return {"outcome": "complete", "start_s": started_s, "complete_s": completed_s,
            **({"max_probe_ms": settings["max_probe_ms"]} if throttled else {})}


def run_naive(engine: sa.Engine, clients: Clients, timeline: Timeline, args: argparse.Namespace,
              one_transaction: bool) -> dict[str, Any]:
    """The naive change; a failing statement stops it there, the way a failed migration does."""
    began = time.monotonic()
    outcome, seconds = "complete", {}
    try:
        with engine.connect() as connection:
            if not one_transaction:
                connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            for label, statement in NAIVE:
                timeline.mark(label, migrating=True)
                step_began = time.monotonic()
                connection.execute(sa.text(statement))
                seconds[label] = time.monotonic() - step_began
            connection.commit()
    except sa.exc.DBAPIError as exc:
        outcome = f"failed at {label}: {' '.join(str(exc.orig).split())[:160]}"
    migrated_s = time.monotonic() - began
    if outcome == "complete":
        clients.mode.value = BOTH  # the new column exists now; the old version is still deployed
        timeline.mark("deploy: old version still running", migrating=False)
        time.sleep(args.deploy_s)
        clients.mode.value = NEW_ONLY
        timeline.mark("after", migrating=False)
    else:  # nothing to deploy: the team is paged instead
        timeline.mark("after the failure", migrating=False)
        time.sleep(args.deploy_s)
    time.sleep(args.after_s)
    return {"outcome": outcome, "migration_s": migrated_s, "statement_s": seconds}


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "zdm": run_zdm,
    "zdm-throttled": lambda *a: run_zdm(*a, throttled=True),
    "naive-transaction": lambda *a: run_naive(*a, one_transaction=True),
    "naive-statements": lambda *a: run_naive(*a, one_transaction=False),
}


def run_scenario(name: str, url: sa.URL, args: argparse.Namespace) -> dict[str, Any]:
    engine = db.create_engine(url)
    print(f"[{name}] building {args.rows:,} rows...", file=sys.stderr, flush=True)
    reset(engine, args.rows)
    clients = Clients(url, args.clients, args.rows, args.think_ms)
    clients.start()
    timeline = Timeline()
    timeline.mark("baseline", migrating=False)
    load_before = machine_load()
    print(f"[{name}] clients running; baseline {args.baseline_s} s, then the migration", file=sys.stderr, flush=True)
    time.sleep(args.baseline_s)
    result = SCENARIOS[name](engine, clients, timeline, args)
    timeline.end()
    samples, errors = clients.finish()
    result["check"] = final_check(engine, name, args.rows, samples)
    engine.dispose()
    return {"name": name, **result, "load_before": load_before, "load_after": machine_load(),
            **summarize(timeline, samples, errors)}


def final_check(engine: sa.Engine, name: str, rows: int,
                samples: list[tuple[float, float, int, bool, bool, bool]]) -> str:
    """Nothing lost: every row there, in the final shape, every value filled."""
    inserted = sum(1 for _, _, kind, ok, *_ in samples if kind in (INSERT, INSERT_DEFAULTS) and ok)
    with engine.connect() as connection:
        columns = {c["name"] for c in sa.inspect(connection).get_columns("accounts")}
        count = connection.execute(sa.text("SELECT count(*) FROM accounts")).scalar()
        empty = connection.execute(sa.text("SELECT count(*) FROM accounts WHERE email_address IS NULL "
                                           "OR note IS NULL")).scalar() if "email_address" in columns else None
    lost = rows + inserted - int(count or 0)
    shape = "final shape" if "email" not in columns else "old column still there"
    return f"{count:,} rows ({lost} lost), {shape}, rows with NULL email_address or note: {empty}"


# -- figures ------------------------------------------------------------------------------------------------
def summarize(timeline: Timeline, samples: list[tuple[float, float, int, bool, bool, bool]],
              errors: list[tuple[float, str, int]]) -> dict[str, Any]:
    start = timeline.started
    bounds = [*[m[0] for m in timeline.marks[1:]], timeline.ended]
    phases = []
    for (since, label, migrating), until in zip(timeline.marks, bounds, strict=True):
        latencies = [ms for t, ms, *_ in samples if since <= t - start < until]
        failed = [(t, message) for t, message, _ in errors if since <= t - start < until]
        phases.append({"phase": label, "migrating": migrating, "from_s": round(since, 3), "to_s": round(until, 3),
                       **_stats(latencies),
                       "errors": len(failed), "error_samples": sorted({m for _, m in failed})[:3]})
    during = [ms for t, ms, *_ in samples if any(p["migrating"] and p["from_s"] <= t - start < p["to_s"]
                                                for p in phases)]
    seconds: dict[int, list[float]] = {}
    for t, ms, _, ok, *_ in samples:
        seconds.setdefault(int(t - start), []).append(ms if ok else -ms)
    # zdm's backfills walk the key upwards: an unrelated update on the last keys meets a row not reached yet.
    backfills = [p for p in phases if p["phase"].startswith("backfill")]
    unreached = [ok for t, _, kind, ok, _, tail in samples
                 if tail and any(p["from_s"] <= t - start < p["to_s"] for p in backfills)]
    baseline = phases[0]
    span = sum(p["to_s"] - p["from_s"] for p in phases if p["migrating"])
    base_span = baseline["to_s"] - baseline["from_s"]
    return {
        "phases": phases,
        "baseline": {**_stats([ms for t, ms, *_ in samples if baseline["from_s"] <= t - start < baseline["to_s"]]),
                     "ops_per_s": round(baseline["ops"] / base_span, 1) if base_span else None},
        "during_migration": {**_stats(during), "errors": sum(p["errors"] for p in phases if p["migrating"]),
                             "ops_per_s": round(len(during) / span, 1) if span else None},
        "by_kind": {name: {"ops": sum(1 for s in samples if s[2] == kind),
                           "errors": sum(1 for e in errors if e[2] == kind)} for kind, name in KINDS.items()},
        "unrelated_updates_during_backfill_on_last_keys": {"ops": len(unreached),
                                                           "errors": sum(1 for ok in unreached if not ok)},
        "errors_total": len(errors),
        "per_second": [{"s": s, "ops": len(v), "errors": sum(1 for x in v if x < 0),
                        "max_ms": round(max(map(abs, v)), 1)} for s, v in sorted(seconds.items())],
        "points": [(t - start, ms, ok) for t, ms, _, ok, *_ in samples],  # for the plot, not the JSON
        "marks": timeline.marks,
    }


def _stats(latencies: list[float]) -> dict[str, Any]:
    if not latencies:
        return {"ops": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(latencies)
    return {"ops": len(ordered), "p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))], 2),
            "max_ms": round(ordered[-1], 1)}


def _ms(value: float | None) -> str:
    return f"{value:>8.1f}" if value is not None else f"{'-':>8}"


def print_report(results: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    budget = args.lock_timeout_ms + 100
    lines = []
    for r in results:
        lines.append(f"\n== {r['name']}: {r['outcome']}  (load {r['load_before']['load_1m']:.1f}->"
                     f"{r['load_after']['load_1m']:.1f} on {r['load_before']['cores']} cores)")
        lines.append(f"   {'phase':<34} {'secs':>6} {'ops':>7} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for p in r["phases"]:
            span = p["to_s"] - p["from_s"]
            lines.append(f" {'*' if p['migrating'] else ' '} {p['phase'][:34]:<34} {span:>6.1f} {p['ops']:>7} "
                         f"{p['errors']:>6} {_ms(p['p50_ms'])} {_ms(p['p99_ms'])} {_ms(p['max_ms'])}")
            for message in p["error_samples"]:
                lines.append(f"       error: {message}")
        d = r["during_migration"]
        lines.append(f"   during the migration (*): {d['ops']} ops, {d['errors']} errors, p50 {d['p50_ms']} ms, "
                     f"p99 {d['p99_ms']} ms, max {d['max_ms']} ms; client errors in the whole run: {r['errors_total']}")
        lines.append("   calls (errors) in the whole run: " + ", ".join(
            f"{name} {k['ops']} ({k['errors']})" for name, k in r["by_kind"].items()))
        tail = r["unrelated_updates_during_backfill_on_last_keys"]
        if r["name"] == "zdm":
            lines.append(f"   unrelated updates on the last {TAIL:.0%} of keys during the backfills (rows not reached "
                         f"yet): {tail['ops']} ({tail['errors']} errors)")
        lines.append(f"   afterwards: {r['check']}")
    for r in results:
        b, d = r["baseline"], r["during_migration"]
        if b["ops_per_s"] and d["ops_per_s"] and b["p99_ms"] and d["p99_ms"]:
            limit = f" (--max-probe-ms {r['max_probe_ms']})" if "max_probe_ms" in r else ""
            lines.append(f"{r['name']}{limit}: app throughput during the migration {d['ops_per_s']:,.0f} ops/s = "
                         f"{d['ops_per_s'] / b['ops_per_s']:.2f}x the baseline's {b['ops_per_s']:,.0f}; p99 "
                         f"{d['p99_ms']} ms = {d['p99_ms'] / b['p99_ms']:.2f}x the baseline's {b['p99_ms']} ms")
    zdm = next((r for r in results if r["name"] == "zdm"), None)
    if zdm is not None:
        d = zdm["during_migration"]
        ok = zdm["errors_total"] == 0 and (d["max_ms"] or 0) <= budget
        lines.append(f"\nzdm targets: zero client errors ({zdm['errors_total']}), max latency during the migration "
                     f"{d['max_ms']} ms <= lock budget + 100 = {budget} ms: {'met' if ok else 'NOT met'}")
    for r in results:
        if r["name"] != "zdm":
            d = r["during_migration"]
            lines.append(f"{r['name']}: max latency {d['max_ms']} ms during the migration, {r['errors_total']} "
                         f"client errors, {r['outcome']}")
    return lines


def plot(results: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(results), 1, figsize=(13, 3.6 * len(results)), squeeze=False)
    for axis, r in zip(axes[:, 0], results, strict=True):
        ok = [(t, ms) for t, ms, good in r["points"] if good]
        bad = [(t, ms) for t, ms, good in r["points"] if not good]
        if ok:
            axis.scatter(*zip(*ok, strict=True), s=2, alpha=0.4, color="tab:blue", label="client call", rasterized=True)
        if bad:
            axis.scatter(*zip(*bad, strict=True), s=14, marker="x", color="tab:red", label="failed call")
        axis.axhline(args.lock_timeout_ms + 100, color="tab:orange", linestyle="--", linewidth=1,
                     label=f"lock budget + 100 ms ({args.lock_timeout_ms + 100} ms)")
        labelled = -1e9
        for at, label, migrating in r["marks"]:
            axis.axvline(at, color="tab:gray" if not migrating else "tab:green", linewidth=0.8, alpha=0.7)
            if at - labelled > 0.015 * r["marks"][-1][0]:  # crowded marks keep their line, not their label
                axis.text(at, 0.97, f" {label}", rotation=90, va="top", ha="left", fontsize=7,
                          transform=axis.get_xaxis_transform())
                labelled = at
        axis.set_yscale("log")
        axis.set_ylim(0.1, 30_000)
        axis.set_ylabel("latency (ms)")
        d = r["during_migration"]
        axis.set_title(f"{r['name']}: {r['outcome'][:90]} - migration max {d['max_ms']} ms, "
                       f"{r['errors_total']} client errors", fontsize=10, loc="left")
        axis.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("seconds since the scenario began")
    figure.suptitle(f"{args.rows:,} rows, {args.clients} clients: latency of every client call "
                    f"(green lines: migration phases)", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=DEFAULT_SERVER, help="local PostgreSQL server (a database is created on it)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=4, help="client processes, half old-version, half new")
    parser.add_argument("--think-ms", type=float, default=2.0, help="pause between two calls of a client")
    parser.add_argument("--lock-timeout-ms", type=int, default=500, help="zdm's lock budget")
    parser.add_argument("--baseline-s", type=float, default=3.0)
    parser.add_argument("--deploy-s", type=float, default=4.0)
    parser.add_argument("--after-s", type=float, default=3.0)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated: {','.join(SCENARIOS)}")
    parser.add_argument("--max-probe-ms", type=float, default=None,
                        help="zdm-throttled's probe limit (default: twice the baseline p99 of the scenario before)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    names = [name.strip() for name in args.scenarios.split(",")]
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    with throwaway_database(server_url(args.db), "live") as url:
        results = []
        for name in names:
            if name == "zdm-throttled" and args.max_probe_ms is None:
                # twice the app's baseline p99, measured earlier in this run (the setting)
                earlier = next((r for r in results if r["baseline"]["p99_ms"]), None)
                if earlier is None:
                    parser.error("zdm-throttled needs --max-probe-ms, or a scenario before it to measure the "
                                 "baseline p99 in")
                args.max_probe_ms = 2 * earlier["baseline"]["p99_ms"]
            results.append(run_scenario(name, url, args))
    lines = print_report(results, args)
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    saved = [{k: v for k, v in r.items() if k != "points"} for r in results]
    (args.out / "live_traffic.json").write_text(json.dumps(
        {"rows": args.rows, "clients": args.clients, "lock_timeout_ms": args.lock_timeout_ms, "results": saved,
         "summary": lines}, indent=1))
    plot(results, args, args.out / "live_traffic.png")
    print(f"wrote {args.out / 'live_traffic.json'} and {args.out / 'live_traffic.png'}")


if __name__ == "__main__":
    main()
