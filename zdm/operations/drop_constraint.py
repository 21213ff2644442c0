"""drop_constraint: only at contract, once no deployed app relies on what it refuses.

contract PostgreSQL: DROP CONSTRAINT. SQLite: a rebuild without it (or DROP INDEX, when the
         "constraint" is a unique index).
"""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa

from zdm.dialects import Dialect
from zdm.model import Schema
from zdm.operations.base import Compiler, Identifier, Operation
from zdm.operations.common import existing_constraints, existing_indexes
from zdm.plan import MigrationStep, Phase


class DropConstraint(Operation):
    op: Literal["drop_constraint"] = "drop_constraint"
    name: Identifier

    def describe(self) -> str:
        return f"drop constraint {self.name} on {self.table}"

    def check_live(self, c: Compiler) -> list[str]:
        if c.connection is None:
            return []
        if self.name not in existing_constraints(c.connection, self.table):
            # PostgreSQL's DROP CONSTRAINT IF EXISTS would drop nothing and call the plan complete.
            return [f"table {self.table!r} has no constraint {self.name!r}"]
        if c.dialect.unique_constraints and self._plain_index(c):
            return [f"{self.name!r} on {self.table!r} is an index, not a constraint: use drop_index"]
        return []

    def _plain_index(self, c: Compiler) -> bool:
        """A unique index standing for a constraint (what add_unique makes where a dialect has no
        unique constraints of its own), not a UNIQUE constraint of the table."""
        if c.connection is None:  # offline (Alembic --sql): as the model knows the table
            modelled = c.schema.tables.get(self.table)
            return modelled is not None and self.name in modelled.indexes and self.name not in modelled.uniques
        if not sa.inspect(c.connection).has_table(self.table):
            return False
        constraints = {u["name"] for u in sa.inspect(c.connection).get_unique_constraints(self.table) if u["name"]}
        return self.name in existing_indexes(c.connection, self.table) - constraints

    def contract(self, c: Compiler) -> list[MigrationStep]:
        d = c.dialect
        forward = d.drop_index(self.name, self.table) if self._plain_index(c) else d.drop_constraint(self.table,
                                                                                                     self.name)
        return [MigrationStep(Phase.CONTRACTING, self.describe(), forward=forward,
                              transactional=not (self._plain_index(c) and d.concurrent_indexes))]

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: Dialect) -> None:
        if phase is Phase.CONTRACTING:
            table = schema.table(self.table)
            for catalogue in (table.uniques, table.checks, table.foreign_keys, table.indexes):
                catalogue.pop(self.name, None)
