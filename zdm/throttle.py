"""Before each backfill batch: is the runner paused, and are the replicas and the app fit for more?

The MySQL online schema change tools made this their core (gh-ost's ``--max-lag-millis``,
``--max-load``, ``--throttle-query`` and its interactive ``pause``/``throttle`` commands; spirit's
replica throttler; pt-online-schema-change's ``--max-lag`` and ``--max-load``). zdm asks, before
every batch and in this order:

1. the plan's control in the state table (`zdm pause` / `resume` / `throttle` from any terminal
   that reaches the database): paused waits; throttle settings replace the run's own;
2. replica lag (``max_replica_lag_ms``): every streaming replica the primary lists, and each
   ``replicas`` URL measured on the replica itself;
3. app load: sessions running a statement (``max_active_sessions``), and the team's own probe
   query's duration (``probe_query`` / ``max_probe_ms``).

While one says no, the runner waits (checking again every ``POLL_S``), keeps the runner lock,
reports ``throttled: <why>`` and stores the reason in the checkpoint for `zdm status`. What each
measure means on a database is the dialect's (``zdm.dialects``); this module only decides.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from zdm import state
from zdm.errors import ThrottleInvalid
from zdm.plan import Checkpoint

if TYPE_CHECKING:
    from zdm.dialects import Dialect
    from zdm.planfile import Settings
    from zdm.report import Reporter

#: Seconds between two looks while waiting.
POLL_S = 0.2
#: Seconds between two stores of the waiting reason (its figure changes at every look).
STORE_EVERY_S = 1.0
#: The settings `zdm throttle` may change while a backfill runs (0 for a limit: no limit).
CONTROLLED = ("batch_target_ms", "batch_pause_ms", "max_replica_lag_ms", "max_active_sessions", "max_probe_ms")


def seconds(ms: float) -> str:
    """``2.4 s``, ``1 s``, ``0.25 s``: milliseconds as a person reads a lag."""
    value = ms / 1000
    return f"{value:.1f} s" if value >= 1 and round(value, 1) != round(value) else f"{value:.3g} s"


@dataclass
class Wait:
    """Why the next batch waits: ``kind`` (paused, replica_lag, active_sessions, probe, unreachable)
    and one line for people (``replica lag 2.4 s > 1 s``)."""

    kind: str
    reason: str

    def text(self) -> str:
        return self.reason if self.kind == "paused" else f"throttled: {self.reason}"


class Throttle:
    """The checks of one run. ``settings``: the run's own (plan file, then the command line);
    ``replicas``: engines of ``settings.replicas``. Use ``check()`` once before anything runs, then
    ``before_batch`` before every batch."""

    def __init__(self, engine: sa.Engine, dialect: Dialect, plan_id: str, settings: Settings,
                 replicas: list[sa.Engine] | None = None) -> None:
        self.engine, self.dialect, self.plan_id, self.settings = engine, dialect, plan_id, settings
        self.replicas = replicas or []

    # -- the measures ------------------------------------------------------------------------------
    def current(self, connection: sa.Connection) -> tuple[Settings, state.Control]:
        """The settings in force now: the run's, with what `zdm throttle` stored over them."""
        control = state.read_control(connection, self.plan_id)
        changed = {k: v for k, v in control.settings.items() if k in CONTROLLED}
        changed = {k: (None if v == 0 and k.startswith("max_") else v) for k, v in changed.items()}
        if not self.dialect.measures_load:  # `zdm throttle` refuses these here; an older ask must not fail the run
            changed = {k: v for k, v in changed.items() if k not in ("max_replica_lag_ms", "max_active_sessions")}
        return (self.settings.model_copy(update=changed) if changed else self.settings), control

    def why_wait(self, connection: sa.Connection, settings: Settings, control: state.Control) -> Wait | None:
        """The first reason to wait, or None to go on."""
        if control.paused:
            return Wait("paused", f"paused by `zdm pause` ({control.by}, {control.at}): `zdm resume "
                                  f"{self.plan_id}` continues")
        if settings.max_replica_lag_ms is not None:
            limit = settings.max_replica_lag_ms
            for name, lag in self.replica_lags(connection).items():
                if lag is None:
                    return Wait("unreachable", f"replica {name}: no lag figure ({_why_none(name)})")
                if lag > limit:
                    return Wait("replica_lag", f"replica lag {seconds(lag)} > {seconds(limit)} ({name})")
        if settings.max_active_sessions is not None:
            active = self.dialect.active_sessions(connection)
            if active > settings.max_active_sessions:
                return Wait("active_sessions", f"app load: {active} active sessions > {settings.max_active_sessions}")
        if settings.probe_query is not None and settings.max_probe_ms is not None:
            took = self.probe(settings.probe_query)
            if took > settings.max_probe_ms:
                return Wait("probe", f"app load: probe query {took:.1f} ms > {settings.max_probe_ms} ms")
        return None

    def replica_lags(self, connection: sa.Connection) -> dict[str, float | None]:
        """Lag (ms) of the replicas the primary streams to, and of each ``--replica`` measured on itself."""
        lags = self.dialect.replica_lags(connection)
        for engine in self.replicas:
            name = engine.url.render_as_string(hide_password=True)
            try:
                with engine.connect() as replica:
                    lags[name] = self.dialect.replay_lag_ms(replica)
            except sa.exc.DBAPIError:
                lags[name] = None
        return lags

    def probe(self, sql: str) -> float:
        return self.dialect.probe_ms(self.engine, sql)

    def check(self) -> None:
        """Before anything runs: every measure asked for can be taken here (else ThrottleInvalid,
        bad input: nothing ran)."""
        settings = self.settings
        measured = settings.max_replica_lag_ms is not None or settings.max_active_sessions is not None
        if measured and not self.dialect.measures_load:
            what = "--max-replica-lag" if settings.max_replica_lag_ms is not None else "--max-active-sessions"
            raise ThrottleInvalid(f"{what} needs PostgreSQL: {self.dialect.name} has no replicas or sessions "
                                  "to measure")
        with self.engine.connect() as connection:
            if settings.max_replica_lag_ms is not None:
                blind = [name for name, lag in self.dialect.replica_lags(connection).items() if lag is None]
                if blind:
                    raise ThrottleInvalid(f"cannot read the replay lag of replica {blind[0]} in pg_stat_replication: "
                                          "grant zdm's user pg_monitor")
            if settings.max_active_sessions is not None:
                self.dialect.active_sessions(connection)
        for engine in self.replicas:
            try:
                with engine.connect() as replica:
                    self.dialect.replay_lag_ms(replica)
            except sa.exc.DBAPIError as exc:
                url = engine.url.render_as_string(hide_password=True)
                raise ThrottleInvalid(f"--replica {url}: cannot measure its lag: "
                                      f"{' '.join(str(exc.orig or exc).split())}") from None
        if settings.probe_query is not None:
            try:
                self.probe(settings.probe_query)
            except sa.exc.DBAPIError as exc:
                raise ThrottleInvalid(f"--probe-query fails: {' '.join(str(exc.orig or exc).split())}") from None

    def look(self, connection: sa.Connection) -> tuple[Settings, Wait | None]:
        """The settings in force now, and the first reason to wait (None: go on)."""
        settings, control = self.current(connection)
        return settings, self.why_wait(connection, settings, control)

    # -- waiting -----------------------------------------------------------------------------------
    def before_batch(self, checkpoint: Checkpoint, reporter: Reporter,
                     transaction: Callable[[Callable[[sa.Connection], Any]], Any],
                     store: Callable[[Checkpoint], None], *, sleep: Callable[[float], Any] = time.sleep
                     ) -> tuple[Settings, Checkpoint]:
        """Wait while paused or throttled; return the settings for the next batch and the checkpoint
        (its ``throttling`` cleared). ``transaction`` runs a look in the runner's transaction (which
        checks the runner lock and retries a lost connection); ``store`` saves a checkpoint (with
        the reason) for `zdm status`."""
        waited_since: float | None = None
        stored_at, stored = 0.0, checkpoint.throttling
        while True:
            settings, wait = transaction(self.look)
            now = time.monotonic()
            if wait is None:
                if stored is not None:
                    checkpoint = replace(checkpoint, throttling=None)
                    store(checkpoint)
                if waited_since is not None:
                    reporter.throttled(None, now - waited_since)
                return settings, replace(checkpoint, throttling=None)
            if waited_since is None:
                waited_since = now
            reporter.throttled(wait, now - waited_since)
            text = wait.text()
            if text != stored and (now - stored_at >= STORE_EVERY_S or stored is None
                                   or stored.split(":")[0] != text.split(":")[0]):
                store(replace(checkpoint, throttling=text))
                stored_at, stored = now, text
            sleep(POLL_S)


def _why_none(name: str) -> str:
    return "unreachable" if "://" in name else "pg_stat_replication shows no replay position to zdm's user"
