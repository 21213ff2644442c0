"""create_index: built before the new app needs it, without blocking writes.

expand   CREATE [UNIQUE] INDEX CONCURRENTLY on PostgreSQL (outside a transaction; a leftover
         INVALID index of an earlier failed try is dropped first); a plain CREATE INDEX on SQLite.
         A unique index first checks for duplicates and names them.
contract nothing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from zdm.actions import Action
from zdm.dialects import Dialect
from zdm.model import Index, Schema
from zdm.operations.base import Compiler, Identifier, Operation
from zdm.operations.common import no_duplicates
from zdm.plan import MigrationStep, Phase


class CreateIndex(Operation):
    op: Literal["create_index"] = "create_index"
    name: Identifier
    columns: list[Identifier] = Field(min_length=1)
    unique: bool = False

    def describe(self) -> str:
        kind = "unique index" if self.unique else "index"
        return f"create {kind} {self.name} on {self.table} ({', '.join(self.columns)})"

    def creates(self) -> list[str]:
        return [self.name]

    def check(self, schema: Schema) -> list[str]:
        return self.column_check(schema, *self.columns)

    def expand(self, c: Compiler) -> list[MigrationStep]:
        d = c.dialect
        forward: list[Action] = []
        if self.unique:
            forward.append(no_duplicates(c, self.table, self.columns, f"duplicate values for unique index {self.name}"))
        forward += d.create_index(self.name, self.table, self.columns, unique=self.unique)
        return [MigrationStep(Phase.EXPANDING, self.describe(), forward=forward,
                              compensate=d.drop_index(self.name, self.table),
                              transactional=not d.concurrent_indexes)]

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: Dialect) -> None:
        table = schema.table(self.table)
        if phase is Phase.EXPANDING:
            table.indexes[self.name] = Index(tuple(self.columns), self.unique)
        elif phase is Phase.ROLLED_BACK:
            table.indexes.pop(self.name, None)
