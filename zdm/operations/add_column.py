"""add_column: a new column the old app ignores, optionally derived from an existing one.

expand   ADD COLUMN, nullable or with a constant default (metadata-only on PostgreSQL 11+, no
         rewrite); with ``from_column``, a trigger keeps it equal to ``transform(from_column)``
         for rows the old app writes.
migrate  with ``from_column``: backfill existing rows in key batches.
contract drop the trigger; the column now belongs to the new app alone.
"""

from __future__ import annotations

from typing import Any, Literal

import sqlalchemy as sa
from pydantic import model_validator

from zdm import transforms
from zdm.db import sql_text
from zdm.dialects import Dialect, Sync
from zdm.model import Column, ColumnType, Link, Schema
from zdm.operations.base import Compiler, Identifier, Operation, default_problem, type_problems
from zdm.plan import Backfill, MigrationStep, Phase


class AddColumn(Operation):
    op: Literal["add_column"] = "add_column"
    column: Identifier
    type: ColumnType
    nullable: bool = True
    default: Any = None
    from_column: Identifier | None = None
    transform: str = "copy"

    @model_validator(mode="after")
    def _consistent(self) -> AddColumn:
        transforms.get(self.transform)
        if not self.type.declared:
            raise ValueError(f"zdm copies columns of type {self.type.name} but does not create them; "
                             "pick another type")
        if not self.nullable and self.default is None:
            raise ValueError(
                "a NOT NULL column needs a default (or add it nullable, then use set_not_null)"
            )
        if self.transform != "copy" and self.from_column is None:
            raise ValueError("transform needs from_column")
        return self

    def describe(self) -> str:
        source = f" from {self.transform}({self.from_column})" if self.from_column else ""
        return f"add column {self.table}.{self.column} {self.type.value}{source}"

    def check(self, schema: Schema) -> list[str]:
        if errors := super().check(schema):
            return errors
        table = schema.table(self.table)
        errors = []
        if self.column in table.columns:
            errors.append(f"table {self.table!r} already has a column {self.column!r}")
        if self.from_column is not None:
            if self.from_column not in table.columns:
                errors.append(f"table {self.table!r} has no column {self.from_column!r}")
            elif not table.primary_key:
                errors.append(f"table {self.table!r} has no primary key; the backfill needs one")
        if problem := default_problem(self.default, self.type):
            errors.append(problem)
        return errors

    def check_live(self, c: Compiler) -> list[str]:
        return type_problems(c, self.type)

    # -- phases -------------------------------------------------------------------------------
    def _default_sql(self, c: Compiler) -> str | None:
        if self.default is None:
            return None
        return c.dialect.literal(self.type.coerce(self.default), self.type)

    def _sync(self, c: Compiler) -> Sync:
        assert self.from_column is not None
        return Sync(
            name=self.sync_name(c.plan_id, self.column),
            table=self.table,
            key=tuple(c.schema.table(self.table).primary_key),
            a=self.from_column,
            b=self.column,
            up=transforms.get(self.transform),
            down=None,
            b_default=self._default_sql(c),
        )

    def expand(self, c: Compiler) -> list[MigrationStep]:
        d = c.dialect
        default = self._default_sql(c)
        column = sa.Column(
            self.column,
            d.column_type(self.type),
            nullable=self.nullable,
            server_default=sql_text(default) if default is not None else None,
        )
        steps = [
            MigrationStep(
                Phase.EXPANDING,
                f"add column {self.table}.{self.column}",
                forward=d.add_column(self.table, column),
                compensate=d.drop_column(self.table, self.column),
            )
        ]
        if self.from_column:
            create, drop = d.sync_triggers(self._sync(c))
            steps.append(MigrationStep(Phase.EXPANDING, f"trigger {self.column} = "
                                       f"{self.transform}({self.from_column})", forward=create,
                                       compensate=drop))
        return steps

    def migrate(self, c: Compiler) -> list[MigrationStep]:
        if not self.from_column:
            return []
        d = c.dialect
        derived = transforms.get(self.transform).sql(sa.column(self.from_column))
        return [
            MigrationStep(
                Phase.MIGRATING,
                f"backfill {self.table}.{self.column} from {self.transform}({self.from_column})",
                backfill=Backfill(
                    table=self.table,
                    key=c.schema.table(self.table).primary_key,
                    assignments={self.column: d.sql(derived)},
                    pending=d.sql(sa.and_(sa.column(self.from_column).is_not(None),
                                         sa.column(self.column).is_distinct_from(derived))),
                ),
            )
        ]

    def contract(self, c: Compiler) -> list[MigrationStep]:
        if not self.from_column:
            return []
        _, drop = c.dialect.sync_triggers(self._sync(c))
        return [MigrationStep(Phase.CONTRACTING, f"drop trigger for {self.column}", forward=drop)]

    # -- reference model ------------------------------------------------------------------------
    @property
    def existing_column(self) -> str | None:
        return self.from_column  # ``column`` is the new one

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: Dialect) -> None:
        table = schema.table(self.table)
        transform = transforms.get(self.transform)
        if phase is Phase.EXPANDING:
            table.add_column(Column(self.column, schema.resolve(self.type), nullable=self.nullable,
                                    default=self.default))
            if self.from_column:
                table.links.append(Link(self.from_column, self.column, up=transform.python))
        elif phase is Phase.MIGRATING and self.from_column:
            for row in table.rows:
                if row[self.from_column] is not None:
                    row[self.column] = self.type.coerce(transform.apply(row[self.from_column]))
        elif phase in (Phase.CONTRACTING, Phase.ROLLED_BACK):
            table.links = [k for k in table.links if k.b != self.column]
            if phase is Phase.ROLLED_BACK:
                table.drop_column(self.column)
