"""rename_table: the new app uses the new name while the old app keeps using the old one.

expand   rename the table, and put a view under the old name. PostgreSQL: a simple view is
         updatable as it is. SQLite: INSTEAD OF triggers make it so (inserts get the table's
         defaults). Undone by dropping the view and renaming back.
contract drop the view (and its triggers).
"""

from __future__ import annotations

from typing import Literal

from zdm.dialects import object_name
from zdm.model import Schema
from zdm.operations.base import Compiler, Identifier, Operation
from zdm.plan import MigrationStep, Phase


class RenameTable(Operation):
    op: Literal["rename_table"] = "rename_table"
    new_name: Identifier

    def describe(self) -> str:
        return f"rename table {self.table} to {self.new_name}"

    def check(self, schema: Schema) -> list[str]:
        if errors := super().check(schema):
            return errors
        return [f"table {self.new_name!r} already exists"] if schema.has_table(self.new_name) else []

    def touches(self) -> set[tuple[str, str]]:
        return set()

    def _view(self, c: Compiler) -> tuple[list[str], list[str]]:
        """(create, drop) the view under the old name, with SQLite's write triggers."""
        q = c.dialect.quote
        old, new = q(self.table), q(self.new_name)
        create = [f"CREATE VIEW {old} AS SELECT * FROM {new}"]
        drop = [f"DROP VIEW IF EXISTS {old}"]
        if c.is_postgres:
            return create, drop
        table = c.schema.table(self.table)
        if not table.primary_key:
            raise ValueError(f"table {self.table!r} has no primary key, which SQLite's view triggers need")
        columns = list(table.columns)
        defaults = {n: c.reflected_column(self.table, n).get("default") for n in columns}
        values = [f"coalesce(NEW.{q(n)}, {defaults[n]})" if defaults[n] else f"NEW.{q(n)}" for n in columns]
        row = " AND ".join(f"{q(k)} = OLD.{q(k)}" for k in table.primary_key)
        names = {part: q(object_name("zdm_tg", self.sync_name(c.plan_id, "view", part))) for part in ("i", "u", "d")}
        create += [
            f"CREATE TRIGGER {names['i']} INSTEAD OF INSERT ON {old} BEGIN INSERT INTO {new} "
            f"({', '.join(map(q, columns))}) VALUES ({', '.join(values)}); END",
            f"CREATE TRIGGER {names['u']} INSTEAD OF UPDATE ON {old} BEGIN UPDATE {new} SET "
            f"{', '.join(f'{q(n)} = NEW.{q(n)}' for n in columns)} WHERE {row}; END",
            f"CREATE TRIGGER {names['d']} INSTEAD OF DELETE ON {old} BEGIN DELETE FROM {new} WHERE {row}; END",
        ]
        return create, [*(f"DROP TRIGGER IF EXISTS {n}" for n in names.values()), *drop]

    def expand(self, c: Compiler) -> list[MigrationStep]:
        q = c.dialect.quote
        create, drop = self._view(c)
        rename = f"ALTER TABLE {q(self.table)} RENAME TO {q(self.new_name)}"
        back = f"ALTER TABLE {q(self.new_name)} RENAME TO {q(self.table)}"
        return [MigrationStep(Phase.EXPANDING, f"{self.describe()}; a view keeps the old name",
                              forward=[rename, *create], compensate=[*drop, back])]

    def contract(self, c: Compiler) -> list[MigrationStep]:
        return [MigrationStep(Phase.CONTRACTING, f"drop the view {self.table}", forward=self._view(c)[1])]

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: str) -> None:
        if phase is Phase.EXPANDING:
            schema.rename_table(self.table, self.new_name)
            schema.aliases[self.table] = self.new_name
        elif phase in (Phase.CONTRACTING, Phase.ROLLED_BACK):
            schema.aliases.pop(self.table, None)
            if phase is Phase.ROLLED_BACK:
                schema.rename_table(self.new_name, self.table)
