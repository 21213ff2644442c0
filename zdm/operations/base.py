"""The operation contract: what every operation answers, and the context it compiles in.

An operation is a declared change (a pydantic model, so plan files validate for free). It answers
the same questions in the same order, so reading one module teaches all of them:

- ``check(schema)``: what is wrong with it against the schema, as the model holds it (no SQL runs;
  offline too). The schema has the plan's earlier operations applied.
- ``check_live(compiler)``: what is wrong with it for this database, read through the dialect:
  names taken, objects that use a column (both only when ``compiler.connection`` is set: it is
  None offline), statements the dialect judges. Both checks return one line per problem, and
  the plan is refused before anything runs.
- ``warnings(schema)``: risks worth a human look that do not stop the run.
- ``expand / migrate / contract(compiler)``: the steps of each phase, each step carrying its
  forward actions and the compensating actions that undo it, side by side. Statements come from
  the dialect's vocabulary (``zdm.dialects.Dialect``); where the databases differ in *when*
  something can happen, the operation reads a dialect flag, never the database's name.
- ``apply_to_model(schema, phase, dialect)``: the same change on the reference model.
- Facts others ask about: ``describe()``, ``touches()``, ``deletes_data``, ``existing_column``,
  ``filled_columns()``, ``column_fate(kind, dialect)``, ``creates()``.

Helpers several operations share live in ``zdm.operations.common``. A new operation is one module
here, one entry in the catalogue (``zdm/operations/__init__.py``), one example plan in
``examples/``, one case in ``tests/test_workload.py`` and one row in the README's table:
``tests/test_operation_contract.py`` names whichever is missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import sqlalchemy as sa
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from zdm.dialects import Dialect, mint
from zdm.model import ColumnType, Schema
from zdm.plan import MigrationStep, Phase

IDENTIFIER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)


def _plain_identifier(value: str) -> str:
    # Names are quoted by the dialect anyway; refusing odd ones early gives a clear error
    # instead of a surprising object name (and keeps injected SQL out of messages and logs).
    if not _IDENTIFIER.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a plain identifier (letters, digits and _, not starting with a "
            "digit, at most 63 characters)"
        )
    return value


Identifier = Annotated[str, AfterValidator(_plain_identifier), Field(json_schema_extra={"pattern": IDENTIFIER_PATTERN})]


def type_problems(c: Compiler, *column_types: ColumnType) -> list[str]:
    """The first column type this database cannot hold, as a one-line error (see Dialect.type_problem)."""
    for column_type in column_types:
        if problem := c.dialect.type_problem(column_type, c.connection):
            return [problem]
    return []


def default_problem(value: Any, column_type: ColumnType) -> str | None:
    """Why ``value`` cannot be a default of ``column_type``; None when it can (or there is none)."""
    try:
        column_type.from_plan(value)
    except (TypeError, ValueError, OverflowError) as exc:
        return f"default {value!r} is not a valid {column_type.value} ({exc})"
    return None


@dataclass
class Compiler:
    """What an operation needs to turn itself into SQL: the dialect and the live schema."""

    dialect: Dialect
    #: None when compiling offline (Alembic --sql): everything then comes from ``schema``.
    connection: sa.Connection | None
    #: The live schema with the plan's earlier operations applied, for checks and types.
    schema: Schema
    plan_id: str
    #: The operation's place in the plan (1 for the first).
    number: int = 1
    #: Columns the plan's operations replace by a new column at complete: (table, column) -> (the
    #: number of the operation, the new column). Shared by the compilers of one plan, so that copies
    #: of one index or constraint over several such columns are made once (see dual_column).
    replaced: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)

    def reflected_column(self, table: str, column: str) -> dict[str, Any]:
        """The live column; offline, or for one an earlier operation adds, the model's view."""
        if self.connection is not None and sa.inspect(self.connection).has_table(table):
            for info in sa.inspect(self.connection).get_columns(table):
                if info["name"] == column:
                    collation = self.dialect.column_collations(self.connection, table).get(column)
                    if collation and hasattr(info["type"], "collation"):
                        info["type"].collation = collation
                    return dict(info)
        modelled = self.schema.table(table).column(column)
        default = None if modelled.default is None else self.dialect.literal(modelled.default, modelled.type)
        return {"name": column, "type": self.dialect.column_type(modelled.type),
                "nullable": modelled.nullable, "default": default}

    def live_type(self, table: str, column: str) -> sa.types.TypeEngine[Any]:
        """The column's exact live type (VARCHAR(80) stays VARCHAR(80), not just TEXT)."""
        return self.reflected_column(table, column)["type"]


class Operation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The operation's name in a plan file; each subclass fixes it (the discriminator of AnyOperation).
    op: str
    table: Identifier

    #: Its contract deletes data (a column, a table): a plan of nothing else deserves a warning.
    deletes_data: ClassVar[bool] = False

    # -- the questions every operation answers -------------------------------------------------
    def check(self, schema: Schema) -> list[str]:
        """Errors that make the operation impossible on ``schema``; empty when fine."""
        return [] if schema.has_table(self.table) else [f"table {self.table!r} does not exist"]

    def check_live(self, c: Compiler) -> list[str]:
        """Errors for this database and, when ``c.connection`` is set, its live catalog; empty when fine."""
        return []

    def warnings(self, schema: Schema) -> list[str]:
        """Risks worth a human look that do not stop the run."""
        return []

    def expand(self, c: Compiler) -> list[MigrationStep]:
        return []

    def migrate(self, c: Compiler) -> list[MigrationStep]:
        return []

    def contract(self, c: Compiler) -> list[MigrationStep]:
        return []

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: Dialect) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    # -- facts others ask about ---------------------------------------------------------------
    @property
    def existing_column(self) -> str | None:
        """The existing column the operation reads (Alembic's offline hints describe it)."""
        return getattr(self, "column", None)

    def replaces_column(self, c: Compiler) -> tuple[str, str, str] | None:
        """(table, column, new column) when a new column takes the place of ``column`` at complete (a type
        change by a new column: the old one, its indexes and constraints are dropped); else None."""
        return None

    def changed_tables(self, c: Compiler) -> set[str]:
        """Every table the operation creates objects on or changes (columns, triggers, constraints):
        no other plan may be in flight on any of them."""
        return {self.table} if self.table else set()

    def creates(self) -> list[str]:
        """Names the plan's author chose for the tables, views, indexes and constraints this operation
        creates. None may be taken by any object of the schema: ``compile_plan`` checks the live
        catalog before anything runs, so zdm never drops (by name) what it did not create."""
        return []

    def filled_columns(self) -> list[str]:
        """Columns whose NULLs the operation replaces: a rollback gives them back where the row still
        holds the fill, and cannot tell a fill from the same value written over it."""
        return []

    def column_fate(self, kind: str, dialect: Dialect) -> str | None:
        """What becomes, at complete, of an object of ``kind`` (dependent, statistics, trigger,
        referenced_by, constraint) that uses ``column``; None when the operation changes no column."""
        return None

    # -- shared by all ------------------------------------------------------------------------
    def touches(self) -> set[tuple[str, str]]:
        """The columns this operation changes; two operations of one plan may not share one."""
        names = (getattr(self, field, None) for field in ("column", "new_name"))
        return {(self.table, name) for name in names if name}

    def steps(self, c: Compiler) -> list[MigrationStep]:
        return [*self.expand(c), *self.migrate(c), *self.contract(c)]

    def column_check(self, schema: Schema, *columns: str) -> list[str]:
        """The usual first checks: the table and the columns exist."""
        if errors := Operation.check(self, schema):
            return errors
        missing = [name for name in columns if name not in schema.table(self.table).columns]
        return [f"table {self.table!r} has no column {missing[0]!r}"] if missing else []

    def sync_name(self, plan_id: str, *parts: str) -> str:
        """A stable, unambiguous token naming this operation's zdm-owned objects (see ``mint``)."""
        return mint(plan_id, self.table, *parts)
