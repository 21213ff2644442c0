"""create_index: built before the new app needs it, without blocking writes.

expand   CREATE [UNIQUE] INDEX CONCURRENTLY on PostgreSQL (outside a transaction; a leftover
         INVALID index of an earlier failed try is dropped first); a plain CREATE INDEX on SQLite.
         A unique index first checks for duplicates and names them.
contract nothing.
"""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa
from pydantic import Field

from zdm.model import Index, Schema
from zdm.operations.base import Compiler, Identifier, Operation
from zdm.plan import MigrationStep, Phase, check_action


def existing_indexes(c: Compiler, table: str) -> set[str]:
    if c.connection is None or not sa.inspect(c.connection).has_table(table):
        return set()
    inspector = sa.inspect(c.connection)
    return {ix["name"] for ix in inspector.get_indexes(table)} | {
        u["name"] for u in inspector.get_unique_constraints(table) if u["name"]}


def duplicates(c: Compiler, table: str, columns: list[str]) -> str:
    """SQL naming up to five duplicated values of ``columns`` (NULLs never collide)."""
    cols = [sa.column(n) for n in columns]
    query = (sa.select(*cols, sa.func.count().label("rows")).select_from(sa.table(table))
             .where(*[col.is_not(None) for col in cols]).group_by(*cols).having(sa.func.count() > 1).limit(5))
    return c.dialect.sql(query)


class CreateIndex(Operation):
    op: Literal["create_index"] = "create_index"
    name: Identifier
    columns: list[Identifier] = Field(min_length=1)
    unique: bool = False

    def describe(self) -> str:
        kind = "unique index" if self.unique else "index"
        return f"create {kind} {self.name} on {self.table} ({', '.join(self.columns)})"

    def check(self, schema: Schema) -> list[str]:
        return self.column_check(schema, *self.columns)

    def expand(self, c: Compiler) -> list[MigrationStep]:
        if self.name in existing_indexes(c, self.table):
            raise ValueError(f"an index or constraint named {self.name!r} already exists on {self.table!r}")
        d = c.dialect
        forward: list[str | dict] = []
        if self.unique:
            forward.append(check_action(duplicates(c, self.table, self.columns),
                                        f"duplicate values for unique index {self.name}"))
        forward += d.create_index(self.name, self.table, self.columns, unique=self.unique)
        return [MigrationStep(Phase.EXPANDING, self.describe(), forward=forward,
                              compensate=d.drop_index(self.name, self.table),
                              transactional=not d.concurrent_indexes)]

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: str) -> None:
        table = schema.table(self.table)
        if phase is Phase.EXPANDING:
            table.indexes[self.name] = Index(tuple(self.columns), self.unique)
        elif phase is Phase.ROLLED_BACK:
            table.indexes.pop(self.name, None)
