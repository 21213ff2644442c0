"""drop_index: only at contract, once no deployed app version relies on it for speed.

contract DROP INDEX CONCURRENTLY on PostgreSQL (outside a transaction); DROP INDEX on SQLite.
"""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa

from zdm.dialects import Dialect
from zdm.model import Schema
from zdm.operations.base import Compiler, Identifier, Operation
from zdm.operations.common import existing_indexes
from zdm.plan import MigrationStep, Phase


class DropIndex(Operation):
    op: Literal["drop_index"] = "drop_index"
    name: Identifier

    def describe(self) -> str:
        return f"drop index {self.name} on {self.table}"

    def check_live(self, c: Compiler) -> list[str]:
        if c.connection is None:
            return []
        if self.name not in existing_indexes(c.connection, self.table):
            return [f"table {self.table!r} has no index {self.name!r}"]
        if c.dialect.unique_constraints and self.name in {
                u["name"] for u in sa.inspect(c.connection).get_unique_constraints(self.table)}:
            return [f"index {self.name!r} backs a constraint of {self.table!r}: use drop_constraint"]
        return []

    def contract(self, c: Compiler) -> list[MigrationStep]:
        d = c.dialect
        return [MigrationStep(Phase.CONTRACTING, self.describe(), forward=d.drop_index(self.name, self.table),
                              transactional=not d.concurrent_indexes)]

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: Dialect) -> None:
        if phase is Phase.CONTRACTING:
            schema.table(self.table).indexes.pop(self.name, None)

    def touches(self) -> set[tuple[str, str]]:
        return set()
