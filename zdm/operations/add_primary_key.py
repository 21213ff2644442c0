"""add_primary_key: a primary key for a table that has none, without a long lock.

``ALTER TABLE ... ADD PRIMARY KEY (id)`` builds the index and checks NOT NULL under ACCESS
EXCLUSIVE, scanning the table twice while every query waits. zdm splits it (PostgreSQL docs, ALTER
TABLE: "ADD table_constraint_definition ... USING INDEX", and SET NOT NULL trusting a validated
CHECK since PostgreSQL 12):

expand   sample duplicates named, if any; a unique index on the columns, built ``CONCURRENTLY``
         (writes go on; from now on a duplicate is refused); NULL refused in each nullable column
         by ``CHECK (col IS NOT NULL) NOT VALID`` (brief lock, no scan). SQLite: a unique index and
         triggers refusing NULL.
migrate  VALIDATE each check (SHARE UPDATE EXCLUSIVE: reads and writes go on).
contract SET NOT NULL (no scan, the check proves it), the checks dropped, then ``ADD CONSTRAINT
         <name> PRIMARY KEY USING INDEX`` (brief; the index takes the name). SQLite: a rebuild
         with the key in its CREATE TABLE (every row copied and checked), the index dropped.
rollback the checks (or triggers) and the index dropped: the table is as it was.
"""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa
from pydantic import Field

from zdm.actions import Action
from zdm.dialects import Dialect, object_name
from zdm.model import Index, Schema
from zdm.operations.base import Compiler, Identifier, Operation
from zdm.operations.common import no_duplicates, no_rows_where
from zdm.plan import MigrationStep, Phase


class AddPrimaryKey(Operation):
    op: Literal["add_primary_key"] = "add_primary_key"
    columns: list[Identifier] = Field(min_length=1)
    #: The constraint's name (default: ``<table>_pkey``, PostgreSQL's own choice).
    name: Identifier | None = None

    def describe(self) -> str:
        return f"add primary key {self.key_name} on {self.table} ({', '.join(self.columns)})"

    @property
    def key_name(self) -> str:
        return self.name or f"{self.table}_pkey"[:63]

    def touches(self) -> set[tuple[str, str]]:
        return {(self.table, column) for column in self.columns}

    def check(self, schema: Schema) -> list[str]:
        if errors := self.column_check(schema, *self.columns):
            return errors
        table = schema.table(self.table)
        if table.primary_key:
            return [f"table {self.table!r} already has a primary key ({', '.join(table.primary_key)})"]
        if len(set(self.columns)) != len(self.columns):
            return [f"a column is named twice in the primary key of {self.table!r}"]
        return []

    def _index(self, c: Compiler) -> str:
        return object_name("zdm_pk", self.sync_name(c.plan_id))

    def _nullable(self, schema: Schema) -> list[str]:
        table = schema.table(self.table)
        return [column for column in self.columns if table.column(column).nullable]

    def _rule(self, c: Compiler, column: str) -> tuple[list[Action], list[Action], list[Action]]:
        return c.dialect.refuse_nulls(self.sync_name(c.plan_id, column), self.table, column)

    # -- phases -------------------------------------------------------------------------------
    def expand(self, c: Compiler) -> list[MigrationStep]:
        d = c.dialect
        duplicates = no_duplicates(c, self.table, self.columns, f"duplicate values for the primary key of {self.table}")
        steps = [MigrationStep(
            Phase.EXPANDING, f"unique index {self._index(c)} on {self.table} ({', '.join(self.columns)})",
            forward=[duplicates, *d.create_index(self._index(c), self.table, self.columns, unique=True)],
            compensate=d.drop_index(self._index(c), self.table), transactional=not d.concurrent_indexes)]
        for column in self._nullable(c.schema):
            add, _validate, drop = self._rule(c, column)
            steps.append(MigrationStep(Phase.EXPANDING, f"refuse NULL in {self.table}.{column} (NOT VALID)",
                                       forward=[*drop, *add], compensate=drop))
        return steps

    def migrate(self, c: Compiler) -> list[MigrationStep]:
        steps = []
        for column in self._nullable(c.schema):
            nulls = no_rows_where(c, self.table, sa.column(column).is_(None),
                                  f"NULL in {self.table}.{column}, which the primary key refuses", column)
            _add, validate, drop = self._rule(c, column)
            steps.append(MigrationStep(Phase.MIGRATING, f"no NULL left in {self.table}.{column}",
                                       forward=[nulls, *validate], compensate=drop,
                                       transactional=not c.dialect.not_valid_constraints))
        return steps

    def contract(self, c: Compiler) -> list[MigrationStep]:
        d = c.dialect
        nullable = self._nullable(c.schema)
        forward: list[Action] = []
        if nullable:
            forward += d.alter_columns(self.table, {column: {"nullable": False} for column in nullable})
            for column in nullable:
                forward += self._rule(c, column)[2]
        forward += d.primary_key_using_index(self.table, self.key_name, self._index(c), self.columns)
        return [MigrationStep(Phase.CONTRACTING, self.describe(), forward=d.combine(forward))]

    # -- reference model ------------------------------------------------------------------------
    def apply_to_model(self, schema: Schema, phase: Phase, dialect: Dialect) -> None:
        """The window's rules as zdm-named index and checks (out of the catalogue), then the key."""
        table = schema.table(self.table)
        index = f"zdm_pk_{self.table}"
        checks = {f"zdm_nn_{self.table}_{column}": f"{column} IS NOT NULL" for column in self._nullable(schema)}
        if phase is Phase.EXPANDING:
            table.indexes[index] = Index(tuple(self.columns), unique=True)
            table.checks.update(checks)
        elif phase in (Phase.CONTRACTING, Phase.ROLLED_BACK):
            table.indexes.pop(index, None)
            for name in [name for name in table.checks if name.startswith(f"zdm_nn_{self.table}_")]:
                column = table.checks.pop(name).removesuffix(" IS NOT NULL")
                if phase is Phase.CONTRACTING:
                    table.column(column).nullable = False
            if phase is Phase.CONTRACTING:
                for column in self.columns:
                    table.column(column).primary_key = True
