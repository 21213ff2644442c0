"""drop_constraint: only at contract, once no deployed app relies on what it refuses.

contract PostgreSQL: DROP CONSTRAINT. SQLite: a rebuild without it (or DROP INDEX, when the
         "constraint" is a unique index).
"""

from __future__ import annotations

from typing import Literal

from zdm.dialects.sqlite import rebuild_action
from zdm.model import Schema
from zdm.operations.base import Compiler, Identifier, Operation
from zdm.operations.create_index import existing_indexes
from zdm.plan import MigrationStep, Phase


class DropConstraint(Operation):
    op: Literal["drop_constraint"] = "drop_constraint"
    name: Identifier

    def describe(self) -> str:
        return f"drop constraint {self.name} on {self.table}"

    def contract(self, c: Compiler) -> list[MigrationStep]:
        d = c.dialect
        if c.is_postgres:
            forward = [d.drop_constraint(self.table, self.name)]
        elif self.name in existing_indexes(c, self.table):
            forward = d.drop_index(self.name, self.table)
        else:
            forward = [rebuild_action(self.table, drop_constraints=[self.name])]
        return [MigrationStep(Phase.CONTRACTING, self.describe(), forward=forward)]

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: str) -> None:
        """Nothing to model."""
