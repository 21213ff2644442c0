"""add_foreign_key: a foreign key, added without scanning both tables under lock.

expand   PostgreSQL: ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID (brief SHARE ROW EXCLUSIVE
         lock on both tables; new writes are checked from now on).
migrate  name sample orphan rows, if any; then PostgreSQL: VALIDATE CONSTRAINT (no write lock);
         SQLite: a rebuild with the foreign key (enforced where the app turns foreign_keys on).
"""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa
from pydantic import Field, model_validator

from zdm.actions import DataCheck
from zdm.dialects import Dialect
from zdm.model import ForeignKey, Schema
from zdm.operations.base import Compiler, Identifier, Operation
from zdm.plan import MigrationStep, Phase


class AddForeignKey(Operation):
    op: Literal["add_foreign_key"] = "add_foreign_key"
    name: Identifier
    columns: list[Identifier] = Field(min_length=1)
    ref_table: Identifier
    ref_columns: list[Identifier] = Field(min_length=1)
    on_delete: Literal["CASCADE", "SET NULL", "RESTRICT", "NO ACTION"] | None = None

    @model_validator(mode="after")
    def _pairs(self) -> AddForeignKey:
        if len(self.columns) != len(self.ref_columns):
            raise ValueError("columns and ref_columns must have the same length")
        return self

    def describe(self) -> str:
        return (f"add foreign key {self.name}: {self.table}({', '.join(self.columns)}) -> "
                f"{self.ref_table}({', '.join(self.ref_columns)})")

    def creates(self) -> list[str]:
        return [self.name]

    def check(self, schema: Schema) -> list[str]:
        if errors := self.column_check(schema, *self.columns):
            return errors
        if not schema.has_table(self.ref_table):
            return [f"table {self.ref_table!r} does not exist"]
        missing = [c for c in self.ref_columns if c not in schema.table(self.ref_table).columns]
        return [f"table {self.ref_table!r} has no column {missing[0]!r}"] if missing else []

    def _orphans(self, c: Compiler) -> DataCheck:
        key = c.schema.table(self.table).primary_key
        names = [*key, *[n for n in self.columns if n not in key]]
        child = sa.table(self.table, *[sa.column(n) for n in names])
        parent = sa.table(self.ref_table, *[sa.column(n) for n in self.ref_columns])
        matches = sa.and_(*[parent.c[p] == child.c[ch] for ch, p in zip(self.columns, self.ref_columns, strict=True)])
        orphan = sa.and_(*[child.c[n].is_not(None) for n in self.columns],
                         ~sa.exists().select_from(parent).where(matches))
        query = sa.select(*[child.c[n] for n in names]).where(orphan).limit(5)
        return DataCheck(c.dialect.sql(query), f"rows of {self.table} point to no row of {self.ref_table}")

    def _add(self, c: Compiler) -> list:
        return c.dialect.add_foreign_key(self.table, self.name, self.columns, self.ref_table, self.ref_columns,
                                         self.on_delete)

    def expand(self, c: Compiler) -> list[MigrationStep]:
        d = c.dialect
        if not d.not_valid_constraints:
            return []  # added in migrate, once no orphan is left
        return [MigrationStep(Phase.EXPANDING, f"{self.describe()} (NOT VALID)", forward=self._add(c),
                              compensate=d.drop_constraint(self.table, self.name))]

    def migrate(self, c: Compiler) -> list[MigrationStep]:
        d = c.dialect
        if d.not_valid_constraints:
            return [MigrationStep(Phase.MIGRATING, f"validate {self.name}",
                                  forward=[self._orphans(c), *d.validate_constraint(self.table, self.name)])]
        return [MigrationStep(Phase.MIGRATING, self.describe(), forward=[self._orphans(c), *self._add(c)],
                              compensate=d.drop_constraint(self.table, self.name))]

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: Dialect) -> None:
        """Enforced from expand where it is added NOT VALID (new writes are checked), else from migrate."""
        table = schema.table(self.table)
        added_in = Phase.EXPANDING if dialect.not_valid_constraints else Phase.MIGRATING
        if phase is added_in:
            table.foreign_keys[self.name] = ForeignKey(tuple(self.columns), self.ref_table, tuple(self.ref_columns),
                                                       None if self.on_delete == "NO ACTION" else self.on_delete)
        elif phase is Phase.ROLLED_BACK:
            table.foreign_keys.pop(self.name, None)
