"""rename_column: the old app keeps the old name, the new app uses the new one, until complete.

The dual-column path (see dual_column.py) with plain copies both ways:

expand   add the new column and dual-write triggers (SQLite: relax the old NOT NULL).
migrate  backfill; copy the old column's indexes onto the new one, for the new app's queries.
contract drop the triggers and the new column, and rename the old one in place: it keeps
         everything it had (default, NOT NULL, comment, constraints, foreign keys both ways,
         indexes, grants, sequence, views) and its position in the table.
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

    @property
    def keeps_old_column(self) -> bool:
        return True
