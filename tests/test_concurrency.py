"""Dual-write triggers and the backfill under concurrent old- and new-version clients; lost connections.

While the backfill of a rename (of a NOT NULL column) runs in batches, client threads write as
both app versions: old clients insert and update the old column, new clients (once expand has
committed) the new one. The overlap is paced, not timed: after each batch the backfill waits
until every client has written again, so on a loaded machine (where a SQLite writer can sleep
100 ms in the busy handler and lose the lock to the same busy clients again) the clients still
write between every two batches. Each client owns its keys, so the last value each wrote per key
is known exactly, and every write is applied to the reference model too. Afterwards every row
must hold its last writer's value in both columns and agree with the model. A counting trigger
shows that no write echoed more than the dual-write design allows (no recursion) and that the
backfill touched each original row at most once and no row inserted meanwhile.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa
from support import Phase, apply_phases, assert_agrees, setup, users_schema

from zdm import planfile, state
from zdm.backfill import BackfillProgress
from zdm.model import Schema
from zdm.plan import MigrationPlan
from zdm.runner import MigrationFailed, Reporter, Runner

RENAME = {"id": "rename-email", "operations": [
    {"op": "rename_column", "table": "users", "column": "email", "new_name": "email_address"}]}
CLIENTS = (("old", 0), ("old", 1), ("new", 2), ("new", 3))


class Shared:
    """What the clients and the runner's hooks share: the model (under a lock), and what was written."""

    def __init__(self, model: Schema) -> None:
        self.model = model
        self.lock = threading.Lock()
        self.expanded = threading.Event()
        self.stop = threading.Event()
        self.expected: dict[int, str] = {}
        self.updates: Counter[int] = Counter()
        self.inserted: set[int] = set()
        self.errors: list[BaseException] = []
        #: Notified after every client write; the runner's hooks wait on it to pace the backfill.
        self.wrote = threading.Condition()
        #: Set when the backfill has begun: each client's next write is an insert, beyond its range.
        self.backfilling = threading.Event()
        #: Each client's writes when the hooks began waiting for the next round (see ``ahead``).
        self.marks: dict[int, int] = {}

    def wait_for_writes(self, clients: list[Client], marks: list[int]) -> None:
        """Until every client has written since ``marks`` (or one has failed): pacing, not a timing guess."""
        with self.wrote:
            self.marks = {c.number: m for c, m in zip(clients, marks, strict=True)}
            done = self.wrote.wait_for(
                lambda: self.errors or all(c.writes > m for c, m in zip(clients, marks, strict=True)), timeout=120)
            self.marks = {}
        assert done, f"clients stopped writing: {[c.writes for c in clients]} since {marks}"

    def ahead(self, client: Client) -> bool:
        """The client has written in this round: it should let the others have the write lock."""
        mark = self.marks.get(client.number)
        return mark is not None and client.writes > mark


class Client(threading.Thread):
    """One app process: inserts and updates its own keys through the column its version knows."""

    def __init__(self, url: str, shared: Shared, version: str, number: int, keys: list[int]) -> None:
        super().__init__(daemon=True)
        self.engine = sa.create_engine(url, **_client_options(url, f"app-{version}"))
        self.shared, self.version, self.number, self.keys = shared, version, number, keys
        self.column = "email" if version == "old" else "email_address"
        self.rng = random.Random(number)
        self.writes = 0
        self.inserted_while_backfilling = False

    def run(self) -> None:
        try:
            if self.version == "new":
                self.shared.expanded.wait()  # the new app is deployed once its column exists
            while not self.shared.stop.is_set():
                self.write()
        except BaseException as exc:  # reported by the test
            self.shared.errors.append(exc)
        finally:
            self.engine.dispose()

    def write(self) -> None:
        number = self.writes + 1
        table = sa.table("users", sa.column("id"), sa.column(self.column))
        insert = self.rng.random() < 0.25
        if self.shared.backfilling.is_set() and not self.inserted_while_backfilling:
            insert = self.inserted_while_backfilling = True  # a row beyond the backfill's range, surely
        if insert:
            key = 100_000 * (self.number + 1) + number
            value = f"{self.version}{self.number}-{key}-inserted"
            with self.engine.begin() as connection:
                connection.execute(table.insert().values({"id": key, self.column: value}))
            with self.shared.lock:
                self.shared.model.table("users").insert({"id": key, self.column: value})
                self.shared.inserted.add(key)
                self.keys.append(key)
        else:
            key = self.rng.choice(self.keys)
            value = f"{self.version}{self.number}-{key}-{number}"
            with self.engine.begin() as connection:
                updated = connection.execute(table.update().where(table.c.id == key).values({self.column: value}))
            assert updated.rowcount == 1
            with self.shared.lock:
                assert self.shared.model.table("users").update({"id": key}, {self.column: value}) == 1
                self.shared.updates[key] += 1
        self.shared.expected[key] = value
        with self.shared.wrote:
            self.writes = number
            self.shared.wrote.notify_all()
        # Let the other writers (and the runner) have SQLite's write lock: a waiting SQLite writer
        # sleeps in the busy handler and can lose the lock to the same busy clients again and again.
        time.sleep(0.01 if self.shared.ahead(self) else 0.001)


def _client_options(url: str, name: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 30}}
    return {"connect_args": {"application_name": name}}


class ModelFollowsExpand(Reporter):
    """Applies expand to the model the moment it has committed, then lets the new clients in.

    After each backfill batch it waits until every client has written again, so the clients'
    writes interleave with the batches however slow the machine is.
    """

    def __init__(self, shared: Shared, plan: planfile.PlanFile, dialect: str, engine: sa.Engine,
                 clients: list[Client]) -> None:
        self.shared, self.plan, self.dialect, self.engine = shared, plan, dialect, engine
        self.clients = clients
        self.batches = 0
        self.until = 0
        #: Each client's writes when the first batch committed.
        self.writes_at_first_batch: list[int] = []

    def phase(self, plan: MigrationPlan, phase: Phase) -> None:
        if phase is Phase.MIGRATING:
            with self.shared.lock:
                apply_phases(self.plan, self.shared.model, self.dialect, Phase.EXPANDING)
            self.shared.expanded.set()

    def backfill(self, progress: BackfillProgress) -> None:
        if progress.finished:
            return
        self.batches += 1
        marks = [c.writes for c in self.clients]
        if self.batches == 1:
            with self.engine.connect() as connection:
                self.until = state.load(connection, self.plan.id)[1].until[0]
            self.writes_at_first_batch = marks
            self.shared.backfilling.set()
        self.shared.wait_for_writes(self.clients, marks)


def _count_updates(engine: sa.Engine) -> None:
    """A user trigger counting every UPDATE of each users row, whoever issued it."""
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE row_writes (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql(
                "CREATE FUNCTION count_write() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "INSERT INTO row_writes VALUES (NEW.id, 1) ON CONFLICT (id) DO UPDATE SET n = row_writes.n + 1; "
                "RETURN NULL; END $$")
            connection.exec_driver_sql(
                "CREATE TRIGGER count_write AFTER UPDATE ON users FOR EACH ROW EXECUTE FUNCTION count_write()")
        else:
            connection.exec_driver_sql(
                "CREATE TRIGGER count_write AFTER UPDATE ON users BEGIN "
                "INSERT OR IGNORE INTO row_writes VALUES (NEW.id, 0); "
                "UPDATE row_writes SET n = n + 1 WHERE id = NEW.id; END")


def _counted_updates(engine: sa.Engine) -> dict[int, int]:
    with engine.begin() as connection:
        counted = dict(connection.exec_driver_sql("SELECT id, n FROM row_writes").all())
        connection.exec_driver_sql("DROP TRIGGER count_write ON users" if engine.dialect.name == "postgresql"
                                   else "DROP TRIGGER count_write")
        connection.exec_driver_sql("DROP TABLE row_writes")
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("DROP FUNCTION count_write()")
    return counted


def test_old_and_new_clients_write_while_the_backfill_runs(zdm_database_url: str) -> None:
    postgres = zdm_database_url.startswith("postgresql")
    rows = 800 if postgres else 500
    model = users_schema(rows)
    engine = setup(zdm_database_url, model)
    _count_updates(engine)
    plan = planfile.parse(RENAME)
    dialect = engine.dialect.name
    shared = Shared(model)
    clients = [Client(zdm_database_url, shared, version, number,
                      [k for k in range(1, rows + 1) if k % len(CLIENTS) == number])
               for version, number in CLIENTS]
    hooks = ModelFollowsExpand(shared, plan, dialect, engine, clients)
    for client in clients:
        client.start()
    old = [c for c in clients if c.version == "old"]
    try:
        shared.wait_for_writes(old, [0] * len(old))  # old clients already writing when expand begins
        # A generous target: the batch size doubles from 10 each time, a handful of paced batches.
        Runner(engine, hooks, {"batch_size": 10, "batch_target_ms": 1000}).start(plan)
        after = [c.writes for c in clients]
        shared.wait_for_writes(clients, after)  # and still writing after the backfill
    finally:
        shared.stop.set()
        for client in clients:
            client.join(30)
    assert not shared.errors, shared.errors
    # The batch size at most doubles from 10: 500 (800) rows take at least 6 (7) batches, and
    # every client wrote after each of them.
    assert hooks.batches >= 6, hooks.batches
    assert all(c.writes >= first + hooks.batches for c, first in zip(clients, hooks.writes_at_first_batch,
                                                                         strict=True)), [c.writes for c in clients]

    with engine.connect() as connection:
        found = {key: (old, new) for key, old, new in connection.exec_driver_sql(
            "SELECT id, email, email_address FROM users")}
    assert len(found) == rows + len(shared.inserted)  # nothing lost
    assert all(old == new for old, new in found.values())  # both columns agree in every row
    wrong = {key: (found[key], value) for key, value in shared.expected.items() if found[key][0] != value}
    assert not wrong, f"rows not holding their last writer's value (backfill overwrote?): {wrong}"

    counted = _counted_updates(engine)
    for key in found:
        extra = counted.get(key, 0) - shared.updates[key]
        backfill = 0 if key > hooks.until else 1  # rows inserted after the backfill began are not visited
        if postgres:  # BEFORE triggers edit the row in place: only the backfill may add one update
            assert 0 <= extra <= backfill, (key, extra)
        else:  # an AFTER trigger echoes each app write once; the backfill adds at most one
            assert 0 <= extra <= shared.updates[key] + (key in shared.inserted) + backfill, (key, extra)
    assert any(key > hooks.until for key in shared.inserted), "no insert after the backfill began"

    apply_phases(plan, model, dialect, Phase.MIGRATING)
    assert_agrees(engine, model)


# -- lost connections (PostgreSQL) ----------------------------------------------------------------------
def _admin(url: str) -> sa.Engine:
    """A connection to the server's own database: the zdm database may be refusing connections."""
    return sa.create_engine(sa.make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT",
                            connect_args={"application_name": "killer"}, poolclass=sa.pool.NullPool)


def _terminate_zdm_backends(connection: sa.Connection, url: str, *, mid_batch: bool = False) -> int:
    """What a failover or an admin does: end zdm's sessions (found by application_name) from elsewhere.

    ``mid_batch``: only a session that has run a batch and saved its checkpoint but not committed
    them yet, the moment where a runner that trusted its own memory would skip that batch.
    """
    between = " AND state <> 'idle' AND query LIKE 'UPDATE zdm_migrations SET checkpoint%%'" if mid_batch else ""
    return int(connection.execute(sa.text(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        f"WHERE application_name = 'zdm' AND datname = :database{between}"),
        {"database": sa.make_url(url).database}).scalar() or 0)


class Notes(Reporter):
    def __init__(self, after_batch: dict[int, Any] | None = None) -> None:
        self.notes: list[str] = []
        self.after_batch = after_batch or {}
        self.batches = 0
        self.started = threading.Event()

    def note(self, message: str) -> None:
        self.notes.append(message)

    def backfill(self, progress: BackfillProgress) -> None:
        self.batches += 1
        self.started.set()
        if self.batches in self.after_batch:
            self.after_batch[self.batches]()


def test_a_connection_lost_mid_backfill_is_retried_and_the_backfill_finishes(zdm_postgres_url: str) -> None:
    model = users_schema(1500)
    engine = setup(zdm_postgres_url, model)
    plan = planfile.parse(RENAME)
    reporter = Notes()
    ended: list[int] = []
    finished = threading.Event()
    admin = _admin(zdm_postgres_url)

    def killer() -> None:
        reporter.started.wait(30)
        with admin.connect() as connection:
            while len(ended) < 3 and not finished.is_set():  # between a batch and its commit
                if count := _terminate_zdm_backends(connection, zdm_postgres_url, mid_batch=True):
                    ended.append(count)
            ended.append(_terminate_zdm_backends(connection, zdm_postgres_url))  # all, the lock holder too

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        Runner(engine, reporter, {"batch_size": 10, "batch_target_ms": 2}).start(plan)
    finally:
        finished.set()
        thread.join(30)
        admin.dispose()

    assert len(ended) == 4, f"the backfill ended before the kills: {ended}"
    assert any("connection lost" in note for note in reporter.notes), reporter.notes
    apply_phases(plan, model, engine.dialect.name, Phase.EXPANDING, Phase.MIGRATING)
    assert_agrees(engine, model)  # no batch skipped: every row backfilled, the NOT NULL check validated
    with engine.connect() as connection:
        recorded, checkpoint = state.load(connection, plan.id)
        checkpoint = checkpoint.to_dict()
    assert recorded.is_started and checkpoint == {}


def test_a_database_that_stays_away_stops_the_backfill_with_its_checkpoint_intact(zdm_postgres_url: str) -> None:
    model = users_schema(400)
    engine = setup(zdm_postgres_url, model)
    plan = planfile.parse(RENAME)
    admin = _admin(zdm_postgres_url)
    database = engine.dialect.identifier_preparer.quote(str(sa.make_url(zdm_postgres_url).database))

    def allow_connections(allowed: bool) -> None:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"ALTER DATABASE {database} ALLOW_CONNECTIONS {str(allowed).lower()}")

    def server_goes_away() -> None:
        allow_connections(False)
        with admin.connect() as connection:
            _terminate_zdm_backends(connection, zdm_postgres_url)

    reporter = Notes({5: server_goes_away})
    try:
        with pytest.raises(MigrationFailed, match=r"lost the database connection during MIGRATING.*`zdm start` "
                                                  r"resumes, `zdm rollback rename-email` undoes"):
            Runner(engine, reporter, {"batch_size": 10, "batch_target_ms": 2, "lock_retries": 2}).start(plan)
    finally:
        allow_connections(True)
        admin.dispose()
    assert sum("connection lost" in note for note in reporter.notes) == 2, reporter.notes  # retried, then stopped

    with engine.connect() as connection:
        recorded, checkpoint = state.load(connection, plan.id)
        checkpoint = checkpoint.to_dict()
        filled = set(connection.exec_driver_sql("SELECT id FROM users WHERE email_address IS NOT NULL").scalars())
    # stopped, not compensated: expand stays, the checkpoint names exactly the rows done
    assert recorded.phase is Phase.MIGRATING and not recorded.is_started
    assert filled == set(range(1, checkpoint["last_key"][0] + 1)) and checkpoint["rows_done"] == len(filled) > 0

    Runner(engine, overrides={"batch_size": 50}).start(plan)  # the database is back: resume
    apply_phases(plan, model, engine.dialect.name, Phase.EXPANDING, Phase.MIGRATING)
    assert_agrees(engine, model)
