"""drop_not_null: the new app may write NULL; the old app never notices.

expand   PostgreSQL: DROP NOT NULL (metadata only, brief lock). SQLite: a rebuild.
         Undone after checking that nobody wrote NULL meanwhile. On PostgreSQL each undo
         statement commits by itself, so that the scan happens under VALIDATE's SHARE UPDATE
         EXCLUSIVE lock, not under SET NOT NULL's ACCESS EXCLUSIVE one: CHECK (col IS NOT NULL)
         NOT VALID, VALIDATE, SET NOT NULL (which trusts the check), drop the check.
"""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa

from zdm.dialects.sqlite import rebuild_action
from zdm.model import Schema
from zdm.operations.base import Compiler, Identifier, Operation
from zdm.plan import MigrationStep, Phase, check_action


class DropNotNull(Operation):
    op: Literal["drop_not_null"] = "drop_not_null"
    column: Identifier

    def describe(self) -> str:
        return f"drop NOT NULL from {self.table}.{self.column}"

    def check(self, schema: Schema) -> list[str]:
        if errors := self.column_check(schema, self.column):
            return errors
        column = schema.table(self.table).column(self.column)
        if column.nullable:
            return [f"{self.table}.{self.column} is already nullable"]
        if column.primary_key:
            return [f"{self.table}.{self.column} is part of the primary key"]
        return []

    def expand(self, c: Compiler) -> list[MigrationStep]:
        d = c.dialect
        no_nulls = check_action(self.sample(c, sa.column(self.column).is_(None)),
                                f"rows with NULL in {self.table}.{self.column} were written since expand; "
                                "fill them before rolling back")
        if c.is_postgres:
            add, validate, drop = d.not_null_check(self.table, self.column, self.sync_name(c.plan_id, self.column))
            undo = [no_nulls, drop, add, validate, d.set_not_null(self.table, self.column), drop]
            return [MigrationStep(Phase.EXPANDING, self.describe(), forward=[d.drop_not_null(self.table, self.column)],
                                  compensate=undo, transactional=False)]
        nullable, not_null = ({self.column: {"nullable": value}} for value in (True, False))
        return [MigrationStep(Phase.EXPANDING, self.describe(), forward=[rebuild_action(self.table, alter=nullable)],
                              compensate=[no_nulls, rebuild_action(self.table, alter=not_null)])]

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: str) -> None:
        if phase in (Phase.EXPANDING, Phase.ROLLED_BACK):
            schema.table(self.table).column(self.column).nullable = phase is Phase.EXPANDING
