"""drop_default: inserts that omit the column get NULL (or fail, if it is NOT NULL) from now on.

expand   PostgreSQL: DROP DEFAULT (metadata only). SQLite: a rebuild. Undone by restoring it.
"""

from __future__ import annotations

from typing import Literal

from zdm.dialects import Dialect
from zdm.model import Schema
from zdm.operations.base import Compiler, Identifier, Operation
from zdm.operations.common import default_steps, default_to_model
from zdm.plan import MigrationStep, Phase


class DropDefault(Operation):
    op: Literal["drop_default"] = "drop_default"
    column: Identifier

    def describe(self) -> str:
        return f"drop default of {self.table}.{self.column}"

    def check(self, schema: Schema) -> list[str]:
        return self.column_check(schema, self.column)

    def warnings(self, schema: Schema) -> list[str]:
        if self.check(schema) or schema.table(self.table).column(self.column).nullable:
            return []
        return [f"{self.table}.{self.column} is NOT NULL: inserts that omit it (old app?) will fail"]

    def expand(self, c: Compiler) -> list[MigrationStep]:
        return default_steps(self, c, self.column, None)

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: Dialect) -> None:
        default_to_model(self, schema, phase, self.column, None)
