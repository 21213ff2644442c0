"""Named value transforms: one SQL form (per dialect, through SQLAlchemy) and one Python twin.

The SQL form runs in triggers and backfills; the Python twin runs on the reference model. Keeping
both side by side in one table makes a divergence easy to spot and to test.

Conversions are *safe*: a value that does not convert becomes NULL instead of failing the old
app's write inside a trigger. Nothing is lost that way: the operation checks, before contract,
that no row holds a value in the old column and NULL in the new one, and names the rows if any.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import re
import uuid
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

if TYPE_CHECKING:
    from zdm.coltypes import ColumnType

INTEGER_TEXT = re.compile(r"\s*[-+]?[0-9]{1,18}\s*")
#: The text PostgreSQL's uuid type reads: 32 hex digits, a hyphen allowed after any group of four,
#: upper or lower case, the whole in braces or not (docs, "UUID Type").
UUID_TEXT = re.compile(r"\{[0-9a-fA-F]{4}(?:-?[0-9a-fA-F]{4}){7}\}|[0-9a-fA-F]{4}(?:-?[0-9a-fA-F]{4}){7}")
BIGINT_RANGE = (-(2**63), 2**63 - 1)


class SafeInteger(FunctionElement[Any]):
    """Text -> integer, NULL when the text is not an integer. Each dialect compiles it (zdm.dialects)."""

    inherit_cache = True
    type = sa.BigInteger()


class SafeCast(FunctionElement[Any]):
    """Text -> ``target`` (a UUID, an enum...), NULL when the text is not a value of it. PostgreSQL
    compiles it (zdm.dialects.postgresql: a helper that tries the cast); SQLite lacks those types."""

    inherit_cache = True

    def __init__(self, value: ColumnElement[Any], target: sa.types.TypeEngine[Any]) -> None:
        super().__init__(sa.cast(value, sa.Text))
        self.type = target


class SafeJson(FunctionElement[Any]):
    """Text -> JSON, NULL when the text is not valid JSON. Each dialect compiles it (zdm.dialects)."""

    inherit_cache = True
    type = sa.JSON()


class AtTimeZone(FunctionElement[Any]):
    """``value AT TIME ZONE zone``: a TIMESTAMP read as wall-clock time in ``zone`` gives a TIMESTAMPTZ,
    a TIMESTAMPTZ gives the wall-clock TIMESTAMP there. The zone is named, so the result does not
    depend on the session that runs it (an app's trigger or zdm's backfill). PostgreSQL compiles it."""

    inherit_cache = True

    def __init__(self, value: ColumnElement[Any], zone: str, aware: bool) -> None:
        super().__init__(value)
        self.zone = zone
        self.type = sa.DateTime(timezone=aware)


#: Zones whose offset is always zero: a TIMESTAMP read there is read as UTC.
UTC_ZONES = frozenset({"UTC", "Etc/UTC", "UCT", "Etc/UCT", "Universal", "Etc/Universal", "Zulu", "Etc/Zulu",
                       "GMT", "Etc/GMT", "Etc/GMT0", "Etc/GMT+0", "Etc/GMT-0", "GMT0", "Greenwich", "Etc/Greenwich"})


def local_to_utc(value: dt.datetime, zone: str) -> dt.datetime:
    """A wall-clock time in ``zone`` as an aware UTC datetime, by PostgreSQL's rules for the times a
    transition makes invalid or ambiguous: one in a gap (spring forward) takes the offset before the
    transition, one that occurs twice (fall back) the offset after it (PostgreSQL docs, "Handling of
    Invalid or Ambiguous Timestamps")."""
    where = zoneinfo.ZoneInfo(zone)
    first, second = value.replace(tzinfo=where, fold=0), value.replace(tzinfo=where, fold=1)
    if first.utcoffset() == second.utcoffset():
        return first.astimezone(dt.UTC)
    exists = first.astimezone(dt.UTC).astimezone(where).replace(tzinfo=None) == value
    return (second if exists else first).astimezone(dt.UTC)


def utc_to_local(value: dt.datetime, zone: str) -> dt.datetime:
    """An aware datetime as the wall-clock time (naive) in ``zone``."""
    return value.astimezone(zoneinfo.ZoneInfo(zone)).replace(tzinfo=None)


def at_time_zone(zone: str, aware: bool) -> Transform:
    """TIMESTAMP -> TIMESTAMPTZ (``aware``) or back, the TIMESTAMP being wall-clock time in ``zone``."""
    return Transform(f"at time zone {zone}", lambda c: AtTimeZone(c, zone, aware),
                     (lambda v: local_to_utc(v, zone)) if aware else (lambda v: utc_to_local(v, zone)))


def _integer(value: Any) -> int | None:
    if not INTEGER_TEXT.fullmatch(str(value)):
        return None
    number = int(str(value).strip())
    return number if BIGINT_RANGE[0] <= number <= BIGINT_RANGE[1] else None


def _json(value: Any) -> Any:
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Transform:
    name: str
    sql: Callable[[ColumnElement[Any]], ColumnElement[Any]]
    python: Callable[[Any], Any]
    identity: bool = False
    #: True when the PostgreSQL form calls zdm_try_json().
    needs_try_json: bool = False
    #: True when the PostgreSQL form calls zdm_try_cast() (see ``fit``).
    needs_try_cast: bool = False

    def apply(self, value: Any) -> Any:
        return None if value is None else self.python(value)


TRANSFORMS: dict[str, Transform] = {
    t.name: t
    for t in (
        Transform("copy", lambda c: c, lambda v: v, identity=True),
        Transform("lower", sa.func.lower, lambda v: str(v).lower()),
        Transform("upper", sa.func.upper, lambda v: str(v).upper()),
        Transform("trim", sa.func.trim, lambda v: str(v).strip(" ")),
        Transform("to_integer", SafeInteger, _integer),
        Transform("to_text", lambda c: sa.cast(c, sa.Text), str),
        Transform("to_json", SafeJson, _json, needs_try_json=True),
        Transform("json_to_text", lambda c: sa.cast(c, sa.Text), lambda v: json.dumps(v)),
        #: To the column's type, whatever it is: ``fit`` makes it real for the two types.
        Transform("cast", lambda c: c, lambda v: v, identity=True),
    )
}


def fit(transform: Transform, source: ColumnType, target: ColumnType) -> Transform:
    """``transform`` from a ``source`` column into a ``target`` column, made safe for the target: a
    value the target cannot hold becomes NULL (which the check before contract names by key) instead
    of failing the app write that carries it, or being cut. The rules, SQL and Python side by side:

    - ``cast`` to UUID or an enum: a cast that gives NULL for text that is not one (PostgreSQL);
      to TEXT: the text form (``uuid::text``, an enum's label); otherwise the value as it is.
    - into VARCHAR(n): a longer text becomes NULL (never cut).
    - into SMALLINT/INTEGER (BIGINT through to_integer): a value beyond the type's range becomes
      NULL; from NUMERIC, rounded half away from zero first (as PostgreSQL's cast does).
    - into NUMERIC(p,s): rounded to ``s`` places half away from zero; a value of more than p-s
      integer digits becomes NULL.
    """
    from zdm.coltypes import Family, to_sa

    chosen = transform
    if transform.name == "cast":
        if target.family in (Family.UUID, Family.ENUM):
            def coerce(value: Any) -> Any:
                try:
                    if target.family is Family.UUID and not UUID_TEXT.fullmatch(str(value)):
                        return None  # Python's UUID() takes more (spaces, urn:uuid:) than PostgreSQL's uuid_in
                    return target.coerce(value)
                except (TypeError, ValueError):
                    return None

            chosen = Transform("cast", lambda c: SafeCast(c, to_sa(target)), coerce, needs_try_cast=True)
        elif target.family is Family.TEXT and source.family is not Family.TEXT:
            chosen = Transform("cast", lambda c: sa.cast(c, sa.Text), lambda v: str(v))
        elif target.family is Family.INTEGER and source.family is Family.NUMERIC:
            # NaN, an infinity or a number beyond BIGINT has no integer: NULL, not a failed write
            low, high = BIGINT_RANGE
            chosen = Transform("cast", lambda c: sa.case((c.between(low, high),
                                                          sa.cast(sa.func.round(c), sa.BigInteger))),
                               _numeric_to_integer)
        elif target.family is Family.NUMERIC:
            chosen = Transform("cast", lambda c: c, lambda v: decimal.Decimal(v))
    if transform.name == "cast":
        chosen = replace(chosen, name=f"cast to {target.name}")
    if target.family is Family.TEXT and target.length is not None:
        return _bounded(chosen, target.length)
    if target.family is Family.INTEGER and target.name in INTEGER_RANGES:
        return _within(chosen, *INTEGER_RANGES[target.name])
    if target.family is Family.NUMERIC and target.precision is not None:
        return _numeric(chosen, target.precision, target.scale or 0)
    return chosen


def _numeric_to_integer(value: Any) -> int | None:
    number = decimal.Decimal(value)
    if not number.is_finite() or not BIGINT_RANGE[0] <= number <= BIGINT_RANGE[1]:
        return None
    return int(number.quantize(1, decimal.ROUND_HALF_UP))


INTEGER_RANGES = {"SMALLINT": (-(2**15), 2**15 - 1), "INTEGER": (-(2**31), 2**31 - 1)}


def _bounded(transform: Transform, length: int) -> Transform:
    def sql(column: ColumnElement[Any]) -> ColumnElement[Any]:
        value = transform.sql(column)
        return sa.case((sa.func.char_length(value) <= length, value))

    def python(value: Any) -> Any:
        converted = transform.python(value)
        return converted if converted is None or len(str(converted)) <= length else None

    return replace(transform, sql=sql, python=python, identity=False)


def _within(transform: Transform, low: int, high: int) -> Transform:
    def sql(column: ColumnElement[Any]) -> ColumnElement[Any]:
        value = transform.sql(column)
        return sa.case((value.between(low, high), value))

    def python(value: Any) -> Any:
        converted = transform.python(value)
        return converted if converted is None or low <= converted <= high else None

    return replace(transform, sql=sql, python=python, identity=False)


def _numeric(transform: Transform, precision: int, scale: int) -> Transform:
    limit = 10 ** (precision - scale)

    def sql(column: ColumnElement[Any]) -> ColumnElement[Any]:
        value = sa.func.round(transform.sql(column), scale)
        return sa.case((sa.func.abs(value) < limit, value))

    def python(value: Any) -> Any:
        converted = transform.python(value)
        if converted is None:
            return None
        rounded = decimal.Decimal(converted).quantize(decimal.Decimal(1).scaleb(-scale), decimal.ROUND_HALF_UP)
        return rounded if rounded.is_finite() and abs(rounded) < limit else None  # NaN is beyond any limit

    return replace(transform, sql=sql, python=python, identity=False)


def _md5_uuid(value: Any) -> uuid.UUID:
    return uuid.UUID(hashlib.md5(str(value).encode()).hexdigest())


#: Python twins of the ``up`` expressions the reference model knows, by their form with the column
#: named ``x``: ``md5(id::text)::uuid`` (deterministic) and ``gen_random_uuid()`` (a new value each
#: call, which the model cannot predict: any UUID).
EXPRESSION_TWINS: dict[str, Callable[[Any], Any]] = {
    "md5(x::text)::uuid": _md5_uuid,
    "gen_random_uuid()": lambda _value: uuid.uuid4(),
}


def expression(sql: str, column: str, target: sa.types.TypeEngine[Any]) -> Transform:
    """An SQL expression written in a plan (``up`` of a key changed to UUID) over ``column``, as a
    transform: the SQL form puts the reference it is given (``NEW."id"`` in a trigger, ``id`` in a
    backfill) where the expression names the column; the Python twin is that of a known form
    (EXPRESSION_TWINS), else a new UUID per call (the model cannot run SQL)."""
    from zdm.sqltree import expression as parse
    from zdm.sqltree import render, substitute_column

    def sql_form(column_element: ColumnElement[Any]) -> ColumnElement[Any]:
        name = getattr(column_element, "name", None)
        if getattr(column_element, "is_literal", False):
            reference = str(name)
        else:
            reference = '"' + str(name).replace('"', '""') + '"'
        return sa.literal_column(f"({substitute_column(sql, column, reference)})", type_=target)

    forms = {render(parse(form)): twin for form, twin in EXPRESSION_TWINS.items()}
    twin = forms.get(substitute_column(sql, column, "x"), lambda _value: uuid.uuid4())
    return Transform(f"up {sql}", sql_form, twin)


def get(name: str) -> Transform:
    try:
        return TRANSFORMS[name]
    except KeyError:
        known = ", ".join(sorted(TRANSFORMS))
        raise ValueError(f"unknown transform {name!r} (known: {known})") from None
