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

from zdm.dialects import Dialect
from zdm.model import Schema
from zdm.operations.base import Compiler, Identifier, Operation
from zdm.operations.common import no_rows_where
from zdm.plan import MigrationStep, Phase


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
        no_nulls = no_rows_where(c, self.table, sa.column(self.column).is_(None),
                                 f"rows with NULL in {self.table}.{self.column} were written since expand; "
                                 "fill them before rolling back")
        not_null = d.alter_columns(self.table, {self.column: {"nullable": False}})
        if d.not_valid_constraints:
            # Each undo statement commits by itself (the step is not transactional), so that the scan
            # happens under VALIDATE's lock, which lets writes through, and SET NOT NULL trusts it.
            add, validate, drop = d.refuse_nulls(self.sync_name(c.plan_id, self.column), self.table, self.column)
            not_null = [*drop, *add, *validate, *not_null, *drop]
        return [MigrationStep(Phase.EXPANDING, self.describe(),
                              forward=d.alter_columns(self.table, {self.column: {"nullable": True}}),
                              compensate=[no_nulls, *not_null], transactional=not d.not_valid_constraints)]

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: Dialect) -> None:
        if phase in (Phase.EXPANDING, Phase.ROLLED_BACK):
            schema.table(self.table).column(self.column).nullable = phase is Phase.EXPANDING
