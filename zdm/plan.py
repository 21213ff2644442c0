"""Plans, steps and the phase state machine.

A plan file declares *what* changes; compiling it against a live database yields a
:class:`MigrationPlan`: the ordered steps of every phase, each with the exact SQL it runs and the
SQL that undoes it. The compiled plan is stored in the target database, so ``status``, ``complete``
and ``rollback`` work from another process, or after a crash, without the plan file.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from zdm import actions
from zdm.actions import Action


class Phase(enum.StrEnum):
    PENDING = "PENDING"
    EXPANDING = "EXPANDING"
    MIGRATING = "MIGRATING"
    CONTRACTING = "CONTRACTING"
    COMPLETE = "COMPLETE"
    ROLLED_BACK = "ROLLED_BACK"


class IllegalTransition(RuntimeError):
    """A phase change the state machine forbids, e.g. rolling back a completed plan."""


#: Which phase may follow which. ROLLED_BACK may start over; COMPLETE is final because the
#: contract phase dropped what a rollback would need.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.PENDING: frozenset({Phase.EXPANDING, Phase.ROLLED_BACK}),
    Phase.EXPANDING: frozenset({Phase.MIGRATING, Phase.ROLLED_BACK}),
    Phase.MIGRATING: frozenset({Phase.CONTRACTING, Phase.ROLLED_BACK}),
    Phase.CONTRACTING: frozenset({Phase.COMPLETE, Phase.ROLLED_BACK, Phase.MIGRATING}),
    Phase.COMPLETE: frozenset(),
    Phase.ROLLED_BACK: frozenset({Phase.EXPANDING}),
}

#: The phases that carry steps, in the order they run.
STEP_PHASES = (Phase.EXPANDING, Phase.MIGRATING, Phase.CONTRACTING)


@dataclass
class Backfill:
    """A batched UPDATE: ``assignments`` on the rows where ``pending`` holds, in key order.

    The SQL fragments are compiled by the dialect when the plan is compiled, so the runner
    needs nothing but this record to resume a backfill after a crash.
    """

    table: str
    key: list[str]
    assignments: dict[str, str]
    pending: str | None = None
    #: A table of the key columns where each batch first notes the keys of the rows it will change.
    record: str | None = None
    #: A table of the key columns (a zdm-owned table of noted keys, a key maybe noted twice) whose
    #: keys the batches walk instead of ``table``'s own: only the rows it names are visited.
    walk: str | None = None
    #: A statement run when the backfill begins, before the range is fixed (the index a walk needs
    #: on its keys); it must be safe to run again (a resumed backfill may).
    prepare: str | None = None

    def describe(self) -> str:
        sets = ", ".join(f"{c} = {e}" for c, e in self.assignments.items())
        where = f" AND ({self.pending})" if self.pending else ""
        keys = ", ".join(self.key)
        batch = f"<next batch of the keys in {self.walk}>" if self.walk else "<next batch by key>"
        return f"UPDATE {self.table} SET {sets} WHERE ({keys}) IN {batch}{where}"


@dataclass
class Checkpoint:
    """Where a run stopped, stored with the plan: a backfill's progress (``until`` is the last key
    that existed when it began, ``last_key`` the last one done), or a step in flight outside a
    transaction. Keys are lists of the key columns' values, as JSON holds them."""

    #: The step's index in the plan's steps.
    step: int | None = None
    outside_transaction: bool = False
    last_key: list[Any] | None = None
    until: list[Any] | None = None
    rows_done: int = 0
    rows_total: int = 0
    #: Why the backfill waits now, when it does (for `zdm status`).
    throttling: str | None = None

    @property
    def backfilling(self) -> bool:
        return self.step is not None and not self.outside_transaction

    def to_dict(self) -> dict[str, Any]:
        """The stored form: ``{}`` when nothing is in flight."""
        if self.step is None:
            return {}
        if self.outside_transaction:
            return {"step": self.step, "outside_transaction": True}
        stored = {"step": self.step, "last_key": self.last_key, "until": self.until,
                  "rows_done": self.rows_done, "rows_total": self.rows_total}
        return {**stored, "throttling": self.throttling} if self.throttling else stored

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


@dataclass
class MigrationStep:
    phase: Phase
    description: str
    forward: list[Action] = field(default_factory=list)
    compensate: list[Action] = field(default_factory=list)
    backfill: Backfill | None = None
    #: Run in key batches when the step is undone, before ``compensate`` (giving back what a fill
    #: replaced): many short transactions with a checkpoint, like ``backfill``.
    undo_backfill: Backfill | None = None
    #: False for statements PostgreSQL refuses inside a transaction (CREATE INDEX CONCURRENTLY).
    transactional: bool = True
    executed: bool = False
    rolled_back: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase.value, "description": self.description,
                "forward": [action.to_json() for action in self.forward],
                "compensate": [action.to_json() for action in self.compensate],
                "backfill": None if self.backfill is None else asdict(self.backfill),
                "undo_backfill": None if self.undo_backfill is None else asdict(self.undo_backfill),
                "transactional": self.transactional, "executed": self.executed, "rolled_back": self.rolled_back}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MigrationStep:
        data = dict(data)
        data["phase"] = Phase(data["phase"])
        data["forward"] = [actions.from_json(a) for a in data.get("forward", [])]
        data["compensate"] = [actions.from_json(a) for a in data.get("compensate", [])]
        for name in ("backfill", "undo_backfill"):
            if data.get(name):
                data[name] = Backfill(**data[name])
        return cls(**data)


@dataclass
class HistoryEntry:
    at: str
    phase: Phase
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "phase": self.phase.value, "note": self.note}


#: The key of ``MigrationPlan.source`` that lists the tables the compiled plan changes.
TABLES = "tables"


@dataclass
class MigrationPlan:
    id: str
    title: str
    steps: list[MigrationStep] = field(default_factory=list)
    phase: Phase = Phase.PENDING
    history: list[HistoryEntry] = field(default_factory=list)
    #: The plan file as declared (operations and settings), kept for resume and for humans.
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def tables(self) -> list[str]:
        """Every table the plan creates objects on or changes (a plan of an earlier release: those
        its operations name)."""
        if TABLES in self.source:
            return list(self.source[TABLES])
        return sorted({op["table"] for op in self.source.get("operations", []) if op.get("table")})

    # -- state machine ---------------------------------------------------------------------
    def transition(self, to: Phase, at: str, note: str = "") -> None:
        if to not in TRANSITIONS[self.phase]:
            raise IllegalTransition(f"plan {self.id!r} cannot go from {self.phase.value} to {to.value}")
        self.phase = to
        self.history.append(HistoryEntry(at=at, phase=to, note=note))

    # -- progress ---------------------------------------------------------------------------
    def steps_of(self, phase: Phase) -> list[MigrationStep]:
        return [s for s in self.steps if s.phase is phase]

    @property
    def progress(self) -> float:
        """Percent of steps executed (a rolled-back plan counts as 0)."""
        if not self.steps or self.phase is Phase.ROLLED_BACK:
            return 0.0
        done = sum(1 for s in self.steps if s.executed)
        return round(100.0 * done / len(self.steps), 1)

    @property
    def is_started(self) -> bool:
        """Expand and migrate are done: the plan waits for ``complete`` or ``rollback``."""
        before_contract = [s for s in self.steps if s.phase is not Phase.CONTRACTING]
        return self.phase is Phase.MIGRATING and all(s.executed and not s.rolled_back for s in before_contract)

    @property
    def rolling_back(self) -> bool:
        """A rollback undid steps and stopped before recording ROLLED_BACK (a kill, a lost
        connection, a compensation that failed): only ``zdm rollback`` may go on from here."""
        return self.phase is not Phase.ROLLED_BACK and any(s.rolled_back for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "phase": self.phase.value,
            "progress": self.progress,
            "steps": [s.to_dict() for s in self.steps],
            "history": [h.to_dict() for h in self.history],
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MigrationPlan:
        return cls(
            id=data["id"],
            title=data["title"],
            steps=[MigrationStep.from_dict(s) for s in data["steps"]],
            phase=Phase(data["phase"]),
            history=[
                HistoryEntry(at=h["at"], phase=Phase(h["phase"]), note=h.get("note", ""))
                for h in data.get("history", [])
            ],
            source=data.get("source", {}),
        )
