"""set_not_null: the column gets NOT NULL without a long lock, and old apps writing NULL keep working.

expand   with ``fill``: a trigger writes ``fill`` wherever an app writes NULL (the old app may
         still do so), and notes the row's key in a zdm-owned table.
migrate  with ``fill``: backfill the NULL rows in key batches, noting their keys too. Then check that no NULL is left,
         naming sample keys. PostgreSQL: ``CHECK (col IS NOT NULL) NOT VALID`` (brief lock),
         then VALIDATE (SHARE UPDATE EXCLUSIVE: reads and writes go on).
contract PostgreSQL: SET NOT NULL, which trusts the validated check (no scan), then drop the
         check, the fill trigger and the table of keys. SQLite: check again, then a rebuild with NOT NULL.
rollback the rows whose NULL became ``fill`` and still hold it are NULL again (the table of keys
         says which), so a rollback gives back the NULLs the old app wrote or had: in batches
         over the noted keys, each its own short transaction with a checkpoint, like a backfill.
"""

from __future__ import annotations

from typing import Any, Literal

import sqlalchemy as sa

from zdm.actions import Action, DataCheck
from zdm.dialects import Dialect, object_name
from zdm.introspect import PLAN_TABLE_PREFIX
from zdm.model import Schema
from zdm.operations.base import Compiler, Identifier, Operation
from zdm.operations.common import no_rows_where
from zdm.plan import Backfill, MigrationStep, Phase


class SetNotNull(Operation):
    op: Literal["set_not_null"] = "set_not_null"
    column: Identifier
    #: Written in place of NULL, in existing rows and in new writes until complete.
    fill: Any = None

    def describe(self) -> str:
        fill = f" (NULL becomes {self.fill!r})" if self.fill is not None else ""
        return f"set {self.table}.{self.column} NOT NULL{fill}"

    def check(self, schema: Schema) -> list[str]:
        if errors := self.column_check(schema, self.column):
            return errors
        column = schema.table(self.table).column(self.column)
        if not column.nullable:
            return [f"{self.table}.{self.column} is already NOT NULL"]
        if self.fill is not None:
            try:
                column.type.from_plan(self.fill)
            except (TypeError, ValueError, OverflowError) as exc:
                return [f"fill {self.fill!r} is not a valid {column.type.value} ({exc})"]
            if not schema.table(self.table).primary_key:
                return [f"table {self.table!r} has no primary key; the backfill needs one"]
        return []

    # -- phases -------------------------------------------------------------------------------
    def _name(self, c: Compiler) -> str:
        return self.sync_name(c.plan_id, self.column, "nn")

    def _check_name(self, schema: Schema) -> str:
        """The model's name for the rule that refuses NULL before contract (zdm-owned, so never compared)."""
        return f"zdm_nn_{self.table}_{self.column}"

    def _record(self, c: Compiler) -> str:
        """The zdm-owned table of the keys of the rows whose NULL became ``fill``."""
        return object_name(PLAN_TABLE_PREFIX.rstrip("_"), self._name(c))

    def _fill_sql(self, c: Compiler) -> str:
        column_type = c.schema.table(self.table).column(self.column).type
        return c.dialect.literal(column_type.coerce(self.fill), column_type)

    def _no_nulls(self, c: Compiler) -> DataCheck:
        return no_rows_where(c, self.table, sa.column(self.column).is_(None),
                             f"{self.table}.{self.column} is NULL in rows (give `fill`, or fix them)")

    def expand(self, c: Compiler) -> list[MigrationStep]:
        if self.fill is None:
            return []
        key = tuple(c.schema.table(self.table).primary_key)
        record = self._record(c)
        create, drop, index = c.dialect.fill_record(record, self.table, key)
        give_back = Backfill(table=self.table, key=list(key), assignments={self.column: "NULL"},
                             pending=c.dialect.holds(self.column, self._fill_sql(c),
                                                     c.schema.table(self.table).column(self.column).type),
                             walk=record, prepare=index)
        triggers, untriggers = c.dialect.fill_triggers(self._name(c), self.table, key, self.column, self._fill_sql(c),
                                                       record)
        # Undone newest first: the trigger goes, then the noted rows still holding the fill are NULL
        # again in key batches (a NULL given back stays NULL), then the table of their keys goes.
        return [MigrationStep(Phase.EXPANDING, f"table {record} of the rows whose NULL in {self.column} becomes "
                              f"{self.fill!r} (a rollback makes them NULL again)",
                              forward=create, compensate=drop, undo_backfill=give_back),
                MigrationStep(Phase.EXPANDING, f"trigger: NULL in {self.column} becomes {self.fill!r}",
                              forward=triggers, compensate=untriggers)]

    def _guarded(self, c: Compiler) -> bool:
        """A rule refuses NULL from migrate on: always without ``fill``; with it only where the fill
        trigger runs before the rule is checked (else the rule would refuse what the trigger fills)."""
        return self.fill is None or c.dialect.triggers_fill_before_checks

    def migrate(self, c: Compiler) -> list[MigrationStep]:
        d = c.dialect
        steps = []
        if self.fill is not None:
            steps.append(MigrationStep(Phase.MIGRATING, f"backfill NULL {self.table}.{self.column}", backfill=Backfill(
                table=self.table, key=c.schema.table(self.table).primary_key,
                assignments={self.column: self._fill_sql(c)}, pending=d.sql(sa.column(self.column).is_(None)),
                record=self._record(c))))
        if not self._guarded(c):
            no_null_left = MigrationStep(Phase.MIGRATING, f"no NULL left in {self.column}", forward=[self._no_nulls(c)])
            return [*steps, no_null_left]
        add, validate, drop = d.refuse_nulls(self._name(c), self.table, self.column)
        steps.append(MigrationStep(Phase.MIGRATING, f"refuse NULL in {self.column} from now on",
                                   forward=[self._no_nulls(c), *add], compensate=drop))
        if validate:
            steps.append(MigrationStep(Phase.MIGRATING, f"validate {self.column} IS NOT NULL", forward=validate))
        return steps

    def contract(self, c: Compiler) -> list[MigrationStep]:
        d = c.dialect
        forward: list[Action] = [] if self._guarded(c) else [self._no_nulls(c)]
        if self.fill is not None:
            key = tuple(c.schema.table(self.table).primary_key)
            forward += d.fill_triggers(self._name(c), self.table, key, self.column, self._fill_sql(c))[1]
            forward += d.fill_record(self._record(c), self.table, key)[1]
        # NOT NULL trusts the validated rule (no scan under lock on PostgreSQL), which then goes.
        forward += d.alter_columns(self.table, {self.column: {"nullable": False}})
        if self._guarded(c):
            forward += d.refuse_nulls(self._name(c), self.table, self.column)[2]
        return [MigrationStep(Phase.CONTRACTING, self.describe(), forward=forward)]

    # -- reference model ------------------------------------------------------------------------
    def filled_columns(self) -> list[str]:
        return [self.column] if self.fill is not None else []

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: Dialect) -> None:
        table = schema.table(self.table)
        if phase is Phase.EXPANDING and self.fill is not None:
            table.fills[self.column] = self.fill
        elif phase is Phase.MIGRATING:
            if self.fill is not None:
                column_type = table.column(self.column).type
                for row in table.rows:
                    if row[self.column] is None:
                        row[self.column] = column_type.coerce(self.fill)
                        table.filled.add((self.column, table.key_of(row)))
            table.checks[self._check_name(schema)] = f"{self.column} IS NOT NULL"  # refuses NULL from now on
        elif phase in (Phase.CONTRACTING, Phase.ROLLED_BACK):
            if phase is Phase.ROLLED_BACK and self.column in table.fills:  # the filled rows are NULL again
                value = table.column(self.column).type.coerce(table.fills[self.column])
                for row in table.rows:
                    if row[self.column] == value and (self.column, table.key_of(row)) in table.filled:
                        row[self.column] = None
            table.filled = {(column, key) for column, key in table.filled if column != self.column}
            table.fills.pop(self.column, None)
            table.checks.pop(self._check_name(schema), None)
            if phase is Phase.CONTRACTING:
                table.column(self.column).nullable = False
