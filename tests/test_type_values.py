"""Values at the edges of their types: the reference model refuses and stores what the database does.

PostgreSQL refuses a text longer than ``VARCHAR(n)`` (cutting only trailing spaces), a number
beyond ``NUMERIC(p,s)`` or an integer type's range; SQLite stores any of them as given. The model
follows the database it was read from (``Schema.type_limits``), so a test comparing the two sees
the same errors and the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite
from support import assert_agrees

from zdm import db, oracle
from zdm.model import ConstraintViolation, Schema

LIMITS = {
    "postgresql": "CREATE TABLE limits (id integer PRIMARY KEY, s varchar(3), c char(3), n numeric(5,2), "
                  "i2 smallint, i4 integer, i8 bigint, a varchar(2)[])",
    "sqlite": "CREATE TABLE limits (id INTEGER PRIMARY KEY, s VARCHAR(3), c CHAR(3), n NUMERIC(5, 2), "
              "i2 SMALLINT, i4 INTEGER, i8 BIGINT)",
}

#: (column, value, refused by PostgreSQL)
EDGES: list[tuple[str, Any, bool]] = [
    ("s", "abc", False), ("s", "abcd", True), ("s", "abc   ", False), ("s", "ab c", True), ("s", "éü✓", False),
    ("s", "", False), ("c", "ab", False), ("c", "abcd", True), ("c", "abc  ", False),
    ("n", Decimal("999.99"), False), ("n", Decimal("999.994"), False), ("n", Decimal("999.995"), True),
    ("n", Decimal("-999.995"), True), ("n", Decimal("1000"), True), ("n", Decimal("-0.00"), False),
    ("n", Decimal("NaN"), False),
    ("i2", 32767, False), ("i2", 32768, True), ("i2", -32768, False), ("i2", -32769, True),
    ("i4", 2**31 - 1, False), ("i4", 2**31, True), ("i4", -(2**31) - 1, True),
    ("i8", 2**63 - 1, False), ("i8", -(2**63), False),
    ("a", ["ab", ""], False),
]


def limits(url: str) -> tuple[sa.Engine, Schema, sa.Table]:
    engine = db.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(LIMITS[engine.dialect.name])
        model = oracle.read(connection)
        table = sa.Table("limits", sa.MetaData(), autoload_with=connection)
    return engine, model, table


def outcome(engine: sa.Engine, statement: sa.Executable, model_write: Callable[[], Any]) -> tuple[bool, bool]:
    """(the model took the write, the database took it); a refusal of the model is one line of kind "value"."""
    try:
        model_write()
        taken = True
    except ConstraintViolation as exc:
        assert exc.kind == "value" and "\n" not in str(exc), exc
        taken = False
    try:
        with engine.begin() as connection:
            connection.execute(statement)
    except sa.exc.DataError:
        return taken, False
    return taken, True


def test_the_model_refuses_what_the_database_refuses(zdm_database_url: str) -> None:
    engine, model, table = limits(zdm_database_url)
    postgresql = engine.dialect.name == "postgresql"
    assert model.type_limits is postgresql
    for key, (column, value, refused_by_postgresql) in enumerate(EDGES, start=1):
        if column not in table.c or (not postgresql and isinstance(value, Decimal) and value.is_nan()):
            continue  # SQLite has no arrays, and stores NaN as NULL
        taken = not (refused_by_postgresql and postgresql)
        row = {"id": key, column: value}
        found = outcome(engine, table.insert().values(row), partial(model.insert, "limits", row))
        assert found == (taken, taken), f"insert {row}: (model, database) took it: {found}"
        if not taken:
            model.insert("limits", {"id": key})
            with engine.begin() as connection:
                connection.execute(table.insert().values(id=key))
        other = max(key - 1, 1)  # a row of an earlier value
        update = table.update().where(table.c.id == other).values({column: value})
        found = outcome(engine, update, partial(model.update, "limits", {"id": other}, {column: value}))
        assert found == (taken, taken), f"update {column}={value!r}: (model, database) took it: {found}"
        upsert = (pg if postgresql else sqlite).insert(table).values(row)
        upsert = upsert.on_conflict_do_update(index_elements=["id"], set_={column: upsert.excluded[column]})
        found = outcome(engine, upsert, partial(model.upsert, "limits", row, {column: value}))
        assert found == (taken, taken), f"upsert {row}: (model, database) took it: {found}"
    assert_agrees(engine, model)
