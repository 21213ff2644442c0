"""What can go wrong, as the command line reports it: one line, and an exit code.

``exit_code`` 2 is bad input (nothing ran), 1 a runtime failure (the message says what state was
left). The command line maps each class to its code; library users catch them by class.
"""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zdm.planfile import Problem


class ZdmError(RuntimeError):
    """An error the CLI reports as one line; ``exit_code`` 2 for bad input, 1 for runtime."""

    exit_code = 1


class PlanInvalid(ZdmError):
    """The plan does not fit the live schema; nothing ran."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        errors = [p.message for p in problems if p.level == "error"]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{errors[0]}{more}")


class PlanStateError(ZdmError):
    """The command does not fit the plan's phase (start twice, complete before start...)."""

    exit_code = 2


class MigrationFailed(ZdmError):
    """A statement failed while running; the message says what state was left."""


class LockBudgetExceeded(MigrationFailed):
    """A lock could not be had within the budget, even after the retries."""


class DataCheckFailed(MigrationFailed):
    """Rows that the change cannot take (unconvertible values, NULLs, orphans, duplicates)."""


class ThrottleInvalid(ZdmError):
    """A throttle the database cannot measure (replica lag or sessions on SQLite), a probe query that
    fails, a replica URL that is not a replica; nothing ran."""

    exit_code = 2
def printable(text: str, *, lines: bool = False) -> str:
    """``text`` safe for a terminal and a log: control characters (C0, C1, DEL: escape codes,
    carriage returns, and newlines and tabs unless ``lines``) as ``\\xNN``/``\\uNNNN`` escapes, so a title
    cannot forge a line of `zdm status` nor recolour the terminal. Unicode category Cc and Cf
    (bidirectional overrides) are escaped; other characters are kept."""
    return "".join(
        char if (lines and char in "\n\t") or unicodedata.category(char) not in ("Cc", "Cf")
        else char.encode("unicode_escape").decode("ascii") for char in text)
