"""set_default: a new default for inserts that omit the column; old inserts keep working.

expand   PostgreSQL: SET DEFAULT (metadata only; a constant, never a volatile expression that
         would rewrite anything). SQLite: a rebuild. Undone by restoring the previous default.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from zdm.dialects import Dialect
from zdm.model import Schema
from zdm.operations.base import Compiler, Identifier, Operation, default_problem
from zdm.operations.common import default_steps, default_to_model
from zdm.plan import MigrationStep, Phase


class SetDefault(Operation):
    op: Literal["set_default"] = "set_default"
    column: Identifier
    default: Any

    @model_validator(mode="after")
    def _given(self) -> SetDefault:
        if self.default is None:
            raise ValueError("set_default needs a default; use drop_default to remove one")
        return self

    def describe(self) -> str:
        return f"set default of {self.table}.{self.column} to {self.default!r}"

    def check(self, schema: Schema) -> list[str]:
        if errors := self.column_check(schema, self.column):
            return errors
        column_type = schema.table(self.table).column(self.column).type
        problem = default_problem(self.default, column_type)
        return [problem] if problem else []

    def expand(self, c: Compiler) -> list[MigrationStep]:
        column_type = c.schema.table(self.table).column(self.column).type
        return default_steps(self, c, self.column, c.dialect.literal(column_type.coerce(self.default), column_type))

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: Dialect) -> None:
        default_to_model(self, schema, phase, self.column, self.default)
