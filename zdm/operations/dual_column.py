"""The dual-column path shared by rename_column and alter_column.

The old app keeps the old column, the new app uses a second one, and triggers keep them equal
(through conversions when the type changes) until complete:

expand   add the new column (nullable, no default) and dual-write triggers, so that a write to
         either column reaches the other; on PostgreSQL a NOT VALID ``IS NOT NULL`` check when
         the old column is NOT NULL; on SQLite the old column is relaxed to NULL (a rebuild) so
         the new app may omit it and the trigger fills it in.
migrate  backfill the new column in key batches (rows written since expand are already done);
         check that every value converted; build a copy of every index and unique constraint of
         the old column on the new one (CONCURRENTLY on PostgreSQL). Uniqueness holds meanwhile:
         the triggers copy each write into the old column, whose unique index still stands.
contract check the conversions again, drop the triggers and the old column; the new column takes
         its final name, NOT NULL (on PostgreSQL through the validated check: no long scan under
         lock) and default, and the index copies take the original names.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from zdm import transforms
from zdm.dialects import Sync, index_copy_problem, mentions, object_name
from zdm.dialects.sqlite import rebuild_action
from zdm.introspect import describe_reference, referencing_foreign_keys
from zdm.model import Column, ColumnType, Link, Schema, Table
from zdm.operations.base import Compiler, Operation
from zdm.plan import Backfill, MigrationStep, Phase, check_action
from zdm.risks import volatile
from zdm.transforms import TRY_JSON_PG, Transform

EXPANDING, MIGRATING, CONTRACTING = Phase.EXPANDING, Phase.MIGRATING, Phase.CONTRACTING


@dataclass(frozen=True)
class IndexCopy:
    """An index or unique constraint of the old column, rebuilt on the new one."""

    final: str  # the original name, which the copy takes at contract
    temporary: str  # a zdm-owned name while both columns exist
    columns: list[str]  # with the new column's final name in place of the old one
    unique: bool
    constraint: bool  # a UNIQUE constraint rather than a plain index


class DualColumn(Operation):
    """Subclasses say which column, its new name and type, and how values convert."""

    column: str

    # -- what a subclass decides -----------------------------------------------------------------
    @property
    def shadow(self) -> str:
        """The new column while both exist."""
        raise NotImplementedError

    @property
    def final_name(self) -> str:
        """The new column's name after complete."""
        raise NotImplementedError

    def up(self, schema: Schema) -> Transform:
        """Old value -> new value; ``schema`` still holds the old column."""
        return transforms.get("copy")

    def down(self, schema: Schema) -> Transform:
        return transforms.get("copy")

    def shadow_type(self, c: Compiler) -> sa.types.TypeEngine[Any]:
        return c.live_type(self.table, self.column)

    def model_type(self, old: Column) -> ColumnType:
        return old.type

    def final_default(self, c: Compiler) -> str | None:
        return c.reflected_column(self.table, self.column).get("default")

    def final_model_default(self, old: Column) -> Any:
        return old.default

    # -- checks ---------------------------------------------------------------------------------
    def check(self, schema: Schema) -> list[str]:
        if errors := self.column_check(schema, self.column):
            return errors
        table = schema.table(self.table)
        errors = []
        for name in {self.shadow, self.final_name} - {self.column}:
            if name in table.columns:
                errors.append(f"table {self.table!r} already has a column {name!r}")
        if table.columns[self.column].primary_key:
            errors.append(f"{self.table}.{self.column} is part of the primary key; zdm does not change keys")
        if not table.primary_key:
            errors.append(f"table {self.table!r} has no primary key; the backfill and triggers need one")
        return errors

    def touches(self) -> set[tuple[str, str]]:
        return {(self.table, name) for name in (self.column, self.shadow, self.final_name)}

    # -- phases -------------------------------------------------------------------------------
    def _sync(self, c: Compiler) -> Sync:
        return Sync(
            name=self.sync_name(c.plan_id, self.shadow),
            table=self.table,
            key=tuple(c.schema.table(self.table).primary_key),
            a=self.column,
            b=self.shadow,
            up=self.up(c.schema),
            down=self.down(c.schema),
            a_default=c.reflected_column(self.table, self.column).get("default"),
        )

    def _not_null(self, c: Compiler) -> bool:
        return not c.schema.table(self.table).column(self.column).nullable

    def _check_name(self, c: Compiler) -> str:
        return self.sync_name(c.plan_id, self.shadow)

    def _needs_try_json(self, c: Compiler) -> bool:
        return c.is_postgres and (self.up(c.schema).needs_try_json or self.down(c.schema).needs_try_json)

    def _all_converted(self, c: Compiler) -> dict[str, Any]:
        """Rows whose old value has no counterpart in the new column: the conversion failed."""
        lost = sa.and_(sa.column(self.column).is_not(None), sa.column(self.shadow).is_(None))
        return check_action(self.sample(c, lost, self.column),
                            f"values of {self.table}.{self.column} that {self.up(c.schema).name} cannot convert "
                            "(fix them, or choose another transform)")

    def _refuse_checks_on_the_column(self, c: Compiler) -> None:
        """A CHECK naming the column would go with it at contract (PostgreSQL) or break the rebuild
        (SQLite); zdm cannot rewrite the condition for the new column, so the author does it."""
        if c.connection is None:
            return
        for check in sa.inspect(c.connection).get_check_constraints(self.table):
            if mentions(check["sqltext"], self.column):
                name = repr(check["name"]) if check["name"] else "(unnamed)"
                raise ValueError(
                    f"check constraint {name} on {self.table} uses {self.column}, which zdm cannot carry onto "
                    f"{self.shadow}: drop it before this change (drop_constraint) and add it again after (add_check)")

    def _refuse_referenced(self, c: Compiler) -> None:
        """Another table's foreign key to the column would stop resolving once it is dropped at contract
        (PostgreSQL refuses the DROP, SQLite fails every insert with 'foreign key mismatch')."""
        for key in referencing_foreign_keys(c.connection, self.table, self.column) if c.connection else []:
            raise ValueError(f"{describe_reference(key, self.table)}, which zdm cannot move onto {self.shadow}: drop "
                             "that foreign key before this change and add it again after")

    def _refuse_a_volatile_default(self, c: Compiler) -> None:
        """The triggers tell a value left at its default by comparing it with the default: a default
        that changes on every call (a sequence, a random uuid) would make the two columns differ."""
        default = c.reflected_column(self.table, self.column).get("default")
        if default is not None and volatile(str(default)):
            raise ValueError(
                f"{self.table}.{self.column} has a default that changes on every call ({default}), which the "
                "dual-write triggers cannot follow: drop the default first (drop_default), set it again after")

    def expand(self, c: Compiler) -> list[MigrationStep]:
        d, q = c.dialect, c.dialect.quote
        self._refuse_checks_on_the_column(c)
        self._refuse_referenced(c)
        self._refuse_a_volatile_default(c)
        steps = []
        if self._needs_try_json(c):
            steps.append(MigrationStep(EXPANDING, "helper function zdm_try_json", forward=[TRY_JSON_PG],
                                       compensate=["DROP FUNCTION IF EXISTS zdm_try_json(text)"]))
        added = sa.Column(self.shadow, self.shadow_type(c), nullable=True)
        steps.append(MigrationStep(
            EXPANDING, f"add column {self.table}.{self.shadow}",
            forward=[d.add_column(self.table, added)],
            compensate=[f"ALTER TABLE {q(self.table)} DROP COLUMN {q(self.shadow)}"],
        ))
        if self._not_null(c):
            if c.is_postgres:
                add, _, drop = d.not_null_check(self.table, self.shadow, self._check_name(c))
                steps.append(MigrationStep(EXPANDING, f"check {self.shadow} IS NOT NULL (NOT VALID)",
                                           forward=[add], compensate=[drop]))
            else:
                steps.append(MigrationStep(
                    EXPANDING, f"let the new app omit {self.table}.{self.column} (trigger fills it)",
                    forward=[rebuild_action(self.table, alter={self.column: {"nullable": True}})],
                    compensate=[rebuild_action(self.table, alter={self.column: {"nullable": False}})],
                ))
        create, drop = d.sync_triggers(self._sync(c))
        steps.append(MigrationStep(EXPANDING, f"dual-write triggers {self.column} <-> {self.shadow}",
                                   forward=create, compensate=drop))
        return steps

    def migrate(self, c: Compiler) -> list[MigrationStep]:
        d = c.dialect
        old, new = sa.column(self.column), sa.column(self.shadow)
        steps = [MigrationStep(
            MIGRATING,
            f"backfill {self.table}.{self.shadow} from {self.column}",
            backfill=Backfill(
                table=self.table,
                key=c.schema.table(self.table).primary_key,
                assignments={self.shadow: d.sql(self.up(c.schema).sql(old))},
                pending=d.sql(sa.and_(new.is_(None), old.is_not(None))),
            ),
        )]
        if not self.up(c.schema).identity:
            steps.append(MigrationStep(MIGRATING, f"every {self.column} converted", forward=[self._all_converted(c)]))
        if self._not_null(c) and c.is_postgres:
            _, validate, _ = d.not_null_check(self.table, self.shadow, self._check_name(c))
            steps.append(MigrationStep(MIGRATING, f"validate {self.shadow} IS NOT NULL", forward=[validate]))
        for copy in self._index_copies(c):
            kind = "unique index" if copy.unique else "index"
            columns = [self.shadow if col == self.final_name else col for col in copy.columns]
            steps.append(MigrationStep(
                MIGRATING, f"{kind} on {self.table}({', '.join(columns)}) for {copy.final}",
                forward=d.create_index(copy.temporary, self.table, columns, unique=copy.unique),
                compensate=d.drop_index(copy.temporary, self.table),
                transactional=not d.concurrent_indexes,
            ))
        return steps

    def contract(self, c: Compiler) -> list[MigrationStep]:
        d, q = c.dialect, c.dialect.quote
        _, drop_triggers = d.sync_triggers(self._sync(c))
        default = self.final_default(c)
        copies = self._index_copies(c)
        first: list[Any] = [] if self.up(c.schema).identity else [self._all_converted(c)]
        steps = [MigrationStep(CONTRACTING, "drop dual-write triggers", forward=[*first, *drop_triggers])]
        if self._needs_try_json(c):
            steps[0].forward.append("DROP FUNCTION IF EXISTS zdm_try_json(text)")
        if c.is_postgres:
            forward = [*d.drop_column(self.table, self.column)]
            if self.shadow != self.final_name:
                forward.append(f"ALTER TABLE {q(self.table)} RENAME COLUMN {q(self.shadow)} TO {q(self.final_name)}")
            if default is not None:
                forward.append(d.set_default(self.table, self.final_name, default))
            if self._not_null(c):
                _, _, drop_check = d.not_null_check(self.table, self.final_name, self._check_name(c))
                forward += [d.set_not_null(self.table, self.final_name), drop_check]
            for copy in copies:
                forward.append(d.unique_constraint_using_index(self.table, copy.final, copy.temporary)
                               if copy.constraint else d.rename_index(copy.temporary, copy.final))
        else:
            final = {"nullable": not self._not_null(c), "server_default": default}
            renames = {self.shadow: self.final_name} if self.shadow != self.final_name else {}
            forward = [rebuild_action(
                self.table, drop=[self.column], alter={self.shadow: final}, renames=renames,
                drop_indexes=[copy.temporary for copy in copies],
                create_indexes=[{"name": copy.final, "columns": copy.columns, "unique": copy.unique,
                                 "constraint": copy.constraint} for copy in copies],
            )]
        steps.append(MigrationStep(CONTRACTING, f"drop {self.table}.{self.column}; "
                                   f"{self.final_name} takes its place", forward=forward))
        return steps

    def _index_copies(self, c: Compiler) -> list[IndexCopy]:
        if c.connection is None:  # offline: the live indexes are unknown
            return []
        inspector = sa.inspect(c.connection)
        for name, definition in c.dialect.index_definitions(c.connection, self.table).items():
            if problem := index_copy_problem(definition, self.column):
                raise ValueError(
                    f"index {name!r} on {self.table}.{self.column} {problem}, which zdm cannot copy onto "
                    f"{self.shadow}: drop it before this change and create it again after"
                )
        with warnings.catch_warnings():  # expression indexes are not reflected: the check above saw them
            warnings.simplefilter("ignore", sa.exc.SAWarning)
            uniques = [u for u in inspector.get_unique_constraints(self.table) if self.column in u["column_names"]]
            indexes = [ix for ix in inspector.get_indexes(self.table)
                       if self.column in ix["column_names"] and not ix.get("duplicates_constraint")]
        found = [(u["name"], u["column_names"], True, True) for u in uniques]
        found += [(ix["name"], ix["column_names"], bool(ix["unique"]), False) for ix in indexes]
        return [
            IndexCopy(
                final=name or f"{self.table}_{self.final_name}_key",
                temporary=object_name("zdm_ix", self.sync_name(c.plan_id, self.column, str(number))),
                columns=[self.final_name if col == self.column else col for col in columns],
                unique=unique,
                constraint=constraint,
            )
            for number, (name, columns, unique, constraint) in enumerate(found)
        ]

    # -- reference model ------------------------------------------------------------------------
    def apply_to_model(self, schema: Schema, phase: Phase, dialect: str) -> None:
        table = schema.table(self.table)
        if phase is EXPANDING:
            old = table.column(self.column)
            table.add_column(Column(self.shadow, self.model_type(old), nullable=True))
            table.links.append(Link(self.column, self.shadow, up=self.up(schema).python, down=self.down(schema).python,
                                    a_nullable=old.nullable))
            if dialect == "sqlite":
                old.nullable = True
        elif phase is MIGRATING:
            new_type = table.column(self.shadow).type
            for row in table.rows:
                if row[self.shadow] is None:
                    row[self.shadow] = new_type.coerce(self.up(schema).apply(row[self.column]))
        elif phase is CONTRACTING:
            link = self._unlink(table)
            old = table.drop_column(self.column)
            if self.shadow != self.final_name:
                table.rename_column(self.shadow, self.final_name)
            new = table.column(self.final_name)
            new.nullable, new.default = link.a_nullable, self.final_model_default(old)
        elif phase is Phase.ROLLED_BACK:
            link = self._unlink(table)
            table.column(self.column).nullable = link.a_nullable
            table.drop_column(self.shadow)

    def _unlink(self, table: Table) -> Link:
        link = next(k for k in table.links if k.b == self.shadow)
        table.links.remove(link)
        return link
