"""How long a zdm command takes before it does anything: against `python -c pass`, in the same run.

Every deploy step, every `zdm status` in a loop and every shell completion pays zdm's start-up.
Each command runs N times, interleaved with the baseline (so machine load hits all of them
alike), in a subprocess of this Python. The zdm script is the console script installed next to
it. Byte-code is written on a warm-up run first, as an installed package has it
(PYTHONDONTWRITEBYTECODE is dropped for the children).

Targets (wall time, median of the runs): `zdm --help` and `zdm schema` at most 0.25 s, `zdm
status` on SQLite at most 0.5 s. The ratios to `python -c pass` are what to compare across
machines; the load average is printed because wall times move with it.

    python benchmarks/startup.py [--runs 15]

Writes benchmarks/out/startup.json. Needs no database server: status reads a SQLite file made by
`zdm demo` in a temporary directory.
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

OUT = Path(__file__).parent / "out"


def zdm_command() -> list[str]:
    script = Path(sys.executable).parent / "zdm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "zdm.cli"]


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="runs of each command (default 15)")
    runs = parser.parse_args().runs
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.pop("ZDM_DATABASE_URL", None)
    zdm = zdm_command()
    with tempfile.TemporaryDirectory(prefix="zdm-startup-") as tmp:
        url = f"sqlite:///{tmp}/demo.db"
        subprocess.run([*zdm, "demo", "--db", url, "--rows", "100", "--json"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cases = {  # name: (command, target in seconds or None)
            "python -c pass": ([sys.executable, "-c", "pass"], None),
            "zdm --help": ([*zdm, "--help"], 0.25),
            "zdm schema": ([*zdm, "schema"], 0.25),
            "zdm status (SQLite)": ([*zdm, "status", "--db", url], 0.5),
        }
        for command, _ in cases.values():
            timed(command, env)  # warm-up: byte-code, file cache
        times: dict[str, list[float]] = {name: [] for name in cases}
        load_before = os.getloadavg()[0]
        for _ in range(runs):
            for name, (command, _) in cases.items():
                times[name].append(timed(command, env))
        load_after = os.getloadavg()[0]

    baseline = statistics.median(times["python -c pass"])
    rows = []
    print(f"zdm start-up, {runs} runs each, interleaved; load average {load_before:.2f} -> {load_after:.2f} "
          f"on {os.cpu_count()} cores; {sys.executable}")
    print(f"{'command':<22} {'median':>8} {'min':>8} {'x pass':>7} {'target':>7}  verdict")
    for name, (_, target) in cases.items():
        median, fastest = statistics.median(times[name]), min(times[name])
        met = None if target is None else median <= target
        rows.append({"command": name, "median_s": round(median, 4), "min_s": round(fastest, 4),
                     "ratio_to_python": round(median / baseline, 2), "target_s": target, "met": met})
        verdict = "baseline" if met is None else ("met" if met else "NOT MET")
        print(f"{name:<22} {median:>7.3f}s {fastest:>7.3f}s {median / baseline:>7.1f} "
              f"{'' if target is None else f'{target:.2f}s':>7}  {verdict}")
    OUT.mkdir(exist_ok=True)
    (OUT / "startup.json").write_text(json.dumps({"runs": runs, "load": [load_before, load_after],
                                                  "results": rows}, indent=2) + "\n")
    missed = [row["command"] for row in rows if row["met"] is False]
    print("targets: " + ("all met" if not missed else f"NOT met: {', '.join(missed)}"))
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
