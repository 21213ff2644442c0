"""What every operation answers, and the context it compiles in.

An operation is a declared change (a pydantic model, so plan files validate for free). It answers
the same questions in the same order, so reading one module teaches all of them:

- ``check(schema)``: what is wrong with it against the live schema (no SQL runs);
- ``expand / migrate / contract(compiler)``: the steps of each phase, each step carrying its
  forward SQL and the compensating SQL that undoes it, side by side;
- ``apply_to_model(schema, phase, dialect)``: the same change on the reference model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from zdm.dialects import Dialect
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


def default_problem(value: Any, column_type: ColumnType) -> str | None:
    """Why ``value`` cannot be a default of ``column_type``; None when it can (or there is none)."""
    try:
        column_type.coerce(value)
    except (TypeError, ValueError) as exc:
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

    @property
    def is_postgres(self) -> bool:
        return self.dialect.name == "postgresql"

    def reflected_column(self, table: str, column: str) -> dict[str, Any]:
        """The live column; offline, or for one an earlier operation adds, the model's view."""
        if self.connection is not None and sa.inspect(self.connection).has_table(table):
            for info in sa.inspect(self.connection).get_columns(table):
                if info["name"] == column:
                    collation = self.dialect.column_collations(self.connection, table).get(column)
                    if collation and hasattr(info["type"], "collation"):
                        info["type"].collation = collation
                    return info
        modelled = self.schema.table(table).column(column)
        default = None if modelled.default is None else self.dialect.literal(modelled.default, modelled.type)
        return {"name": column, "type": self.dialect.column_type(modelled.type),
                "nullable": modelled.nullable, "default": default}

    def live_type(self, table: str, column: str) -> sa.types.TypeEngine[Any]:
        """The column's exact live type (VARCHAR(80) stays VARCHAR(80), not just TEXT)."""
        return self.reflected_column(table, column)["type"]


class Operation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    table: Identifier

    # -- the questions every operation answers -------------------------------------------------
    def check(self, schema: Schema) -> list[str]:
        """Errors that make the operation impossible on ``schema``; empty when fine."""
        return [] if schema.has_table(self.table) else [f"table {self.table!r} does not exist"]

    def warnings(self, schema: Schema) -> list[str]:
        """Risks worth a human look that do not stop the run."""
        return []

    def expand(self, c: Compiler) -> list[MigrationStep]:
        return []

    def migrate(self, c: Compiler) -> list[MigrationStep]:
        return []

    def contract(self, c: Compiler) -> list[MigrationStep]:
        return []

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: str) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    # -- shared by all ------------------------------------------------------------------------
    def touches(self) -> set[tuple[str, str]]:
        """The columns this operation changes; two operations of one plan may not share one."""
        names = (getattr(self, field, None) for field in ("column", "new_name"))
        return {(self.table, name) for name in names if name}

    def steps(self, c: Compiler) -> list[MigrationStep]:
        return [*self.expand(c), *self.migrate(c), *self.contract(c)]

    def sample(self, c: Compiler, where: sa.ColumnElement[bool], *columns: str) -> str:
        """SQL for up to five rows (their key and ``columns``) where ``where`` holds: the rows an error names."""
        key = c.schema.table(self.table).primary_key
        names = [*key, *[name for name in columns if name not in key]]
        query = sa.select(*[sa.column(n) for n in names]).select_from(sa.table(self.table)).where(where).limit(5)
        return c.dialect.sql(query)

    def column_check(self, schema: Schema, *columns: str) -> list[str]:
        """The usual first checks: the table and the columns exist."""
        if errors := Operation.check(self, schema):
            return errors
        missing = [name for name in columns if name not in schema.table(self.table).columns]
        return [f"table {self.table!r} has no column {missing[0]!r}"] if missing else []

    def sync_name(self, plan_id: str, *parts: str) -> str:
        """A stable name for this operation's zdm-owned objects."""
        return "_".join((plan_id.replace("-", "_"), self.table, *parts))
