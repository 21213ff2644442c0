"""rename_column: the old app keeps the old name, the new app uses the new one, until complete.

The dual-column path (see dual_column.py) with plain copies both ways:

expand   add the new column and dual-write triggers (SQLite: relax the old NOT NULL).
migrate  backfill; copy the old column's indexes and unique constraints.
contract drop the triggers and the old column; the new column takes its NOT NULL, default
         and index names.
"""

from __future__ import annotations

from typing import Literal

from zdm.operations.base import Identifier
from zdm.operations.dual_column import DualColumn


class RenameColumn(DualColumn):
    op: Literal["rename_column"] = "rename_column"
    column: Identifier
    new_name: Identifier

    def describe(self) -> str:
        return f"rename {self.table}.{self.column} to {self.new_name}"

    @property
    def shadow(self) -> str:
        return self.new_name

    @property
    def final_name(self) -> str:
        return self.new_name
