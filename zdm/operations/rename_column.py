"""rename_column: the old app keeps the old name, the new app uses the new one, until complete.

expand   add the new column (nullable, no default) and dual-write triggers, so that a write to
         either column reaches the other; on PostgreSQL a NOT VALID ``IS NOT NULL`` check when
         the old column is NOT NULL; on SQLite the old column is relaxed to NULL (a rebuild) so
         the new app may omit it and the trigger fills it in.
migrate  backfill the new column in key batches (rows written since expand are already done);
         build a copy of every index and unique constraint of the old column on the new one
         (CONCURRENTLY on PostgreSQL). Uniqueness holds meanwhile: the triggers copy each write
         into the old column, whose unique index still stands.
contract drop the triggers and the old column; the new column takes the old one's default and
         NOT NULL (on PostgreSQL through the validated check, so no long scan under lock), and
         the index copies take the original names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa

from zdm import transforms
from zdm.dialects import Sync, object_name
from zdm.dialects.sqlite import rebuild_action
from zdm.model import Column, Link, Schema, Table
from zdm.operations.base import Compiler, Identifier, Operation
from zdm.plan import Backfill, MigrationStep, Phase

EXPANDING, MIGRATING, CONTRACTING = Phase.EXPANDING, Phase.MIGRATING, Phase.CONTRACTING


@dataclass(frozen=True)
class IndexCopy:
    """An index or unique constraint of the old column, rebuilt on the new one."""

    final: str  # the original name, which the copy takes at contract
    temporary: str  # a zdm-owned name while both columns exist
    columns: list[str]
    unique: bool
    constraint: bool  # a UNIQUE constraint rather than a plain index


class RenameColumn(Operation):
    op: Literal["rename_column"] = "rename_column"
    column: Identifier
    new_name: Identifier

    def describe(self) -> str:
        return f"rename {self.table}.{self.column} to {self.new_name}"

    def check(self, schema: Schema) -> list[str]:
        if errors := super().check(schema):
            return errors
        table = schema.table(self.table)
        if self.column not in table.columns:
            return [f"table {self.table!r} has no column {self.column!r}"]
        errors = []
        if self.new_name in table.columns:
            errors.append(f"table {self.table!r} already has a column {self.new_name!r}")
        if table.columns[self.column].primary_key:
            errors.append(f"{self.table}.{self.column} is part of the primary key; zdm does not rename keys")
        if not table.primary_key:
            errors.append(f"table {self.table!r} has no primary key; the backfill and triggers need one")
        return errors

    # -- phases -------------------------------------------------------------------------------
    def _sync(self, c: Compiler) -> Sync:
        table = c.schema.table(self.table)
        copy = transforms.get("copy")
        return Sync(
            name=self.sync_name(c.plan_id, self.new_name),
            table=self.table,
            key=tuple(table.primary_key),
            a=self.column,
            b=self.new_name,
            up=copy,
            down=copy,
            a_default=c.reflected_column(self.table, self.column).get("default"),
        )

    def _not_null(self, c: Compiler) -> bool:
        return not c.schema.table(self.table).column(self.column).nullable

    def expand(self, c: Compiler) -> list[MigrationStep]:
        d, q = c.dialect, c.dialect.quote
        added = sa.Column(self.new_name, c.live_type(self.table, self.column), nullable=True)
        steps = [
            MigrationStep(
                EXPANDING,
                f"add column {self.table}.{self.new_name}",
                forward=[d.add_column(self.table, added)],
                compensate=[f"ALTER TABLE {q(self.table)} DROP COLUMN {q(self.new_name)}"],
            )
        ]
        if self._not_null(c):
            if c.is_postgres:
                add, _, drop = d.not_null_check(self.table, self.new_name, self._check_name(c))
                steps.append(MigrationStep(EXPANDING, f"check {self.new_name} IS NOT NULL (NOT VALID)",
                                           forward=[add], compensate=[drop]))
            else:
                steps.append(MigrationStep(
                    EXPANDING, f"let the new app omit {self.table}.{self.column} (trigger fills it)",
                    forward=[rebuild_action(self.table, alter={self.column: {"nullable": True}})],
                    compensate=[rebuild_action(self.table, alter={self.column: {"nullable": False}})],
                ))
        create, drop = d.sync_triggers(self._sync(c))
        steps.append(MigrationStep(EXPANDING, f"dual-write triggers {self.column} <-> {self.new_name}",
                                   forward=create, compensate=drop))
        return steps

    def migrate(self, c: Compiler) -> list[MigrationStep]:
        d = c.dialect
        old, new = sa.column(self.column), sa.column(self.new_name)
        steps = [
            MigrationStep(
                MIGRATING,
                f"backfill {self.table}.{self.new_name} from {self.column}",
                backfill=Backfill(
                    table=self.table,
                    key=c.schema.table(self.table).primary_key,
                    assignments={self.new_name: d.sql(old)},
                    pending=d.sql(sa.and_(new.is_(None), old.is_not(None))),
                ),
            )
        ]
        if self._not_null(c) and c.is_postgres:
            _, validate, _ = d.not_null_check(self.table, self.new_name, self._check_name(c))
            steps.append(MigrationStep(MIGRATING, f"validate {self.new_name} IS NOT NULL", forward=[validate]))
        for copy in self._index_copies(c):
            kind = "unique index" if copy.unique else "index"
            steps.append(MigrationStep(
                MIGRATING, f"{kind} on {self.table}({', '.join(copy.columns)}) for {copy.final}",
                forward=d.create_index(copy.temporary, self.table, copy.columns, unique=copy.unique),
                compensate=d.drop_index(copy.temporary, self.table),
                transactional=not d.concurrent_indexes,
            ))
        return steps

    def contract(self, c: Compiler) -> list[MigrationStep]:
        d = c.dialect
        _, drop_triggers = d.sync_triggers(self._sync(c))
        default = c.reflected_column(self.table, self.column).get("default")
        copies = self._index_copies(c)
        steps = [MigrationStep(CONTRACTING, "drop dual-write triggers", forward=drop_triggers)]
        if c.is_postgres:
            forward = [*d.drop_column(self.table, self.column)]
            if default is not None:
                forward.append(d.set_default(self.table, self.new_name, default))
            if self._not_null(c):
                _, _, drop_check = d.not_null_check(self.table, self.new_name, self._check_name(c))
                forward += [d.set_not_null(self.table, self.new_name), drop_check]
            for copy in copies:
                forward.append(d.unique_constraint_using_index(self.table, copy.final, copy.temporary)
                               if copy.constraint else d.rename_index(copy.temporary, copy.final))
        else:
            final = {"nullable": not self._not_null(c), "server_default": default}
            forward = [rebuild_action(
                self.table, drop=[self.column], alter={self.new_name: final},
                drop_indexes=[copy.temporary for copy in copies],
                create_indexes=[{"name": copy.final, "columns": copy.columns, "unique": copy.unique}
                                for copy in copies],
            )]
        steps.append(MigrationStep(CONTRACTING, f"drop {self.table}.{self.column}; "
                                   f"{self.new_name} takes its constraints", forward=forward))
        return steps

    def _index_copies(self, c: Compiler) -> list[IndexCopy]:
        if c.connection is None:  # offline: the live indexes are unknown
            return []
        inspector = sa.inspect(c.connection)
        found: list[tuple[str | None, list[str], bool, bool]] = [
            (u["name"], u["column_names"], True, True)
            for u in inspector.get_unique_constraints(self.table) if self.column in u["column_names"]
        ]
        for index in inspector.get_indexes(self.table):
            if self.column not in index["column_names"] or index.get("duplicates_constraint"):
                continue
            options = index.get("dialect_options", {})
            if None in index["column_names"] or options.get("postgresql_where") or options.get("sqlite_where"):
                raise ValueError(
                    f"index {index['name']!r} on {self.table}.{self.column} has an expression or a WHERE "
                    f"clause, which zdm cannot rebuild on {self.new_name}: drop it before the rename"
                )
            found.append((index["name"], index["column_names"], bool(index["unique"]), False))
        return [
            IndexCopy(
                final=name or f"{self.table}_{self.new_name}_key",
                temporary=object_name("zdm_ix", self.sync_name(c.plan_id, str(number))),
                columns=[self.new_name if col == self.column else col for col in columns],
                unique=unique,
                constraint=constraint,
            )
            for number, (name, columns, unique, constraint) in enumerate(found)
        ]

    def _check_name(self, c: Compiler) -> str:
        return self.sync_name(c.plan_id, self.new_name)

    # -- reference model ------------------------------------------------------------------------
    def apply_to_model(self, schema: Schema, phase: Phase, dialect: str) -> None:
        table = schema.table(self.table)
        old = table.column(self.column) if self.column in table.columns else None
        if phase is EXPANDING:
            table.add_column(Column(self.new_name, old.type, nullable=True))
            table.links.append(Link(self.column, self.new_name, up=lambda v: v, down=lambda v: v,
                                    a_nullable=old.nullable))
            if dialect == "sqlite":
                old.nullable = True
        elif phase is MIGRATING:
            for row in table.rows:
                if row[self.new_name] is None:
                    row[self.new_name] = row[self.column]
        elif phase is CONTRACTING:
            link = self._unlink(table)
            final = table.drop_column(self.column)
            new = table.column(self.new_name)
            new.nullable, new.default = link.a_nullable, final.default
        elif phase is Phase.ROLLED_BACK:
            link = self._unlink(table)
            old.nullable = link.a_nullable
            table.drop_column(self.new_name)

    def _unlink(self, table: Table) -> Link:
        link = next(k for k in table.links if k.b == self.new_name)
        table.links.remove(link)
        return link
