"""alter_column: change a column's type without rewriting the table under an exclusive lock.

An in-place ALTER COLUMN ... TYPE rewrites the whole table under ACCESS EXCLUSIVE on
PostgreSQL; zdm never does that. It takes the dual-column path (see dual_column.py) instead:

expand   add ``<column>_zdm_new`` (or ``new_name``) of the new type, and triggers converting
         writes both ways with ``up`` and ``down``.
migrate  backfill through ``up``; then check every value converted, naming the keys of those
         that did not (e.g. 'abc' -> INTEGER), before anything is dropped.
contract check again; drop the old column; the new one takes the column's name (or keeps
         ``new_name``), NOT NULL, ``default`` and the index names.

Without ``new_name`` both app versions keep using the column's name, and the new type takes over
at complete: this fits widening changes (INTEGER -> BIGINT) and apps that convert in code. With
``new_name`` the new app reads and writes the new column during the window.

On a primary-key column (INTEGER -> BIGINT) zdm.operations.widen_key takes over: the key and
every column whose foreign key points at it go the same path together.
"""

from __future__ import annotations

import zoneinfo
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import ConfigDict, Field, model_validator

from zdm import coltypes, transforms
from zdm.dialects import Dialect, shadow_column
from zdm.model import Column, ColumnType, Family, Schema, SqlDefault
from zdm.operations import retype_in_place
from zdm.operations.base import Compiler, Identifier, default_problem, type_problems
from zdm.operations.dual_column import DualColumn
from zdm.plan import MigrationStep, Phase
from zdm.transforms import Transform

#: (from, to) -> (up, down) when the plan does not name them; then by family (FAMILY_TRANSFORMS).
DEFAULT_TRANSFORMS: dict[tuple[ColumnType, ColumnType], tuple[str, str]] = {
    (ColumnType.TEXT, ColumnType.INTEGER): ("to_integer", "to_text"),
    (ColumnType.TEXT, ColumnType.BIGINT): ("to_integer", "to_text"),
    (ColumnType.INTEGER, ColumnType.TEXT): ("to_text", "to_integer"),
    (ColumnType.BIGINT, ColumnType.TEXT): ("to_text", "to_integer"),
    (ColumnType.TEXT, ColumnType.JSON): ("to_json", "json_to_text"),
    (ColumnType.JSON, ColumnType.TEXT): ("json_to_text", "to_json"),
}

#: (from family, to family) -> (up, down). ``cast`` is made safe for the two types by transforms.fit:
#: a value the new type cannot hold (too long, too large, not a UUID or a label) becomes NULL and is
#: named by key before contract, never cut.
FAMILY_TRANSFORMS: dict[tuple[Family, Family], tuple[str, str]] = {
    **{(f, f): ("cast", "cast") for f in (Family.TEXT, Family.INTEGER, Family.NUMERIC, Family.JSON)},
    (Family.INTEGER, Family.NUMERIC): ("cast", "cast"), (Family.NUMERIC, Family.INTEGER): ("cast", "cast"),
    (Family.TEXT, Family.UUID): ("cast", "cast"), (Family.UUID, Family.TEXT): ("cast", "cast"),
    (Family.TEXT, Family.ENUM): ("cast", "cast"), (Family.ENUM, Family.TEXT): ("cast", "cast"),
    # (AlterColumn.up/down read the TIMESTAMP in a named zone, UTC unless `zone` says otherwise)
    (Family.TIMESTAMP, Family.TIMESTAMPTZ): ("cast", "cast"), (Family.TIMESTAMPTZ, Family.TIMESTAMP): ("cast", "cast"),
}


def default_transforms(old: ColumnType, new: ColumnType) -> tuple[str, str] | None:
    """The (up, down) conversions of a change from ``old`` to ``new`` when the plan names none."""
    return DEFAULT_TRANSFORMS.get((old, new)) or FAMILY_TRANSFORMS.get((old.family, new.family))


class AlterColumn(DualColumn):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    op: Literal["alter_column"] = "alter_column"
    column: Identifier
    type: ColumnType
    #: Transform from the old value to the new one (default: chosen by the two types).
    up_transform: str | None = None
    #: Transform back, for writes of the new app that the old app reads.
    down_transform: str | None = None
    new_name: Identifier | None = None
    #: The column's default after complete (the old one rarely fits the new type).
    default: Any = None
    #: TIMESTAMP <-> TIMESTAMPTZ: the time zone whose wall-clock time the TIMESTAMP holds (an IANA
    #: name such as Europe/Paris; default UTC). Outside UTC the change takes the dual-column path.
    zone: str | None = None
    #: ``up`` in a plan: a PostgreSQL expression giving a primary key's new value when it changes to
    #: UUID (``gen_random_uuid()``, ``md5(id::text)::uuid``); see zdm.operations.widen_key.
    up_sql: str | None = Field(None, alias="up")

    @model_validator(mode="after")
    def _known(self) -> AlterColumn:
        for name in (self.up_transform, self.down_transform):
            if name is not None:
                transforms.get(name)
        if self.up_sql is not None:
            from zdm.operations.add_check import one_expression

            try:
                one_expression(self.up_sql)
            except ValueError as exc:
                raise ValueError(f"up: {exc}") from None
        if not self.type.declared:
            raise ValueError(f"zdm copies columns of type {self.type.name} but does not create them; "
                             "pick another type")
        if self.zone is not None:
            try:
                zoneinfo.ZoneInfo(self.zone)
            except (ValueError, zoneinfo.ZoneInfoNotFoundError):
                raise ValueError(f"unknown time zone {self.zone!r} (an IANA name such as Europe/Paris)") from None
            if self.up_transform or self.down_transform:
                raise ValueError("give `zone` or up_transform/down_transform, not both")
        return self

    def describe(self) -> str:
        renamed = f" as {self.new_name}" if self.new_name else ""
        zone = f" (TIMESTAMP in {self.zone})" if self.zone else ""
        return f"change {self.table}.{self.column} to {self.type.value}{renamed}{zone}"

    @property
    def shadow(self) -> str:
        return self.new_name or shadow_column(self.column)

    @property
    def final_name(self) -> str:
        return self.new_name or self.column

    # -- which path: a key column (widen_key.py), in place when the dialect allows it for the two types
    # -- (retype_in_place.py), else the dual-column path -----------------------------------------------
    def _widens_key(self, schema: Schema) -> bool:
        from zdm.operations import widen_key

        return type(self) is AlterColumn and widen_key.is_key(self, schema)

    def expand(self, c: Compiler) -> list[MigrationStep]:
        from zdm.operations import widen_key

        if self._widens_key(c.schema):
            return widen_key.expand(self, c)
        return [] if retype_in_place.reason(self, c.schema, c.dialect) else super().expand(c)

    def migrate(self, c: Compiler) -> list[MigrationStep]:
        from zdm.operations import widen_key

        if self._widens_key(c.schema):
            return widen_key.migrate(self, c)
        return [] if retype_in_place.reason(self, c.schema, c.dialect) else super().migrate(c)

    def contract(self, c: Compiler) -> list[MigrationStep]:
        from zdm.operations import widen_key

        if self._widens_key(c.schema):
            return widen_key.contract(self, c)
        if retype_in_place.reason(self, c.schema, c.dialect):
            return retype_in_place.contract(self, c)
        return super().contract(c)

    def check_live(self, c: Compiler) -> list[str]:
        from zdm.operations import widen_key

        if problems := type_problems(c, self.type):
            return problems
        if self.zone is not None and (problem := c.dialect.zone_problem(self.zone, c.connection)):
            return [problem]
        if self._widens_key(c.schema):
            return widen_key.check_live(self, c)
        if not retype_in_place.reason(self, c.schema, c.dialect):
            return super().check_live(c)
        problem = c.dialect.retype_problem(c.connection, self.table, self.column, self.type) if c.connection else None
        return [problem] if problem else []

    def changed_tables(self, c: Compiler) -> set[str]:
        from zdm.operations import widen_key

        if self._widens_key(c.schema):  # the referencing tables get new columns and triggers too
            return {self.table, *(child.table for child, _name in widen_key.referencing(self, c.schema))}
        if retype_in_place.reason(self, c.schema, c.dialect):
            return {self.table}
        return super().changed_tables(c)

    def replaces_column(self, c: Compiler) -> tuple[str, str, str] | None:
        if self._widens_key(c.schema) or retype_in_place.reason(self, c.schema, c.dialect):
            return None
        return super().replaces_column(c)

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: Dialect) -> None:
        from zdm.operations import widen_key

        if self._widens_key(schema):
            widen_key.apply_to_model(self, schema, phase, dialect)
        elif retype_in_place.reason(self, schema, dialect):
            retype_in_place.apply_to_model(self, schema, phase)
        else:
            super().apply_to_model(schema, phase, dialect)

    def _pair(self, old: ColumnType) -> tuple[str, str]:
        chosen = (self.up_transform, self.down_transform)
        if None not in chosen:
            return chosen  # type: ignore[return-value]
        defaults = default_transforms(old, self.type)
        if defaults is None:
            return (self.up_transform or "copy", self.down_transform or "copy")
        return (self.up_transform or defaults[0], self.down_transform or defaults[1])

    def check(self, schema: Schema) -> list[str]:
        if self._widens_key(schema):
            from zdm.operations import widen_key

            return widen_key.check(self, schema)
        if errors := super().check(schema):
            return errors
        if self.up_sql is not None and not self.carries_key:
            return [f"{self.table}.{self.column}: `up` is for a primary key changed to UUID; give up_transform here"]
        old = schema.table(self.table).column(self.column).type
        if old == self.type and not self.new_name:  # by value: a parsed type is a new object
            return [f"{self.table}.{self.column} is already {self.type.value}"]
        if self.zone is not None and self._zoned(old) is None:
            return [f"`zone` is for a change between TIMESTAMP and TIMESTAMPTZ, not {old.value} -> {self.type.value}"]
        if default_transforms(old, self.type) is None and None in (self.up_transform, self.down_transform) \
                and old != self.type:
            return [f"no default conversion from {old.value} to {self.type.value}: give up_transform and "
                    f"down_transform (known: {', '.join(sorted(transforms.TRANSFORMS))})"]
        if problem := default_problem(self.default, self.type):
            return [problem]
        old_default = schema.table(self.table).column(self.column).default
        if self.default is None and old_default is not None and not isinstance(old_default, SqlDefault) \
                and self.up(schema).apply(old_default) is None:
            return [f"the default {old_default!r} of {self.table}.{self.column} does not convert to {self.type.value}: "
                    "give `default`"]
        return []

    def _zoned(self, old: ColumnType) -> bool | None:
        """For TIMESTAMP -> TIMESTAMPTZ True, for the way back False (the new type is aware), else None."""
        families = (old.family, self.type.family)
        if families == (Family.TIMESTAMP, Family.TIMESTAMPTZ):
            return True
        return False if families == (Family.TIMESTAMPTZ, Family.TIMESTAMP) else None

    def warnings(self, schema: Schema) -> list[str]:
        """A type change that keeps the name while the new type accepts values the old one does not:
        until complete both app versions write the old column, so the new app's values must fit the
        old type (a NUMERIC(10,2) rounds 1.2345, a UUID refuses other text)."""
        if self.new_name or self.check(schema) or self._widens_key(schema):
            return []
        old = schema.table(self.table).column(self.column).type
        why = coltypes.wider_values(schema.resolve(old), schema.resolve(self.type))
        if why is None:
            return []
        return [f"{self.table}.{self.column} keeps its name, and {self.type.value} accepts values {old.value} does "
                f"not ({why}): until complete both app versions write the {old.value} column, so the new app's "
                "values must fit it (others are refused or rounded); give a new_name if the new app must write "
                "them before complete"]

    def up(self, schema: Schema) -> Transform:
        old = schema.table(self.table).column(self.column).type
        if not (self.up_transform or self.down_transform) and (aware := self._zoned(old)) is not None:
            return transforms.at_time_zone(self.zone or "UTC", aware)  # in a named zone, whatever the session's
        chosen = transforms.get(self._pair(old)[0])
        return transforms.fit(chosen, schema.resolve(old), schema.resolve(self.type))

    def down(self, schema: Schema) -> Transform:
        old = schema.table(self.table).column(self.column).type
        if not (self.up_transform or self.down_transform) and (aware := self._zoned(old)) is not None:
            return transforms.at_time_zone(self.zone or "UTC", not aware)
        chosen = transforms.get(self._pair(old)[1])
        return transforms.fit(chosen, schema.resolve(self.type), schema.resolve(old))

    def shadow_type(self, c: Compiler) -> sa.types.TypeEngine[Any]:
        """The new type, with the old column's collation where both types take one."""
        new = c.dialect.column_type(self.type)
        collation = getattr(c.live_type(self.table, self.column), "collation", None)
        if collation and hasattr(new, "collation"):
            new.collation = collation
        return new

    def model_type(self, old: Column) -> ColumnType:
        return self.type

    @property
    def two_way(self) -> bool:
        """Without a new name, both app versions write the old column until complete: the shadow only follows."""
        return self.new_name is not None

    def final_default(self, c: Compiler) -> str | None:
        """``default`` when given, else the old default carried over: a constant converted by ``up``, an
        expression (a sequence, ``now()``) as written."""
        if self.default is not None:
            return c.dialect.literal(self.type.coerce(self.default), self.type)
        default = self._facts(c).default
        if default is None:
            return None
        value = c.schema.table(self.table).column(self.column).default
        if isinstance(value, SqlDefault) or value is None:
            return default
        return c.dialect.literal(self.type.coerce(self.up(c.schema).apply(value)), self.type)

    def final_model_default(self, schema: Schema) -> Any:
        if self.default is not None:
            return self.default
        value = schema.table(self.table).column(self.column).default
        return value if isinstance(value, SqlDefault) else self.up(schema).apply(value)
