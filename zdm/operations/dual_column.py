"""The dual-column path shared by rename_column and alter_column.

The old app keeps the old column, the new app (or, for a type change without a new name, the
column after complete) uses a second one, the *shadow*, and triggers keep them equal (through
conversions when the type changes) until complete:

expand   add the shadow (nullable) and the dual-write triggers (see ``zdm.dialects.Sync`` for their
         rules); when the new app writes the shadow, it gets the old column's default, and on
         SQLite the old column's NOT NULL is relaxed (a rebuild) so the new app may leave it out,
         the triggers refusing NULL for the pair instead.
migrate  backfill the shadow in key batches (rows written since expand are already done, and an
         app's write to a row the backfill has not reached brings that row up to date); check that
         every value converted; copy the old column's indexes onto the shadow (CONCURRENTLY on
         PostgreSQL), so the new app's queries and upserts find them.
contract a rename keeps the old column, with everything attached to it (default, NOT NULL,
         comment, constraints, foreign keys both ways, indexes, grants, sequence, views...), drops
         the shadow and renames the old column in place. A type change replaces the column: its
         constraints are added to the shadow NOT VALID and validated (no lock that blocks writes),
         then in one brief transaction the old column goes and the shadow takes its name, default,
         NOT NULL (through the validated check: no scan under lock), comment, statistics target,
         storage, grants, sequence or identity, and its indexes and constraints their names.

What cannot be carried is refused before anything runs, naming the object and what to do.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from zdm import transforms
from zdm.actions import Action, DataCheck, Statement
from zdm.coltypes import Family
from zdm.dialects import ColumnFacts, Dialect, Sync, object_name
from zdm.model import Column, ColumnType, ForeignKey, Index, Link, Schema, SqlDefault, Table
from zdm.operations.base import Compiler, Operation
from zdm.operations.common import no_rows_where
from zdm.plan import Backfill, MigrationStep, Phase
from zdm.risks import volatile
from zdm.sqltree import column_names, condition_columns, rename_in_condition, statement
from zdm.transforms import Transform

EXPANDING, MIGRATING, CONTRACTING = Phase.EXPANDING, Phase.MIGRATING, Phase.CONTRACTING

#: Types whose conversion to or from another family depends on the session (time zone, date and
#: float output settings): the app's session and zdm's may convert one value differently.
SESSION_DEPENDENT = {Family.TIMESTAMP, Family.TIMESTAMPTZ, Family.DATE, Family.TIME, Family.INTERVAL, Family.FLOAT}


@dataclass(frozen=True)
class IndexCopy:
    """An index or unique constraint of the old column, built again on the shadow."""

    final: str  # the original name, which the copy takes at contract (a type change)
    temporary: str  # a zdm-owned name while both columns exist
    definition: str  # the CREATE INDEX statement of the copy
    unique: bool
    constraint: bool  # a UNIQUE constraint rather than a plain index
    #: An index over several columns the plan replaces gets one copy over all their new columns:
    #: the last of those operations builds it (every new column is filled by then), the first
    #: gives it the index's name (its swap drops the index with the first old column).
    build: bool = True
    rename: bool = True


@dataclass(frozen=True)
class ConstraintCopy:
    """A constraint of the old column (or another table's foreign key to it), added to the shadow."""

    table: str  # the table the constraint is on
    final: str  # its name, which the copy takes at contract
    temporary: str
    definition: str  # e.g. CHECK ((length(code_zdm_new) > 0)), FOREIGN KEY (...) REFERENCES ...
    references: str | None = None  # the table a foreign key refers to

    @property
    def tables(self) -> set[str]:
        """The tables adding or dropping the copy locks: its own, and the one a foreign key refers to."""
        return {self.table, *([self.references] if self.references else [])}


def copy_locks(c: Compiler, copies: list[ConstraintCopy], strong: set[str]) -> list[Action]:
    """The locks that adding (or dropping) ``copies`` takes, taken first, referenced tables before the
    tables that refer to them (the order apps write in: a parent row, then its children), each at
    the strength the statements need (``strong``: ACCESS EXCLUSIVE, else SHARE ROW EXCLUSIVE), so
    no statement has to upgrade a lock an app waits behind. ADD FOREIGN KEY takes SHARE ROW
    EXCLUSIVE on both of its tables but locks the referencing one first; DROP CONSTRAINT of a
    foreign key takes ACCESS EXCLUSIVE on both (its triggers on the referenced table go too), the
    referencing one first: with an app that wrote the parent and then writes a child, either
    deadlocks. Nothing when no copy is a foreign key to another table."""
    referenced = [copy.references for copy in copies if copy.references and copy.references != copy.table]
    if not referenced:
        return []
    order = list(dict.fromkeys([*referenced, *(copy.table for copy in copies)]))
    return [lock for table in order for lock in c.dialect.lock_tables([table], exclusive=table in strong)]


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

    @property
    def keeps_old_column(self) -> bool:
        """True for a rename: contract keeps the old column (and all it has) and renames it in place."""
        return False

    @property
    def two_way(self) -> bool:
        """Whether an app writes the shadow during the window (so writes flow back to the old column)."""
        return True

    @property
    def carries_key(self) -> bool:
        """True when the column is the primary key and the subclass moves the key to the shadow
        (zdm.operations.widen_key); else a key column is refused."""
        return False

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
        """The column's default after complete, as SQL (a type change converts the old one)."""
        return self._facts(c).default

    def final_model_default(self, schema: Schema) -> Any:
        return schema.table(self.table).column(self.column).default

    # -- checks ---------------------------------------------------------------------------------
    def check(self, schema: Schema) -> list[str]:
        if errors := self.column_check(schema, self.column):
            return errors
        table = schema.table(self.table)
        errors = []
        for name in {self.shadow, self.final_name} - {self.column}:
            if name in table.columns:
                errors.append(f"table {self.table!r} already has a column {name!r}")
        if table.columns[self.column].primary_key and not self.carries_key:
            errors.append(f"{self.table}.{self.column} is part of the primary key; zdm does not change keys")
        if not table.primary_key:
            errors.append(f"table {self.table!r} has no primary key; the backfill and triggers need one")
        return errors

    def touches(self) -> set[tuple[str, str]]:
        return {(self.table, name) for name in (self.column, self.shadow, self.final_name)}

    def replaces_column(self, c: Compiler) -> tuple[str, str, str] | None:
        if self.keeps_old_column or c.dialect.retypes_in_place or c.connection is None:
            return None
        return (self.table, self.column, self.shadow)

    def changed_tables(self, c: Compiler) -> set[str]:
        """The table, and those whose foreign keys to the column are copied onto the new one (a swap;
        a rename or a change in place leaves other tables as they are)."""
        if self.keeps_old_column or c.dialect.retypes_in_place:
            return {self.table}
        return {self.table, *(copy.table for copy in self._constraint_copies(c))}

    def _partners(self, c: Compiler) -> dict[str, tuple[int, str]]:
        """The table's other columns that other operations of this plan replace too: column ->
        (operation number, new column). A copy of an index or constraint over several of them is
        made once, over all the new columns: one per operation would be dropped by the others' swaps."""
        if c.replaced.get((self.table, self.column), (None,))[0] != c.number:
            return {}
        return {column: (number, new) for (table, column), (number, new) in c.replaced.items()
                if table == self.table and number != c.number}

    # -- the live column ------------------------------------------------------------------------
    def _facts(self, c: Compiler) -> ColumnFacts:
        """What hangs on the column; offline (Alembic --sql) only what the model knows."""
        if c.connection is None:
            return c.dialect.model_facts(c.schema, self.table, self.column)
        return c.dialect.column_facts(c.connection, self.table, self.column)

    def swap_facts(self, c: Compiler) -> ColumnFacts:
        """What a swap carries onto the new column (all the old one has, unless a subclass says)."""
        return self._facts(c)

    def backfill_source(self, c: Compiler) -> sa.ColumnElement[Any]:
        """The old column as the backfill's UPDATE reads it."""
        return sa.column(self.column)

    def refuse_what_cannot_be_carried(self, c: Compiler) -> None:
        """Raise ValueError naming the first object that uses the column and cannot follow the change."""
        if c.connection is None:
            return
        facts = self._facts(c)
        what = f"{self.table}.{self.column}"
        for trigger in facts.triggers:
            # A trigger whose code names the column breaks once the name is gone (a rename, or a
            # type change with a new name); one that edits NEW after zdm's trigger ran would leave
            # the shadow out of step.
            renamed = self.final_name != self.column
            fires_after_ours = trigger.edits_rows and trigger.name > object_name("zdm_tg", self._sync_name(c))
            if trigger.names_column and (renamed or self.two_way or fires_after_ours):
                function = f" (function {trigger.function})" if trigger.function else ""
                raise ValueError(
                    f"trigger {trigger.name}{function} on {self.table} uses {self.column}, which zdm cannot keep in "
                    f"step with {self.shadow}: drop the trigger before this change and create it again after complete, "
                    f"for {self.final_name}")
        if self.keeps_old_column:
            return  # renamed in place: PostgreSQL and SQLite rename it in everything that uses it
        for dependent in facts.dependents:
            raise ValueError(f"{dependent} uses {what}, which this change replaces: drop it before the change and "
                             "create it again after complete")
        for name, (kind, _definition) in facts.constraints.items():
            if kind == "x" or (kind == "p" and not self.carries_key):
                what_kind = "primary key" if kind == "p" else "exclusion constraint"
                raise ValueError(f"{what_kind} {name} uses {what}; zdm does not change it: drop it before this change "
                                 "and add it again after")

    def _sync_name(self, c: Compiler) -> str:
        return self.sync_name(c.plan_id, self.shadow)

    def _shadow_default(self, c: Compiler) -> str | None:
        """The shadow's default while both columns exist: the old default, converted. An insert that
        leaves the shadow at it did not name the shadow (see Sync). None for a default that changes on
        every call: the shadow then follows whatever the old column got."""
        if not self.two_way:
            return None
        default = c.schema.table(self.table).column(self.column).default
        up, new_type = self.up(c.schema), self.model_type(c.schema.table(self.table).column(self.column))
        if default is None:
            return None
        if isinstance(default, SqlDefault):
            if volatile(default.sql):
                return None
            return default.sql if up.identity else c.dialect.expr(up, f"({default.sql})")
        converted = up.apply(default)
        return None if converted is None else c.dialect.literal(new_type.coerce(converted), new_type)

    def _model_shadow_default(self, schema: Schema) -> Any:
        if not self.two_way:
            return None
        default = schema.table(self.table).column(self.column).default
        if isinstance(default, SqlDefault):
            return None if volatile(default.sql) else SqlDefault(default.sql)
        return self.up(schema).apply(default)

    def _sync(self, c: Compiler) -> Sync:
        return Sync(
            name=self._sync_name(c),
            table=self.table,
            key=tuple(c.schema.table(self.table).primary_key),
            a=self.column,
            b=self.shadow,
            up=self.up(c.schema),
            down=self.down(c.schema) if self.two_way else None,
            b_default=self._shadow_default(c),
            fill_unreached=True,
            a_not_null=self._relaxes(c),
        )

    def _not_null(self, c: Compiler) -> bool:
        return not c.schema.table(self.table).column(self.column).nullable

    def _relaxes(self, c: Compiler) -> bool:
        """SQLite only: the new app may leave the old NOT NULL column out, and SQLite checks NOT NULL
        before an AFTER trigger could fill it, so expand relaxes it for the window."""
        return not c.dialect.triggers_fill_before_checks and self.two_way and self._not_null(c)

    def _all_converted(self, c: Compiler) -> DataCheck:
        """Rows whose old value has no counterpart in the new column: the conversion failed."""
        lost = sa.and_(sa.column(self.column).is_not(None), sa.column(self.shadow).is_(None))
        return no_rows_where(c, self.table, lost, f"values of {self.table}.{self.column} that "
                             f"{self.up(c.schema).name} cannot convert (fix them, or choose another transform)",
                             self.column)

    def _out_of_step(self, c: Compiler) -> list[Action]:
        """A check that every row's new value is the conversion of its old one (or, where the new app
        writes the new column, that the old one is the conversion back of it): a user trigger that
        changed a column behind zdm's back (through a function zdm cannot read) would otherwise have
        its change lost at complete. Only where the conversion is the same in every session (not
        through a time zone or a float's text form) and the values compare."""
        source = c.schema.resolve(c.schema.table(self.table).column(self.column).type)
        target = c.schema.resolve(self.model_type(c.schema.table(self.table).column(self.column)))
        families = {source.family, target.family}
        if families & {Family.JSON, Family.OTHER} or (len(families) > 1 and families & SESSION_DEPENDENT):
            return []
        old: sa.ColumnClause[Any] = sa.column(self.column)
        new: sa.ColumnClause[Any] = sa.column(self.shadow)

        def inlined(value: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:  # SQLAlchemy leaves the
            return sa.literal_column(f"({c.dialect.sql(value)})")  # binds of IS NOT's right side as ?

        differs = new.is_distinct_from(inlined(sa.cast(self.up(c.schema).sql(old), self.shadow_type(c))))
        if self.two_way:
            back = sa.cast(self.down(c.schema).sql(new), c.live_type(self.table, self.column))
            differs = sa.and_(differs, old.is_distinct_from(inlined(back)))
        again = (f"write {self.column} or {self.shadow} of those rows again (a changed value)" if self.two_way else
                 f"set {self.shadow} to NULL in those rows (zdm's triggers convert {self.column} again)")
        return [no_rows_where(c, self.table, differs, f"rows of {self.table} whose {self.shadow} is not the "
                              f"conversion of {self.column} (a trigger or a write zdm cannot follow changed one "
                              f"of them; complete would keep {self.shadow}'s value): drop what wrote them (a "
                              f"trigger: create it again after complete), {again}, and run complete again",
                              self.column, self.shadow)]

    def _helpers(self, c: Compiler) -> tuple[list[Action], list[Action]]:
        return c.dialect.helper_functions(self.up(c.schema), self.down(c.schema) if self.two_way else None)

    # -- phases -------------------------------------------------------------------------------
    def check_live(self, c: Compiler) -> list[str]:
        folded = c.dialect.fold_name(self.shadow)
        for name in c.schema.table(self.table).columns:
            if name != self.shadow and c.dialect.fold_name(name) == folded:
                return [f"{self.table}.{self.shadow} would be the same column as {self.table}.{name} on this "
                        f"database (it compares column names without case), and both exist until complete: "
                        f"go through another name, in two plans"]
        try:
            self.refuse_what_cannot_be_carried(c)
        except ValueError as exc:
            return [str(exc)]
        if c.connection is not None and not self.keeps_old_column and not c.dialect.retypes_in_place:
            # Every copy a swap builds is known to build before the backfill, not after it.
            checks = {copy.final: copy.definition for copy in self._constraint_copies(c)
                      if copy.table == self.table and copy.definition.upper().startswith("CHECK")}
            indexes = {copy.final: copy.definition for copy in self._index_copies(c)}
            if problem := c.dialect.copy_problem(c.connection, self.table, self.shadow, self.shadow_type(c),
                                                 indexes, checks):
                return [problem]
        return []

    def expand(self, c: Compiler) -> list[MigrationStep]:
        d = c.dialect
        steps = []
        create_helpers, drop_helpers = self._helpers(c)
        if create_helpers:
            steps.append(MigrationStep(EXPANDING, "helper functions for the conversion", forward=create_helpers,
                                       compensate=drop_helpers))
        # The shadow's default is set after ADD COLUMN, so the rows there stay NULL for the backfill.
        changes: dict[str, dict[str, Any]] = {}
        if (default := self._shadow_default(c)) is not None:
            changes[self.shadow] = {"server_default": default}
        if self._relaxes(c):
            changes[self.column] = {"nullable": True}
        added = sa.Column(self.shadow, self.shadow_type(c), nullable=True)
        steps.append(MigrationStep(
            EXPANDING, f"add column {self.table}.{self.shadow}"
            + (f"; let the new app leave {self.column} out (the triggers fill it)" if self._relaxes(c) else ""),
            forward=[*d.add_column(self.table, added), *(d.alter_columns(self.table, changes) if changes else [])],
            compensate=[*self._restore_not_null(c), *d.drop_column(self.table, self.shadow)]))
        create, drop = d.sync_triggers(self._sync(c))
        steps.append(MigrationStep(EXPANDING, f"dual-write triggers {self.column} <-> {self.shadow}",
                                   forward=create, compensate=drop))
        return steps

    def _restore_not_null(self, c: Compiler) -> list[Action]:
        """Undo what ``_relaxes`` did to the old column."""
        return c.dialect.alter_columns(self.table, {self.column: {"nullable": False}}) if self._relaxes(c) else []

    def migrate(self, c: Compiler) -> list[MigrationStep]:
        d = c.dialect
        old: sa.ColumnClause[Any] = sa.column(self.column)
        new: sa.ColumnClause[Any] = sa.column(self.shadow)
        steps = [MigrationStep(
            MIGRATING,
            f"backfill {self.table}.{self.shadow} from {self.column}",
            backfill=Backfill(
                table=self.table,
                key=c.schema.table(self.table).primary_key,
                assignments={self.shadow: d.sql(self.up(c.schema).sql(self.backfill_source(c)))},
                pending=d.sql(sa.and_(new.is_(None), old.is_not(None))),
            ),
        )]
        if not self.up(c.schema).identity:
            steps.append(MigrationStep(MIGRATING, f"every {self.column} converted", forward=[self._all_converted(c)]))
        for copy in [copy for copy in self._index_copies(c) if copy.build]:
            kind = "unique index" if copy.unique else "index"
            steps.append(MigrationStep(
                MIGRATING, f"{kind} {copy.temporary} on {self.table}.{self.shadow}, a copy of {copy.final}",
                forward=[*d.drop_index(copy.temporary, self.table), Statement(copy.definition)],
                compensate=d.drop_index(copy.temporary, self.table),
                transactional=not d.concurrent_indexes,
            ))
        return steps

    def contract(self, c: Compiler) -> list[MigrationStep]:
        if self.keeps_old_column:
            return self._contract_in_place(c)
        if c.dialect.retypes_in_place:
            return self._contract_retype(c)
        return self._contract_swap(c)

    def _drop_triggers(self, c: Compiler) -> list[Action]:
        return [*c.dialect.sync_triggers(self._sync(c))[1], *self._helpers(c)[1]]

    def _contract_in_place(self, c: Compiler) -> list[MigrationStep]:
        """A rename: the old column stays, with everything attached to it, and takes the new name. The
        shadow goes, and its index copies with it."""
        d = c.dialect
        forward = [*self._drop_triggers(c), *self._restore_not_null(c), *d.drop_column(self.table, self.shadow),
                   *d.rename_column(self.table, self.column, self.final_name)]
        return [MigrationStep(CONTRACTING, f"drop {self.table}.{self.shadow}; {self.column} takes the name "
                              f"{self.final_name}", forward=forward)]

    def _constraint_copies(self, c: Compiler) -> list[ConstraintCopy]:
        """The old column's CHECKs and foreign keys, and other tables' foreign keys to it, on the shadow."""
        facts = self._facts(c)
        copies = []
        number = 0
        partners = self._partners(c)

        def shared(definition: str, referenced: bool = False) -> str | None:
            """The copy over every new column; None when an earlier operation of the plan makes it
            (its contract runs first, while every old column is still there)."""
            for column, (other, new) in partners.items():
                renamed = c.dialect.constraint_for(definition, column, new, referenced=referenced)
                if renamed != c.dialect.constraint_for(definition, column, column, referenced=referenced):
                    if other < c.number:
                        return None
                    definition = renamed
            return definition

        for name, (kind, definition) in facts.constraints.items():
            if kind in ("c", "f"):
                number += 1
                copy = shared(c.dialect.constraint_for(definition, self.column, self.shadow))
                if copy is not None:
                    copies.append(ConstraintCopy(self.table, name, self._temporary("zdm_cc", c, number), copy,
                                                 c.dialect.references(definition)))
        for child, name, definition in facts.referenced_by:
            number += 1
            copy = shared(c.dialect.constraint_for(definition, self.column, self.shadow, referenced=True), True)
            if copy is not None:
                copies.append(ConstraintCopy(child, name, self._temporary("zdm_cc", c, number), copy, self.table))
        return copies

    def _temporary(self, prefix: str, c: Compiler, number: int) -> str:
        return object_name(prefix, self.sync_name(c.plan_id, self.column, str(number)))

    def _contract_swap(self, c: Compiler) -> list[MigrationStep]:
        """A type change by a new column: constraints first (NOT VALID, then VALIDATE, each its own
        transaction, undone if complete fails), then one brief swap."""
        d = c.dialect
        facts = self._facts(c)
        converted: list[Action] = [] if self.up(c.schema).identity else [self._all_converted(c)]
        converted += self._out_of_step(c)
        copies = self._constraint_copies(c)
        add: list[Action] = list(converted)
        validate: list[Action] = []
        drop: list[Action] = []
        not_null = d.refuse_nulls(self._sync_name(c), self.table, self.shadow)
        if facts.not_null:
            add, validate, drop = [*add, *not_null[0]], [*validate, *not_null[1]], [*drop, *not_null[2]]
        for copy in copies:
            add += d.add_constraint(copy.table, copy.temporary, copy.definition)
            validate += d.validate_constraint(copy.table, copy.temporary)
            drop += d.drop_constraint(copy.table, copy.temporary)
        steps = []
        every = set().union(*(copy.tables for copy in copies))
        if validate:
            strong = {self.table} if facts.not_null or any(not copy.references for copy in copies) else set()
            undo = [*copy_locks(c, copies, every), *drop]
            # Three transactions: the adds' brief locks, the validation (which holds none an app
            # waits on), then the swap, whose locks are taken afresh at their strength: in one, the
            # swap's ACCESS EXCLUSIVE on a referenced table upgraded the adds' SHARE ROW EXCLUSIVE
            # while the referencing table was held, and an app that read an order, then added an
            # item, deadlocked it (and the validation's scan ran with the app's writes locked out).
            steps += [
                MigrationStep(CONTRACTING, f"constraints of {self.column} on {self.shadow} (NOT VALID)",
                              forward=[*copy_locks(c, copies, strong), *add], compensate=undo),
                # outside a transaction, and so is its undo: no LOCK TABLE there (it needs a transaction
                # block); the step above's undo, which runs next, takes the locks first
                MigrationStep(CONTRACTING, f"validate the constraints on {self.shadow}", forward=validate,
                              compensate=drop, transactional=False),
            ]
        # dropping the old column drops its foreign keys (and the copies take their names): ACCESS
        # EXCLUSIVE on both tables of each, the referenced one first (see copy_locks)
        swap = [*converted, *copy_locks(c, copies, every), *self._drop_triggers(c)]
        swap += d.replace_column(
            self.table, self.column, self.shadow, self.final_name, facts, default=self.final_default(c),
            not_null=not_null if facts.not_null else None,
            constraints=[(copy.table, copy.temporary, copy.final) for copy in copies],
            indexes=[(copy.temporary, copy.final, copy.constraint) for copy in self._index_copies(c) if copy.rename])
        steps.append(MigrationStep(CONTRACTING, f"drop {self.table}.{self.column}; {self.shadow} takes its place "
                                   f"as {self.final_name}", forward=swap))
        return steps

    def _contract_retype(self, c: Compiler) -> list[MigrationStep]:
        """A type change in place: the column takes the new declared type and the shadow's values, and
        keeps its name, place and everything written for it; a new name comes last."""
        d = c.dialect
        facts = self._facts(c)
        converted: list[Action] = [] if self.up(c.schema).identity else [self._all_converted(c)]
        converted += self._out_of_step(c)
        forward = [*converted, *self._drop_triggers(c)]
        for copy in self._index_copies(c):
            forward += d.drop_index(copy.temporary, self.table)
        forward += d.retype_in_place(self.table, self.column, self.shadow_type(c).compile(dialect=d.sa), self.shadow,
                                     nullable=not facts.not_null, default=self.final_default(c), drop=self.shadow)
        if self.final_name != self.column:
            forward += d.rename_column(self.table, self.column, self.final_name)
        return [MigrationStep(CONTRACTING, f"{self.table}.{self.column} takes the type and values of "
                              f"{self.shadow} as {self.final_name}", forward=forward)]

    def _index_copies(self, c: Compiler) -> list[IndexCopy]:
        """The old column's indexes, built again on the shadow: a swap needs them all; during the window
        the new app's queries and upserts on the shadow need them (where the dialect can copy them:
        the window goes without one it cannot, which costs speed, not correctness). A type change in
        place keeps the indexes and has no window reader of the shadow."""
        if not self.two_way and c.dialect.retypes_in_place:
            return []
        constraints: set[str]
        if c.connection is None:  # offline (Alembic --sql): the indexes the model knows, the same copies
            constraints = set(c.schema.table(self.table).uniques)
            definitions = c.dialect.model_index_definitions(c.schema, self.table)
        else:
            with warnings.catch_warnings():  # expression indexes are not reflected: the definitions are read
                warnings.simplefilter("ignore", sa.exc.SAWarning)
                constraints = {str(u["name"]) for u in sa.inspect(c.connection).get_unique_constraints(self.table)}
            definitions = c.dialect.index_definitions(c.connection, self.table)
        copies: list[IndexCopy] = []
        partners = self._partners(c)
        for name, definition in sorted(definitions.items()):
            parsed = statement(definition)
            if name in self._primary_key_indexes(c) or self.column not in column_names(parsed):
                continue
            number = len(copies)  # numbered among the column's own: the same online and offline
            temporary = object_name("zdm_ix", self.sync_name(c.plan_id, self.column, str(number)))
            sharing = {column: partners[column] for column in column_names(parsed) if column in partners}
            numbers = {c.number: self.column, **{other: column for column, (other, _new) in sharing.items()}}
            builder = max(numbers)
            if sharing:  # one name every operation sharing the copy computes alike
                temporary = object_name("zdm_ix", self.sync_name(c.plan_id, numbers[builder], name))
            sql = c.dialect.index_copy(definition, self.column, self.shadow, temporary)
            for column, (_other, new) in sorted(sharing.items()):
                sql = None if sql is None else c.dialect.index_copy(sql, column, new, temporary)
            if sql is not None:
                copies.append(IndexCopy(final=name, temporary=temporary, definition=sql, unique=bool(parsed.unique),
                                        constraint=name in constraints, build=builder == c.number,
                                        rename=min(numbers) == c.number))
        return copies

    def _primary_key_indexes(self, c: Compiler) -> set[str]:
        if c.connection is None:  # the model keeps a key apart from its indexes
            return set()
        name = sa.inspect(c.connection).get_pk_constraint(self.table).get("name")
        return {name} if name else set()

    def column_fate(self, kind: str, dialect: Dialect) -> str | None:
        if self.keeps_old_column:
            return "kept: renamed in place"
        if dialect.retypes_in_place:
            renamed = f", then renamed to {self.final_name}" if self.final_name != self.column else ""
            return f"kept: the column is retyped in place{renamed}"
        new_type = self.model_type(Column(self.column, ColumnType.OTHER)).value
        if kind in ("constraint", "referenced_by"):
            return f"carried to the new {new_type} column"
        if kind == "trigger":
            return f"kept: the column keeps its name, its type becomes {new_type}"
        return f"the column is replaced by a {new_type} copy at complete"

    # -- reference model ------------------------------------------------------------------------
    def apply_to_model(self, schema: Schema, phase: Phase, dialect: Dialect) -> None:
        table = schema.table(self.table)
        if phase is EXPANDING:
            old = table.column(self.column)
            table.add_column(Column(self.shadow, self.model_type(old), nullable=True))
            table.column(self.shadow).default = self._model_shadow_default(schema)  # rows there stay NULL
            down = self.down(schema).python if self.two_way else None
            table.links.append(Link(self.column, self.shadow, up=self.up(schema).python, down=down,
                                    a_nullable=old.nullable, fill_unreached=True))
            if not dialect.triggers_fill_before_checks and self.two_way:
                old.nullable = True
        elif phase is MIGRATING:
            new_type = table.column(self.shadow).type
            for row in table.rows:
                if row[self.shadow] is None:
                    row[self.shadow] = new_type.coerce(self.up(schema).apply(row[self.column]))
        elif phase is CONTRACTING:
            link = self._unlink(table)
            if self.keeps_old_column:
                table.drop_column(self.shadow)
                table.column(self.column).nullable = link.a_nullable
                schema.rename_column(self.table, self.column, self.final_name)
            else:
                self._replace_in_model(schema, table, link)
        elif phase is Phase.ROLLED_BACK:
            link = self._unlink(table)
            table.column(self.column).nullable = link.a_nullable
            table.drop_column(self.shadow)

    def _replace_in_model(self, schema: Schema, table: Table, link: Link) -> None:
        """The shadow takes the old column's place, name, catalogue and (converted) default."""
        default = self.final_model_default(schema)
        old, shadow = table.column(self.column), self.shadow

        def moved(columns: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(shadow if c == self.column else c for c in columns)

        indexes = {n: Index(moved(ix.columns), ix.unique) for n, ix in table.indexes.items()
                   if self.column in ix.columns}
        uniques = {n: moved(cols) for n, cols in table.uniques.items() if self.column in cols}
        checks = {n: rename_in_condition(cond, self.column, shadow) for n, cond in table.checks.items()
                  if self.column in condition_columns(cond)}
        keys = {n: ForeignKey(moved(fk.columns), fk.ref_table, fk.ref_columns, fk.on_delete)
                for n, fk in table.foreign_keys.items() if self.column in fk.columns}
        table.drop_column(self.column)
        table.indexes.update(indexes)
        table.uniques.update(uniques)
        table.checks.update(checks)
        table.foreign_keys.update(keys)
        for other in schema.tables.values():  # other tables' keys follow the column to the shadow
            other.foreign_keys = {n: ForeignKey(fk.columns, fk.ref_table, moved(fk.ref_columns)
                                                if fk.ref_table == table.name else fk.ref_columns, fk.on_delete)
                                  for n, fk in other.foreign_keys.items()}
        new = table.column(shadow)
        new.nullable, new.default, new.comment = link.a_nullable, default, old.comment
        new.primary_key = old.primary_key
        if shadow != self.final_name:
            schema.rename_column(self.table, shadow, self.final_name)

    def _unlink(self, table: Table) -> Link:
        link = next(k for k in table.links if k.b == self.shadow)
        table.links.remove(link)
        return link


