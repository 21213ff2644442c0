"""drop_table: only at contract: the old app may still read the table until then.

contract DROP TABLE.
"""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa

from zdm.actions import Statement
from zdm.dialects import Dialect
from zdm.model import Schema
from zdm.operations.base import Compiler, Operation
from zdm.plan import MigrationStep, Phase


class DropTable(Operation):
    op: Literal["drop_table"] = "drop_table"
    deletes_data = True

    def describe(self) -> str:
        return f"drop table {self.table}"

    def warnings(self, schema: Schema) -> list[str]:
        if not schema.has_table(self.table):
            return []
        rows = schema.table(self.table).row_count()
        return [f"dropping {self.table} deletes its data{f' ({rows} rows)' if rows else ''} at complete"]

    def touches(self) -> set[tuple[str, str]]:
        return set()

    def contract(self, c: Compiler) -> list[MigrationStep]:
        drop = sa.schema.DropTable(sa.Table(self.table, sa.MetaData()))
        return [MigrationStep(Phase.CONTRACTING, self.describe(), forward=[Statement(c.dialect.sql(drop))])]

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: Dialect) -> None:
        if phase is Phase.CONTRACTING:
            schema.drop_table(self.table)
