"""Column types: any type the database has is declared, parsed by pglast and SQLAlchemy's dialects, and
carried exactly (``VARCHAR(20)`` is not ``TEXT``); a type the database lacks is a one-line error."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from zdm import planfile
from zdm.coltypes import ColumnType, Family, from_sa, parse
from zdm.dialects import for_name

PARSED = {  # written -> canonical name, family
    "VARCHAR(255)": ("VARCHAR(255)", Family.TEXT), "character varying(255)": ("VARCHAR(255)", Family.TEXT),
    "varchar": ("VARCHAR", Family.TEXT), "TEXT": ("TEXT", Family.TEXT), "char(3)": ("CHAR(3)", Family.TEXT),
    "NUMERIC": ("NUMERIC", Family.NUMERIC), "NUMERIC(12,2)": ("NUMERIC(12,2)", Family.NUMERIC),
    "decimal(10, 2)": ("NUMERIC(10,2)", Family.NUMERIC), "numeric(5)": ("NUMERIC(5)", Family.NUMERIC),
    "TIMESTAMP WITH TIME ZONE": ("TIMESTAMPTZ", Family.TIMESTAMPTZ), "timestamptz": ("TIMESTAMPTZ", Family.TIMESTAMPTZ),
    "timestamp": ("TIMESTAMP", Family.TIMESTAMP), "DATETIME": ("TIMESTAMP", Family.TIMESTAMP),
    "DATE": ("DATE", Family.DATE), "TIME": ("TIME", Family.TIME), "INTERVAL": ("INTERVAL", Family.INTERVAL),
    "UUID": ("UUID", Family.UUID), "BYTEA": ("BYTEA", Family.BYTES), "BLOB": ("BYTEA", Family.BYTES),
    "REAL": ("REAL", Family.FLOAT), "DOUBLE PRECISION": ("DOUBLE PRECISION", Family.FLOAT),
    "SMALLINT": ("SMALLINT", Family.INTEGER), "int": ("INTEGER", Family.INTEGER), "int8": ("BIGINT", Family.INTEGER),
    "JSONB": ("JSONB", Family.JSON), "json": ("JSON", Family.JSON), "boolean": ("BOOLEAN", Family.BOOLEAN),
    "TEXT[]": ("TEXT[]", Family.ARRAY), "varchar(10)[]": ("VARCHAR(10)[]", Family.ARRAY),
    "order_status": ("order_status", Family.ENUM), "public.mood": ("public.mood", Family.ENUM),
}


@pytest.mark.parametrize("written", sorted(PARSED))
def test_type_names_parse_to_one_canonical_type(written: str) -> None:
    parsed = parse(written)
    assert (parsed.name, parsed.family) == PARSED[written]
    assert parse(parsed.name) == parsed  # the canonical name reads back as itself


@pytest.mark.parametrize(("written", "message"), [
    ("", "cannot be empty"), ("varchar(20", "is not a column type"), ("varchar(20) NOT NULL", "is not a column type"),
    ("int; DROP TABLE users", "is not a column type"), ("uuid(3)", "uuid takes no parameters"),
    ("numeric(1,2,3)", "takes no parameters"), ("mood(3)", "unknown type mood with parameters"),
])
def test_what_is_not_a_type_is_one_line(written: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse(written)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("sa_type", "name"), [
    (sa.String(255), "VARCHAR(255)"), (sa.Numeric(10, 2), "NUMERIC(10,2)"), (sa.DateTime(timezone=True), "TIMESTAMPTZ"),
    (sa.DateTime(), "TIMESTAMP"), (sa.Uuid(), "UUID"), (postgresql.ENUM("a", "b", name="mood"), "mood"),
    (postgresql.ARRAY(sa.Text), "TEXT[]"), (sa.Text(), "TEXT"), (sa.LargeBinary(), "BYTEA"),
    (sa.Interval(), "INTERVAL"),
    (postgresql.JSONB(), "JSONB"), (sa.SmallInteger(), "SMALLINT"), (sa.Double(), "DOUBLE PRECISION"),
])
def test_sqlalchemy_types_are_read_exactly(sa_type: sa.types.TypeEngine[object], name: str) -> None:
    assert from_sa(sa_type).name == name


def test_a_plan_takes_any_type_and_stores_its_canonical_name() -> None:
    plan = planfile.parse({"id": "t", "operations": [
        {"op": "add_column", "table": "orders", "column": "amount", "type": "numeric(12, 2)"}]})
    assert plan.operations[0].type == ColumnType("NUMERIC(12,2)", Family.NUMERIC)
    assert plan.model_dump(mode="json")["operations"][0]["type"] == "NUMERIC(12,2)"
    schema = planfile.json_schema()["$defs"]["AddColumn"]["properties"]["type"]
    assert schema["type"] == "string" and "VARCHAR(255)" in schema["examples"]


@pytest.mark.parametrize(("written", "problem"), [
    ("UUID", "SQLite has no type UUID"), ("TIMESTAMPTZ", "SQLite has no type TIMESTAMPTZ"),
    ("TEXT[]", "SQLite has no type TEXT[]"), ("order_status", "SQLite has no type order_status"),
    ("INTERVAL", "SQLite has no type INTERVAL"), ("VARCHAR(255)", None), ("NUMERIC(10,2)", None), ("BLOB", None),
    ("DATE", None),
])
def test_sqlite_refuses_the_types_it_lacks(written: str, problem: str | None) -> None:
    found = for_name("sqlite").type_problem(parse(written), None)
    assert problem in (found or "") if problem else found is None


@pytest.mark.parametrize(("written", "value", "held"), [
    ("NUMERIC(10,2)", "12.345", Decimal("12.35")), ("NUMERIC(10,2)", 1, Decimal("1.00")),
    ("NUMERIC", "-0", Decimal("-0")), ("UUID", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
                                       uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
    ("DATE", "2024-02-29", dt.date(2024, 2, 29)), ("TIMESTAMPTZ", "2024-02-29T23:30:00-14:00",
                                                   dt.datetime(2024, 3, 1, 13, 30, tzinfo=dt.UTC)),
    ("INTERVAL", 90, dt.timedelta(seconds=90)), ("BYTEA", b"\x00\xff", b"\x00\xff"),
    ("INTEGER[]", ["1", 2], [1, 2]), ("VARCHAR(3)", "é✓", "é✓"), ("REAL", 0.1, 0.10000000149011612),
])
def test_the_model_holds_a_python_value_per_family(written: str, value: object, held: object) -> None:
    assert parse(written).coerce(value) == held


def test_enum_labels_are_checked_when_known() -> None:
    mood = from_sa(postgresql.ENUM("happy", "sad", name="mood"))
    assert mood.coerce("sad") == "sad"
    with pytest.raises(ValueError, match="not a label of mood"):
        mood.coerce("angry")
