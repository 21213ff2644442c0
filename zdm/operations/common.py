"""Helpers several operations share: the rows an error names, the live names a plan must not reuse,
and a column's default set with its undo."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from zdm.actions import DataCheck
from zdm.model import Schema
from zdm.plan import MigrationStep, Phase

if TYPE_CHECKING:
    from zdm.operations.base import Compiler, Operation


def sample(c: Compiler, table: str, where: sa.ColumnElement[bool] | sa.TextClause, *columns: str) -> str:
    """SQL for up to five rows (their key and ``columns``) where ``where`` holds: the rows an error names."""
    key = c.schema.table(table).primary_key
    names = [*key, *[name for name in columns if name not in key]]
    selected: list[sa.ColumnClause[Any]] = [sa.column(n) for n in names]
    query = sa.select(*selected).select_from(sa.table(table)).where(where).limit(5)
    return c.dialect.sql(query)


def no_rows_where(c: Compiler, table: str, where: sa.ColumnElement[bool] | sa.TextClause, problem: str,
                  *columns: str) -> DataCheck:
    """A data check failing, with sample keys, when rows of ``table`` satisfy ``where``."""
    return DataCheck(sample(c, table, where, *columns), problem)


def no_duplicates(c: Compiler, table: str, columns: list[str], problem: str) -> DataCheck:
    """A data check naming up to five duplicated values of ``columns`` (NULLs never collide)."""
    cols: list[sa.ColumnClause[Any]] = [sa.column(n) for n in columns]
    query = (sa.select(*cols, sa.func.count().label("rows")).select_from(sa.table(table))
             .where(*[col.is_not(None) for col in cols]).group_by(*cols).having(sa.func.count() > 1).limit(5))
    return DataCheck(c.dialect.sql(query), problem)


def existing_indexes(connection: sa.Connection, table: str) -> set[str]:
    """Names of the live table's indexes and unique constraints."""
    inspector = sa.inspect(connection)
    if not inspector.has_table(table):
        return set()
    return {ix["name"] for ix in inspector.get_indexes(table) if ix["name"]} | {
        u["name"] for u in inspector.get_unique_constraints(table) if u["name"]}


def existing_constraints(connection: sa.Connection, table: str) -> set[str]:
    """Names of the live table's constraints (on SQLite a unique index stands for one too)."""
    inspector = sa.inspect(connection)
    if not inspector.has_table(table):
        return set()
    found = {check["name"] for check in inspector.get_check_constraints(table)}
    found |= {key["name"] for key in inspector.get_foreign_keys(table)}
    found.add(inspector.get_pk_constraint(table).get("name"))
    return {name for name in found if name} | existing_indexes(connection, table)


def default_steps(op: Operation, c: Compiler, column: str, new: str | None) -> list[MigrationStep]:
    """Set (or, with ``new`` None, drop) a column's default, with the previous one as compensation."""
    previous = c.reflected_column(op.table, column).get("default")
    return [MigrationStep(Phase.EXPANDING, op.describe(),
                          forward=c.dialect.alter_columns(op.table, {column: {"server_default": new}}),
                          compensate=c.dialect.alter_columns(op.table, {column: {"server_default": previous}}))]


def default_to_model(op: Operation, schema: Schema, phase: Phase, column: str, value: Any) -> None:
    """The model's twin of ``default_steps``: the previous default is kept to be restored by a rollback."""
    target = schema.table(op.table).column(column)
    memo = f"default:{op.table}.{column}"
    if phase is Phase.EXPANDING:
        schema.memo[memo] = target.default
        target.default = value
    elif phase is Phase.ROLLED_BACK and memo in schema.memo:
        target.default = schema.memo.pop(memo)
