"""Column types: one representation for plan files, ``op.zdm_*``, the reference model and the dialects.

A :class:`ColumnType` is a canonical SQL name (``VARCHAR(255)``, ``NUMERIC(12,2)``, ``TIMESTAMPTZ``,
``TEXT[]``, an enum's name) and the *family* of Python values it holds in the model (``str``,
``int``, ``Decimal``, aware ``datetime``, ``uuid.UUID``...). Types compare by their canonical name,
so ``varchar(20)``, ``VARCHAR(20)`` and ``character varying(20)`` are one type, and ``VARCHAR(20)``
is not ``TEXT``.

Nothing here reads SQL by hand: a type written as text is parsed by PostgreSQL's parser (pglast),
its name looked up in SQLAlchemy's dialect tables (``ischema_names`` of PostgreSQL, then SQLite),
and the SQLAlchemy type object built from it goes through :func:`from_sa`, the same function that
reads the types SQLAlchemy reflects from a live database and the ``sa.String(255)`` an Alembic
revision passes. A name neither dialect knows is a user type (a PostgreSQL enum or domain) that the
database checks when the plan compiles (``Dialect.type_problem``).
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import math
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import base as pg_base
from sqlalchemy.dialects.sqlite import base as sqlite_base
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import sqltypes


class Family(enum.StrEnum):
    """The kind of Python value a type holds in the model (and in SQLAlchemy's results)."""

    TEXT = "text"  # str
    INTEGER = "integer"  # int
    NUMERIC = "numeric"  # decimal.Decimal, at the type's scale
    FLOAT = "float"  # float
    BOOLEAN = "boolean"  # bool
    TIMESTAMP = "timestamp"  # naive datetime
    TIMESTAMPTZ = "timestamptz"  # aware datetime (UTC)
    DATE = "date"  # datetime.date
    TIME = "time"  # datetime.time
    INTERVAL = "interval"  # datetime.timedelta
    UUID = "uuid"  # uuid.UUID
    BYTES = "bytes"  # bytes
    JSON = "json"  # what json.loads gives
    ARRAY = "array"  # list of the item type's values
    ENUM = "enum"  # str, one of the labels (a user type by name until the database says which)
    OTHER = "other"  # a type zdm copies but does not declare: values kept as the driver gives them


#: PostgreSQL's internal type names (as its parser normalises them) -> the names ``format_type`` prints,
#: which are the keys of SQLAlchemy's PostgreSQL ``ischema_names``.
_PG_INTERNAL = {"int2": "smallint", "int4": "integer", "int8": "bigint", "float4": "real", "float8": "double precision",
                "bool": "boolean", "varchar": "character varying", "bpchar": "character",
                "timestamptz": "timestamp with time zone", "timetz": "time with time zone"}
_WITH_ZONE = {"timestamp with time zone", "time with time zone"}


@dataclass(frozen=True, eq=False)
class ColumnType:
    """A column type: ``name`` is canonical SQL (see the module docstring); equality is by name.

    ``length`` for VARCHAR/CHAR, ``precision``/``scale`` for NUMERIC, ``item`` for arrays,
    ``labels`` for an enum whose labels are known (read from PostgreSQL).
    """

    name: str
    family: Family
    length: int | None = None
    precision: int | None = None
    scale: int | None = None
    item: ColumnType | None = None
    labels: tuple[str, ...] = field(default=())

    TEXT: ClassVar[ColumnType]
    INTEGER: ClassVar[ColumnType]
    BIGINT: ClassVar[ColumnType]
    BOOLEAN: ClassVar[ColumnType]
    TIMESTAMP: ClassVar[ColumnType]
    JSON: ClassVar[ColumnType]
    OTHER: ClassVar[ColumnType]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return self.name == other
        return isinstance(other, ColumnType) and self.name == other.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"ColumnType({self.name!r})"

    @property
    def value(self) -> str:
        """The canonical name (what the plan file, ``zdm plan`` and comparisons show)."""
        return self.name

    @property
    def declared(self) -> bool:
        """Whether an operation may create a column of this type (OTHER is only copied)."""
        return self.family is not Family.OTHER and (self.item is None or self.item.declared)

    # -- pydantic: a field of this type takes a type name (or an instance) ------------------------------
    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_plain_validator_function(
            _validate, serialization=core_schema.plain_serializer_function_ser_schema(lambda t: t.name))

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        return {"type": "string", "title": "ColumnType", "minLength": 1,
                "description": "A column type as SQL: a name with its parameters (VARCHAR(255), NUMERIC(12,2), "
                               "TIMESTAMP WITH TIME ZONE, TIMESTAMPTZ, DATE, TIME, INTERVAL, UUID, BYTEA or BLOB, "
                               "REAL, DOUBLE PRECISION, SMALLINT, INTEGER, BIGINT, BOOLEAN, TEXT, JSON, JSONB), "
                               "an array such as TEXT[], or a PostgreSQL enum or domain by name. The database "
                               "must have it (SQLite has no UUID, TIMESTAMPTZ, INTERVAL, arrays or enums).",
                "examples": ["TEXT", "VARCHAR(255)", "NUMERIC(12,2)", "TIMESTAMPTZ", "UUID", "TEXT[]"]}

    # -- the model's values --------------------------------------------------------------------------
    def coerce(self, value: Any) -> Any:
        """Normalise a Python value to what this type holds, so rows compare across databases.

        Raises ValueError (or TypeError) for a value the type cannot hold, e.g. ``'abc'`` for a
        NUMERIC or a TIMESTAMP string with a UTC offset (both databases would drop it silently).
        """
        from zdm.model import SqlDefault

        if value is None or isinstance(value, SqlDefault):
            return value
        return _COERCE[self.family](self, value)

    def stored(self, value: Any) -> Any:
        """``value`` as a database that enforces the type's limits stores it (PostgreSQL does; SQLite
        keeps any value): ValueError, worded as PostgreSQL's, for a text longer than ``VARCHAR(n)``
        or ``CHAR(n)`` (unless the excess is only spaces, which are cut), a NUMERIC(p,s) of more than
        p-s integer digits after rounding to s places (or infinite), and a SMALLINT, INTEGER or
        BIGINT out of its range; a ``CHAR(n)`` is padded with spaces. Not array items: a client that
        casts its array explicitly (SQLAlchemy's ARRAY on psycopg does) gets them cut, not refused.
        Source: PostgreSQL docs, "Character Types", "Numeric Types"."""
        value = self.coerce(value)
        if value is None:
            return None
        if self.family is Family.TEXT and self.length is not None:
            if len(value) > self.length:
                if value[self.length:].strip(" "):
                    raise ValueError(f"value too long for type {self.name} ({len(value)} characters)")
                value = value[:self.length]
            return value.ljust(self.length) if self.name.startswith("CHAR(") else value
        if self.family is Family.NUMERIC and self.precision is not None:
            digits = self.precision - (self.scale or 0)
            if value.is_infinite() or (value.is_finite() and abs(value) >= decimal.Decimal(10) ** digits):
                raise ValueError(f"numeric field overflow: {value} does not fit {self.name} "
                                 f"(below 10^{digits} in absolute value)")
            return value
        if self.family is Family.INTEGER and self.name in _INTEGER_BITS:
            bits = _INTEGER_BITS[self.name]
            if not -(2**bits) <= value < 2**bits:
                raise ValueError(f"{self.name.lower()} out of range: {value}")
        return value

    def from_plan(self, value: Any) -> Any:
        """A value a plan file gives (a default, a fill) as this type holds it, by strict rules:
        no truthiness (``"false"`` is not a BOOLEAN), no truncation (``3.9`` is not an INTEGER),
        the type's range (SMALLINT 16 bits, INTEGER 32, BIGINT 64), no NUL in text (PostgreSQL
        refuses it), JSON without NaN or infinity. Raises ValueError saying why."""
        from zdm.model import SqlDefault

        if value is None or self.family is Family.OTHER or isinstance(value, SqlDefault):
            return value
        if self.family is Family.INTEGER:
            if isinstance(value, float) and math.isfinite(value) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"an {self.name} is a whole number, not {type(value).__name__} {value!r}"
                                 f"{_unquoted(value, int)}")
            bits = _INTEGER_BITS.get(self.name, 63)
            if not -(2**bits) <= value < 2**bits:
                raise ValueError(f"{value} is out of the range of {self.name} ({-(2**bits)} to {2**bits - 1})")
            return value
        if self.family is Family.BOOLEAN:
            if not isinstance(value, bool):
                raise ValueError(f"a BOOLEAN is true or false, not {type(value).__name__} {value!r}"
                                 f"{_unquoted(value, bool)}")
            return value
        if self.family in (Family.TEXT, Family.ENUM):
            if not isinstance(value, str):
                raise ValueError(f"a {self.name} value is a string (quote it), not {type(value).__name__} {value!r}")
            if "\x00" in value:
                raise ValueError("text cannot hold the NUL character")
            return self.stored(value) if self.family is Family.TEXT else self.coerce(value)
        if self.family is Family.JSON:
            parsed = self.coerce(value)
            json.dumps(parsed, allow_nan=False)  # ValueError for NaN and infinity, TypeError for the rest
            return parsed
        if self.family in (Family.TIMESTAMP, Family.TIMESTAMPTZ) and not isinstance(value, str | dt.datetime):
            raise ValueError(f"a {self.name} is an ISO 8601 string, not {type(value).__name__} {value!r}")
        return self.stored(value) if self.family is Family.NUMERIC else self.coerce(value)


def _unquoted(value: Any, kind: type) -> str:
    """The hint for a number or a boolean written in quotes (``fill: "0"``): how to write it."""
    if not isinstance(value, str):
        return ""
    import yaml

    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return ""
    if type(parsed) is not kind:
        return ""
    written = str(parsed).lower() if kind is bool else str(parsed)
    return f"; write it without quotes: {written}, not {value!r}"


#: Bits of the signed integer types, for the range of a plan's value (PostgreSQL docs, "Integer Types").
_INTEGER_BITS = {"SMALLINT": 15, "INTEGER": 31, "BIGINT": 63}


def _validate(value: Any) -> ColumnType:
    if isinstance(value, ColumnType):
        return value
    if isinstance(value, type) and issubclass(value, sa.types.TypeEngine):
        value = value()
    if isinstance(value, sa.types.TypeEngine):
        return from_sa(value)
    if not isinstance(value, str):
        raise ValueError(f"a column type is SQL text such as VARCHAR(255), not {value!r}")
    return parse(value)


# -- values per family ---------------------------------------------------------------------------------
def _text(t: ColumnType, value: Any) -> str:
    return str(value)


def _integer(t: ColumnType, value: Any) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{value!r} is not a whole number")
    return int(value)


def _numeric(t: ColumnType, value: Any) -> decimal.Decimal:
    try:
        number = value if isinstance(value, decimal.Decimal) else decimal.Decimal(
            repr(value) if isinstance(value, float) else str(value).strip())
    except decimal.InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None
    if t.scale is not None and number.is_finite():
        number = number.quantize(decimal.Decimal(1).scaleb(-t.scale), rounding=decimal.ROUND_HALF_UP)
    return number


def _float(t: ColumnType, value: Any) -> float:
    number = float(value)
    if t.name == "REAL":  # PostgreSQL keeps 4 bytes
        number = float(struct.unpack("f", struct.pack("f", number))[0])
    return number


def _timestamp(t: ColumnType, value: Any) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
        if value.tzinfo is not None:  # the databases would drop the offset without a word
            raise ValueError(f"{value.isoformat()} has a UTC offset, which a TIMESTAMP does not keep")
    if not isinstance(value, dt.datetime):
        raise ValueError(f"{value!r} is not a date and time")
    return value.replace(tzinfo=None)


def _timestamptz(t: ColumnType, value: Any) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        raise ValueError(f"{value!r} is not a date and time")
    if value.tzinfo is None:  # read in the session's time zone, which zdm keeps at UTC
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _date(t: ColumnType, value: Any) -> dt.date:
    if isinstance(value, str):
        return dt.date.fromisoformat(value)
    if isinstance(value, dt.datetime):
        return value.date()
    if not isinstance(value, dt.date):
        raise ValueError(f"{value!r} is not a date")
    return value


def _time(t: ColumnType, value: Any) -> dt.time:
    if isinstance(value, str):
        return dt.time.fromisoformat(value)
    if not isinstance(value, dt.time):
        raise ValueError(f"{value!r} is not a time of day")
    return value


def _interval(t: ColumnType, value: Any) -> dt.timedelta:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return dt.timedelta(seconds=value)
    if not isinstance(value, dt.timedelta):
        raise ValueError(f"{value!r} is not an interval (give seconds or a timedelta)")
    return value


def _uuid(t: ColumnType, value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _bytes(t: ColumnType, value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    return bytes(value)


def _json(t: ColumnType, value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _array(t: ColumnType, value: Any) -> list[Any]:
    assert t.item is not None
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValueError(f"{value!r} is not a list")
    return [t.item.coerce(v) for v in value]


def _enum(t: ColumnType, value: Any) -> str:
    label = str(value)
    if t.labels and label not in t.labels:
        raise ValueError(f"{label!r} is not a label of {t.name} ({', '.join(t.labels)})")
    return label


_COERCE: dict[Family, Any] = {
    Family.TEXT: _text, Family.INTEGER: _integer, Family.NUMERIC: _numeric, Family.FLOAT: _float,
    Family.BOOLEAN: lambda t, v: bool(v), Family.TIMESTAMP: _timestamp, Family.TIMESTAMPTZ: _timestamptz,
    Family.DATE: _date, Family.TIME: _time, Family.INTERVAL: _interval, Family.UUID: _uuid,
    Family.BYTES: _bytes, Family.JSON: _json, Family.ARRAY: _array, Family.ENUM: _enum,
    Family.OTHER: lambda t, v: v,
}


# -- SQLAlchemy type objects <-> ColumnType ------------------------------------------------------------
def from_sa(sa_type: sa.types.TypeEngine[Any]) -> ColumnType:
    """The ColumnType of a SQLAlchemy type: one reflected from a database, built by :func:`parse`, or
    written in an Alembic revision (``sa.String(255)``, ``sa.Numeric(10, 2)``, ``postgresql.ARRAY(sa.Text)``).

    Unknown types are ``Family.OTHER``, named as PostgreSQL's dialect compiles them.
    """
    t = sa_type
    if isinstance(t, NamedType):
        return ColumnType(t.name, Family.ENUM)
    if isinstance(t, sa.ARRAY):
        item = from_sa(t.item_type if isinstance(t.item_type, sa.types.TypeEngine) else t.item_type())
        return ColumnType(f"{item.name}[]", Family.ARRAY, item=item)
    if isinstance(t, sa.Enum):
        if t.name is None or not t.native_enum:  # a non-native enum: text (with a CHECK)
            return ColumnType(f"VARCHAR({t.length})", Family.TEXT, length=t.length)
        return ColumnType(t.name, Family.ENUM, labels=tuple(t.enums))
    if isinstance(t, postgresql.DOMAIN):
        base = from_sa(t.data_type if isinstance(t.data_type, sa.types.TypeEngine) else t.data_type())
        return ColumnType(str(t.name), base.family, base.length, base.precision, base.scale, base.item, base.labels)
    if isinstance(t, postgresql.JSONB):
        return ColumnType("JSONB", Family.JSON)
    if isinstance(t, sa.JSON):
        return ColumnType("JSON", Family.JSON)
    if isinstance(t, sa.Boolean):
        return ColumnType("BOOLEAN", Family.BOOLEAN)
    if isinstance(t, sa.SmallInteger):
        return ColumnType("SMALLINT", Family.INTEGER)
    if isinstance(t, sa.BigInteger):
        return ColumnType("BIGINT", Family.INTEGER)
    if isinstance(t, sa.Integer):
        return ColumnType("INTEGER", Family.INTEGER)
    if isinstance(t, sa.Float):
        return ColumnType("REAL" if isinstance(t, sa.REAL) else "DOUBLE PRECISION", Family.FLOAT)
    if isinstance(t, sa.Numeric):
        p, s = t.precision, t.scale
        name = "NUMERIC" if p is None else f"NUMERIC({p})" if not s else f"NUMERIC({p},{s})"
        return ColumnType(name, Family.NUMERIC, precision=p, scale=s if p is not None else None)
    if isinstance(t, sa.DateTime):
        if t.timezone:
            return ColumnType("TIMESTAMPTZ", Family.TIMESTAMPTZ)
        return ColumnType("TIMESTAMP", Family.TIMESTAMP)
    if isinstance(t, sa.Date):
        return ColumnType("DATE", Family.DATE)
    if isinstance(t, sa.Time):
        return ColumnType("TIMETZ", Family.OTHER) if t.timezone else ColumnType("TIME", Family.TIME)
    if isinstance(t, sqltypes._AbstractInterval):
        if isinstance(t, postgresql.INTERVAL) and (t.fields or t.precision is not None):
            return ColumnType(_pg_name(t), Family.OTHER)
        return ColumnType("INTERVAL", Family.INTERVAL)
    if isinstance(t, sa.Uuid):
        return ColumnType("UUID", Family.UUID)
    if isinstance(t, sa.LargeBinary):
        return ColumnType("BYTEA", Family.BYTES)
    if isinstance(t, sa.Text):
        return ColumnType("TEXT", Family.TEXT)
    if isinstance(t, sa.CHAR | sa.NCHAR):
        return ColumnType(f"CHAR({t.length or 1})", Family.TEXT, length=t.length or 1)
    if isinstance(t, sa.String):  # a collation is not part of the type (the dual-column path carries it)
        return ColumnType(f"VARCHAR({t.length})", Family.TEXT, length=t.length) if t.length else \
            ColumnType("VARCHAR", Family.TEXT)
    return ColumnType(_pg_name(t), Family.OTHER)


def _pg_name(t: sa.types.TypeEngine[Any]) -> str:
    try:
        return str(t.compile(dialect=postgresql.dialect())).upper()
    except Exception:
        return type(t).__name__.upper()


def parse(text: str) -> ColumnType:
    """A type written as SQL -> ColumnType. Raises ValueError, one line, for what is not a type.

    Read by pglast (PostgreSQL's parser: ``TIMESTAMP WITH TIME ZONE``, ``varchar(255)[]``,
    ``public.mood``), the name looked up in SQLAlchemy's ``ischema_names`` (PostgreSQL's, then
    SQLite's, for ``BLOB``, ``DATETIME``...). A name neither knows is a user type (an enum or a
    domain) that only the database can confirm.
    """
    import pglast

    source = " ".join(str(text).split())
    if not source:
        raise ValueError("a column type cannot be empty")
    try:
        statements = pglast.parse_sql(f"CREATE TABLE zdm_t (zdm_c {source})")
        (element,) = statements[0].stmt.tableElts  # type: ignore[union-attr]
        type_name = element.typeName
        if element.constraints or element.collClause or type_name is None:
            raise ValueError
    except (pglast.parser.ParseError, ValueError, AttributeError):
        raise ValueError(f"{source!r} is not a column type") from None
    if type_name.pct_type or type_name.setof:
        raise ValueError(f"{source!r} is not a column type")
    names = [n.sval for n in type_name.names or ()]
    modifiers = []
    for modifier in type_name.typmods or ():
        number = getattr(getattr(modifier, "val", None), "ival", None)
        if number is None:
            raise ValueError(f"{source!r}: type parameters are whole numbers")
        modifiers.append(number)
    base = _named(names, modifiers, source)
    for _ in type_name.arrayBounds or ():
        base = ColumnType(f"{base.name}[]", Family.ARRAY, item=base)
    return base


def _named(names: list[str], modifiers: list[int], source: str) -> ColumnType:
    builtin = names[-1] if len(names) == 1 or names[0] == "pg_catalog" else None
    if builtin is not None:
        pg_name = _PG_INTERNAL.get(builtin, builtin)
        cls = pg_base.ischema_names.get(pg_name) or sqlite_base.ischema_names.get(builtin.upper())
        if cls is not None:
            try:
                sa_type = _instance(cls, pg_name, modifiers)
            except TypeError:
                raise ValueError(f"{source!r}: {builtin} takes no parameters {tuple(modifiers)}") from None
            return from_sa(sa_type)
    if modifiers:
        raise ValueError(f"{source!r}: unknown type {'.'.join(names)} with parameters")
    return ColumnType(".".join(names), Family.ENUM)


def _instance(cls: Any, pg_name: str, modifiers: list[int]) -> sa.types.TypeEngine[Any]:
    kwargs: dict[str, Any] = {}
    if pg_name in _WITH_ZONE:
        kwargs["timezone"] = True
    if issubclass(cls, sa.Float):
        return cls(**kwargs)  # float(p) is REAL or DOUBLE PRECISION by p: the names say which
    if issubclass(cls, sa.Numeric):
        if len(modifiers) > 2:
            raise TypeError
        return cls(*modifiers, **kwargs)
    if issubclass(cls, sa.String):
        if len(modifiers) > 1:
            raise TypeError
        return cls(*modifiers)
    if modifiers:
        raise TypeError
    instance: sa.types.TypeEngine[Any] = cls(**kwargs)
    return instance


class NamedType(sa.types.UserDefinedType[Any]):
    """A user type by name (an enum or a domain), rendered as its quoted name."""

    cache_ok = True

    def __init__(self, name: str) -> None:
        self.name = name


@compiles(NamedType)
def _compile_named(element: NamedType, compiler: Any, **kw: Any) -> str:
    preparer = compiler.dialect.identifier_preparer
    return ".".join(preparer.quote(part) for part in element.name.split("."))


def to_sa(column_type: ColumnType) -> sa.types.TypeEngine[Any]:
    """The SQLAlchemy type that creates a column of ``column_type`` (each dialect compiles it)."""
    t = column_type
    if t.family is Family.ARRAY:
        assert t.item is not None
        return postgresql.ARRAY(to_sa(t.item))
    if t.family is Family.ENUM or (t.family is not Family.OTHER and t.name not in _BUILTIN_NAMES
                                  and not t.name.startswith(("VARCHAR", "CHAR(", "NUMERIC"))):
        return NamedType(t.name)
    fixed: dict[str, Any] = {
        "TEXT": sa.Text, "VARCHAR": sa.String, "SMALLINT": sa.SmallInteger, "INTEGER": sa.Integer,
        "BIGINT": sa.BigInteger, "REAL": sa.REAL, "DOUBLE PRECISION": sa.Double, "BOOLEAN": sa.Boolean,
        "TIMESTAMP": sa.DateTime, "DATE": sa.Date, "TIME": sa.Time, "INTERVAL": sa.Interval,
        "UUID": sa.Uuid, "BYTEA": sa.LargeBinary, "JSON": sa.JSON, "JSONB": postgresql.JSONB,
    }
    if t.name in fixed:
        made: sa.types.TypeEngine[Any] = fixed[t.name]()
        return made
    if t.name == "TIMESTAMPTZ":
        return sa.DateTime(timezone=True)
    if t.family is Family.NUMERIC:
        return sa.Numeric(t.precision, t.scale)
    if t.name.startswith("CHAR("):
        return sa.CHAR(t.length)
    if t.family is Family.TEXT and t.length:
        return sa.String(t.length)
    raise ValueError(f"zdm copies columns of type {t.name} but does not create them")


def wider_values(old: ColumnType, new: ColumnType) -> str | None:
    """Why ``new`` accepts values ``old`` does not (a phrase), or None when every value of ``new``
    is also one of ``old`` as far as the types tell (a narrowing change, an enum's labels into text).

    Wider: a longer or no text limit, a larger integer, a NUMERIC with more digits before or after
    the point, DOUBLE PRECISION for REAL; and every change of family (``UUID`` -> ``TEXT``
    accepts any text), except text into an enum, whose labels are text.
    """
    if old == new:
        return None
    if old.family is Family.ARRAY and new.family is Family.ARRAY and old.item and new.item:
        return wider_values(old.item, new.item)
    if old.family is not new.family:
        if old.family is Family.TEXT and new.family is Family.ENUM:
            return None
        return f"{new.value} is another kind of value than {old.value}"
    if old.family is Family.TEXT:
        if old.length is not None and (new.length is None or new.length > old.length):
            return f"longer text ({old.length} -> {new.length or 'no limit'})"
    elif old.family is Family.INTEGER:
        if _INTEGER_BITS.get(new.name, 63) > _INTEGER_BITS.get(old.name, 63):
            return "larger numbers"
    elif old.family is Family.NUMERIC:
        if old.precision is not None and new.precision is None:
            return "numbers of any size and scale"
        if old.scale is not None and (new.scale or 0) > old.scale:
            return f"more decimal places ({old.scale} -> {new.scale})"
        if old.precision is not None and new.precision is not None \
                and new.precision - (new.scale or 0) > old.precision - (old.scale or 0):
            return "larger numbers"
    elif old.family is Family.FLOAT:
        if old.name == "REAL" and new.name != "REAL":
            return "more precise numbers"
    elif old.family is Family.ENUM:
        return f"{new.value} is another type than {old.value}"
    return None


def is_builtin(column_type: ColumnType) -> bool:
    """Whether ``column_type`` is one of the databases' own types (not an enum or a domain by name)."""
    t = column_type
    if t.family is Family.ARRAY:
        return t.item is not None and is_builtin(t.item)
    return t.family is not Family.ENUM and (t.name in _BUILTIN_NAMES or t.family is Family.OTHER
                                            or t.name.startswith(("VARCHAR", "CHAR(", "NUMERIC")))


_BUILTIN_NAMES = {"TEXT", "VARCHAR", "SMALLINT", "INTEGER", "BIGINT", "REAL", "DOUBLE PRECISION", "BOOLEAN",
                  "TIMESTAMP", "TIMESTAMPTZ", "DATE", "TIME", "INTERVAL", "UUID", "BYTEA", "JSON", "JSONB"}


# Built directly, as parse() would give them: importing this module must not load the SQL parser
# (`zdm status` starts without it).
ColumnType.TEXT = ColumnType("TEXT", Family.TEXT)
ColumnType.INTEGER = ColumnType("INTEGER", Family.INTEGER)
ColumnType.BIGINT = ColumnType("BIGINT", Family.INTEGER)
ColumnType.BOOLEAN = ColumnType("BOOLEAN", Family.BOOLEAN)
ColumnType.TIMESTAMP = ColumnType("TIMESTAMP", Family.TIMESTAMP)
ColumnType.JSON = ColumnType("JSON", Family.JSON)
ColumnType.OTHER = ColumnType("OTHER", Family.OTHER)
