"""`zdm lint` against squawk on the labelled corpus, with the labels measured in the same run.

The corpus (tests/data/lint_corpus.yaml) holds migration steps. Each is first run on PostgreSQL
(zdm.testing.measure) to learn whether it is unsafe on a busy table: a rewrite, rows read under
a lock that blocks writes, a bulk write, an old-app statement that fails afterwards, a failing
step, a step that survives its rollback, or one that outwaits the lock budget. That measurement
is the ground truth; where it differs from the label in the file, the run says so and uses the
measurement. Then both linters read every step as its own file:

- zdm: `zdm lint` on a plan file holding the step as a `sql` step (in a transaction unless the
  entry says `transactional: false`, before contract), offline (no --db), and again with --db on
  a database holding the corpus's setup (analyzed), where zdm asks PostgreSQL what names stand
  for, whether a column is nullable, whether a type change rewrites, how many rows a write hits;
- squawk (squawk-cli from PyPI, `pip install -e .[bench]`): the same step as a .sql file,
  `--assume-in-transaction` for the transactional ones, once with its default rules and once with
  its safety rules only (default minus the style and timeout-hygiene rules listed in STYLE).

A file a linter reports anything for counts as flagged. Printed per linter: true and false
positives and negatives, precision, recall, and time per file (zdm: in-process, after start-up;
squawk: one invocation over all files, divided by their number, start-up included).
Targets (issue 15): zdm ahead of squawk on both, precision and recall >= 0.95, <= 50 ms per file.

    python benchmarks/lint_corpus.py [--db postgresql://postgres@127.0.0.1:5432/postgres] [--labels]

``--labels`` trusts the file's labels instead of measuring (no database needed). Writes
benchmarks/out/lint_corpus.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "data" / "lint_corpus.yaml"
OUT = Path(__file__).parent / "out"
#: squawk's rules about style and session settings rather than what a statement does to a busy table.
STYLE = ["prefer-robust-stmts", "prefer-bigint-over-int", "prefer-bigint-over-smallint", "prefer-identity",
         "prefer-text-field", "prefer-timestamptz", "ban-char-field", "require-lock-timeout",
         "require-statement-timeout", "require-timeout-settings"]


def measured_labels(url: str, corpus: dict[str, Any]) -> list[bool]:
    from zdm.testing import fresh_postgres_database
    from zdm.testing.measure import measure

    labels = []
    with fresh_postgres_database(url) as database:
        for number, entry in enumerate(corpus["statements"], 1):
            effect = measure(database, corpus["setup"], entry["sql"], corpus["old_app"], table=corpus["table"],
                             transactional=entry.get("transactional", True))
            labels.append(effect.unsafe)
            if effect.unsafe != entry["unsafe"]:
                print(f"label differs from the measurement ({effect.kinds()}): {entry['sql']}", file=sys.stderr)
            if number % 25 == 0:
                print(f"measured {number}/{len(corpus['statements'])}", file=sys.stderr)
    return labels


def zdm_with_catalog(url: str, corpus: dict[str, Any], plans: list[Path]) -> tuple[list[bool], list[float]]:
    """zdm lint --db: a database holding the corpus's setup (analyzed, as autovacuum leaves one)."""
    import sqlalchemy as sa

    from zdm.db import run_sql
    from zdm.testing import fresh_postgres_database

    with fresh_postgres_database(url) as database:
        engine = sa.create_engine(database)
        with engine.begin() as connection:
            for statement in [*corpus["setup"], "ANALYZE"]:
                run_sql(connection, statement)
        with engine.connect() as connection:
            result = run_zdm(plans, connection)
        engine.dispose()
    return result


def write_files(directory: Path, entries: list[dict[str, Any]]) -> tuple[list[Path], list[Path]]:
    plans, sqls = [], []
    for number, entry in enumerate(entries):
        plan = directory / f"{number:03d}.yaml"
        plan.write_text(yaml.safe_dump({"id": f"corpus_{number}", "operations": [
            {"op": "sql", "up": entry["sql"], "down": "SELECT 1",
             "transactional": entry.get("transactional", True)}]}))
        sql = directory / ("tx" if entry.get("transactional", True) else "notx") / f"{number:03d}.sql"
        sql.parent.mkdir(exist_ok=True)
        sql.write_text(entry["sql"].rstrip().rstrip(";") + ";\n")
        plans.append(plan)
        sqls.append(sql)
    return plans, sqls


def run_zdm(plans: list[Path], connection: Any = None) -> tuple[list[bool], list[float]]:
    from zdm.lint import Config, lint

    lint([str(plans[0])], Config(), connection)  # warm-up: imports, pglast's parser
    flagged, times = [], []
    for plan in plans:
        started = time.perf_counter()
        problems, _ = lint([str(plan)], Config(), connection)
        times.append(time.perf_counter() - started)
        flagged.append(any(problem.suppressed is None for problem in problems))
    return flagged, times


def run_squawk(squawk: str, sqls: list[Path], exclude: list[str]) -> tuple[list[bool], float]:
    found: set[str] = set()
    started = time.perf_counter()
    for transactional in (True, False):
        files = [str(path) for path in sqls if (path.parent.name == "tx") is transactional]
        if not files:
            continue
        command = [squawk, "--reporter", "json", *(["--assume-in-transaction"] if transactional else [])]
        if exclude:
            command.append(f"--exclude={','.join(exclude)}")
        result = subprocess.run([*command, *files], capture_output=True, text=True, check=False)
        if result.returncode not in (0, 1):
            raise SystemExit(f"squawk failed ({result.returncode}): {result.stderr.strip()}")
        found |= {str(Path(violation["file"]).resolve()) for violation in json.loads(result.stdout or "[]")}
    elapsed = time.perf_counter() - started
    return [str(path.resolve()) in found for path in sqls], elapsed / len(sqls)


def scores(flagged: list[bool], labels: list[bool]) -> dict[str, Any]:
    tp = sum(f and u for f, u in zip(flagged, labels, strict=True))
    fp = sum(f and not u for f, u in zip(flagged, labels, strict=True))
    fn = sum(u and not f for f, u in zip(flagged, labels, strict=True))
    tn = len(labels) - tp - fp - fn
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / (tp + fn) if tp + fn else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                        help="PostgreSQL server to measure the labels on (a throwaway database is made on it)")
    parser.add_argument("--labels", action="store_true", help="Trust the corpus file's labels; no database.")
    args = parser.parse_args()
    corpus = yaml.safe_load(CORPUS.read_text())
    entries = corpus["statements"]
    squawk = shutil.which("squawk") or str(Path(sys.executable).parent / "squawk")
    if not Path(squawk).exists():
        raise SystemExit("squawk not found: pip install squawk-cli (or pip install -e '.[bench]')")
    version = subprocess.run([squawk, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    labels = [entry["unsafe"] for entry in entries] if args.labels else measured_labels(args.db, corpus)

    differing = sum(label != entry["unsafe"] for label, entry in zip(labels, entries, strict=True))
    with tempfile.TemporaryDirectory() as scratch:
        plans, sqls = write_files(Path(scratch), entries)
        zdm_flagged, zdm_times = run_zdm(plans)
        live = None if args.labels else zdm_with_catalog(args.db, corpus, plans)
        squawk_all, squawk_all_time = run_squawk(squawk, sqls, [])
        squawk_safety, squawk_safety_time = run_squawk(squawk, sqls, STYLE)
    results = {
        "zdm lint": {**scores(zdm_flagged, labels), "ms_per_file": statistics.mean(zdm_times) * 1000,
                     "ms_per_file_max": max(zdm_times) * 1000},
        **({"zdm lint --db (live catalog)": {**scores(live[0], labels), "ms_per_file": statistics.mean(live[1]) * 1000}}
           if live else {}),
        f"{version} (default rules)": {**scores(squawk_all, labels), "ms_per_file": squawk_all_time * 1000},
        f"{version} (safety rules)": {**scores(squawk_safety, labels), "ms_per_file": squawk_safety_time * 1000},
    }
    print(f"corpus: {len(entries)} steps, {sum(labels)} unsafe, {len(labels) - sum(labels)} safe "
          f"({'labels from the file' if args.labels else 'labels measured on PostgreSQL in this run'}; "
          f"{differing} differ from the file)")
    print(f"{'linter':<34} {'TP':>4} {'FP':>4} {'FN':>4} {'TN':>4} {'precision':>9} {'recall':>7} {'ms/file':>8}")
    for name, score in results.items():
        print(f"{name:<34} {score['tp']:>4} {score['fp']:>4} {score['fn']:>4} {score['tn']:>4} "
              f"{score['precision']:>9.3f} {score['recall']:>7.3f} {score['ms_per_file']:>8.2f}")
    zdm, best = results["zdm lint"], results[f"{version} (safety rules)"]
    print(f"zdm / squawk (safety rules): precision x{zdm['precision'] / best['precision']:.2f}, "
          f"recall x{zdm['recall'] / best['recall']:.2f}")
    for label, flag, entry in zip(labels, zdm_flagged, entries, strict=True):
        if label != flag:
            print(f"  zdm {'misses' if label else 'flags safe'}: {entry['sql']}")
    OUT.mkdir(exist_ok=True)
    (OUT / "lint_corpus.json").write_text(json.dumps({"corpus": len(entries), "unsafe": sum(labels),
                                                       "results": results}, indent=2))


if __name__ == "__main__":
    main()
