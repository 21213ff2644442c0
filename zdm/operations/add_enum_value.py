"""add_enum_value: a new label for the enum type of a column, in place, metadata only (PostgreSQL).

expand   ``ALTER TYPE <enum> ADD VALUE IF NOT EXISTS '<value>'`` (``BEFORE``/``AFTER`` a label when
         given), a step of its own run outside a transaction (autocommit), as CREATE INDEX
         CONCURRENTLY is: PostgreSQL before 12 refuses it inside a transaction block, and from 12
         a value added in a transaction cannot be used until that transaction commits ("unsafe use
         of new value"). Committed on its own, the label is usable the moment ``start`` returns, by
         both app versions. No table is rewritten or scanned; the type's lock is held for an instant.
migrate  nothing.
contract nothing: the label is there already.

Compensation: none. PostgreSQL cannot drop a value from an enum, so a rollback leaves the label
in the type (``zdm plan`` says so, on the step and as a warning). That is safe for the old app,
which never writes the new label, and keeps the rollback's promise: every row written meanwhile
is intact, including one the new app wrote with the label (the old app then reads it as it is).
A ``start`` after the rollback finds the label there and adds nothing (``IF NOT EXISTS``). To take
the label out for good, a team rewrites the rows that hold it and recreates the type: a change of
its own, not a rollback.

SQLite has no enums: a column there is text, and the operation is refused before anything runs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from pydantic import Field, model_validator

from zdm.dialects import Dialect
from zdm.model import Family, Schema
from zdm.operations.base import Compiler, Identifier, Operation
from zdm.plan import MigrationStep, Phase

#: PostgreSQL's limit on an enum label (NAMEDATALEN - 1 bytes).
LABEL_BYTES = 63


class AddEnumValue(Operation):
    op: Literal["add_enum_value"] = "add_enum_value"
    #: A column of the enum type: the type to change is the column's.
    column: Identifier
    #: The new label.
    value: str = Field(max_length=LABEL_BYTES)
    #: Where the label goes in the type's order (default: last); at most one of the two.
    before: str | None = None
    after: str | None = None

    @model_validator(mode="after")
    def _where(self) -> AddEnumValue:
        if self.before is not None and self.after is not None:
            raise ValueError("give `before` or `after`, not both")
        if len(self.value.encode()) > LABEL_BYTES or "\x00" in self.value:
            raise ValueError(f"an enum label is at most {LABEL_BYTES} bytes, without NUL")
        return self

    def describe(self) -> str:
        return f"add label {self.value!r} to the enum of {self.table}.{self.column}"

    def check(self, schema: Schema) -> list[str]:
        if errors := self.column_check(schema, self.column):
            return errors
        column_type = schema.resolve(schema.table(self.table).column(self.column).type)
        if column_type.family is not Family.ENUM:
            return [f"{self.table}.{self.column} is {column_type.name}, not of an enum type (only PostgreSQL "
                    "has enums)"]
        for label in (self.before, self.after):
            if label is not None and column_type.labels and label not in column_type.labels:
                return [f"{label!r} is not a label of {column_type.name} ({', '.join(column_type.labels)})"]
        return []

    def warnings(self, schema: Schema) -> list[str]:
        enum = schema.resolve(schema.table(self.table).column(self.column).type)
        if self.value in enum.labels:
            return [f"{self.value!r} is already a label of {enum.name}: nothing to add"]
        return [f"PostgreSQL cannot drop an enum value: a rollback leaves {self.value!r} in {enum.name}, "
                "and rows written with it keep it"]

    def expand(self, c: Compiler) -> list[MigrationStep]:
        enum = c.schema.table(self.table).column(self.column).type.name
        return [MigrationStep(Phase.EXPANDING,
                              f"{self.describe()} ({enum}; outside a transaction, so it is usable as soon as "
                              "start returns; a rollback keeps it: PostgreSQL cannot drop an enum value)",
                              forward=c.dialect.add_enum_value(enum, self.value, before=self.before,
                                                               after=self.after),
                              transactional=False)]

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: Dialect) -> None:
        """At expand the type, and every column of it, gains the label; a rollback keeps it, as the
        database does."""
        if phase is not Phase.EXPANDING:
            return
        enum = schema.resolve(schema.table(self.table).column(self.column).type)
        if self.value in enum.labels:
            return
        labels = list(enum.labels)
        if self.before is not None and self.before in labels:
            labels.insert(labels.index(self.before), self.value)
        elif self.after is not None and self.after in labels:
            labels.insert(labels.index(self.after) + 1, self.value)
        else:
            labels.append(self.value)
        grown = replace(enum, labels=tuple(labels))
        schema.types[enum.name] = grown
        for table in schema.tables.values():
            for column in table.columns.values():
                if column.type.name == enum.name:
                    column.type = grown
