"""Lock modes as the report names and judges them: which block the app's writes, and what a statement
run outside a transaction may have held, unread."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from zdm.actions import Action

#: A rewrite of a table with more rows than this breaks the promise (``--max-rewrite-rows``).
DEFAULT_MAX_REWRITE_ROWS = 10_000

#: PostgreSQL's table lock modes, weakest first. Up to SHARE UPDATE EXCLUSIVE, reads and writes
#: of the table go on; from SHARE on, writes (and, with ACCESS EXCLUSIVE, reads) wait.
LOCK_MODES = (
    "AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock",
    "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock",
)  # fmt: skip
#: SQLite's single database write lock: every other writer waits while it is held.
SQLITE_WRITE_LOCK = "DatabaseWriteLock"
SQLITE_DATABASE = "(database)"
#: The locks of a statement run outside a transaction, released before they could be read.
UNREAD_LOCK = "UnreadLock"


@dataclass
class Lock:
    relation: str
    mode: str

    def __str__(self) -> str:
        return lock_name(self.mode) if self.relation == SQLITE_DATABASE else f"{lock_name(self.mode)} {self.relation}"


def lock_name(mode: str) -> str:
    """``AccessExclusiveLock`` -> ``ACCESS EXCLUSIVE``, the name the PostgreSQL docs use."""
    return " ".join(re.findall(r"[A-Z][a-z]*", mode.removesuffix("Lock"))).upper()


def describe_locks(locks: Iterable[Lock]) -> str:
    """``ACCESS EXCLUSIVE events, events_pkey; SHARE events``: strongest mode first."""
    by_mode: dict[str, list[str]] = {}
    for lock in locks:
        by_mode.setdefault(lock.mode, []).append(lock.relation)
    order = sorted(by_mode, key=lambda m: LOCK_MODES.index(m) if m in LOCK_MODES else len(LOCK_MODES), reverse=True)
    return "; ".join(f"{lock_name(mode)} {', '.join(r for r in by_mode[mode] if r != SQLITE_DATABASE)}".strip()
                     for mode in order)


def blocks_writes(mode: str) -> bool:
    """Stronger than SHARE UPDATE EXCLUSIVE: the app's writes queue behind it (an unread lock may)."""
    if mode in (SQLITE_WRITE_LOCK, UNREAD_LOCK):
        return True
    return mode in LOCK_MODES and LOCK_MODES.index(mode) > LOCK_MODES.index("ShareUpdateExclusiveLock")


def unread_locks(action: Action) -> list[Lock]:
    """What a statement outside a transaction may have blocked: the relations it names."""
    return [Lock(name, UNREAD_LOCK) for name in action.relations()] or [Lock("(unknown)", UNREAD_LOCK)]


