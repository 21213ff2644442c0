"""drop_index: only at contract, once no deployed app version relies on it for speed.

contract DROP INDEX CONCURRENTLY on PostgreSQL (outside a transaction); DROP INDEX on SQLite.
"""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa

from zdm.model import Schema
from zdm.operations.base import Compiler, Identifier, Operation
from zdm.operations.create_index import existing_indexes
from zdm.plan import MigrationStep, Phase


class DropIndex(Operation):
    op: Literal["drop_index"] = "drop_index"
    name: Identifier

    def describe(self) -> str:
        return f"drop index {self.name} on {self.table}"

    def contract(self, c: Compiler) -> list[MigrationStep]:
        if c.connection is not None and self.name not in existing_indexes(c, self.table):
            raise ValueError(f"table {self.table!r} has no index {self.name!r}")
        if c.is_postgres and c.connection is not None and self.name in {
                u["name"] for u in sa.inspect(c.connection).get_unique_constraints(self.table)}:
            raise ValueError(f"index {self.name!r} backs a constraint of {self.table!r}: use drop_constraint")
        d = c.dialect
        return [MigrationStep(Phase.CONTRACTING, self.describe(), forward=d.drop_index(self.name, self.table),
                              transactional=not d.concurrent_indexes)]

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: str) -> None:
        if phase is Phase.CONTRACTING:
            schema.table(self.table).indexes.pop(self.name, None)

    def touches(self) -> set[tuple[str, str]]:
        return set()
