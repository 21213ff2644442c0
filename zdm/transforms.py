"""Named value transforms: one SQL form (per dialect, through SQLAlchemy) and one Python twin.

The SQL form runs in triggers and backfills; the Python twin runs on the reference model. Keeping
both side by side in one table makes a divergence easy to spot and to test.

Conversions are *safe*: a value that does not convert becomes NULL instead of failing the old
app's write inside a trigger. Nothing is lost that way: the operation checks, before contract,
that no row holds a value in the old column and NULL in the new one, and names the rows if any.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

INTEGER_TEXT = re.compile(r"\s*[-+]?[0-9]{1,18}\s*")
BIGINT_RANGE = (-(2**63), 2**63 - 1)


class SafeInteger(FunctionElement[Any]):
    """Text -> integer, NULL when the text is not an integer. Each dialect compiles it (zdm.dialects)."""

    inherit_cache = True
    type = sa.BigInteger()


class SafeJson(FunctionElement[Any]):
    """Text -> JSON, NULL when the text is not valid JSON. Each dialect compiles it (zdm.dialects)."""

    inherit_cache = True
    type = sa.JSON()


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
    )
}


INTEGER_RANGE = (-(2**31), 2**31 - 1)


def within_integer(transform: Transform) -> Transform:
    """``transform`` into an INTEGER column: a value beyond 32 bits becomes NULL, which the check
    before contract names, instead of failing the app write that carries it (PostgreSQL)."""
    low, high = INTEGER_RANGE

    def sql(column: ColumnElement[Any]) -> ColumnElement[Any]:
        value = transform.sql(column)
        return sa.case((value.between(low, high), value))

    def python(value: Any) -> Any:
        converted = transform.python(value)
        return converted if converted is None or low <= converted <= high else None

    return Transform(transform.name, sql, python, needs_try_json=transform.needs_try_json)


def get(name: str) -> Transform:
    try:
        return TRANSFORMS[name]
    except KeyError:
        known = ", ".join(sorted(TRANSFORMS))
        raise ValueError(f"unknown transform {name!r} (known: {known})") from None
