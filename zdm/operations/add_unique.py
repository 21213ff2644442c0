"""add_unique: a UNIQUE constraint built without blocking writes.

expand   name sample duplicates, if any; PostgreSQL: CREATE UNIQUE INDEX CONCURRENTLY (outside a
         transaction), then ADD CONSTRAINT ... UNIQUE USING INDEX (brief lock, no scan).
         SQLite: a unique index.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from zdm.dialects import Dialect, object_name
from zdm.model import Index, Schema
from zdm.operations.base import Compiler, Identifier, Operation
from zdm.operations.common import no_duplicates
from zdm.plan import MigrationStep, Phase


class AddUnique(Operation):
    op: Literal["add_unique"] = "add_unique"
    name: Identifier
    columns: list[Identifier] = Field(min_length=1)

    def describe(self) -> str:
        return f"add unique {self.name} on {self.table} ({', '.join(self.columns)})"

    def creates(self) -> list[str]:
        return [self.name]

    def check(self, schema: Schema) -> list[str]:
        return self.column_check(schema, *self.columns)

    def expand(self, c: Compiler) -> list[MigrationStep]:
        d = c.dialect
        no_dupes = no_duplicates(c, self.table, self.columns, f"duplicate values for unique {self.name}")
        if not d.unique_constraints:  # a unique index enforces the same
            return [MigrationStep(Phase.EXPANDING, self.describe(),
                                  forward=[no_dupes, *d.create_index(self.name, self.table, self.columns, unique=True)],
                                  compensate=d.drop_index(self.name, self.table),
                                  transactional=not d.concurrent_indexes)]
        index = object_name("zdm_ix", self.sync_name(c.plan_id, self.name))
        return [
            MigrationStep(Phase.EXPANDING, f"unique index for {self.name}",
                          forward=[no_dupes, *d.create_index(index, self.table, self.columns, unique=True)],
                          compensate=d.drop_index(index, self.table), transactional=not d.concurrent_indexes),
            MigrationStep(Phase.EXPANDING, self.describe(),
                          forward=d.unique_constraint_using_index(self.table, self.name, index),
                          compensate=d.drop_constraint(self.table, self.name)),
        ]

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: Dialect) -> None:
        """A UNIQUE constraint where the dialect has them; else a unique index."""
        table = schema.table(self.table)
        if phase is Phase.EXPANDING:
            if dialect.unique_constraints:
                table.uniques[self.name] = tuple(self.columns)
            else:
                table.indexes[self.name] = Index(tuple(self.columns), unique=True)
        elif phase is Phase.ROLLED_BACK:
            table.indexes.pop(self.name, None)
            table.uniques.pop(self.name, None)
