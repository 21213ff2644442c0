"""Named value transforms: one SQL form (per dialect, through SQLAlchemy) and one Python twin.

The SQL form runs in triggers and backfills; the Python twin runs on the reference model. Keeping
both side by side in one table makes a divergence easy to spot and to test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement


@dataclass(frozen=True)
class Transform:
    name: str
    sql: Callable[[ColumnElement[Any]], ColumnElement[Any]]
    python: Callable[[Any], Any]
    #: True when ``python(python_inverse(x)) == x`` is not needed: the transform is a plain copy.
    identity: bool = False

    def apply(self, value: Any) -> Any:
        return None if value is None else self.python(value)


TRANSFORMS: dict[str, Transform] = {
    t.name: t
    for t in (
        Transform("copy", lambda c: c, lambda v: v, identity=True),
        Transform("lower", sa.func.lower, lambda v: str(v).lower()),
        Transform("upper", sa.func.upper, lambda v: str(v).upper()),
        Transform("trim", sa.func.trim, lambda v: str(v).strip(" ")),
    )
}


def get(name: str) -> Transform:
    try:
        return TRANSFORMS[name]
    except KeyError:
        known = ", ".join(sorted(TRANSFORMS))
        raise ValueError(f"unknown transform {name!r} (known: {known})") from None
