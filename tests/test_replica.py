"""Replica-lag throttling on a real streaming replica (issue 12).

The test server accepts no replication connections, so the fixture starts its own primary
(initdb) and a streaming replica of it (pg_basebackup -R) on other ports, stopped at the end.
Without the PostgreSQL binaries the tests are skipped with the reason; with CI=true they fail.
With the replica's replay paused (``pg_wal_replay_pause()``) the backfill waits, and `zdm
status` says why; resumed, it finishes and the rows agree with the model.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from support import Phase, apply_phases, assert_agrees, setup, users_schema

from zdm import db, dialects, planfile, state, status
from zdm.backfill import BackfillProgress
from zdm.errors import ThrottleInvalid
from zdm.runner import Reporter, Runner
from zdm.testing.replica import StreamingPair, pair_unavailable, streaming_pair
from zdm.throttle import Wait

RENAME = {"id": "rename_email", "operations": [
    {"op": "rename_column", "table": "users", "column": "email", "new_name": "email_address"}]}


@pytest.fixture(scope="module")
def pair() -> Iterator[StreamingPair]:
    why = pair_unavailable()
    if why is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and no primary with a replica can be started: {why}")
        pytest.skip(why)
    with streaming_pair() as started:
        yield started


@pytest.fixture
def primary(pair: StreamingPair) -> Iterator[str]:
    """A fresh database on the primary for each test (CREATE DATABASE replicates too)."""
    admin = sa.create_engine(pair.primary_url, isolation_level="AUTOCOMMIT")
    name = f"t{os.getpid()}_{time.monotonic_ns() % 10**9}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield pair.primary_url.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.dispose()


class Waits(Reporter):
    def __init__(self) -> None:
        self.waits: list[Wait | None] = []
        self.batches: list[BackfillProgress] = []

    def throttled(self, wait: Wait | None, waited_s: float) -> None:
        self.waits.append(wait)

    def backfill(self, progress: BackfillProgress) -> None:
        self.batches.append(progress)


def replay(pair: StreamingPair, action: str) -> None:
    engine = sa.create_engine(pair.replica_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql(f"SELECT pg_wal_replay_{action}()")
    engine.dispose()


def lagging(pair: StreamingPair, measured: str) -> None:
    """Write on the primary until the lag zdm reads is over the limit of the test (300 ms).

    With replay paused, ``pg_stat_replication.replay_lag`` grows only as the replica reports WAL
    it received and has not replayed, so WAL must keep flowing; waiting for it here keeps the
    test from racing a short backfill against the first report."""
    engine = sa.create_engine(pair.primary_url, isolation_level="AUTOCOMMIT")
    dialect = dialects.for_connection(engine)
    with engine.connect() as connection:
        connection.exec_driver_sql("CREATE TABLE IF NOT EXISTS zdm_test_wal (n bigint)")

        def over() -> bool:
            connection.exec_driver_sql("INSERT INTO zdm_test_wal VALUES (1)")
            if measured == "on the replica":
                replica = sa.create_engine(pair.replica_url)
                with replica.connect() as on_replica:
                    lag = dialect.replay_lag_ms(on_replica)
                replica.dispose()
                return lag > 300
            return any((lag or 0) > 300 for lag in dialect.replica_lags(connection).values())

        until(over)
    engine.dispose()


def until(test: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("measured", ["pg_stat_replication", "on the replica"])
def test_the_backfill_waits_while_the_replica_lags(pair: StreamingPair, primary: str, measured: str) -> None:
    model = users_schema(200)
    engine = setup(primary, model)
    plan = planfile.parse(RENAME)
    overrides: dict[str, Any] = {"batch_size": 20, "batch_target_ms": 5, "batch_pause_ms": 20,
                                 "max_replica_lag_ms": 300}
    if measured == "on the replica":
        overrides["replicas"] = [pair.replica_url]  # the lag is the server's: any database of it
    reporter, errors = Waits(), []

    def run() -> None:
        try:
            Runner(engine, reporter, overrides).start(plan)
        except BaseException as exc:
            errors.append(exc)

    replay(pair, "pause")
    try:
        lagging(pair, measured)
        thread = threading.Thread(target=run)
        thread.start()
        until(lambda: any(w is not None and w.kind == "replica_lag" for w in reporter.waits) or errors)
        assert not errors, errors
        wait = next(w for w in reporter.waits if w is not None and w.kind == "replica_lag")
        assert wait.text().startswith("throttled: replica lag ") and " > 0.3 s (" in wait.text(), wait.text()
        until(lambda: (status.read(engine, plan.id)[0].checkpoint.throttling or "").startswith(
            "throttled: replica lag"))
        record = status.read(engine, plan.id)[0]
        assert "  throttled: replica lag " in status.format_record(record)
        held = len(reporter.batches)
        time.sleep(0.6)
        assert len(reporter.batches) == held and thread.is_alive()  # no batch while the replica lags
    finally:
        replay(pair, "resume")
    thread.join(timeout=60)
    assert not thread.is_alive() and not errors, errors
    assert reporter.waits[-1] is None  # it went on
    with engine.connect() as connection:
        found = state.load(connection, plan.id)
        assert found is not None and found[0].is_started and found[1].throttling is None
    apply_phases(plan, model, engine.dialect.name, Phase.EXPANDING, Phase.MIGRATING)
    assert_agrees(engine, model)
    engine.dispose()


def test_a_replica_url_that_is_not_a_replica_is_bad_input(primary: str) -> None:
    engine = setup(primary, users_schema(10))
    with pytest.raises(ThrottleInvalid, match="not a replica") as caught:
        Runner(engine, overrides={"max_replica_lag_ms": 100, "replicas": [primary]}).start(planfile.parse(RENAME))
    assert caught.value.exit_code == 2
    with engine.connect() as connection:
        assert state.load(connection, "rename_email") is None
    engine.dispose()
    db.create_engine(primary).dispose()
