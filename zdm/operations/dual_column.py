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

import pglast
import sqlalchemy as sa
from pglast import ast
from pglast.stream import RawStream

from zdm import transforms
from zdm.dialects import ColumnFacts, Sync, index_copy_problem, object_name
from zdm.dialects.sqlite import rebuild_action
from zdm.model import (
    Column,
    ColumnType,
    ForeignKey,
    Index,
    Link,
    Schema,
    SqlDefault,
    Table,
)
from zdm.operations.base import Compiler, Operation
from zdm.plan import Backfill, MigrationStep, Phase, check_action
from zdm.risks import volatile
from zdm.sqltree import column_names, condition_columns, rename_column, rename_in_condition, walk
from zdm.transforms import TRY_JSON_PG, Transform

EXPANDING, MIGRATING, CONTRACTING = Phase.EXPANDING, Phase.MIGRATING, Phase.CONTRACTING


@dataclass(frozen=True)
class IndexCopy:
    """An index or unique constraint of the old column, built again on the shadow."""

    final: str  # the original name, which the copy takes at contract (a type change)
    temporary: str  # a zdm-owned name while both columns exist
    definition: str  # the CREATE INDEX statement of the copy
    columns: list[str]  # plain column list, with the new column's final name (SQLite rebuilds)
    unique: bool
    constraint: bool  # a UNIQUE constraint rather than a plain index


@dataclass(frozen=True)
class ConstraintCopy:
    """A constraint of the old column (or another table's foreign key to it), added to the shadow."""

    table: str  # the table the constraint is on
    final: str  # its name, which the copy takes at contract
    temporary: str
    definition: str  # e.g. CHECK ((length(code_zdm_new) > 0)), FOREIGN KEY (...) REFERENCES ...


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
        if table.columns[self.column].primary_key:
            errors.append(f"{self.table}.{self.column} is part of the primary key; zdm does not change keys")
        if not table.primary_key:
            errors.append(f"table {self.table!r} has no primary key; the backfill and triggers need one")
        return errors

    def touches(self) -> set[tuple[str, str]]:
        return {(self.table, name) for name in (self.column, self.shadow, self.final_name)}

    # -- the live column ------------------------------------------------------------------------
    def _facts(self, c: Compiler) -> ColumnFacts:
        """What hangs on the column; offline (Alembic --sql) only what the model knows."""
        if c.connection is None:
            column = c.schema.table(self.table).column(self.column)
            default = column.default
            sql = default.sql if isinstance(default, SqlDefault) else (
                None if default is None else c.dialect.literal(column.type.coerce(default), column.type))
            return ColumnFacts(default=sql, not_null=not column.nullable)
        return c.dialect.column_facts(c.connection, self.table, self.column)

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
            if kind in ("p", "x"):
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
        return not c.is_postgres and self.two_way and self._not_null(c)

    def _needs_try_json(self, c: Compiler) -> bool:
        down = self.down(c.schema).needs_try_json if self.two_way else False
        return c.is_postgres and (self.up(c.schema).needs_try_json or down)

    def _all_converted(self, c: Compiler) -> dict[str, Any]:
        """Rows whose old value has no counterpart in the new column: the conversion failed."""
        lost = sa.and_(sa.column(self.column).is_not(None), sa.column(self.shadow).is_(None))
        return check_action(self.sample(c, lost, self.column),
                            f"values of {self.table}.{self.column} that {self.up(c.schema).name} cannot convert "
                            "(fix them, or choose another transform)")

    # -- phases -------------------------------------------------------------------------------
    def expand(self, c: Compiler) -> list[MigrationStep]:
        d, q = c.dialect, c.dialect.quote
        self.refuse_what_cannot_be_carried(c)
        steps = []
        if self._needs_try_json(c):
            steps.append(MigrationStep(EXPANDING, "helper function zdm_try_json", forward=[TRY_JSON_PG],
                                       compensate=["DROP FUNCTION IF EXISTS zdm_try_json(text)"]))
        added = sa.Column(self.shadow, self.shadow_type(c), nullable=True)
        forward: list[Any] = [d.add_column(self.table, added)]
        default = self._shadow_default(c)
        if default is not None and c.is_postgres:  # set after ADD COLUMN: existing rows stay NULL for the backfill
            forward.append(d.set_default(self.table, self.shadow, default))
        steps.append(MigrationStep(EXPANDING, f"add column {self.table}.{self.shadow}", forward=forward,
                                   compensate=[f"ALTER TABLE {q(self.table)} DROP COLUMN {q(self.shadow)}"]))
        if not c.is_postgres and (self._relaxes(c) or default is not None):
            alter: dict[str, dict[str, Any]] = {self.shadow: {"server_default": default}} if default else {}
            back: dict[str, dict[str, Any]] = {}
            if self._relaxes(c):
                alter[self.column], back[self.column] = {"nullable": True}, {"nullable": False}
            steps.append(MigrationStep(
                EXPANDING, f"let the new app leave {self.table}.{self.column} out (the triggers fill it)",
                forward=[rebuild_action(self.table, alter=alter)],
                compensate=[rebuild_action(self.table, alter=back)] if back else []))
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
        for copy in self._index_copies(c):
            kind = "unique index" if copy.unique else "index"
            steps.append(MigrationStep(
                MIGRATING, f"{kind} {copy.temporary} on {self.table}.{self.shadow}, a copy of {copy.final}",
                forward=[*d.drop_index(copy.temporary, self.table), copy.definition],
                compensate=d.drop_index(copy.temporary, self.table),
                transactional=not d.concurrent_indexes,
            ))
        return steps

    def contract(self, c: Compiler) -> list[MigrationStep]:
        if self.keeps_old_column:
            return self._contract_in_place(c)
        if c.is_postgres:
            return self._contract_replace_postgres(c)
        return self._contract_replace_sqlite(c)

    def _drop_triggers(self, c: Compiler) -> list[Any]:
        _, drop = c.dialect.sync_triggers(self._sync(c))
        if self._needs_try_json(c):
            drop.append("DROP FUNCTION IF EXISTS zdm_try_json(text)")
        return drop

    def _contract_in_place(self, c: Compiler) -> list[MigrationStep]:
        """A rename: the old column stays, with everything attached to it, and takes the new name."""
        d, q = c.dialect, c.dialect.quote
        rename = f"ALTER TABLE {q(self.table)} RENAME COLUMN {q(self.column)} TO {q(self.final_name)}"
        forward: list[Any] = self._drop_triggers(c)
        if c.is_postgres:
            forward += [*d.drop_column(self.table, self.shadow), rename]
        else:
            for copy in self._index_copies(c):
                forward += d.drop_index(copy.temporary, self.table)
            if self._relaxes(c) or self._shadow_default(c) is not None:
                alter = {self.column: {"nullable": False}} if self._relaxes(c) else {}
                forward.append(rebuild_action(self.table, drop=[self.shadow], alter=alter))
            else:
                forward.append(f"ALTER TABLE {q(self.table)} DROP COLUMN {q(self.shadow)}")
            forward.append(rename)
        return [MigrationStep(CONTRACTING, f"drop {self.table}.{self.shadow}; {self.column} takes the name "
                              f"{self.final_name}", forward=forward)]

    def _constraint_copies(self, c: Compiler) -> list[ConstraintCopy]:
        """The old column's CHECKs and foreign keys, and other tables' foreign keys to it, on the shadow."""
        if c.connection is None:
            return []
        facts = self._facts(c)
        copies = []
        number = 0
        for name, (kind, definition) in facts.constraints.items():
            if kind in ("c", "f"):
                number += 1
                statement = rename_column(pglast.parse_sql(f"ALTER TABLE t ADD {definition}")[0].stmt,
                                          self.column, self.shadow)
                copies.append(ConstraintCopy(self.table, name, self._temporary("zdm_cc", c, number),
                                             RawStream()(statement.cmds[0].def_)))
        for child, name, definition in facts.referenced_by:
            number += 1
            statement = pglast.parse_sql(f"ALTER TABLE t ADD {definition}")[0].stmt
            constraint = statement.cmds[0].def_
            constraint.pk_attrs = tuple(ast.String(sval=self.shadow) if n.sval == self.column else n
                                        for n in constraint.pk_attrs)
            copies.append(ConstraintCopy(child, name, self._temporary("zdm_cc", c, number), RawStream()(constraint)))
        return copies

    def _temporary(self, prefix: str, c: Compiler, number: int) -> str:
        return object_name(prefix, self.sync_name(c.plan_id, self.column, str(number)))

    def _contract_replace_postgres(self, c: Compiler) -> list[MigrationStep]:
        """A type change on PostgreSQL: constraints first (NOT VALID, then VALIDATE), then one brief swap."""
        d, q = c.dialect, c.dialect.quote
        table, shadow = q(self.table), q(self.shadow)
        facts = self._facts(c)
        converted: list[Any] = [] if self.up(c.schema).identity else [self._all_converted(c)]
        copies = self._constraint_copies(c)
        not_null = d.not_null_check(self.table, self.shadow, self._sync_name(c))
        add, validate, drop = list(converted), [], []
        if facts.not_null:
            add.append(not_null[0])
            validate.append(not_null[1])
            drop.append(not_null[2])
        for copy in copies:
            add.append(f"ALTER TABLE {q(copy.table)} ADD CONSTRAINT {q(copy.temporary)} {copy.definition} NOT VALID")
            validate.append(d.validate_constraint(copy.table, copy.temporary))
            drop.append(d.drop_constraint(copy.table, copy.temporary))
        steps = []
        if validate:
            steps += [
                MigrationStep(CONTRACTING, f"constraints of {self.column} on {self.shadow} (NOT VALID)",
                              forward=add, compensate=drop),
                MigrationStep(CONTRACTING, f"validate the constraints on {self.shadow}", forward=validate,
                              compensate=drop),
            ]
        swap: list[Any] = [*converted, *self._drop_triggers(c)]
        swap += [d.drop_constraint(copy.table, copy.final) for copy in copies if copy.table != self.table]
        if facts.sequence and not facts.identity:  # DROP COLUMN would drop the sequence it owns
            swap.append(f"ALTER SEQUENCE {facts.sequence} OWNED BY {table}.{shadow}")
        if facts.not_null:
            swap += [d.set_not_null(self.table, self.shadow), not_null[2]]
        if facts.identity:
            serial = f"pg_get_serial_sequence({d.sql(sa.literal(table))}, {d.sql(sa.literal(self.shadow))})"
            swap += [f"ALTER TABLE {table} ALTER COLUMN {shadow} ADD GENERATED {facts.identity} AS IDENTITY",
                     f"SELECT setval({serial}, last_value, is_called) FROM {facts.sequence}"]
        swap += d.drop_column(self.table, self.column)
        if self.shadow != self.final_name:
            swap.append(f"ALTER TABLE {table} RENAME COLUMN {shadow} TO {q(self.final_name)}")
        if facts.identity:
            swap.append(f"ALTER SEQUENCE {self._identity_sequence(c)} RENAME TO {q(facts.sequence.split('.')[-1])}")
        default = self.final_default(c)
        if default is not None and not facts.identity:
            swap.append(d.set_default(self.table, self.final_name, default))
        for copy in copies:
            swap.append(f"ALTER TABLE {q(copy.table)} RENAME CONSTRAINT {q(copy.temporary)} TO {q(copy.final)}")
        for index in self._index_copies(c):
            swap.append(d.unique_constraint_using_index(self.table, index.final, index.temporary)
                        if index.constraint else d.rename_index(index.temporary, index.final))
        column = f"{table}.{q(self.final_name)}"
        if facts.comment is not None:
            swap.append(f"COMMENT ON COLUMN {column} IS {d.sql(sa.literal(facts.comment))}")
        if facts.statistics is not None:
            swap.append(f"ALTER TABLE {table} ALTER COLUMN {q(self.final_name)} SET STATISTICS {int(facts.statistics)}")
        if facts.storage is not None:
            swap.append(f"ALTER TABLE {table} ALTER COLUMN {q(self.final_name)} SET STORAGE {facts.storage}")
        for grantee, privilege, grantable in facts.grants:
            option = " WITH GRANT OPTION" if grantable else ""
            swap.append(f"GRANT {privilege} ({q(self.final_name)}) ON {table} TO {grantee}{option}")
        for function, cost in sorted({(t.function, t.cost) for t in facts.triggers if t.names_column and t.function}):
            # PL/pgSQL sessions keep plans made for the old type ("type of parameter ... does not match
            # that when preparing the plan"); an ALTER FUNCTION makes them compile the function again.
            swap.append(f"ALTER FUNCTION {function} COST {cost:g}")
        steps.append(MigrationStep(CONTRACTING, f"drop {self.table}.{self.column}; {self.shadow} takes its place "
                                   f"as {self.final_name}", forward=swap))
        return steps

    def _identity_sequence(self, c: Compiler) -> str:
        """The sequence ADD GENERATED AS IDENTITY makes for the shadow: <table>_<column>_seq."""
        return c.dialect.quote(f"{self.table}_{self.shadow}_seq"[:63])

    def _contract_replace_sqlite(self, c: Compiler) -> list[MigrationStep]:
        """A type change on SQLite: one rebuild gives the old column the new declared type and the
        shadow's values, and drops the shadow. The column keeps its name, place, and everything
        written for it (indexes, constraints, foreign keys both ways, triggers, views); a new name
        comes last, through SQLite's own RENAME COLUMN, which renames it everywhere."""
        q = c.dialect.quote
        facts = self._facts(c)
        converted: list[Any] = [] if self.up(c.schema).identity else [self._all_converted(c)]
        declared = self.shadow_type(c).compile(dialect=c.dialect.sa)
        final = {"type": declared, "values_from": self.shadow, "nullable": not facts.not_null,
                 "server_default": self.final_default(c)}
        renames = {self.column: self.final_name} if self.final_name != self.column else {}
        forward: list[Any] = [*converted, *self._drop_triggers(c)]
        forward += [f"DROP INDEX IF EXISTS {q(copy.temporary)}" for copy in self._index_copies(c)]
        forward.append(rebuild_action(self.table, drop=[self.shadow], alter={self.column: final}, renames=renames))
        return [MigrationStep(CONTRACTING, f"{self.table}.{self.column} takes the type and values of "
                              f"{self.shadow} as {self.final_name}", forward=forward)]

    def _index_copies(self, c: Compiler) -> list[IndexCopy]:
        """PostgreSQL: every index of the old column, rewritten for the shadow (a type change needs them all,
        a rename copies them for the new app's queries and upserts). SQLite: the plain ones, which the new
        app needs during the window; a type change's rebuild puts the others back as they were written."""
        if c.connection is None:  # offline: the live indexes are unknown
            return []
        if not c.is_postgres and not self.two_way:
            return []
        inspector = sa.inspect(c.connection)
        with warnings.catch_warnings():  # expression indexes are not reflected: the definitions are read instead
            warnings.simplefilter("ignore", sa.exc.SAWarning)
            constraints = {u["name"] for u in inspector.get_unique_constraints(self.table)}
        copies = []
        for number, (name, definition) in enumerate(sorted(c.dialect.index_definitions(c.connection,
                                                                                       self.table).items())):
            statement = pglast.parse_sql(definition)[0].stmt
            if not any(isinstance(n, ast.IndexElem | ast.ColumnRef) for n in walk(statement)) or \
                    self.column not in column_names(statement):
                continue
            if name in self._primary_key_indexes(c):
                continue
            temporary = object_name("zdm_ix", self.sync_name(c.plan_id, self.column, str(number)))
            plain = index_copy_problem(definition, self.column) is None
            columns = [e.name for e in statement.indexParams if e.name] if plain else []
            if c.is_postgres:
                copy = rename_column(pglast.parse_sql(definition)[0].stmt, self.column, self.shadow)
                copy.idxname, copy.concurrent, copy.if_not_exists = temporary, True, False
                sql = RawStream()(copy)
            elif plain:
                sql = c.dialect.sql(sa.schema.CreateIndex(c.dialect._index(
                    temporary, self.table, [self.shadow if n == self.column else n for n in columns],
                    bool(statement.unique))))
            else:
                continue  # SQLite, not plain: the window goes without it (speed, not correctness)
            copies.append(IndexCopy(
                final=name, temporary=temporary, definition=sql,
                columns=[self.final_name if n == self.column else n for n in columns],
                unique=bool(statement.unique), constraint=name in constraints))
        return copies

    def _primary_key_indexes(self, c: Compiler) -> set[str]:
        assert c.connection is not None
        name = sa.inspect(c.connection).get_pk_constraint(self.table).get("name")
        return {name} if name else set()

    # -- reference model ------------------------------------------------------------------------
    def apply_to_model(self, schema: Schema, phase: Phase, dialect: str) -> None:
        table = schema.table(self.table)
        if phase is EXPANDING:
            old = table.column(self.column)
            table.add_column(Column(self.shadow, self.model_type(old), nullable=True))
            table.column(self.shadow).default = self._model_shadow_default(schema)  # rows there stay NULL
            down = self.down(schema).python if self.two_way else None
            table.links.append(Link(self.column, self.shadow, up=self.up(schema).python, down=down,
                                    a_nullable=old.nullable, fill_unreached=True))
            if dialect == "sqlite" and self.two_way:
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
        if shadow != self.final_name:
            schema.rename_column(self.table, shadow, self.final_name)

    def _unlink(self, table: Table) -> Link:
        link = next(k for k in table.links if k.b == self.shadow)
        table.links.remove(link)
        return link


