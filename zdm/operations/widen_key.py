"""alter_column on a primary key: widen it (INTEGER -> BIGINT) or make it a UUID, with the foreign keys to it.

An ``integer`` key running out of values is the change teams fear most: the textbook
``ALTER TABLE orders ALTER COLUMN id TYPE bigint`` rewrites the table, its indexes and every
referencing table under ACCESS EXCLUSIVE (PostgreSQL docs, ALTER TABLE, "Notes": a type change
that is not binary coercible rewrites the table). zdm takes the dual-column path
(``dual_column.py``) for the key *and* for every column of another table whose single-column
foreign key points at it (read from the catalog, each a step of ``zdm plan``):

expand   ``orders.id_zdm_new BIGINT`` and a trigger copying ``id`` into it; the same on each
         referencing table (``items.order_id_zdm_new`` following ``order_id``).
migrate  batched backfill of the table and of each referencing table; a unique index on the new
         key built ``CONCURRENTLY``; ``CHECK (id_zdm_new IS NOT NULL) NOT VALID`` then
         ``VALIDATE`` (SHARE UPDATE EXCLUSIVE: writes go on); each referencing table's foreign key
         copied onto the two new columns ``NOT VALID`` then validated.
contract one brief transaction: each referencing table's old column goes (its old foreign key
         with it) and its new column takes the name, NOT NULL, default, indexes and the key's
         name; then the table's old key column goes (the old primary key with it), the new one is
         SET NOT NULL (trusting the validated check, no scan), becomes the primary key with
         ``ADD CONSTRAINT <old name> PRIMARY KEY USING INDEX`` (the index takes the name), takes
         the sequence (widened ``AS bigint``, its value kept) or the identity (a new one going on
         from the old one's value), the default and the column's name.
rollback the compensations, newest first: foreign key copies, checks, index, triggers and new
         columns dropped; the old key, its sequence and the old foreign keys were never touched.

To UUID (PostgreSQL, ``up`` an expression over the key: ``gen_random_uuid()``, ``md5(id::text)::uuid``)
the same path, with values: the key's trigger and backfill compute ``up``; each referencing column's
take the parent's new key by a join (ReferencingColumn), the parent's backfill first; the sequence
or identity goes with the old column, and an ``up`` that reads no column becomes the default.

One column of a composite key widens the same way; the future key's unique index keeps the key's
column order. Offline (Alembic ``--sql``) any key change is refused: the referencing tables and the
constraints' definitions are in the live catalog only.

On SQLite an ``INTEGER PRIMARY KEY`` is the rowid, already 64-bit, and stays declared INTEGER
(``BIGINT PRIMARY KEY`` would not be the rowid: no automatic ids, no AUTOINCREMENT); only the
referencing columns change, each by SQLite's type change (a rebuild that keeps the AUTOINCREMENT
counter and every foreign key, with PRAGMA foreign_key_check before commit).

Peers: pgroll and Reshape refuse key columns; pg-osc/gh-ost-style tools copy the whole table.
The new column is physically last: PostgreSQL cannot reorder columns without a rewrite, so
``SELECT *`` lists it last; the catalogue is otherwise that of a table created with ``bigint``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from zdm import transforms
from zdm.actions import Action
from zdm.coltypes import Family, to_sa
from zdm.dialects import ColumnFacts, Dialect, object_name
from zdm.model import ColumnType, Schema, SqlDefault
from zdm.operations.alter_column import AlterColumn
from zdm.operations.base import Compiler
from zdm.operations.dual_column import DualColumn, copy_locks
from zdm.plan import MigrationStep, Phase
from zdm.sqltree import condition_columns
from zdm.transforms import Transform

if TYPE_CHECKING:
    from zdm.operations.dual_column import ConstraintCopy

#: (from, to) that a key may take: what keeps every existing value and every foreign key valid.
WIDENINGS = {(ColumnType.INTEGER, ColumnType.BIGINT)}
#: Keys that may become UUID through the plan's ``up`` expression.
TO_UUID = {ColumnType.INTEGER, ColumnType.BIGINT}


def to_uuid(op: AlterColumn) -> bool:
    """Whether ``op`` changes the key's values (to UUID through ``up``), not only its width."""
    return op.type.family is Family.UUID


def is_key(op: AlterColumn, schema: Schema) -> bool:
    """Whether ``op`` changes (part of) its table's primary key, so this module takes it over."""
    if not schema.has_table(op.table) or op.column not in schema.table(op.table).columns:
        return False
    return schema.table(op.table).column(op.column).primary_key


class KeyColumn(AlterColumn):
    """The table's key column: the dual-column path, with the key moved to the new column."""

    @property
    def carries_key(self) -> bool:
        return True

    def up(self, schema: Schema) -> Transform:
        if self.up_sql is None:
            return super().up(schema)
        return transforms.expression(self.up_sql, self.column, to_sa(self.type))

    def _generates(self) -> bool:
        """``up`` names no column (``gen_random_uuid()``): after complete it is the key's default."""
        return self.up_sql is not None and not condition_columns(self.up_sql)

    def final_default(self, c: Compiler) -> str | None:
        if not to_uuid(self):
            return super().final_default(c)
        return self.up_sql if self._generates() else None

    def final_model_default(self, schema: Schema) -> Any:
        if not to_uuid(self):
            return super().final_model_default(schema)
        return SqlDefault(str(self.up_sql)) if self._generates() else None

    def check(self, schema: Schema) -> list[str]:
        # To UUID the values come from ``up`` (widen_key.check judged it), not from a conversion.
        return DualColumn.check(self, schema) if to_uuid(self) else super().check(schema)

    def swap_facts(self, c: Compiler) -> ColumnFacts:
        """What the swap carries: to UUID, not the sequence or identity (dropped with the old column:
        numbers do not fit a UUID key; rollback before complete keeps them)."""
        facts = self._facts(c)
        return dataclasses.replace(facts, sequence=None, identity=None) if to_uuid(self) else facts

    def key_columns(self, c: Compiler) -> list[str]:
        """The primary key's columns in its own order (a composite key's, read from the catalog)."""
        if c.connection is not None:
            found = sa.inspect(c.connection).get_pk_constraint(self.table).get("constrained_columns")
            if found:
                return list(found)
        return c.schema.table(self.table).primary_key

    def future_key(self, c: Compiler) -> list[str]:
        """The columns of the unique index that becomes the primary key: the key's, in its order, with
        the new column in the old one's place."""
        return [self.shadow if name == self.column else name for name in self.key_columns(c)]

    def pk_index(self, c: Compiler) -> str:
        """The unique index on the new column that becomes the primary key at contract."""
        return object_name("zdm_pk", self.sync_name(c.plan_id, self.column))

    def pk_name(self, c: Compiler) -> str:
        """The primary key constraint's name (kept at contract)."""
        if c.connection is not None:
            for name, (kind, _definition) in self._facts(c).constraints.items():
                if kind == "p":
                    return name
        return f"{self.table}_pkey"

    def _constraint_copies(self, c: Compiler) -> list[ConstraintCopy]:
        """Its own CHECKs, and every other table's foreign key to it, onto the new key; the foreign
        keys of widened referencing columns onto their new columns as well."""
        copies = super()._constraint_copies(c)
        widened = {(child.table, name): child for child, name in referencing(self, c.schema)}
        result = []
        for copy in copies:
            child = widened.get((copy.table, copy.final))
            if child is not None:
                definition = c.dialect.constraint_for(copy.definition, child.column, child.shadow)
                copy = dataclasses.replace(copy, definition=definition)
            result.append(copy)
        return result


class ReferencingColumn(AlterColumn):
    """A column of another table whose foreign key points at the key: widened alongside it.

    To UUID its new column takes the parent's new key of the row it refers to, read from the parent
    (a join), never ``up`` applied on its own: ``gen_random_uuid()`` would give the child another
    value than its parent, and even a deterministic ``up`` would have to be trusted to be one. The
    parent's backfill runs first; a child row written while its parent had no new key yet is filled
    by the child's backfill (or by its next write), and the check before contract names any left.
    """

    #: The foreign keys to the widened key, which the key's copies replace.
    to_key: tuple[str, ...] = ()
    #: The key's table, column and new column (the join's other side), for a change to UUID.
    ref_table: str = ""
    ref_column: str = ""
    ref_shadow: str = ""

    def up(self, schema: Schema) -> Transform:
        if not to_uuid(self):
            return super().up(schema)
        parent = sa.table(self.ref_table, sa.column(self.ref_column), sa.column(self.ref_shadow)).alias("zdm_ref")
        target = to_sa(self.type)

        def sql(reference: Any) -> Any:
            found = sa.select(parent.c[self.ref_shadow]).where(parent.c[self.ref_column] == reference)
            return sa.cast(found.scalar_subquery(), target)

        def python(value: Any) -> Any:
            rows = schema.table(self.ref_table).rows
            return next((row[self.ref_shadow] for row in rows if row[self.ref_column] == value), None)

        return Transform(f"the new key of {self.ref_table}", sql, python)

    def check(self, schema: Schema) -> list[str]:
        return DualColumn.check(self, schema) if to_uuid(self) else super().check(schema)

    def backfill_source(self, c: Compiler) -> Any:
        if not to_uuid(self):
            return super().backfill_source(c)
        # Qualified: the join's subquery reads the parent, which may have a column of the same name.
        return sa.literal_column(f"{c.dialect.quote(self.table)}.{c.dialect.quote(self.column)}")

    def _constraint_copies(self, c: Compiler) -> list[ConstraintCopy]:
        return [copy for copy in super()._constraint_copies(c) if copy.final not in self.to_key]


def key_column(op: AlterColumn) -> KeyColumn:
    return KeyColumn.model_validate(op.model_dump())


def referencing(op: AlterColumn, schema: Schema) -> list[tuple[ReferencingColumn, str]]:
    """Each (widened referencing column, its foreign key's name): single-column foreign keys of
    other tables to ``op``'s column whose column is narrower than the new key."""
    found: dict[tuple[str, str], list[str]] = {}
    for child in schema.tables.values():
        if child.name == op.table:
            continue
        for name, fk in sorted(child.foreign_keys.items()):
            if fk.ref_table == op.table and fk.ref_columns == (op.column,) and len(fk.columns) == 1 \
                    and child.column(fk.columns[0]).type is not op.type:
                found.setdefault((child.name, fk.columns[0]), []).append(name)
    result = []
    for (table, column), names in sorted(found.items()):
        part = ReferencingColumn(table=table, column=column, type=op.type, to_key=tuple(names), ref_table=op.table,
                                 ref_column=op.column, ref_shadow=op.shadow)
        result += [(part, name) for name in names]
    return result


def parts(op: AlterColumn, schema: Schema, dialect: Dialect) -> tuple[KeyColumn | None, list[ReferencingColumn]]:
    """The key column (None where the dialect's integer keys are already wide: nothing to do) and
    the distinct referencing columns widened with it."""
    children: dict[tuple[str, str], ReferencingColumn] = {}
    for child, _name in referencing(op, schema):
        children[(child.table, child.column)] = child
    # SQLite: a single INTEGER PRIMARY KEY is the rowid, 64-bit already; a column of a composite key is
    # not, and takes its type by a rebuild like any column.
    rowid = dialect.wide_integer_keys and len(schema.table(op.table).primary_key) == 1
    return (None if rowid else key_column(op)), list(children.values())


# -- checks -------------------------------------------------------------------------------------
def check(op: AlterColumn, schema: Schema) -> list[str]:
    """What the model alone can tell is wrong with widening the key."""
    table = schema.table(op.table)
    what = f"{op.table}.{op.column}"
    old = table.column(op.column).type
    if len(table.primary_key) > 1 and (to_uuid(op) or (old, op.type) not in WIDENINGS):
        return [f"{what} is part of the composite primary key {tuple(table.primary_key)}; zdm widens one of its "
                "columns from INTEGER to BIGINT, and changes a single-column key only to UUID"]
    if to_uuid(op) and old in TO_UUID:
        if op.new_name or op.up_transform or op.down_transform or op.default is not None:
            return [f"{what} is the primary key: changing it to UUID keeps its name; `up` gives the new values "
                    "(drop new_name, up_transform, down_transform and default)"]
        if op.up_sql is None:
            return [f"{what} is the primary key: changing it to UUID needs `up`, an expression giving each row's "
                    "new key (gen_random_uuid(), md5(id::text)::uuid)"]
        if others := condition_columns(op.up_sql) - {op.column}:
            return [f"{what}: `up` may read {op.column} only, not {', '.join(sorted(others))}"]
        for other in schema.tables.values():
            for name, condition in other.checks.items():
                named = condition_columns(condition)
                fks = [fk for fk in other.foreign_keys.values() if fk.ref_table == op.table]
                if (other.name == op.table and op.column in named) or any(set(fk.columns) & named for fk in fks):
                    return [f"CHECK {name} of {other.name} reads a column that becomes UUID: drop it before this "
                            "change and add it again after complete"]
    elif (old, op.type) not in WIDENINGS:
        return [f"{what} is the primary key; zdm changes a key from INTEGER to BIGINT, or from INTEGER or BIGINT "
                f"to UUID with `up`, not from {old.value} to {op.type.value}"]
    elif op.new_name or op.up_transform or op.down_transform or op.default is not None or op.up_sql:
        return [f"{what} is the primary key: widening it keeps its name, values and default "
                "(drop new_name, up_transform, down_transform, up and default)"]
    for other in schema.tables.values():
        for name, fk in other.foreign_keys.items():
            if fk.ref_table != op.table or op.column not in fk.ref_columns:
                continue
            if other.name == op.table:
                return [f"foreign key {name} of {op.table} refers to its own key; zdm does not widen a "
                        "self-referencing key"]
            if len(fk.columns) > 1:
                return [f"foreign key {name} of {other.name} refers to {what} with other columns; zdm widens "
                        "single-column foreign keys only"]
            if other.column(fk.columns[0]).primary_key:
                return [f"{other.name}.{fk.columns[0]} refers to {what} and is {other.name}'s primary key; "
                        f"widen {other.name} first"]
    errors = key_column(op).check(schema)
    for child, _name in referencing(op, schema):
        errors += child.check(schema)
    return errors


def check_live(op: AlterColumn, c: Compiler) -> list[str]:
    key, children = parts(op, c.schema, c.dialect)
    if c.connection is None:  # the referencing tables and their foreign keys come from the catalog
        return [f"{op.table}.{op.column} is the primary key: changing it reads the live catalog (the tables whose "
                "foreign keys point at it, the sequence, the constraints' definitions), which an offline (--sql) "
                "run does not have; run zdm against the database instead of offline"]
    errors = [] if key is None else key.check_live(c)
    for child in children:
        errors += child.check_live(c)
    if key is not None and to_uuid(op):
        for table, name, definition in key._facts(c).referenced_by:
            # A child written before its parent (the check deferred to commit) would find no new key to copy.
            if " DEFERRABLE" in definition.upper() and "NOT DEFERRABLE" not in definition.upper():
                errors.append(f"foreign key {name} of {table} is DEFERRABLE: a row written before the {op.table} row "
                              f"it refers to would find no new key to take; make it NOT DEFERRABLE before this change")
    return errors


# -- phases -------------------------------------------------------------------------------------
EXPANDING, MIGRATING, CONTRACTING = Phase.EXPANDING, Phase.MIGRATING, Phase.CONTRACTING


def expand(op: AlterColumn, c: Compiler) -> list[MigrationStep]:
    """The new key column and its trigger, then the same on each referencing table."""
    key, children = parts(op, c.schema, c.dialect)
    steps = [MigrationStep(EXPANDING, f"{op.table}.{op.column} keeps its declaration: this database's integer "
                           "key already holds BIGINT's values")] if key is None else key.expand(c)
    for child in children:
        for step in child.expand(c):
            step.description += f" (refers to {op.table}.{op.column})"
            steps.append(step)
    if children:
        # Undone in reverse, the referencing tables first, in one transaction: each undo takes every
        # table's lock first, the key's table before those that refer to it (the order apps lock them
        # in); a rollback under load otherwise deadlocked an app that wrote an order, then its items.
        locks = c.dialect.lock_tables([op.table, *dict.fromkeys(child.table for child in children)], exclusive=True)
        for step in steps:
            if step.compensate and step.transactional:
                step.compensate = [*locks, *step.compensate]
    return steps


def _rules(part: AlterColumn, key: KeyColumn, c: Compiler) -> list[MigrationStep]:
    """What the part's new column must obey before the swap, each rule added NOT VALID in its own
    brief transaction (the referenced table locked first, as apps lock it) and validated in another
    (SHARE UPDATE EXCLUSIVE: writes go on): NOT NULL through a check, and the copies of its
    constraints (for the key, the foreign keys that point at it)."""
    d = c.dialect
    rules: list[tuple[str, list[Action], list[Action], list[Action], list[Action], list[Action]]] = []
    if part._facts(c).not_null:
        add, validate, drop = d.refuse_nulls(part._sync_name(c), part.table, part.shadow)
        rules.append((f"NOT NULL of {part.table}.{part.shadow}", [], [], add, validate, drop))
    for copy in part._constraint_copies(c):
        # the add drops a leftover first (ACCESS EXCLUSIVE on the copy's table), then adds (SHARE ROW
        # EXCLUSIVE on both); the undo drops (ACCESS EXCLUSIVE on both): see copy_locks
        rules.append((f"{copy.final} of {copy.table} as {copy.temporary}", copy_locks(c, [copy], {copy.table}),
                      copy_locks(c, [copy], copy.tables), d.add_constraint(copy.table, copy.temporary, copy.definition),
                      d.validate_constraint(copy.table, copy.temporary), d.drop_constraint(copy.table, copy.temporary)))
    steps = []
    for what, lock, undo_lock, add, validate, drop in rules:
        # A leftover of an earlier try goes first (the add may run again after a kill), after the locks.
        # Undone in a transaction too, the tables locked in the apps' order.
        steps.append(MigrationStep(MIGRATING, f"{what} (NOT VALID)", forward=[*lock, *drop, *add],
                                   compensate=[*undo_lock, *drop]))
        if validate:  # outside a transaction: never in one with the brief lock of an ADD; the step above undoes both
            steps.append(MigrationStep(MIGRATING, f"validate {what}", forward=validate, compensate=[],
                                       transactional=False))
    return steps


def migrate(op: AlterColumn, c: Compiler) -> list[MigrationStep]:
    """Backfills, the future key's unique index, then the new columns' rules NOT VALID and validated."""
    d = c.dialect
    key, children = parts(op, c.schema, d)
    if key is None or d.retypes_in_place:  # each column by the dialect's own type change
        return [step for part in [*children, *([key] if key else [])] for step in part.migrate(c)]
    steps = key.migrate(c)
    for child in children:
        steps += child.migrate(c)
    steps.append(MigrationStep(
        MIGRATING, f"unique index {key.pk_index(c)} on {op.table}.{key.shadow}, the future primary key",
        forward=d.create_index(key.pk_index(c), op.table, key.future_key(c), unique=True),
        compensate=d.drop_index(key.pk_index(c), op.table), transactional=not d.concurrent_indexes))
    for part in [*children, key]:  # the key's copies are the foreign keys, which need the children's columns
        steps += _rules(part, key, c)
    return steps


def _swap(part: AlterColumn, c: Compiler) -> list[Action]:
    """The part's old column goes; its new one takes its place (see DualColumn._contract_swap)."""
    d = c.dialect
    facts = part.swap_facts(c)
    not_null = d.refuse_nulls(part._sync_name(c), part.table, part.shadow) if facts.not_null else None
    return [*part._drop_triggers(c), *d.replace_column(
        part.table, part.column, part.shadow, part.final_name, facts, default=part.final_default(c),
        not_null=not_null,
        constraints=[(copy.table, copy.temporary, copy.final) for copy in part._constraint_copies(c)],
        indexes=[(copy.temporary, copy.final, copy.constraint) for copy in part._index_copies(c)])]


def contract(op: AlterColumn, c: Compiler) -> list[MigrationStep]:
    """One brief transaction: the referencing columns, then the key, swapped; the primary key on
    the new column through its index; the sequence widened."""
    d = c.dialect
    key, children = parts(op, c.schema, d)
    if key is None or d.retypes_in_place:  # SQLite: a composite key's column, too, by a rebuild
        return [step for part in [*children, *([key] if key else [])] for step in part.contract(c)]
    # The table first, then those that refer to it: the order apps lock them in.
    forward = d.lock_tables([op.table, *dict.fromkeys(child.table for child in children)], exclusive=True)
    for child in children:
        forward += _swap(child, c)
    forward += _swap(key, c)
    forward += d.primary_key_using_index(op.table, key.pk_name(c), key.pk_index(c), key.key_columns(c))
    facts = key.swap_facts(c)
    if facts.sequence and not facts.identity:
        forward += d.widen_sequence(facts.sequence, d.column_type(op.type))
    names = ", ".join(f"{child.table}.{child.column}" for child in children)
    return [MigrationStep(CONTRACTING, f"drop {op.table}.{op.column}"
                          + (f" and {names}" if names else "")
                          + f"; {key.shadow} becomes the primary key {key.pk_name(c)} as {op.column}",
                          forward=forward)]


# -- reference model ------------------------------------------------------------------------------
def apply_to_model(op: AlterColumn, schema: Schema, phase: Phase, dialect: Dialect) -> None:
    key, children = parts(op, schema, dialect)
    ordered: list[AlterColumn] = [*children, *([key] if key else [])]
    if phase is not CONTRACTING:
        ordered.reverse()
    if phase is Phase.ROLLED_BACK:
        ordered.reverse()
    for part in ordered:
        part.apply_to_model(schema, phase, dialect)
