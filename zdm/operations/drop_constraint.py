"""drop_constraint: only at contract, once no deployed app relies on what it refuses.

contract PostgreSQL: DROP CONSTRAINT. SQLite: a rebuild without it (or DROP INDEX, when the
         "constraint" is a unique index).
"""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa

from zdm.dialects.sqlite import rebuild_action
from zdm.model import Schema
from zdm.operations.base import Compiler, Identifier, Operation
from zdm.operations.create_index import existing_indexes
from zdm.plan import MigrationStep, Phase


def existing_constraints(c: Compiler, table: str) -> set[str]:
    """Named constraints of the live table (on SQLite a unique index stands for one too)."""
    assert c.connection is not None
    inspector = sa.inspect(c.connection)
    if not inspector.has_table(table):
        return set()
    found = {check["name"] for check in inspector.get_check_constraints(table)}
    found |= {key["name"] for key in inspector.get_foreign_keys(table)}
    found.add(inspector.get_pk_constraint(table).get("name"))
    return (found | existing_indexes(c, table)) - {None}


def unique_constraints(c: Compiler, table: str) -> set[str]:
    """Names of the table's UNIQUE constraints (on SQLite, part of the CREATE TABLE: no DROP INDEX drops them)."""
    if c.connection is None or not sa.inspect(c.connection).has_table(table):
        return set()
    return {u["name"] for u in sa.inspect(c.connection).get_unique_constraints(table) if u["name"]}


class DropConstraint(Operation):
    op: Literal["drop_constraint"] = "drop_constraint"
    name: Identifier

    def describe(self) -> str:
        return f"drop constraint {self.name} on {self.table}"

    def contract(self, c: Compiler) -> list[MigrationStep]:
        d = c.dialect
        if c.connection is not None and self.name not in existing_constraints(c, self.table):
            # PostgreSQL's DROP CONSTRAINT IF EXISTS would drop nothing and call the plan complete.
            raise ValueError(f"table {self.table!r} has no constraint {self.name!r}")
        if c.is_postgres:
            forward = [d.drop_constraint(self.table, self.name)]
        elif self.name in existing_indexes(c, self.table) - unique_constraints(c, self.table):
            forward = d.drop_index(self.name, self.table)
        else:
            forward = [rebuild_action(self.table, drop_constraints=[self.name])]
        return [MigrationStep(Phase.CONTRACTING, self.describe(), forward=forward)]

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: str) -> None:
        if phase is Phase.CONTRACTING:
            table = schema.table(self.table)
            for catalogue in (table.uniques, table.checks, table.foreign_keys, table.indexes):
                catalogue.pop(self.name, None)
