"""How a run shows itself: human lines or JSON lines on stderr, results on stdout.

Progress is a diagnostic, so it goes to stderr and a script reading stdout gets only the result.
On a terminal the backfill shows a live bar; elsewhere (CI logs) a line every couple of seconds.
A statement that runs long without batches (``CREATE INDEX CONCURRENTLY``, ``VALIDATE
CONSTRAINT``, one waiting for a lock) gets a line every few seconds with its elapsed time and,
on PostgreSQL, the phase and blocks done that ``pg_stat_progress_create_index`` reports.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

import sqlalchemy as sa
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from zdm.backfill import BackfillProgress
from zdm.errors import printable
from zdm.plan import MigrationPlan, MigrationStep, Phase
from zdm.status import progress_text

if TYPE_CHECKING:
    from zdm.actions import Action
    from zdm.throttle import Wait

PHASE_STYLE = {
    Phase.EXPANDING: "bold cyan",
    Phase.MIGRATING: "bold blue",
    Phase.CONTRACTING: "bold magenta",
    Phase.COMPLETE: "bold green",
    Phase.ROLLED_BACK: "bold yellow",
}


class Reporter:
    """What a run tells the outside world (the runner, rehearse, Alembic call it). The base reports nothing."""

    def phase(self, plan: MigrationPlan, phase: Phase) -> None: ...
    def step(self, step: MigrationStep) -> None: ...
    def statement(self, sql: str) -> None: ...
    def backfill(self, progress: BackfillProgress) -> None: ...
    def note(self, message: str) -> None: ...

    def throttled(self, wait: Wait | None, waited_s: float) -> None:
        """The backfill waits before its next batch (``wait`` says why, ``waited_s`` since when), or
        goes on after waiting ``waited_s`` (``wait`` None). Called at every look while it waits."""

    def executed(self, connection: sa.Connection, action: Action, seconds: float) -> None:
        """After each action, on its still-open connection (a lock tracer reads pg_locks here)."""

    def committed(self) -> None:
        """After each transaction zdm commits (locks taken inside it are released now)."""



class LongStatements:
    """Watches the statement running now; once it has run ``after_s``, reports it every ``every_s``.

    One daemon thread for the whole run. ``show`` gets ``{"sql", "elapsed_s"}`` plus, on
    PostgreSQL for an index build, what ``pg_stat_progress_create_index`` says about zdm's own
    session (``phase``, ``blocks_done``, ``blocks_total``, ``tuples_done``, ``tuples_total``,
    ``lockers_done``, ``lockers_total``). It reads that on a connection of its own.
    """

    def __init__(self, engine: sa.Engine | None, show: Callable[[dict[str, Any]], None], *,
                 after_s: float = 2.0, every_s: float = 5.0) -> None:
        self.engine, self.show = engine, show
        self.after_s, self.every_s = after_s, every_s
        self._changed = threading.Condition()
        self._current: tuple[str, float] | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def begin(self, sql: str) -> None:
        with self._changed:
            self._current = (sql, time.monotonic())
            self._changed.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="zdm-long-statements", daemon=True)
                self._thread.start()

    def end(self) -> None:
        with self._changed:
            self._current = None
            self._changed.notify()

    def close(self) -> None:
        with self._changed:
            self._current, self._closed = None, True
            self._changed.notify()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        shown: tuple[str, float] | None = None  # the statement last reported, and when
        with self._changed:
            while not self._closed:
                current = self._current
                if current is None:
                    self._changed.wait()
                    continue
                sql, started = current
                due = started + self.after_s if shown is None or shown[0] != sql else shown[1] + self.every_s
                now = time.monotonic()
                if now < due:
                    self._changed.wait(due - now)
                    continue
                self._changed.release()
                try:
                    fields = {"sql": sql, "elapsed_s": round(now - started, 1), **self._progress(sql)}
                    if self._current is current:  # still the same statement: it did not end meanwhile
                        self.show(fields)
                except Exception:  # progress is a nicety: it must never stop the run
                    pass
                finally:
                    self._changed.acquire()
                shown = (sql, now)

    def _progress(self, sql: str) -> dict[str, Any]:
        if self.engine is None:
            return {}
        from zdm.dialects import for_connection

        return for_connection(self.engine).statement_progress(self.engine, sql)


def describe_long_statement(fields: dict[str, Any]) -> str:
    sql = " ".join(fields["sql"].split())
    text = f"still running after {fields['elapsed_s']:,.0f} s: {sql if len(sql) <= 80 else sql[:79] + '…'}"
    if fields.get("phase"):
        text += f" ({fields['phase']}"
        if fields.get("blocks_total"):
            done, total = fields["blocks_done"], fields["blocks_total"]
            text += f", {done:,}/{total:,} blocks ({100.0 * done / total:.0f}%)"
        elif fields.get("lockers_total"):
            text += f", {fields['lockers_done']:,}/{fields['lockers_total']:,} sessions waited for"
        text += ")"
    return text


class WatchesStatements(Reporter):
    """What both reporters share: the long-statement watch, started by ``statement`` and ended by
    whatever the runner reports next. A backfill's statement is its batches, which report themselves."""

    def __init__(self, engine: sa.Engine | None, after_s: float, every_s: float) -> None:
        self._long = LongStatements(engine, self.long_statement, after_s=after_s, every_s=every_s)
        self._backfilling = False

    def long_statement(self, fields: dict[str, Any]) -> None: ...

    def watch(self, sql: str) -> None:
        if not self._backfilling:
            self._long.begin(sql)

    def _step(self, step: MigrationStep) -> None:
        self._long.end()
        self._backfilling = step.backfill is not None

    def executed(self, connection: sa.Connection, action: Action, seconds: float) -> None:
        self._long.end()

    def committed(self) -> None:
        self._long.end()

    def close(self) -> None:
        self._long.close()


class HumanReporter(WatchesStatements):
    def __init__(self, console: Console | None = None, *, show_sql: bool = False, line_every_s: float = 2.0,
                 engine: sa.Engine | None = None, long_after_s: float = 2.0, long_every_s: float = 5.0):
        super().__init__(engine, long_after_s, long_every_s)
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.show_sql = show_sql
        self.line_every_s = line_every_s
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last_line = 0.0
        self._waiting: str | None = None  # the kind of wait last shown

    def phase(self, plan: MigrationPlan, phase: Phase) -> None:
        self._long.end()
        self._stop_bar()
        self.console.print(f"[{PHASE_STYLE.get(phase, 'bold')}]{phase.value}[/] {escape(plan.id)}")

    def step(self, step: MigrationStep) -> None:
        self._step(step)
        self._stop_bar()
        self.console.print(f"  • {escape(printable(step.description))}")
        self._last_line = time.monotonic()  # a log line every line_every_s into a backfill, not at its first batch

    def statement(self, sql: str) -> None:
        if self.show_sql:
            self.console.print(f"[dim]{escape(_indent(sql))}[/]")
        self.watch(sql)

    def long_statement(self, fields: dict[str, Any]) -> None:
        self.console.print(f"    {escape(describe_long_statement(fields))}")

    def note(self, message: str) -> None:
        self._long.end()
        self._stop_bar()
        self.console.print(f"[yellow]  ! {escape(printable(message))}[/]")

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

    def throttled(self, wait: Wait | None, waited_s: float) -> None:
        """A line when the backfill starts waiting or the reason changes, then one every
        ``line_every_s``; one when it goes on."""
        now = time.monotonic()
        text = None if wait is None else wait.text()
        kind = None if wait is None else wait.kind
        if wait is None:
            self.console.print(f"    [green]going on[/] after waiting {waited_s:.1f} s")
        elif kind != self._waiting or now - self._last_line >= self.line_every_s:
            self._stop_bar()
            self.console.print(f"    [yellow]{escape(text or '')}[/] (waiting {waited_s:.1f} s)")
            self._last_line = now
        self._waiting = kind

    def _stop_bar(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress, self._task = None, None


class JsonReporter(WatchesStatements):
    """One JSON object per line on stderr, for machines watching a run."""

    def __init__(self, stream: TextIO | None = None, *, engine: sa.Engine | None = None, long_after_s: float = 2.0,
                 long_every_s: float = 5.0) -> None:
        super().__init__(engine, long_after_s, long_every_s)
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()  # the long-statement thread writes too

    def _emit(self, event: str, **fields: Any) -> None:
        with self._lock:
            self.stream.write(json.dumps({"event": event, **fields}) + "\n")
            self.stream.flush()

    def phase(self, plan: MigrationPlan, phase: Phase) -> None:
        self._long.end()
        self._emit("phase", plan=plan.id, phase=phase.value)

    def step(self, step: MigrationStep) -> None:
        self._step(step)
        self._emit("step", phase=step.phase.value, description=step.description)

    def statement(self, sql: str) -> None:
        self._emit("statement", sql=sql)
        self.watch(sql)

    def long_statement(self, fields: dict[str, Any]) -> None:
        self._emit("long_statement", **fields)

    def backfill(self, progress: BackfillProgress) -> None:
        self._emit("backfill", **progress.__dict__)

    def throttled(self, wait: Wait | None, waited_s: float) -> None:
        """``{"event": "throttle", "kind": ..., "reason": ..., "waited_s": ...}`` at every look while
        waiting; ``kind`` null once the backfill goes on."""
        self._emit("throttle", kind=None if wait is None else wait.kind,
                   reason=None if wait is None else wait.text(), waited_s=round(waited_s, 3))

    def note(self, message: str) -> None:
        self._long.end()
        self._emit("note", message=message)


def describe_progress(p: BackfillProgress) -> str:
    return progress_text(p.table, p.rows_done, p.rows_total, p.rows_per_s, p.eta_s, p.finished, p.batch_size)


def _indent(sql: str) -> str:
    return "\n".join("      " + line for line in sql.splitlines())
