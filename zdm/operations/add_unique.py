"""add_unique: a UNIQUE constraint built without blocking writes.

expand   name sample duplicates, if any; PostgreSQL: CREATE UNIQUE INDEX CONCURRENTLY (outside a
         transaction), then ADD CONSTRAINT ... UNIQUE USING INDEX (brief lock, no scan).
         SQLite: a unique index.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from zdm.dialects import object_name
from zdm.model import Index, Schema
from zdm.operations.base import Compiler, Identifier, Operation
from zdm.operations.create_index import duplicates, existing_indexes
from zdm.plan import MigrationStep, Phase, check_action


class AddUnique(Operation):
    op: Literal["add_unique"] = "add_unique"
    name: Identifier
    columns: list[Identifier] = Field(min_length=1)

    def describe(self) -> str:
        return f"add unique {self.name} on {self.table} ({', '.join(self.columns)})"

    def check(self, schema: Schema) -> list[str]:
        return self.column_check(schema, *self.columns)

    def expand(self, c: Compiler) -> list[MigrationStep]:
        if self.name in existing_indexes(c, self.table):
            raise ValueError(f"an index or constraint named {self.name!r} already exists on {self.table!r}")
        d = c.dialect
        no_duplicates = check_action(duplicates(c, self.table, self.columns),
                                     f"duplicate values for unique {self.name}")
        if not c.is_postgres:
            return [MigrationStep(Phase.EXPANDING, self.describe(),
                                  forward=[no_duplicates, *d.create_index(self.name, self.table, self.columns,
                                                                          unique=True)],
                                  compensate=d.drop_index(self.name, self.table))]
        index = object_name("zdm_ix", self.sync_name(c.plan_id, self.name))
        return [
            MigrationStep(Phase.EXPANDING, f"unique index for {self.name}",
                          forward=[no_duplicates, *d.create_index(index, self.table, self.columns, unique=True)],
                          compensate=d.drop_index(index, self.table), transactional=False),
            MigrationStep(Phase.EXPANDING, self.describe(),
                          forward=[d.unique_constraint_using_index(self.table, self.name, index)],
                          compensate=[d.drop_constraint(self.table, self.name)]),
        ]

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: str) -> None:
        """A UNIQUE constraint on PostgreSQL; a unique index on SQLite (its ALTER TABLE adds no constraint)."""
        table = schema.table(self.table)
        if phase is Phase.EXPANDING:
            if dialect == "sqlite":
                table.indexes[self.name] = Index(tuple(self.columns), unique=True)
            else:
                table.uniques[self.name] = tuple(self.columns)
        elif phase is Phase.ROLLED_BACK:
            table.indexes.pop(self.name, None)
            table.uniques.pop(self.name, None)
