"""Where zdm remembers what it did: a table inside the target database, and a runner lock.

Keeping state next to the data means a step and the record that it ran commit together, so
``zdm status`` from another process, or after a crash, tells the truth. The compiled plan is
stored whole, so ``complete`` and ``rollback`` need nothing but the plan id.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from zdm.plan import HistoryEntry, MigrationPlan

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

#: Arbitrary but fixed: every zdm runner on a PostgreSQL database asks for this advisory lock.
ADVISORY_LOCK_KEY = 0x7A646D  # "zdm"


class RunnerBusy(RuntimeError):
    """Another zdm runner is working on this database."""


class RunnerLockLost(RunnerBusy):
    """The runner lock went away with its connection: another runner could start now."""


def now() -> str:
    """A history timestamp: UTC, to the millisecond (phases of a small plan take less than a second)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def ensure_table(connection: sa.Connection) -> None:
    metadata.create_all(connection, checkfirst=True)


def load(connection: sa.Connection, plan_id: str) -> tuple[MigrationPlan, dict[str, Any]] | None:
    if not sa.inspect(connection).has_table(migrations.name):
        return None
    row = connection.execute(sa.select(migrations).where(migrations.c.id == plan_id)).first()
    if row is None:
        return None
    return MigrationPlan.from_dict(json.loads(row.plan)), json.loads(row.checkpoint or "{}")


def load_all(connection: sa.Connection) -> list[tuple[MigrationPlan, dict[str, Any]]]:
    if not sa.inspect(connection).has_table(migrations.name):
        return []
    rows = connection.execute(sa.select(migrations).order_by(migrations.c.updated_at, migrations.c.id))
    return [(MigrationPlan.from_dict(json.loads(r.plan)), json.loads(r.checkpoint or "{}")) for r in rows]


def save(connection: sa.Connection, plan: MigrationPlan, checkpoint: dict[str, Any] | None = None) -> None:
    values = {
        "phase": plan.phase.value,
        "plan": json.dumps(plan.to_dict()),
        "checkpoint": json.dumps(checkpoint or {}),
        "updated_at": dt.datetime.now(dt.UTC).replace(tzinfo=None),
    }
    updated = connection.execute(migrations.update().where(migrations.c.id == plan.id).values(values))
    if updated.rowcount == 0:
        connection.execute(migrations.insert().values(id=plan.id, **values))


def save_checkpoint(connection: sa.Connection, plan_id: str, checkpoint: dict[str, Any]) -> None:
    connection.execute(
        migrations.update()
        .where(migrations.c.id == plan_id)
        .values(checkpoint=json.dumps(checkpoint),
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
    """One zdm runner per database at a time; a second one is refused, not queued.

    PostgreSQL: a session advisory lock, released by the server if the runner dies.
    SQLite: an flock on a file beside the database (its real path: a symlink is the same file),
    released by the kernel if the runner dies. Yields a check to run before each transaction:
    the advisory lock lives on an idle connection that the server may close (a restart,
    ``idle_session_timeout``, ``pg_terminate_backend``). The check takes the lock again on a new
    session when it is free, and raises RunnerLockLost when another runner has it.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            got = connection.scalar(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
            connection.commit()
            if not got:
                raise RunnerBusy(f"another zdm runner is working on this database "
                                 f"({_holder(connection) or 'holder unknown'})")

            def still_held() -> None:
                try:
                    held = connection.scalar(sa.text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = :k AND granted "
                        "AND pid = pg_backend_pid()"), {"k": ADVISORY_LOCK_KEY})
                    if not held:  # its session is gone: take it again, unless another runner was quicker
                        held = connection.scalar(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
                    connection.commit()
                except sa.exc.DBAPIError:
                    connection.rollback()  # the caller retries a lost connection; the next check reconnects
                    raise
                if not held:
                    holder = _holder(connection) or "holder unknown"
                    raise RunnerLockLost("the runner lock was lost with its database connection, and another "
                                         f"runner holds it now ({holder}): zdm stopped")

            try:
                yield still_held
            finally:
                try:
                    connection.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
                    connection.commit()
                except sa.exc.DBAPIError:
                    # A lost connection took its session, and the lock with it; any other failure:
                    # closing the session releases the lock, so it must not go back to the pool.
                    connection.invalidate()
        return
    lock_file = _lock_file(engine)
    if lock_file is None:
        yield lambda: None
        return
    with open(lock_file, "a+") as handle:  # not "w": that would erase the holder's PID before the lock is tried
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunnerBusy(f"another zdm runner is working on {engine.url.database} "
                             f"(lock file {handle.name})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield lambda: None
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def runner_at_work(engine: sa.Engine) -> str | None:
    """Who holds the runner lock now (for `zdm status`), or None when no runner is at work."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            return _holder(connection)
    lock_file = _lock_file(engine)
    if lock_file is None or not os.path.exists(lock_file):
        return None
    with open(lock_file) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f"pid {handle.read().strip() or '?'}"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def _lock_file(engine: sa.Engine) -> str | None:
    """SQLite's runner lock file, beside the database's real path (a symlink is the same database)."""
    database = engine.url.database
    return None if not database or database == ":memory:" else f"{os.path.realpath(database)}.zdm-lock"


def _holder(connection: sa.Connection) -> str | None:
    row = connection.execute(
        sa.text(
            "SELECT a.pid, a.application_name, a.backend_start FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
            "AND l.objid = :k AND l.granted AND a.datname = current_database() LIMIT 1"
        ),
        {"k": ADVISORY_LOCK_KEY},
    ).first()
    if row is None:
        return None
    since = f"{row.backend_start:%Y-%m-%d %H:%M:%S}"
    return f"pid {row.pid}, application_name {row.application_name!r}, connected since {since}"
