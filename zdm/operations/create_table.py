"""create_table: a new table, which the old app never touches.

expand   CREATE TABLE. Undone by DROP TABLE.
"""

from __future__ import annotations

from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from zdm.actions import Statement
from zdm.dialects import Dialect
from zdm.model import Column, ColumnType, Schema, Table
from zdm.operations.base import Compiler, Identifier, Operation, default_problem, type_problems
from zdm.plan import MigrationStep, Phase


class ColumnSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Identifier
    type: ColumnType
    nullable: bool = True
    default: Any = None
    primary_key: bool = False


class CreateTable(Operation):
    op: Literal["create_table"] = "create_table"
    columns: list[ColumnSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> CreateTable:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError("column names must be distinct")
        if any(not c.type.declared for c in self.columns):
            raise ValueError("a column type zdm copies but does not create; pick another type")
        return self

    def describe(self) -> str:
        return f"create table {self.table} ({', '.join(c.name for c in self.columns)})"

    def check(self, schema: Schema) -> list[str]:
        if schema.has_table(self.table):
            return [f"table {self.table!r} already exists"]
        problems = [(c.name, problem) for c in self.columns if (problem := default_problem(c.default, c.type))]
        return [f"column {name!r}: {problem}" for name, problem in problems[:1]]

    def check_live(self, c: Compiler) -> list[str]:
        return type_problems(c, *(column.type for column in self.columns))
    def creates(self) -> list[str]:
        return [self.table]

    def touches(self) -> set[tuple[str, str]]:
        return set()

    def model_table(self) -> Table:
        return Table(self.table, [Column(c.name, c.type, nullable=c.nullable and not c.primary_key,
                                         default=c.default, primary_key=c.primary_key) for c in self.columns])

    def expand(self, c: Compiler) -> list[MigrationStep]:
        from zdm.oracle import sa_table

        table = sa_table(self.model_table())
        drop = sa.schema.DropTable(table, if_exists=True)
        return [MigrationStep(Phase.EXPANDING, self.describe(),
                              forward=[Statement(c.dialect.sql(sa.schema.CreateTable(table)))],
                              compensate=[Statement(c.dialect.sql(drop))])]

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: Dialect) -> None:
        if phase is Phase.EXPANDING:
            schema.add_table(self.model_table())
        elif phase is Phase.ROLLED_BACK:
            schema.drop_table(self.table)
