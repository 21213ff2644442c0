"""add_check: a CHECK constraint, added without scanning the table under an exclusive lock.

expand   PostgreSQL: ADD CONSTRAINT ... CHECK (...) NOT VALID (brief lock; new writes checked).
migrate  name sample rows that break the condition, if any; then PostgreSQL: VALIDATE CONSTRAINT
         (SHARE UPDATE EXCLUSIVE: reads and writes go on); SQLite: a rebuild with the check.
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from zdm.db import sql_text
from zdm.dialects import Dialect, syntax_error_anywhere
from zdm.model import Schema
from zdm.operations.base import Compiler, Identifier, Operation
from zdm.operations.common import no_rows_where
from zdm.plan import MigrationStep, Phase


def one_expression(condition: str) -> str:
    """A condition is SQL the plan's author writes; it must at least be a single expression, one
    PostgreSQL's or SQLite's parser reads."""
    if ";" in condition or "--" in condition or "/*" in condition:
        raise ValueError("a condition is one SQL expression, without ';' or comments")
    if problem := syntax_error_anywhere(f"SELECT ({condition})"):
        raise ValueError(f"{condition!r} is {problem}")
    return condition


class AddCheck(Operation):
    op: Literal["add_check"] = "add_check"
    name: Identifier
    #: A SQL boolean expression over the table's columns, e.g. ``age >= 0``.
    condition: str

    @field_validator("condition")
    @classmethod
    def _one_expression(cls, condition: str) -> str:
        return one_expression(condition)

    def describe(self) -> str:
        return f"add check {self.name} on {self.table}: {self.condition}"

    def creates(self) -> list[str]:
        return [self.name]

    def expand(self, c: Compiler) -> list[MigrationStep]:
        d = c.dialect
        if not d.not_valid_constraints:
            return []  # added in migrate, once the rows are known to pass
        return [MigrationStep(Phase.EXPANDING, f"{self.describe()} (NOT VALID)",
                              forward=d.add_check(self.table, self.name, self.condition),
                              compensate=d.drop_constraint(self.table, self.name))]

    def migrate(self, c: Compiler) -> list[MigrationStep]:
        d = c.dialect
        broken = no_rows_where(c, self.table, sql_text(f"NOT ({self.condition})"),
                               f"rows of {self.table} break check {self.name}")
        if d.not_valid_constraints:
            return [MigrationStep(Phase.MIGRATING, f"validate {self.name}",
                                  forward=[broken, *d.validate_constraint(self.table, self.name)])]
        return [MigrationStep(Phase.MIGRATING, self.describe(),
                              forward=[broken, *d.add_check(self.table, self.name, self.condition)],
                              compensate=d.drop_constraint(self.table, self.name))]

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: Dialect) -> None:
        """Enforced from expand where it is added NOT VALID (new writes are checked), else from migrate."""
        table = schema.table(self.table)
        added_in = Phase.EXPANDING if dialect.not_valid_constraints else Phase.MIGRATING
        if phase is added_in:
            table.checks[self.name] = self.condition
        elif phase is Phase.ROLLED_BACK:
            table.checks.pop(self.name, None)
