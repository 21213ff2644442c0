"""How a run shows itself: human lines or JSON lines on stderr, results on stdout.

Progress is a diagnostic, so it goes to stderr and a script reading stdout gets only the result.
On a terminal the backfill shows a live bar; elsewhere (CI logs) a line every couple of seconds.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from zdm.backfill import BackfillProgress
from zdm.plan import MigrationPlan, MigrationStep, Phase
from zdm.runner import Reporter

PHASE_STYLE = {
    Phase.EXPANDING: "bold cyan",
    Phase.MIGRATING: "bold blue",
    Phase.CONTRACTING: "bold magenta",
    Phase.COMPLETE: "bold green",
    Phase.ROLLED_BACK: "bold yellow",
}


class HumanReporter(Reporter):
    def __init__(self, console: Console | None = None, *, show_sql: bool = False, line_every_s: float = 2.0):
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.show_sql = show_sql
        self.line_every_s = line_every_s
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last_line = 0.0

    def phase(self, plan: MigrationPlan, phase: Phase) -> None:
        self._stop_bar()
        self.console.print(f"[{PHASE_STYLE.get(phase, 'bold')}]{phase.value}[/] {escape(plan.id)}")

    def step(self, step: MigrationStep) -> None:
        self._stop_bar()
        self.console.print(f"  • {escape(step.description)}")

    def statement(self, sql: str) -> None:
        if self.show_sql:
            self.console.print(f"[dim]{escape(_indent(sql))}[/]")

    def note(self, message: str) -> None:
        self._stop_bar()
        self.console.print(f"[yellow]  ! {escape(message)}[/]")

    def backfill(self, progress: BackfillProgress) -> None:
        total = max(progress.rows_total, 1)
        if self.console.is_terminal:
            if self._progress is None:
                self._progress = Progress(
                    TextColumn("    backfill {task.fields[table]}"),
                    BarColumn(),
                    TextColumn("{task.completed:,.0f}/{task.total:,.0f} rows"),
                    TextColumn("{task.fields[rate]:,.0f} rows/s"),
                    TimeRemainingColumn(),
                    console=self.console,
                    transient=True,
                )
                self._progress.start()
                self._task = self._progress.add_task("backfill", total=total, table=progress.table, rate=0.0)
            assert self._task is not None
            self._progress.update(self._task, completed=progress.rows_done, total=total, rate=progress.rows_per_s)
            if progress.finished:
                self._stop_bar()
        now = time.monotonic()
        if progress.finished or (not self.console.is_terminal and now - self._last_line >= self.line_every_s):
            self._last_line = now
            self.console.print(f"    {escape(describe_progress(progress))}")

    def _stop_bar(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress, self._task = None, None


class JsonReporter(Reporter):
    """One JSON object per line on stderr, for machines watching a run."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def _emit(self, event: str, **fields: Any) -> None:
        self.stream.write(json.dumps({"event": event, **fields}) + "\n")
        self.stream.flush()

    def phase(self, plan: MigrationPlan, phase: Phase) -> None:
        self._emit("phase", plan=plan.id, phase=phase.value)

    def step(self, step: MigrationStep) -> None:
        self._emit("step", phase=step.phase.value, description=step.description)

    def statement(self, sql: str) -> None:
        self._emit("statement", sql=sql)

    def backfill(self, progress: BackfillProgress) -> None:
        self._emit("backfill", **progress.__dict__)

    def note(self, message: str) -> None:
        self._emit("note", message=message)


def describe_progress(p: BackfillProgress) -> str:
    percent = 100.0 * p.rows_done / p.rows_total if p.rows_total else 100.0
    eta = "done" if p.finished else (f"ETA {p.eta_s:,.0f} s" if p.eta_s is not None else "ETA ?")
    return (f"backfill {p.table}: {p.rows_done:,}/{p.rows_total:,} rows ({percent:.1f}%), "
            f"{p.rows_per_s:,.0f} rows/s, {eta}, batch {p.batch_size:,}")


def _indent(sql: str) -> str:
    return "\n".join("      " + line for line in sql.splitlines())
