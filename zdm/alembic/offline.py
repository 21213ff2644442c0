"""Offline mode (``alembic upgrade --sql``): zdm's phases as a SQL script for review.

There is no database to read, so zdm keeps its own picture of the tables for the whole offline
run, built from, in order of precedence:

1. the hints given to the zdm operation itself, Alembic-style: ``existing_type``,
   ``existing_nullable`` and ``existing_server_default`` for the column it reads (its
   ``from_column`` if it has one, else its ``column``), and ``existing_primary_key`` for a
   table zdm has not seen;
2. tables created by ``op.create_table`` earlier in the same run, with their indexes, UNIQUE,
   CHECK and FOREIGN KEY constraints under the names the database gives them (a run from
   ``base`` needs no hints at all);
3. the zdm operations of earlier revisions in the run, applied with every phase (a revision is
   written against the shape its predecessors leave once complete).

An operation is compiled from this picture exactly as online from the live catalog (the
dialect's ``model_facts`` and ``model_index_definitions`` stand in for ``column_facts`` and
``index_definitions``), so the script holds every step the online run takes: a rename's unique
index copy, a type change's constraint copies.

Ordinary ``op.add_column`` / ``op.alter_column`` calls are not followed: a zdm operation on what
they changed needs hints. Expand and migrate are printed as SQL, the backfill as one UPDATE
(online, zdm runs it in key batches), zdm's data checks and SQLite rebuilds as comments, and
the compensating SQL of every step as comments. Contract is printed on request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event
from sqlalchemy.sql.base import _NoneName

from zdm import coltypes, introspect, planfile
from zdm.actions import Statement
from zdm.dialects import Dialect, for_name
from zdm.model import Column, ColumnType, ModelError, Schema, Table
from zdm.plan import STEP_PHASES, Backfill, MigrationStep, Phase
from zdm.planfile import PlanFile
from zdm.status import plural


class OfflineError(ValueError):
    """zdm cannot render an operation offline: it does not know the table well enough."""


@dataclass(frozen=True)
class Hints:
    """What a revision tells zdm about the table, for offline mode (Alembic's ``existing_*``)."""

    existing_type: Any = None
    existing_nullable: bool | None = None
    existing_server_default: Any = None
    existing_primary_key: tuple[str, ...] | None = None

    def __bool__(self) -> bool:
        return any(value is not None for value in vars(self).values())


HELP = ("offline (--sql) zdm knows a table from op.create_table earlier in the same run, or from "
        "hints on the operation: existing_type=, existing_nullable=, existing_server_default= "
        "(and existing_primary_key=[...] for a table it has not seen)")

_active: ContextVar[OfflineSchema | None] = ContextVar("zdm_offline_schema", default=None)


class OfflineSchema:
    """zdm's picture of the tables during one offline run."""

    def __init__(self, dialect: str) -> None:
        self.dialect_name = dialect  # resolved when a zdm operation renders, so other databases run as before
        self.schema = Schema()

    @cached_property
    def dialect(self) -> Dialect:
        return for_name(self.dialect_name)

    @contextmanager
    def following_create_table(self) -> Iterator[None]:
        """Learn the tables ``op.create_table`` creates while the run lasts."""
        token = _active.set(self)
        try:
            yield
        finally:
            _active.reset(token)

    def learn(self, table: sa.Table) -> None:
        model = Table(table.name)
        for column in table.columns:
            column_type = introspect.column_type(column.type)
            model.columns[column.name] = Column(
                column.name, column_type, nullable=bool(column.nullable) and not column.primary_key,
                default=_default_value(column.server_default, column_type), primary_key=column.primary_key)
        self._learn_constraints(table, model)
        self.schema.tables[table.name] = model

    def _learn_constraints(self, table: sa.Table, model: Table) -> None:
        """Its indexes, UNIQUE, CHECK and FOREIGN KEY constraints, by the names the database gives them:
        what zdm copies onto a new column online, it must print offline too."""
        from zdm.model import ForeignKey, Index
        from zdm.sqltree import condition_columns

        for index in table.indexes:
            if index.name and all(isinstance(part, sa.Column) for part in index.expressions):
                model.indexes[str(index.name)] = Index(tuple(c.name for c in index.columns), bool(index.unique))
        for constraint in table.constraints:
            columns = [c.name for c in getattr(constraint, "columns", ())]
            if isinstance(constraint, sa.UniqueConstraint):
                name = _name(constraint, self.dialect.constraint_name(table.name, "u", columns))
                model.uniques[name or f"(unnamed unique {', '.join(columns)})"] = tuple(columns)
            elif isinstance(constraint, sa.CheckConstraint):
                condition = str(constraint.sqltext.compile(dialect=self.dialect.sa,
                                                            compile_kwargs={"literal_binds": True}))
                used = sorted(condition_columns(condition), key=lambda n: list(table.columns.keys()).index(n)
                              if n in table.columns else 0)
                name = _name(constraint, self.dialect.constraint_name(table.name, "c", used))
                model.checks[name or f"(unnamed check {condition})"] = condition
            elif isinstance(constraint, sa.ForeignKeyConstraint):
                name = _name(constraint, self.dialect.constraint_name(table.name, "f", columns))
                model.foreign_keys[name or f"(unnamed key {', '.join(columns)})"] = ForeignKey(
                    tuple(columns), constraint.elements[0].target_fullname.split(".")[-2],
                    tuple(element.target_fullname.split(".")[-1] for element in constraint.elements),
                    constraint.ondelete.upper() if constraint.ondelete else None)

    def forget(self, name: str) -> None:
        self.schema.tables.pop(name, None)

    # -- rendering ---------------------------------------------------------------------------------
    def render(self, context: MigrationContext, plan_file: PlanFile, hints: Hints, *, contract: bool) -> None:
        """Print the plan's phases into Alembic's SQL output, then apply it to the picture."""
        operation = plan_file.operations[0]
        self._apply_hints(operation, hints)
        errors = [p.message for p in planfile.check(plan_file, self.schema) if p.level == "error"]
        if errors:
            raise OfflineError(f"{errors[0]}; {HELP}")
        try:
            plan = planfile.compile_plan(plan_file, None, schema=self.schema, dialect=self.dialect.name)
        except (ValueError, ModelError) as exc:
            raise OfflineError(f"{exc}; {HELP}") from None
        out, end = context.impl.static_output, context.impl.command_terminator
        out(f"-- zdm plan {plan.id}: {operation.describe()}")
        for phase in (Phase.EXPANDING, Phase.MIGRATING, *([Phase.CONTRACTING] if contract else [])):
            steps = plan.steps_of(phase)
            out(f"-- zdm {phase.value} ({plural(len(steps), 'step')}){WHEN[phase]}")
            for step in steps:
                if step.transactional:
                    self._step(out, end, step)
                else:
                    with context.autocommit_block():
                        self._step(out, end, step)
        if not contract and plan.steps_of(Phase.CONTRACTING):
            out(f"-- zdm CONTRACTING ({plural(len(plan.steps_of(Phase.CONTRACTING)), 'step')}) not shown: "
                "add -x zdm=contract to print it")
        for phase in STEP_PHASES:
            operation.apply_to_model(self.schema, phase, self.dialect)

    def _step(self, out: Callable[[str], None], end: str, step: MigrationStep) -> None:
        """Forward SQL as statements; what only zdm can run (checks, rebuilds) and undo as comments."""
        out(f"-- {step.description}")
        for action in step.forward:
            if isinstance(action, Statement):
                out(action.sql.strip() + end)
            else:
                out(_commented(action.describe(self.dialect), "-- "))
        if step.backfill is not None:
            out("-- backfill (online, zdm runs it in key batches with a checkpoint):")
            out(_backfill_sql(step.backfill, self.dialect) + end)
        if step.compensate or step.undo_backfill:
            batches = [] if step.undo_backfill is None else [
                *([step.undo_backfill.prepare] if step.undo_backfill.prepare else []),
                step.undo_backfill.describe() + " -- in key batches"]
            undo = "\n".join([*batches, *(action.describe(self.dialect) for action in step.compensate)])
            out("-- compensate:\n" + _commented(undo, "--   "))

    def _apply_hints(self, operation: Any, hints: Hints) -> None:
        if not hints or operation.table is None:
            return
        if not self.schema.has_table(operation.table):
            self.schema.add_table(Table(operation.table))
        table = self.schema.table(operation.table)
        for name in hints.existing_primary_key or ():
            key = table.columns.setdefault(name, Column(name, ColumnType.INTEGER))
            key.primary_key, key.nullable = True, False
        # The column the operation reads: add_column's `column` is new, only its `from_column` exists.
        name = operation.existing_column
        if name is None or (name not in table.columns and hints.existing_type is None):
            return  # check() then names what is missing
        column = table.columns.setdefault(name, Column(name, _column_type(hints.existing_type)))
        if hints.existing_type is not None:
            column.type = _column_type(hints.existing_type)
        if hints.existing_nullable is not None:
            column.nullable = hints.existing_nullable and not column.primary_key
        if hints.existing_server_default is not None:
            column.default = _default_value(hints.existing_server_default, column.type)


WHEN = {
    Phase.EXPANDING: ": before the new app version is deployed",
    Phase.MIGRATING: ": right after expand",
    Phase.CONTRACTING: ": only once no deployed app uses the old shape (zdm complete)",
}


@event.listens_for(sa.Table, "after_create")
def _table_created(table: sa.Table, connection: Any, **_: Any) -> None:
    if (offline := _active.get()) is not None:
        offline.learn(table)


@event.listens_for(sa.Table, "after_drop")
def _table_dropped(table: sa.Table, connection: Any, **_: Any) -> None:
    if (offline := _active.get()) is not None:
        offline.forget(table.name)


def _name(constraint: sa.Constraint, default: str | None) -> str | None:
    name = constraint.name
    return default if name is None or isinstance(name, _NoneName) else str(name)


def _commented(text: str, prefix: str) -> str:
    return "\n".join(prefix + line.removeprefix("-- ") for line in text.splitlines())


def _backfill_sql(backfill: Backfill, dialect: Dialect) -> str:
    q = dialect.quote
    sets = ", ".join(f"{q(column)} = {expression}" for column, expression in backfill.assignments.items())
    where = f" WHERE {backfill.pending}" if backfill.pending else ""
    return f"UPDATE {q(backfill.table)} SET {sets}{where}"


def _column_type(value: Any) -> ColumnType:
    if isinstance(value, type) and issubclass(value, sa.types.TypeEngine):
        value = value()
    if isinstance(value, sa.types.TypeEngine):
        return introspect.column_type(value)
    try:
        return coltypes.parse(str(value))
    except ValueError:
        raise OfflineError(f"existing_type {value!r} is not a SQLAlchemy type or a zdm type name") from None


def _default_value(default: Any, column_type: ColumnType) -> Any:
    """A server default as the model holds it (a Python value); None when zdm cannot tell."""
    if isinstance(default, sa.schema.DefaultClause):
        default = default.arg
    if isinstance(default, sa.sql.elements.TextClause):
        default = _sql_literal(default.text)
    if default is None or isinstance(default, sa.sql.ClauseElement):
        return None
    try:
        return column_type.coerce(default)
    except (TypeError, ValueError):
        return None


def _sql_literal(text: str) -> Any:
    text = text.strip()
    while text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        return None
