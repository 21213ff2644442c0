"""Every type family and each conversion, with generated values, through the dual-write triggers both ways.

One table per database holds a column of each conversion's old type; one plan turns each into a
column of the new type under a new name (``alter_column`` with ``new_name``), so both columns live
side by side and the triggers convert writes both ways: an old-app write of the old column reaches
the new one through ``up``, a new-app write of the new column reaches the old one through ``down``.
Each value goes in by insert and by update, on each side; the row the database then holds must be
the row the reference model predicts (its Python twin of each conversion), and a write one refuses
the other must refuse too.

Values: the edges of each type first (NULL, empty, the longest that fits and one more, negative
zero, leap days, gap and fold hours of a named zone, far time zones, NaN and infinities where the
type has them, non-ASCII), then ``ZDM_TYPE_EXAMPLES`` (default 6) generated rounds of one value per
conversion and side. Kept cheap: one ``start`` per database, a row per write.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import Phase as Phase_
from hypothesis import strategies as st
from support import apply_phases, assert_agrees, runner

from zdm import db, oracle, planfile
from zdm.coltypes import parse, to_sa
from zdm.model import ConstraintViolation, Schema
from zdm.oracle import same_row
from zdm.plan import Phase

PG, SQLITE = "postgresql", "sqlite"
BOTH = (PG, SQLITE)
ENUM = "CREATE TYPE prop_mood AS ENUM ('happy', 'sad', 'ünïcode label')"

# -- values -----------------------------------------------------------------------------------------
#: Text a database can hold: any character but NUL and lone surrogates (non-ASCII included).
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
TEXT_EDGES = ("", " ", "é✓中🙂", "x" * 5, "y" * 6, "trailing  ", "\t\n", "'; DROP TABLE t; --")
ZONES = [dt.UTC, dt.timezone(dt.timedelta(hours=14)), dt.timezone(dt.timedelta(hours=-12)),
         dt.timezone(dt.timedelta(hours=5, minutes=45))]
NAIVE = st.datetimes(dt.datetime(1900, 1, 1), dt.datetime(2200, 12, 31))
AWARE = st.datetimes(dt.datetime(1900, 1, 2), dt.datetime(2200, 12, 30), timezones=st.sampled_from(ZONES))
#: Wall-clock edges: a leap day, an hour Paris skips (spring forward), one it repeats (fall back).
NAIVE_EDGES = (dt.datetime(2024, 2, 29, 23, 59, 59, 999999), dt.datetime(2024, 3, 31, 2, 30),
               dt.datetime(2024, 10, 27, 2, 30), dt.datetime(2000, 2, 29), dt.datetime(1900, 1, 1))
AWARE_EDGES = (dt.datetime(2024, 2, 29, 23, 30, tzinfo=ZONES[2]), dt.datetime(2024, 3, 1, 0, 30, tzinfo=ZONES[1]),
               dt.datetime(2024, 10, 27, 0, 30, tzinfo=dt.UTC), dt.datetime(1970, 1, 1, tzinfo=dt.UTC))
NUMERIC_12_2 = st.decimals(Decimal("-9999999999.99"), Decimal("9999999999.99"), places=2)
NUMERIC_EDGES = (Decimal("-0.00"), Decimal("0.005"), Decimal("-0.005"), Decimal("99999999.995"),
                 Decimal("9999999999.99"), Decimal("-9999999999.99"))
NUMERIC_10_2 = st.decimals(Decimal("-99999999.99"), Decimal("99999999.99"), places=2)
NUMERIC_12_4 = st.decimals(Decimal("-99999999.9999"), Decimal("99999999.9999"), places=4)
INTEGER = st.integers(-(2**31), 2**31 - 1)
INTEGER_EDGES = (0, -1, 2**31 - 1, -(2**31), 10**10 - 1)
#: Not a string at the top: the model reads a str given to a JSON column as JSON text (README, Limits).
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**15), 10**15) | TEXT
    | st.floats(allow_nan=False, allow_infinity=False, width=32).filter(lambda f: f == 0 or 1e-6 < abs(f) < 1e15),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=6).filter(lambda v: not isinstance(v, str))


def with_edges(strategy: st.SearchStrategy[Any], *edges: Any) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.sampled_from(edges), strategy) if edges else st.one_of(st.none(), strategy)


@dataclass(frozen=True)
class Conversion:
    """``source`` -> ``target`` (``fields`` for alter_column); the old app writes ``old`` values into
    the source column, the new app ``new`` values into the target one."""

    name: str
    source: str
    target: str
    old: st.SearchStrategy[Any]
    new: st.SearchStrategy[Any]
    old_edges: tuple[Any, ...] = ()
    new_edges: tuple[Any, ...] = ()
    databases: tuple[str, ...] = BOTH
    fields: dict[str, Any] = field(default_factory=dict)

    def values(self, side: str) -> st.SearchStrategy[Any]:
        return with_edges(self.old, *self.old_edges) if side == "old" else with_edges(self.new, *self.new_edges)


def floats(nan: bool) -> st.SearchStrategy[float]:
    return st.floats(allow_nan=nan, allow_infinity=True)


UUIDS = st.uuids().map(str) | st.uuids().map(lambda u: f" {str(u).upper()} ") | TEXT
CONVERSIONS = [
    # per family, a copy under a new name (the same type both ways)
    Conversion("text", "TEXT", "TEXT", TEXT, TEXT, TEXT_EDGES, TEXT_EDGES),
    Conversion("float_pg", "DOUBLE PRECISION", "DOUBLE PRECISION", floats(True), floats(True),
               (-0.0, float("nan"), float("inf"), 5e-324), (float("-inf"), 1.7976931348623157e308),
               databases=(PG,), fields={"up_transform": "copy", "down_transform": "copy"}),
    Conversion("float", "DOUBLE PRECISION", "DOUBLE PRECISION", floats(False), floats(False), (-0.0, 5e-324),
               (1e308,), databases=(SQLITE,), fields={"up_transform": "copy", "down_transform": "copy"}),
    Conversion("boolean", "BOOLEAN", "BOOLEAN", st.booleans(), st.booleans(),
               fields={"up_transform": "copy", "down_transform": "copy"}),
    Conversion("date", "DATE", "DATE", st.dates(), st.dates(),
               (dt.date(2024, 2, 29), dt.date(1, 1, 1), dt.date(9999, 12, 31)), (dt.date(2000, 2, 29),),
               fields={"up_transform": "copy", "down_transform": "copy"}),
    Conversion("time", "TIME", "TIME", st.times(), st.times(), (dt.time(0), dt.time(23, 59, 59, 999999)),
               fields={"up_transform": "copy", "down_transform": "copy"}),
    Conversion("timestamp", "TIMESTAMP", "TIMESTAMP", NAIVE, NAIVE, NAIVE_EDGES, NAIVE_EDGES,
               fields={"up_transform": "copy", "down_transform": "copy"}),
    Conversion("interval", "INTERVAL", "INTERVAL", st.timedeltas(dt.timedelta(days=-10**5), dt.timedelta(days=10**5)),
               st.timedeltas(dt.timedelta(days=-10**5), dt.timedelta(days=10**5)),
               (dt.timedelta(0), dt.timedelta(microseconds=-1)), databases=(PG,),
               fields={"up_transform": "copy", "down_transform": "copy"}),
    Conversion("bytes", "BYTEA", "BYTEA", st.binary(max_size=16), st.binary(max_size=16), (b"", b"\x00", b"\xff" * 16),
               fields={"up_transform": "copy", "down_transform": "copy"}),
    Conversion("array", "TEXT[]", "TEXT[]", st.lists(TEXT | st.none(), max_size=3), st.lists(TEXT, max_size=3),
               ([], [""], [None], ["é", "{,}\"\\"]), databases=(PG,),
               fields={"up_transform": "copy", "down_transform": "copy"}),
    # the conversions of the issue
    Conversion("text_varchar", "TEXT", "VARCHAR(5)", TEXT, TEXT, TEXT_EDGES,
               ("", "abcde", "abcdef", "ab   ", "é✓中🙂x")),
    Conversion("text_integer", "TEXT", "INTEGER", TEXT | INTEGER.map(str), INTEGER,
               (" 42 ", "+7", "-0", "2147483648", "9223372036854775808", "1e3", "٣"), INTEGER_EDGES),
    Conversion("integer_text", "INTEGER", "TEXT", INTEGER, TEXT | INTEGER.map(str), INTEGER_EDGES,
               ("12", " 12", "x", "99999999999")),
    Conversion("integer_numeric", "INTEGER", "NUMERIC(12,2)", INTEGER, NUMERIC_12_2, INTEGER_EDGES, NUMERIC_EDGES),
    Conversion("numeric_integer", "NUMERIC(12,2)", "INTEGER", NUMERIC_12_2, INTEGER, NUMERIC_EDGES, INTEGER_EDGES),
    Conversion("numeric_nan_integer", "NUMERIC", "BIGINT", st.decimals(allow_nan=False, allow_infinity=False),
               st.integers(-(2**63), 2**63 - 1),
               (Decimal("NaN"), Decimal("1e30"), Decimal("-9223372036854775808.4"), Decimal("2.5"), Decimal("-2.5")),
               (2**63 - 1, -(2**63)), databases=(PG,)),
    Conversion("numeric_scale", "NUMERIC(10,2)", "NUMERIC(12,4)", NUMERIC_10_2, NUMERIC_12_4,
               (Decimal("-0.00"), Decimal("99999999.99"), Decimal("NaN")),
               (Decimal("0.00005"), Decimal("-12345678.99995"), Decimal("NaN")), databases=(PG,)),
    # SQLite keeps a NUMERIC as a binary float: a value halfway at the scale may round either way
    Conversion("numeric_scale_sqlite", "NUMERIC(10,2)", "NUMERIC(12,4)", NUMERIC_10_2, NUMERIC_12_4,
               (Decimal("-0.00"), Decimal("99999999.99")), (Decimal("0.0001"), Decimal("-12345678.9999")),
               databases=(SQLITE,)),
    Conversion("text_uuid", "TEXT", "UUID", UUIDS, st.uuids(),
               ("", "not a uuid", "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"),
               (uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)),
               databases=(PG,)),
    Conversion("uuid_text", "UUID", "TEXT", st.uuids(), UUIDS, (uuid.UUID(int=0),),
               ("", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"), databases=(PG,)),
    Conversion("text_enum", "TEXT", "prop_mood", TEXT | st.sampled_from(["happy", "sad"]),
               st.sampled_from(["happy", "sad", "ünïcode label"]), ("happy", "Happy", "", "ünïcode label"),
               databases=(PG,)),
    Conversion("enum_text", "prop_mood", "TEXT", st.sampled_from(["happy", "sad", "ünïcode label"]),
               TEXT | st.sampled_from(["happy", "sad"]), ("ünïcode label",), ("sad", "SAD", ""), databases=(PG,)),
    Conversion("json_jsonb", "JSON", "JSONB", JSON_VALUES, JSON_VALUES,
               ({}, [], [""], {"é": [1, None, True]}, {"b": 1, "a": 2}, 0.5), databases=(PG,)),
    Conversion("timestamp_tz_paris", "TIMESTAMP", "TIMESTAMPTZ", NAIVE, AWARE, NAIVE_EDGES, AWARE_EDGES,
               databases=(PG,), fields={"zone": "Europe/Paris"}),
    Conversion("timestamptz_kiritimati", "TIMESTAMPTZ", "TIMESTAMP", AWARE, NAIVE, AWARE_EDGES, NAIVE_EDGES,
               databases=(PG,), fields={"zone": "Pacific/Kiritimati"}),
    Conversion("timestamptz_utc", "TIMESTAMPTZ", "TIMESTAMP", AWARE, NAIVE, AWARE_EDGES, NAIVE_EDGES, databases=(PG,)),
]


# -- the table, the plan, the writes ------------------------------------------------------------------
@dataclass
class Bench:
    engine: sa.Engine
    model: Schema
    table: sa.Table
    conversions: list[Conversion]
    keys: Callable[[], int]


def bench(url: str) -> Bench:
    """The table with a column per conversion, and the plan started: the triggers are in place."""
    engine = db.create_engine(url)
    dialect = engine.dialect.name
    # Hundreds of one-row commits: none waits for the disk (a crash would only lose this test's rows).
    fast = "SET synchronous_commit = off" if dialect == PG else "PRAGMA synchronous = OFF"
    sa.event.listen(engine, "connect", lambda connection, _: connection.cursor().execute(fast))
    conversions = [c for c in CONVERSIONS if dialect in c.databases]
    columns = [sa.Column(f"a_{c.name}", to_sa(parse(c.source))) for c in conversions]
    table = sa.Table("props", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                     *columns)
    with engine.begin() as connection:
        if dialect == PG:
            connection.exec_driver_sql(ENUM)
        table.create(connection)
        model = oracle.read(connection)
    plan = planfile.parse({"id": "props", "operations": [
        {"op": "alter_column", "table": "props", "column": f"a_{c.name}", "type": c.target, "new_name": f"b_{c.name}",
         **c.fields} for c in conversions]})
    runner(engine).start(plan)
    apply_phases(plan, model, dialect, Phase.EXPANDING, Phase.MIGRATING)
    with engine.connect() as connection:
        live = sa.Table("props", sa.MetaData(), autoload_with=connection)
    return Bench(engine, model, live, conversions, itertools.count(1).__next__)


def same_outcome(b: Bench, what: str, statement: Any, model_write: Callable[[], Any]) -> Any:
    """The database and the model both take the write or both refuse it. Returns the row as the
    database holds it after the write where one round trip tells (PostgreSQL: RETURNING shows what
    the BEFORE triggers made of it), else None."""
    try:
        model_write()
        expected = None
    except ConstraintViolation as exc:
        expected = str(exc)
    returning = b.engine.dialect.name == PG
    try:
        with b.engine.begin() as connection:
            result = connection.execute(statement.returning(*b.table.c) if returning else statement)
            found = result.first() if returning else None
        refused = None
    except sa.exc.DBAPIError as exc:
        refused, found = " ".join(str(exc.orig).split())[:300], None
    assert (expected is None) == (refused is None), \
        f"{what}: the model {'refused: ' + expected if expected else 'took it'}, the database " \
        f"{'refused: ' + refused if refused else 'took it'}"
    return found


def same_row_at(b: Bench, key: int, what: str, found: Any = None) -> None:
    """The database's row ``key`` (``found``, or read now) is the model's."""
    table = b.model.table("props")
    if found is None:
        with b.engine.connect() as connection:
            found = connection.execute(sa.select(b.table).where(b.table.c.id == key)).first()
    row = None if found is None else {n: table.column(n).type.coerce(v) for n, v in found._mapping.items()}
    expected = table.find({"id": key})
    assert row is not None and expected is not None and same_row(row, expected), \
        f"{what}: the database holds {row}, the model {expected}"


def both_ways(b: Bench, conversion: Conversion, old: Any, new: Any) -> None:
    """``old`` through the old column, ``new`` through the new one, each by insert and by update."""
    a, n = f"a_{conversion.name}", f"b_{conversion.name}"
    for column, value, other_column, other in ((a, old, n, new), (n, new, a, old)):
        key = b.keys()
        what = f"{conversion.name}: insert {column}={value!r}"
        row = {"id": key, column: value}
        found = same_outcome(b, what, b.table.insert().values(row), lambda row=row: b.model.insert("props", row))
        if b.model.table("props").find({"id": key}) is None:  # refused by both: a row to update
            b.model.insert("props", {"id": key})
            with b.engine.begin() as connection:
                connection.execute(b.table.insert().values(id=key))
        same_row_at(b, key, what, found)
        what = f"{conversion.name}: {what[len(conversion.name) + 2:]}, then update {other_column}={other!r}"
        update = b.table.update().where(b.table.c.id == key).values({other_column: other})
        found = same_outcome(b, what, update,
                             lambda k=key, c=other_column, v=other: b.model.update("props", {"id": k}, {c: v}))
        same_row_at(b, key, what, found)


def test_every_conversion_agrees_with_the_model_both_ways(zdm_database_url: str) -> None:
    b = bench(zdm_database_url)
    try:
        for conversion in b.conversions:  # every edge on each side, NULL included, paired round the shorter list
            olds, news = (None, *conversion.old_edges), (None, *conversion.new_edges)
            for i in range(max(len(olds), len(news))):
                both_ways(b, conversion, olds[i % len(olds)], news[i % len(news)])

        # No shrinking unless asked: each attempt writes to the database, and the failing write's
        # message already names the conversion and both values.
        phases = [Phase_.explicit, Phase_.reuse, Phase_.generate] + ([Phase_.shrink] if os.environ.get(
            "ZDM_TYPE_SHRINK") else [])

        @settings(max_examples=int(os.environ.get("ZDM_TYPE_EXAMPLES", "6")), deadline=None, database=None,
                  derandomize=os.environ.get("CI") == "true", phases=phases,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(data=st.data())
        def generated(data: st.DataObject) -> None:
            for conversion in b.conversions:
                old = data.draw(conversion.values("old"), label=f"{conversion.name} old")
                new = data.draw(conversion.values("new"), label=f"{conversion.name} new")
                both_ways(b, conversion, old, new)

        generated()
        assert_agrees(b.engine, b.model)
    finally:
        b.engine.dispose()

