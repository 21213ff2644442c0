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

    def describe(self) -> str:
        sets = ", ".join(f"{c} = {e}" for c, e in self.assignments.items())
        where = f" AND ({self.pending})" if self.pending else ""
        keys = ", ".join(self.key)
        return f"UPDATE {self.table} SET {sets} WHERE ({keys}) IN <next batch by key>{where}"


def check_action(query: str, problem: str) -> dict[str, Any]:
    """An action that fails the phase, naming sample rows, when ``query`` returns any row.

    It guards data, not shape: unconvertible values, NULLs before NOT NULL, orphans before a
    foreign key. Placed first in the contract transaction, it also catches rows written late.
    """
    return {"check": {"query": query, "problem": problem}}


@dataclass
class MigrationStep:
    phase: Phase
    description: str
    forward: list[str] = field(default_factory=list)
    compensate: list[str] = field(default_factory=list)
    backfill: Backfill | None = None
    #: False for statements PostgreSQL refuses inside a transaction (CREATE INDEX CONCURRENTLY).
    transactional: bool = True
    executed: bool = False
    rolled_back: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["phase"] = self.phase.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MigrationStep:
        data = dict(data)
        data["phase"] = Phase(data["phase"])
        if data.get("backfill"):
            data["backfill"] = Backfill(**data["backfill"])
        return cls(**data)


@dataclass
class HistoryEntry:
    at: str
    phase: Phase
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "phase": self.phase.value, "note": self.note}


@dataclass
class MigrationPlan:
    id: str
    title: str
    steps: list[MigrationStep] = field(default_factory=list)
    phase: Phase = Phase.PENDING
    history: list[HistoryEntry] = field(default_factory=list)
    #: The plan file as declared (operations and settings), kept for resume and for humans.
    source: dict[str, Any] = field(default_factory=dict)

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
    def is_complete(self) -> bool:
        return self.phase is Phase.COMPLETE

    @property
    def is_started(self) -> bool:
        """Expand and migrate are done: the plan waits for ``complete`` or ``rollback``."""
        before_contract = [s for s in self.steps if s.phase is not Phase.CONTRACTING]
        return self.phase is Phase.MIGRATING and all(s.executed for s in before_contract)

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
