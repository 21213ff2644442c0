"""Where zdm remembers what it did: a table inside the target database, and a runner lock.

Keeping state next to the data means a step and the record that it ran commit together, so
``zdm status`` from another process, or after a crash, tells the truth. The compiled plan is
stored whole, so ``complete`` and ``rollback`` need nothing but the plan id.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from zdm.plan import Checkpoint, HistoryEntry, MigrationPlan

metadata = sa.MetaData()
migrations = sa.Table(
    "zdm_migrations",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("phase", sa.String(16), nullable=False),
    sa.Column("plan", sa.Text, nullable=False),
    sa.Column("checkpoint", sa.Text),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    # What an operator asked of a running plan from another terminal (`zdm pause`, `resume`,
    # `throttle`): JSON, written only by those commands and by `start`, read by the runner before
    # each batch. Added to tables made by releases before it (``ensure_table``).
    sa.Column("control", sa.Text),
)
#: The columns every release's table has: what ``load`` reads, so `zdm status` works on an older table.
RECORD = [migrations.c.id, migrations.c.phase, migrations.c.plan, migrations.c.checkpoint, migrations.c.updated_at]


class RunnerBusy(RuntimeError):
    """Another zdm runner is working on this database."""


class RunnerLockLost(RunnerBusy):
    """The runner lock went away with its connection: another runner could start now."""


def now() -> str:
    """A history timestamp: UTC, to the millisecond (phases of a small plan take less than a second)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def ensure_table(connection: sa.Connection) -> None:
    """Create the state table, or add what a table made by an earlier release lacks (``control``)."""
    metadata.create_all(connection, checkfirst=True)
    if "control" not in {c["name"] for c in sa.inspect(connection).get_columns(migrations.name)}:
        prepare = connection.dialect.identifier_preparer
        column = migrations.c.control
        connection.execute(sa.text(f"ALTER TABLE {prepare.format_table(migrations)} ADD COLUMN "
                                   f"{prepare.format_column(column)} "
                                   f"{column.type.compile(dialect=connection.dialect)}"))


def load(connection: sa.Connection, plan_id: str) -> tuple[MigrationPlan, Checkpoint] | None:
    if not sa.inspect(connection).has_table(migrations.name):
        return None
    row = connection.execute(sa.select(*RECORD).where(migrations.c.id == plan_id)).first()
    if row is None:
        return None
    return MigrationPlan.from_dict(json.loads(row.plan)), Checkpoint.from_dict(json.loads(row.checkpoint or "{}"))


def updated(connection: sa.Connection) -> dict[str, dt.datetime]:
    """When each plan's record was last written (UTC): a run's every save, an interruption's note."""
    return {row.id: row.updated_at for row in connection.execute(sa.select(migrations.c.id, migrations.c.updated_at))}


def load_all(connection: sa.Connection) -> list[tuple[MigrationPlan, Checkpoint]]:
    if not sa.inspect(connection).has_table(migrations.name):
        return []
    rows = connection.execute(sa.select(*RECORD).order_by(migrations.c.updated_at, migrations.c.id))
    return [(MigrationPlan.from_dict(json.loads(r.plan)), Checkpoint.from_dict(json.loads(r.checkpoint or "{}")))
            for r in rows]


def save(connection: sa.Connection, plan: MigrationPlan, checkpoint: Checkpoint | None = None) -> None:
    """Store the plan (its steps, phase and history) and its checkpoint (none: nothing in flight)."""
    values = {
        "phase": plan.phase.value,
        "plan": json.dumps(plan.to_dict()),
        "checkpoint": json.dumps((checkpoint or Checkpoint()).to_dict()),
        "updated_at": dt.datetime.now(dt.UTC).replace(tzinfo=None),
    }
    updated = connection.execute(migrations.update().where(migrations.c.id == plan.id).values(values))
    if updated.rowcount == 0:
        connection.execute(migrations.insert().values(id=plan.id, **values))


def save_checkpoint(connection: sa.Connection, plan_id: str, checkpoint: Checkpoint) -> None:
    connection.execute(
        migrations.update()
        .where(migrations.c.id == plan_id)
        .values(checkpoint=json.dumps(checkpoint.to_dict()),
                updated_at=dt.datetime.now(dt.UTC).replace(tzinfo=None))
    )


def record_interruption(engine: sa.Engine, plan_id: str, reason: str) -> bool:
    """Note in a plan's history that its run was stopped (Ctrl-C, SIGTERM), for `zdm status` and `zdm history`.

    Taken under the runner lock, after the interrupted runner released it: a runner that started
    meanwhile owns the record, and then nothing is written (False). Only the history changes;
    the phase and the checkpoint stay as the runner left them, so `zdm start` resumes.
    """
    try:
        with runner_lock(engine), engine.begin() as connection:
            found = load(connection, plan_id)
            if found is None:
                return False
            plan, _ = found
            # stored at the entry's own time: a later run's save moves updated_at past it (see updated)
            stamp = dt.datetime.now(dt.UTC)
            plan.history.append(HistoryEntry(at=stamp.isoformat(timespec="milliseconds"), phase=plan.phase,
                                             note=f"{INTERRUPTED}{reason}"))
            connection.execute(migrations.update().where(migrations.c.id == plan_id).values(
                plan=json.dumps(plan.to_dict()), updated_at=stamp.replace(tzinfo=None)))
    except RunnerBusy:
        return False
    return True


@dataclass
class Control:
    """What an operator asked of a plan's run from another terminal, as stored in ``control``.

    ``paused``: the runner waits before its next batch until `zdm resume`. ``settings``: backfill
    settings that replace the run's own from the next batch on (`zdm throttle`), by name as in
    ``planfile.Settings`` (``batch_target_ms``, ``batch_pause_ms``, ``max_replica_lag_ms``, ...).
    ``by`` and ``at``: who asked (``user@host pid N``) and when (UTC, ISO 8601).
    """

    paused: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    by: str | None = None
    at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"paused": self.paused, "settings": self.settings, "by": self.by, "at": self.at}

    @classmethod
    def from_json(cls, text: str | None) -> Control:
        data = json.loads(text) if text else {}
        return cls(paused=bool(data.get("paused")), settings=dict(data.get("settings") or {}), by=data.get("by"),
                   at=data.get("at"))

    @property
    def empty(self) -> bool:
        return not self.paused and not self.settings


def who() -> str:
    """``user@host pid N``: who asked, for `zdm status`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        user = f"uid {os.getuid()}" if hasattr(os, "getuid") else "?"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def has_control(connection: sa.Connection) -> bool:
    """Whether the state table has the ``control`` column (a table of an earlier release may not yet)."""
    if not sa.inspect(connection).has_table(migrations.name):
        return False
    return "control" in {c["name"] for c in sa.inspect(connection).get_columns(migrations.name)}


def read_control(connection: sa.Connection, plan_id: str) -> Control:
    """The plan's control (an empty one when nothing was asked). One indexed read: the runner
    calls it before every batch, on a state table that ``ensure_table`` brought up to date."""
    return Control.from_json(connection.scalar(sa.select(migrations.c.control).where(migrations.c.id == plan_id)))


def write_control(connection: sa.Connection, plan_id: str, control: Control) -> None:
    """Store the plan's control (None when empty). Leaves ``plan``, ``checkpoint`` and ``updated_at``
    alone: those are the runner's."""
    value = None if control.empty else json.dumps(control.to_dict())
    connection.execute(migrations.update().where(migrations.c.id == plan_id).values(control=value))


#: How an interruption's history entry begins (it keeps the phase the run stopped in).
INTERRUPTED = "interrupted: "


@contextmanager
def runner_lock(engine: sa.Engine) -> Iterator[Callable[[], None]]:
    """One zdm runner per database at a time; a second one is refused (RunnerBusy), not queued.

    The lock is the dialect's (PostgreSQL: a session advisory lock; SQLite: a file lock), released
    by the server or the kernel if the runner dies. Yields a check to run before each transaction,
    which raises RunnerLockLost once another runner holds the lock.
    """
    from zdm.dialects import for_connection

    with for_connection(engine).runner_lock(engine) as still_held:
        yield still_held


def runner_at_work(engine: sa.Engine) -> str | None:
    """Who holds the runner lock now (for `zdm status`), or None when no runner is at work."""
    from zdm.dialects import for_connection

    return for_connection(engine).runner_at_work(engine)
