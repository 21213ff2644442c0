"""rename_table: the new app uses the new name while the old app keeps using the old one.

expand   rename the table, and put a view under the old name. PostgreSQL: a simple view is
         updatable as it is. SQLite: INSTEAD OF triggers make it so (inserts get the table's
         defaults). Undone by dropping the view and renaming back.
contract drop the view (and its triggers).
"""

from __future__ import annotations

from typing import Literal

from zdm.actions import Action
from zdm.dialects import Dialect
from zdm.model import Schema
from zdm.operations.base import Compiler, Identifier, Operation
from zdm.plan import MigrationStep, Phase


class RenameTable(Operation):
    op: Literal["rename_table"] = "rename_table"
    new_name: Identifier

    def changed_tables(self, c: Compiler) -> set[str]:
        return {self.table, self.new_name}

    def describe(self) -> str:
        return f"rename table {self.table} to {self.new_name}"

    def check(self, schema: Schema) -> list[str]:
        if errors := super().check(schema):
            return errors
        return [f"table {self.new_name!r} already exists"] if schema.has_table(self.new_name) else []

    def creates(self) -> list[str]:
        return [self.new_name]

    def touches(self) -> set[tuple[str, str]]:
        return set()

    def check_live(self, c: Compiler) -> list[str]:
        if not c.dialect.updatable_views and not c.schema.table(self.table).primary_key:
            return [f"table {self.table!r} has no primary key, which the triggers making the view under its old "
                    "name writable need"]
        return []

    def _alias(self, c: Compiler) -> tuple[list[Action], list[Action]]:
        """(create, drop) the view under the old name, through which the old app keeps writing."""
        table = c.schema.table(self.table)
        defaults = {n: c.reflected_column(self.table, n).get("default") for n in table.columns}
        return c.dialect.table_alias(self.sync_name(c.plan_id), self.table, self.new_name, defaults,
                                     table.primary_key)

    def expand(self, c: Compiler) -> list[MigrationStep]:
        d = c.dialect
        create, drop = self._alias(c)
        return [MigrationStep(Phase.EXPANDING, f"{self.describe()}; a view keeps the old name",
                              forward=[*d.rename_table(self.table, self.new_name), *create],
                              compensate=[*drop, *d.rename_table(self.new_name, self.table)])]

    def contract(self, c: Compiler) -> list[MigrationStep]:
        return [MigrationStep(Phase.CONTRACTING, f"drop the view {self.table}", forward=self._alias(c)[1])]

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: Dialect) -> None:
        if phase is Phase.EXPANDING:
            schema.rename_table(self.table, self.new_name)
            schema.aliases[self.table] = self.new_name
        elif phase in (Phase.CONTRACTING, Phase.ROLLED_BACK):
            schema.aliases.pop(self.table, None)
            if phase is Phase.ROLLED_BACK:
                schema.rename_table(self.new_name, self.table)
