"""What a migration step does to a busy PostgreSQL table, measured rather than predicted.

The ground truth behind zdm's SQL rules (``zdm.risks``) and the lint corpus: a step is run on a
real server against tables with rows, and the server is asked what happened.

- **rewrite**: a relation that existed before got a new file (``pg_relation_filenode``), which is
  a full copy under ACCESS EXCLUSIVE;
- **scan under lock**: the step read or wrote at least half the rows of a table (``pg_stat_xact_user_tables``) in a
  transaction holding a lock on it that blocks writes (SHARE or stronger, ``pg_locks``), so the
  app's writes wait for as long as the table takes to read;
- **bulk write**: the step updated or deleted at least half the rows of a table in its
  transaction: row locks that block the app's writes to them until commit;
- **old app broken**: after the step, a statement of the old app's (inserts leaving columns to
  their defaults, reads, updates, calls of its functions and types) fails;
- **failed**: the step itself fails (``CREATE INDEX CONCURRENTLY`` in a transaction, a new enum
  value used where it was added);
- **survived rollback**: something the step did stays after its transaction is rolled back (a
  ``COMMIT`` inside it), so "rolled back" would be a lie;
- **unbounded wait**: with a reader holding the table, the step's statements plus one more lock
  under zdm's lock budget (``lock_timeout``) end on ``statement_timeout`` instead of on the lock
  budget: the step turned the budget off.

Each measurement runs ``setup`` afresh in a database of its own (every schema in it is dropped
first), so the database named must be a throwaway one; what the step leaves stays until the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pglast
import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

#: Lock modes that conflict with the ROW EXCLUSIVE lock of the app's INSERT/UPDATE/DELETE.
BLOCKS_WRITES = frozenset({"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"})
#: zdm's lock budget in the unbounded-wait probe, and how long before the wait counts as unbounded.
LOCK_BUDGET_MS = 50
GUARD_MS = 1000

SCHEMAS = """SELECT nspname FROM pg_namespace
WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' ORDER BY 1"""
RELATIONS = """SELECT c.oid, n.nspname, c.relname, pg_relation_filenode(c.oid), c.relkind = 'r' FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'i', 'm') AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'"""
TABLE_STATS = """SELECT relid, seq_tup_read + coalesce(idx_tup_fetch, 0), n_tup_upd + n_tup_del
FROM pg_stat_xact_user_tables"""
HELD = "SELECT relation, mode FROM pg_locks WHERE pid = pg_backend_pid() AND granted AND locktype = 'relation'"
#: Everything a step could change that the old app or a rollback would notice, as one text.
FINGERPRINT = """
SELECT concat_ws('|',
  (SELECT string_agg(format('%s.%s:%s:%s:%s', c.oid::regclass, a.attname, a.atttypid, a.attnotnull, a.atthasdef),
                     ',' ORDER BY 1)
   FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE a.attnum > 0 AND NOT a.attisdropped AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'),
  (SELECT string_agg(format('%s:%s:%s', conrelid::regclass, conname, convalidated), ',' ORDER BY 1)
   FROM pg_constraint WHERE connamespace::regnamespace::text NOT LIKE 'pg\\_%'),
  (SELECT string_agg(format('%s:%s', tgname, tgenabled), ',' ORDER BY 1) FROM pg_trigger WHERE NOT tgisinternal),
  (SELECT string_agg(format('%s:%s', enumtypid, enumlabel), ',' ORDER BY 1) FROM pg_enum),
  (SELECT string_agg(format('%s.%s:%s', n.nspname, c.relname, c.relkind), ',' ORDER BY 1) FROM pg_class c
   JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT LIKE 'pg\\_%'
   AND n.nspname <> 'information_schema'))
"""


@dataclass
class Effect:
    """What one step did, measured on PostgreSQL; ``unsafe`` when any of it hurts a live app."""

    rewrite: list[str] = field(default_factory=list)
    scan_under_lock: list[str] = field(default_factory=list)
    bulk_write: list[str] = field(default_factory=list)
    old_app_errors: list[str] = field(default_factory=list)
    failed: str | None = None
    survived_rollback: bool = False
    unbounded_wait: bool = False

    @property
    def unsafe(self) -> bool:
        return bool(self.rewrite or self.scan_under_lock or self.bulk_write or self.old_app_errors or self.failed
                    or self.survived_rollback or self.unbounded_wait)

    def kinds(self) -> list[str]:
        """The names of what was measured: rewrite, scan under lock, ... (empty for a safe step)."""
        named = {"rewrite": self.rewrite, "scan under lock": self.scan_under_lock, "bulk write": self.bulk_write,
                 "old app broken": self.old_app_errors, "failed": self.failed,
                 "survived rollback": self.survived_rollback, "unbounded wait": self.unbounded_wait}
        return [name for name, value in named.items() if value]


def conninfo(url: str) -> str:
    """A libpq connection string for a SQLAlchemy PostgreSQL URL (any driver)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def measure(url: str, setup: Sequence[str], step: str, old_app: Sequence[str], *, table: str,
            transactional: bool = True) -> Effect:
    """Run ``step`` (one or more statements) after ``setup`` on the throwaway database ``url``.

    ``old_app``: statements the old version of the app runs, each must keep working after the step.
    ``table``: the busy table the unbounded-wait probe holds open with a reader.
    ``transactional``: the step runs in one transaction, as zdm and Alembic run it; False for a
    step zdm runs statement by statement (``transactional: false``).
    Takes well under a second for tables of a few hundred rows; raises psycopg errors from ``setup``.
    """
    statements = [s for s in pglast.split(step)] if step.strip() else []
    effect = Effect()
    info = conninfo(url)
    with psycopg.connect(info, autocommit=True) as connection:
        _reset(connection, setup)
        _observe(connection, statements, transactional, effect)
        if effect.failed:
            return effect
        if transactional:  # the database is as setup left it, unless the step committed on its own
            if effect.survived_rollback:
                _reset(connection, setup)
            effect.unbounded_wait = _waits_without_budget(info, statements, table)
            if effect.survived_rollback:
                _reset(connection, setup)
            _run(connection, statements)
        effect.old_app_errors = _old_app(info, old_app)
    return effect


def _reset(connection: psycopg.Connection, setup: Sequence[str]) -> None:
    for (schema,) in connection.execute(SCHEMAS).fetchall():
        connection.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    connection.execute("CREATE SCHEMA public")
    for statement in setup:
        connection.execute(statement)


def _observe(connection: psycopg.Connection, statements: list[str], transactional: bool, effect: Effect) -> None:
    """The first run: files, rows read, locks held, and what a rollback leaves."""
    relations = connection.execute(RELATIONS).fetchall()
    before = {oid: (name, node) for oid, _, name, node, _ in relations}
    rows = {oid: _count(connection, schema, name) for oid, schema, name, _, table in relations if table}
    fingerprint = connection.execute(FINGERPRINT).fetchone()
    if transactional:
        connection.execute("BEGIN")
    stats = {relid: (read, written) for relid, read, written in connection.execute(TABLE_STATS).fetchall()}
    try:
        for statement in statements:
            connection.execute(statement)
    except psycopg.Error as exc:
        effect.failed = f"{exc.sqlstate}: {str(exc).splitlines()[0]}"
        connection.execute("ROLLBACK") if transactional else None
        return
    if transactional:
        held: dict[int, set[str]] = {}
        for relation, mode in connection.execute(HELD).fetchall():
            held.setdefault(relation, set()).add(mode)
        for relid, read, written in connection.execute(TABLE_STATS).fetchall():
            if relid not in rows:
                continue
            read0, written0 = stats.get(relid, (0, 0))
            name = before[relid][0]
            if read - read0 + written - written0 >= max(2, rows[relid] / 2) and held.get(relid, set()) & BLOCKS_WRITES:
                effect.scan_under_lock.append(name)
            if written - written0 >= max(2, rows[relid] / 2):
                effect.bulk_write.append(name)
    after = {oid: node for oid, _, _, node, _ in connection.execute(RELATIONS).fetchall()}
    effect.rewrite = sorted(name for oid, (name, node) in before.items() if oid in after and after[oid] != node)
    if transactional:
        connection.execute("ROLLBACK")
        effect.survived_rollback = connection.execute(FINGERPRINT).fetchone() != fingerprint


def _count(connection: psycopg.Connection, schema: str, name: str) -> int:
    row = connection.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))).fetchone()
    return 0 if row is None else int(row[0])


def _run(connection: psycopg.Connection, statements: list[str]) -> None:
    try:
        connection.execute("BEGIN")
        for statement in statements:
            connection.execute(statement)
        connection.execute("COMMIT")
    except psycopg.Error:
        connection.execute("ROLLBACK")


def _old_app(info: str, old_app: Sequence[str]) -> list[str]:
    failures = []
    with psycopg.connect(info, autocommit=True) as app:
        app.execute(f"SET statement_timeout = {GUARD_MS}")
        for statement in old_app:
            try:
                app.execute(statement)
            except psycopg.Error as exc:
                failures.append(f"{statement}: {str(exc).splitlines()[0]}")
    return failures


def _waits_without_budget(info: str, statements: list[str], table: str) -> bool:
    """With a reader holding ``table``, does the step (then one more lock) outwait zdm's lock budget?"""
    with psycopg.connect(info) as reader, psycopg.connect(info) as migration:
        reader.execute(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(sql.Identifier(table)))
        migration.execute(f"SET statement_timeout = {GUARD_MS}")
        migration.execute(f"SET LOCAL lock_timeout = {LOCK_BUDGET_MS}")
        try:
            for statement in statements:
                migration.execute(statement)
            migration.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(table)))
        except psycopg.Error as exc:
            return exc.sqlstate == "57014"  # query_canceled: statement_timeout, not the lock budget
        finally:
            migration.rollback()
            reader.rollback()
    return False
