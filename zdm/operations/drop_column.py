"""drop_column: nothing changes until the old app, which still reads the column, is gone.

expand   with ``default``: the column gets it (metadata only), so the new app, which no longer
         writes the column, can insert even when it is NOT NULL. Otherwise nothing.
migrate  nothing.
contract drop the column (on SQLite through a rebuild, which also handles indexed columns).
"""

from __future__ import annotations

from typing import Any, Literal

from zdm.dialects import Dialect
from zdm.model import Schema
from zdm.operations.base import Compiler, Identifier, Operation, default_problem
from zdm.operations.common import default_steps, default_to_model
from zdm.plan import MigrationStep, Phase


class DropColumn(Operation):
    op: Literal["drop_column"] = "drop_column"
    deletes_data = True
    column: Identifier
    #: A value for the rows the new app inserts without the column, until it is dropped.
    default: Any = None

    def describe(self) -> str:
        return f"drop column {self.table}.{self.column}"

    def check(self, schema: Schema) -> list[str]:
        if errors := self.column_check(schema, self.column):
            return errors
        table = schema.table(self.table)
        if table.columns[self.column].primary_key:
            return [f"{self.table}.{self.column} is part of the primary key"]
        if len(table.columns) == 1:
            return [f"{self.column!r} is the only column of {self.table!r}; drop the table instead"]
        problem = default_problem(self.default, table.column(self.column).type)
        return [problem] if problem else []

    def warnings(self, schema: Schema) -> list[str]:
        if self.check(schema) or self.default is not None:
            return []
        column = schema.table(self.table).column(self.column)
        if not column.nullable and column.default is None:
            return [f"{self.table}.{self.column} is NOT NULL without a default: until complete, the new app must "
                    "keep writing it, or give this operation a `default`"]
        return []

    def expand(self, c: Compiler) -> list[MigrationStep]:
        if self.default is None:
            return []
        column_type = c.schema.table(self.table).column(self.column).type
        return default_steps(self, c, self.column, c.dialect.literal(column_type.coerce(self.default), column_type))

    def contract(self, c: Compiler) -> list[MigrationStep]:
        return [MigrationStep(Phase.CONTRACTING, self.describe(),
                              forward=c.dialect.drop_column(self.table, self.column))]

    def column_fate(self, kind: str, dialect: Dialect) -> str | None:
        return {"constraint": "dropped with the column at complete",
                "statistics": "loses the column at complete",
                "trigger": "breaks once complete drops the column: change it first"}.get(
            kind, "complete fails while it uses the column: drop it first")

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: Dialect) -> None:
        if self.default is not None and phase in (Phase.EXPANDING, Phase.ROLLED_BACK):
            default_to_model(self, schema, phase, self.column, self.default)
        elif phase is Phase.CONTRACTING:
            schema.table(self.table).drop_column(self.column)
