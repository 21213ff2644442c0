"""drop_column: nothing changes until the old app, which still reads the column, is gone.

expand   nothing.
migrate  nothing.
contract drop the column (on SQLite through a rebuild, which also handles indexed columns).
"""

from __future__ import annotations

from typing import Literal

from zdm.model import Schema
from zdm.operations.base import Compiler, Identifier, Operation
from zdm.plan import MigrationStep, Phase


class DropColumn(Operation):
    op: Literal["drop_column"] = "drop_column"
    column: Identifier

    def describe(self) -> str:
        return f"drop column {self.table}.{self.column}"

    def check(self, schema: Schema) -> list[str]:
        if errors := super().check(schema):
            return errors
        table = schema.table(self.table)
        if self.column not in table.columns:
            return [f"table {self.table!r} has no column {self.column!r}"]
        if table.columns[self.column].primary_key:
            return [f"{self.table}.{self.column} is part of the primary key"]
        if len(table.columns) == 1:
            return [f"{self.column!r} is the only column of {self.table!r}; drop the table instead"]
        return []

    def warnings(self, schema: Schema) -> list[str]:
        if not schema.has_table(self.table) or self.column not in schema.table(self.table).columns:
            return []
        column = schema.table(self.table).column(self.column)
        if column.required:
            return [f"{self.table}.{self.column} is NOT NULL without a default: the new app must "
                    "keep writing it until complete"]
        return []

    def contract(self, c: Compiler) -> list[MigrationStep]:
        return [MigrationStep(Phase.CONTRACTING, self.describe(),
                              forward=c.dialect.drop_column(self.table, self.column))]

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: str) -> None:
        if phase is Phase.CONTRACTING:
            schema.table(self.table).drop_column(self.column)
