"""`zdm pause`, `zdm resume`, `zdm throttle`: asking a running plan to wait or slow down, from any
terminal or machine that reaches the database.

The ask is stored in the plan's row of the state table (``zdm_migrations.control``), so no
connection to the runner is needed; the runner reads it before each backfill batch
(``zdm.throttle``) and `zdm status` shows it. The steps that are not batches (DDL, index builds)
run on: a pause holds the backfill, which is where a migration spends its time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from zdm import state
from zdm.dialects import for_connection
from zdm.errors import PlanStateError, ThrottleInvalid
from zdm.plan import Phase
from zdm.throttle import CONTROLLED


def ask(engine: sa.Engine, plan_id: str, change: Callable[[state.Control], None]) -> state.Control:
    """Apply ``change`` to the plan's stored control and return it. PlanStateError (bad input) for no
    such plan, or one with no backfill ahead of it (waiting for complete, COMPLETE, ROLLED_BACK)."""
    with engine.begin() as connection:
        if not sa.inspect(connection).has_table(state.migrations.name):
            raise PlanStateError(f"no plan {plan_id!r} in this database (`zdm status` lists the plans)")
        state.ensure_table(connection)
        found = state.load(connection, plan_id)
        if found is None:
            raise PlanStateError(f"no plan {plan_id!r} in this database (`zdm status` lists the plans)")
        plan, _ = found
        if plan.phase in (Phase.COMPLETE, Phase.ROLLED_BACK, Phase.CONTRACTING) or plan.is_started:
            where = "its backfill is done" if plan.is_started else f"it is {plan.phase.value}"
            raise PlanStateError(f"plan {plan_id!r} has no backfill ahead to pause or throttle: {where}")
        control = state.read_control(connection, plan_id)
        change(control)
        control.by, control.at = state.who(), state.now()
        state.write_control(connection, plan_id, control)
        return control


def pause(engine: sa.Engine, plan_id: str) -> state.Control:
    def change(control: state.Control) -> None:
        control.paused = True

    return ask(engine, plan_id, change)


def resume(engine: sa.Engine, plan_id: str) -> state.Control:
    def change(control: state.Control) -> None:
        control.paused = False

    return ask(engine, plan_id, change)


def throttle(engine: sa.Engine, plan_id: str, settings: dict[str, Any], reset: bool = False) -> state.Control:
    """Store backfill settings over the run's own (``CONTROLLED`` names; 0 for a limit lifts it);
    ``reset`` drops those stored before."""
    unknown = set(settings) - set(CONTROLLED)
    if unknown:
        raise ValueError(f"zdm throttle cannot change {sorted(unknown)}")
    unmeasured = [name for name in ("max_replica_lag_ms", "max_active_sessions") if settings.get(name)]
    if unmeasured and not for_connection(engine).measures_load:
        flag = "--max-replica-lag" if unmeasured[0] == "max_replica_lag_ms" else "--max-active-sessions"
        raise ThrottleInvalid(f"{flag} needs PostgreSQL: {engine.dialect.name} has no replicas or sessions to measure")

    def change(control: state.Control) -> None:
        control.settings = {**({} if reset else control.settings), **settings}

    return ask(engine, plan_id, change)


def describe(control: state.Control) -> str:
    """One line for people: ``paused; batch_target_ms 50, batch_pause_ms 200 (root@host pid 7, <at>)``."""
    parts = ["paused" if control.paused else "running"]
    if control.settings:
        parts.append(", ".join(f"{name} {value}" for name, value in sorted(control.settings.items())))
    return "; ".join(parts) + (f" (asked by {control.by} at {control.at})" if control.by else "")
