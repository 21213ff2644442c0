"""alter_column's cheap path: a type change the database makes in place, each value staying as it is.

Chosen from the two types by the dialect (``Dialect.in_place_retype``): on PostgreSQL a wider or
removed VARCHAR limit, VARCHAR <-> TEXT, more NUMERIC precision at the same scale, TIMESTAMP ->
TIMESTAMPTZ read as UTC (metadata only: no rewrite, no scan, an instant of ACCESS EXCLUSIVE under
the lock budget); on SQLite the widening changes, as one rebuild with the new declared type.

expand   nothing: every value the old app writes fits the new type as it is.
migrate  nothing.
contract ALTER COLUMN ... TYPE (PostgreSQL), a rebuild with the new declared type (SQLite). The new
         type takes over at complete, as on the dual-column path without ``new_name``; a rollback
         before it has nothing to undo.

A change with ``new_name``, a named ``up``/``down`` transform, a TIMESTAMP whose ``zone`` is not
UTC, or a pair the dialect does not allow takes the dual-column path (operations/dual_column.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zdm.dialects import Dialect
from zdm.model import Schema
from zdm.operations.base import Compiler
from zdm.plan import MigrationStep, Phase
from zdm.transforms import UTC_ZONES

if TYPE_CHECKING:
    from zdm.operations.alter_column import AlterColumn


def reason(operation: AlterColumn, schema: Schema, dialect: Dialect) -> str | None:
    """Why ``operation`` runs in place on ``dialect`` (a phrase ``zdm plan`` shows), or None."""
    if operation.new_name or operation.up_transform or operation.down_transform:
        return None
    if operation.zone is not None and operation.zone not in UTC_ZONES:
        return None  # TIMESTAMP values of another zone: each value changes, the dual-column path
    old = schema.table(operation.table).column(operation.column).type
    return dialect.in_place_retype(old, operation.type)


def contract(operation: AlterColumn, c: Compiler) -> list[MigrationStep]:
    why = reason(operation, c.schema, c.dialect)
    old = c.schema.table(operation.table).column(operation.column).type
    return [MigrationStep(Phase.CONTRACTING,
                          f"{operation.table}.{operation.column} {old.name} -> {operation.type.name} ({why})",
                          forward=c.dialect.retype(operation.table, operation.column, operation.type))]


def apply_to_model(operation: AlterColumn, schema: Schema, phase: Phase) -> None:
    """The column takes the new type at contract; its values, converted to the type's Python value."""
    if phase is not Phase.CONTRACTING:
        return
    table = schema.table(operation.table)
    table.column(operation.column).type = operation.type
    for row in table.rows:
        row[operation.column] = operation.type.coerce(row[operation.column])
