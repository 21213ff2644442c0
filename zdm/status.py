"""What `zdm status` and `zdm history` read and show: a plan's record, what is happening to it, its phases.

The state table is read with SQLAlchemy and nothing heavier (no plan compiler), so `zdm status`
starts quickly, and it works without the plan file. For a plan waiting for complete, the dialect
also looks up what its record says the steps left (an index a cancelled build left INVALID); for
every plan between start and complete, the zdm triggers of it that do not fire for the app's
sessions (someone disabled them). Either makes the plan need attention (`zdm status` exits 4).
"""

from __future__ import annotations

import datetime as dt
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from zdm import state
from zdm.errors import printable
from zdm.plan import Checkpoint, HistoryEntry, MigrationPlan, Phase

if TYPE_CHECKING:  # zdm.dialects is imported where a plan in flight needs it: `zdm status` starts quickly
    from zdm.dialects import DisabledTrigger

#: What is happening to a plan, as `zdm status` tells it (``activity`` in --json).
ACTIVITIES = {
    "at_work": "a runner is working on it now",
    "interrupted": "stopped mid-phase (Ctrl-C, SIGTERM, a kill, a lost connection) and no runner is at work",
    "waiting": "expanded and migrated: waits for `zdm complete` or `zdm rollback`",
    "done": "COMPLETE or ROLLED_BACK",
}


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


@dataclass
class Record:
    """A plan as stored, its checkpoint, and who holds the runner lock now (None: nobody)."""

    plan: MigrationPlan
    checkpoint: Checkpoint
    runner: str | None = None
    #: What `zdm pause` / `zdm throttle` asked of the run (empty: nothing).
    control: state.Control = field(default_factory=state.Control)
    #: What the steps the record says ran should have left and the live database lacks (see read).
    disagrees: list[str] = field(default_factory=list)
    #: zdm triggers of a plan in flight that do not fire for the app's sessions (see read).
    disabled_triggers: list[DisabledTrigger] = field(default_factory=list)
    #: When the record was last written (UTC, naive), None when unknown.
    updated_at: dt.datetime | None = None

    @property
    def steps_done(self) -> int:
        return sum(1 for s in self.plan.steps if s.executed)

    @property
    def steps_undone(self) -> int:
        return sum(1 for s in self.plan.steps if s.rolled_back)

    @property
    def activity(self) -> str:
        if self.plan.phase in (Phase.COMPLETE, Phase.ROLLED_BACK):
            return "done"
        if self.plan.is_started:
            return "waiting"
        # On PostgreSQL the runner lock is the database's: a runner at work on another plan
        # makes this one look at work too. One runner per database keeps that rare.
        return "at_work" if self.runner else "interrupted"

    @property
    def needs_attention(self) -> bool:
        """The team must act before the plan can go on: `zdm complete` (and a resumed `zdm start`) refuse."""
        return bool(self.disagrees or self.disabled_triggers)

    @property
    def interruption(self) -> HistoryEntry | None:
        """The recorded interruption of the current phase (Ctrl-C, SIGTERM), if that was the last event:
        not when a run wrote the record after it (a resumed start, a rollback, killed since)."""
        last = self.plan.history[-1] if self.plan.history else None
        if last is None or not is_interruption(last):
            return None
        noted = parse_at(last.at).astimezone(dt.UTC).replace(tzinfo=None)
        if self.updated_at is not None and self.updated_at - noted > dt.timedelta(milliseconds=5):
            return None
        return last

    def to_json(self) -> dict[str, Any]:
        stopped = self.interruption
        return {
            **self.plan.to_dict(),
            "steps_done": self.steps_done,
            "steps_total": len(self.plan.steps),
            "activity": self.activity,
            "runner": self.runner,
            "interrupted": None if stopped is None or self.activity != "interrupted" else {
                "at": stopped.at, "phase": stopped.phase.value,
                "reason": stopped.note.removeprefix(state.INTERRUPTED)},
            "checkpoint": self.checkpoint.to_dict(),
            "control": None if self.control.empty else self.control.to_dict(),
            "throttling": self.checkpoint.throttling,
            "disagrees": self.disagrees,
            "disabled_triggers": [trigger.to_json() for trigger in self.disabled_triggers],
        }


def is_interruption(entry: HistoryEntry) -> bool:
    return entry.note.startswith(state.INTERRUPTED)


def read(engine: sa.Engine, plan_id: str | None = None) -> list[Record]:
    """Every plan of the database (oldest change first), or the one named; [] when there is none."""
    with engine.connect() as connection:
        if plan_id is not None:
            found = state.load(connection, plan_id)
            stored = [found] if found is not None else []
        else:
            stored = state.load_all(connection)
        written = state.updated(connection) if stored else {}
        controls = {plan.id: state.read_control(connection, plan.id) for plan, _ in stored} \
            if stored and state.has_control(connection) else {}
    runner = state.runner_at_work(engine) if stored else None
    records = [Record(plan, checkpoint, runner, controls.get(plan.id, state.Control()), updated_at=written.get(plan.id))
               for plan, checkpoint in stored]
    # The record alone cannot tell an index a cancelled build or drop left INVALID, nor a zdm trigger
    # someone disabled since: both are looked up, for the plans between start and complete.
    in_flight = [record for record in records if record.activity != "done" and not record.plan.rolling_back]
    if in_flight:
        from zdm.dialects import for_connection

        with engine.connect() as connection:
            dialect = for_connection(connection)
            for record in in_flight:
                ran = [a for s in record.plan.steps if s.executed and not s.rolled_back for a in s.forward]
                if record.activity == "waiting":
                    record.disagrees = dialect.missing_objects(connection, ran)
                record.disabled_triggers = dialect.disabled_triggers(connection, ran)
    return records


def disabled_text(trigger: DisabledTrigger, plan_id: str) -> str:
    """What a zdm trigger that does not fire means for the plan, and what to do (one line)."""
    return (f"{trigger.describe()}, so the app's writes are not kept in step: `{trigger.enable}` turns it on "
            f"again; rows written while it was off may be out of step (`zdm rollback {plan_id}`, then `zdm start`, "
            f"copies every row again)")


# -- the human form ------------------------------------------------------------------------------
def progress_text(table: str, done: int, total: int, rows_per_s: float | None, eta_s: float | None,
                  finished: bool = False, batch_size: int | None = None) -> str:
    percent = 100.0 * done / total if total else 100.0
    text = f"backfill {table}: {done:,}/{total:,} rows ({percent:.1f}%)"
    if rows_per_s is not None:
        text += f", {rows_per_s:,.0f} rows/s"
    if finished:
        text += ", done"
    elif rows_per_s is not None or eta_s is not None:
        text += f", ETA {eta_s:,.0f} s" if eta_s is not None else ", ETA ?"
    if batch_size is not None:
        text += f", batch {batch_size:,}"
    return text


def steps_text(record: Record) -> str:
    plan, total = record.plan, len(record.plan.steps)
    if plan.phase is Phase.ROLLED_BACK or plan.rolling_back:
        return f"{plural(record.steps_undone, 'step')} undone"
    return f"{record.steps_done}/{plural(total, 'step')} ({plan.progress:.0f}%)"


def resume_hint(plan: MigrationPlan) -> str:
    if plan.rolling_back:
        return f"a rollback had begun (steps undone): `zdm rollback {plan.id}` finishes it"
    if plan.phase is Phase.CONTRACTING:
        return f"`zdm complete {plan.id}` finishes it"
    return f"`zdm start` with the same plan file resumes, `zdm rollback {plan.id}` undoes"


def attention(record: Record) -> list[str]:
    """What the team must do before the plan can go on, one line each ([]: nothing)."""
    plan_id = record.plan.id
    lines = [f"the database disagrees with the record: {record.disagrees[0]}; `zdm complete` refuses: "
             f"`zdm rollback {plan_id}` undoes it"] if record.disagrees else []
    lines += [f"{disabled_text(trigger, plan_id)}; `zdm complete` and `zdm start` refuse until then"
              for trigger in record.disabled_triggers]
    return lines


def format_record(record: Record) -> str:
    plan, checkpoint = record.plan, record.checkpoint
    lines = [f"{plan.id}: {plan.phase.value}, {steps_text(record)} — {printable(plan.title)}"]
    lines += [f"  {line}" for line in attention(record)]
    if record.activity == "waiting" and not record.needs_attention:
        lines.append(f"  started: deploy the new app, then `zdm complete {plan.id}` (or `zdm rollback {plan.id}`)")
    backfilling = checkpoint.until is not None and checkpoint.step is not None
    if backfilling and checkpoint.step is not None:
        step = plan.steps[checkpoint.step]
        spec = step.backfill or step.undo_backfill  # a rollback's batches: the undo's
        table = spec.table if spec else "?"
        lines.append("  " + progress_text(table, checkpoint.rows_done, checkpoint.rows_total, None, None)
                     + (f" (a runner is at work: {record.runner})" if record.runner else " (interrupted)"))
    if checkpoint.throttling and record.activity == "at_work":
        lines.append(f"  {checkpoint.throttling}")
    elif record.control.paused:
        lines.append(f"  paused by `zdm pause` ({record.control.by}, {record.control.at}): the backfill waits "
                     f"until `zdm resume {plan.id}`")
    if record.control.settings:
        changed = ", ".join(f"{name} {value}" for name, value in sorted(record.control.settings.items()))
        lines.append(f"  throttle asked ({record.control.by}, {record.control.at}): {changed}")
    if checkpoint.outside_transaction and checkpoint.step is not None:
        lines.append(f"  in flight: {plan.steps[checkpoint.step].description} (outside a transaction: "
                     f"`zdm start` runs it again, `zdm rollback {plan.id}` undoes it)")
    if record.activity == "interrupted":
        stopped = record.interruption
        why = f" at {stopped.at} ({stopped.note.removeprefix(state.INTERRUPTED)})" if stopped else ""
        lines.append(f"  interrupted during {plan.phase.value}{why}: {resume_hint(plan)}")
    elif record.activity == "at_work" and not backfilling:
        lines.append(f"  a runner is at work: {record.runner}")
    for entry in plan.history:
        note = f"  {printable(entry.note)}" if entry.note else ""
        lines.append(f"  {entry.at}  {entry.phase.value}{note}")
    return "\n".join(lines)


# -- history: each phase with its start, end and duration -----------------------------------------
def parse_at(at: str) -> dt.datetime:
    return dt.datetime.fromisoformat(at)


def phase_periods(plan: MigrationPlan, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """One row per phase the plan went through, in order.

    A phase ends when the next one begins. The last one, if the plan rests there (COMPLETE,
    ROLLED_BACK) has no duration; if it is still going (or waiting, MIGRATING), its duration
    runs until ``now``. Interruptions recorded within a phase are listed with it.
    """
    now = now or dt.datetime.now(dt.UTC)
    periods: list[dict[str, Any]] = []
    for entry in plan.history:
        if is_interruption(entry) and periods and periods[-1]["phase"] == entry.phase.value:
            periods[-1]["interruptions"].append({"at": entry.at, "reason": entry.note.removeprefix(state.INTERRUPTED)})
            continue
        if periods:
            periods[-1]["end"] = entry.at
        periods.append({"phase": entry.phase.value, "start": entry.at, "end": None, "duration_s": None,
                        "note": entry.note, "interruptions": []})
    for period in periods:
        if period["end"] is not None:
            period["duration_s"] = round((parse_at(period["end"]) - parse_at(period["start"])).total_seconds(), 3)
    if periods and periods[-1]["phase"] not in (Phase.COMPLETE.value, Phase.ROLLED_BACK.value):
        periods[-1]["duration_s"] = round((now - parse_at(periods[-1]["start"])).total_seconds(), 3)
    return periods


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {rest:02d} s"


def format_history(record: Record, now: dt.datetime | None = None) -> str:
    plan = record.plan
    rows = [("phase", "start", "end", "duration", "note")]
    periods = phase_periods(plan, now)
    for index, period in enumerate(periods):
        current = index == len(periods) - 1 and period["end"] is None and period["duration_s"] is not None
        duration = duration_text(period["duration_s"]) + (" so far" if current else "")
        notes = [period["note"]] if period["note"] else []
        notes += [f"interrupted at {i['at']} ({i['reason']})" for i in period["interruptions"]]
        rows.append((period["phase"], period["start"], period["end"] or ("(now)" if current else ""), duration,
                     "; ".join(notes)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"{plan.id}: {printable(plan.title)}"]
    for phase, start, end, duration, note in rows:
        lines.append(f"  {phase:<{widths[0]}}  {start:<{widths[1]}}  {end:<{widths[2]}}  "
                     f"{duration:>{widths[3]}}  {note}".rstrip())
    return "\n".join(lines)


# -- watching -------------------------------------------------------------------------------------
class Rate:
    """Rows per second over the last ``window_s`` of samples of a backfill's rows done."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, at: float, rows_done: int) -> float | None:
        if self.samples and rows_done < self.samples[-1][1]:
            self.samples.clear()  # another backfill step began
        self.samples.append((at, rows_done))
        while len(self.samples) > 2 and at - self.samples[0][0] > self.window_s:
            self.samples.popleft()
        (first_at, first_done), (last_at, last_done) = self.samples[0], self.samples[-1]
        return (last_done - first_done) / (last_at - first_at) if last_at > first_at else None


def watch_fields(record: Record, rate: Rate, at: float) -> dict[str, Any]:
    """One sample of a watched plan: what `zdm status --watch` shows (and prints as a JSON event)."""
    plan, checkpoint = record.plan, record.checkpoint
    fields: dict[str, Any] = {"plan": plan.id, "phase": plan.phase.value, "activity": record.activity,
                              "steps_done": record.steps_done, "steps_total": len(plan.steps),
                              "step": None, "rows_done": None, "rows_total": None, "rows_per_s": None, "eta_s": None,
                              "throttling": checkpoint.throttling}
    if checkpoint.step is not None and checkpoint.step < len(plan.steps):
        fields["step"] = plan.steps[checkpoint.step].description
    if checkpoint.until is not None:
        done, total = checkpoint.rows_done, max(checkpoint.rows_total, checkpoint.rows_done)
        per_s = rate.add(at, done)
        fields.update(rows_done=done, rows_total=total, rows_per_s=None if per_s is None else round(per_s, 1),
                      eta_s=round((total - done) / per_s, 1) if per_s else None)
    return fields


def watch_text(fields: dict[str, Any]) -> str:
    text = f"{fields['plan']}: {fields['phase']}, {fields['steps_done']}/{plural(fields['steps_total'], 'step')}"
    if fields["rows_done"] is not None:
        table = fields["step"] or "?"
        text += f"; {table}: {fields['rows_done']:,}/{fields['rows_total']:,} rows"
        if fields["rows_total"]:
            text += f" ({100.0 * fields['rows_done'] / fields['rows_total']:.1f}%)"
        text += (f", {fields['rows_per_s']:,.0f} rows/s" if fields["rows_per_s"] is not None else ", ? rows/s")
        text += f", ETA {fields['eta_s']:,.0f} s" if fields["eta_s"] is not None else ", ETA ?"
    elif fields["step"]:
        text += f"; in flight: {fields['step']}"
    if fields["throttling"] is not None:
        text += f", {fields['throttling']}"
    if fields["activity"] != "at_work":
        text += f" ({fields['activity']})"
    return text


def watch(engine: sa.Engine, plan_id: str, interval_s: float, show: Callable[[dict[str, Any]], None],
          clock: Callable[[], float] = time.monotonic) -> tuple[Record, Phase]:
    """Poll the plan until it leaves the phase it was in, or rests, or its run stops.

    Returns the last record and the phase watched. ``show`` gets each sample.
    """
    rate = Rate()
    watched: Phase | None = None
    while True:
        records = read(engine, plan_id)
        if not records:
            raise LookupError(plan_id)
        record = records[0]
        if watched is None:
            watched = record.plan.phase
        show(watch_fields(record, rate, clock()))
        if record.plan.phase is not watched or record.activity != "at_work":
            return record, watched
        time.sleep(interval_s)
