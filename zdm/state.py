"""Where zdm remembers what it did: a table inside the target database, and a runner lock.

Keeping state next to the data means a step and the record that it ran commit together, so
``zdm status`` from another process, or after a crash, tells the truth. The compiled plan is
stored whole, so ``complete`` and ``rollback`` need nothing but the plan id.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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
)


class RunnerBusy(RuntimeError):
    """Another zdm runner is working on this database."""


class RunnerLockLost(RunnerBusy):
    """The runner lock went away with its connection: another runner could start now."""


def now() -> str:
    """A history timestamp: UTC, to the millisecond (phases of a small plan take less than a second)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def ensure_table(connection: sa.Connection) -> None:
    metadata.create_all(connection, checkfirst=True)


def load(connection: sa.Connection, plan_id: str) -> tuple[MigrationPlan, Checkpoint] | None:
    if not sa.inspect(connection).has_table(migrations.name):
        return None
    row = connection.execute(sa.select(migrations).where(migrations.c.id == plan_id)).first()
    if row is None:
        return None
    return MigrationPlan.from_dict(json.loads(row.plan)), Checkpoint.from_dict(json.loads(row.checkpoint or "{}"))


def load_all(connection: sa.Connection) -> list[tuple[MigrationPlan, Checkpoint]]:
    if not sa.inspect(connection).has_table(migrations.name):
        return []
    rows = connection.execute(sa.select(migrations).order_by(migrations.c.updated_at, migrations.c.id))
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
            plan.history.append(HistoryEntry(at=now(), phase=plan.phase, note=f"{INTERRUPTED}{reason}"))
            connection.execute(migrations.update().where(migrations.c.id == plan_id).values(
                plan=json.dumps(plan.to_dict()), updated_at=dt.datetime.now(dt.UTC).replace(tzinfo=None)))
    except RunnerBusy:
        return False
    return True


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
