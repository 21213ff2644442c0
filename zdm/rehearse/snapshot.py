"""What a rollback must give back: the tables, their shapes, a checksum of every row, and the
app's views, triggers and functions."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from zdm import introspect
from zdm.dialects import for_connection

#: A rewrite of a table with more rows than this breaks the promise (``--max-rewrite-rows``).

# -- snapshot ---------------------------------------------------------------------------------
@dataclass
class Snapshot:
    """What a rollback must give back: the table list, the affected tables' shapes and rows."""

    tables: list[str]
    shapes: dict[str, dict[str, Any]]
    #: table -> (row count, order-independent digest of every row)
    checksums: dict[str, tuple[int, str]]
    zdm_objects: list[str]
    #: "view adult_users", "trigger audit on users", "function f(integer)" -> its definition.
    objects: dict[str, str] = field(default_factory=dict)


def user_tables(connection: sa.Connection) -> list[str]:
    return sorted(t for t in sa.inspect(connection).get_table_names() if not introspect.internal_table(t))


def table_shape(connection: sa.Connection, name: str) -> dict[str, Any]:
    """Columns (type, NULL, default, key), indexes and constraints: what an app or a query plan sees."""
    inspector = sa.inspect(connection)
    with warnings.catch_warnings():  # e.g. a NOT VALID check SQLAlchemy cannot parse
        warnings.simplefilter("ignore", sa.exc.SAWarning)
        key = inspector.get_pk_constraint(name).get("constrained_columns") or []
        columns = {
            c["name"]: [_type_text(c["type"], connection), bool(c["nullable"]), c.get("default"), c["name"] in key]
            for c in inspector.get_columns(name)
        }
        return {
            "columns": columns,
            "primary_key": list(key),
            "indexes": sorted([i["name"], list(i["column_names"]), bool(i["unique"])]
                              for i in inspector.get_indexes(name) if i.get("name")),
            "unique": sorted([u.get("name") or "", list(u["column_names"])]
                             for u in inspector.get_unique_constraints(name)),
            "checks": sorted([c.get("name") or "", c["sqltext"]] for c in inspector.get_check_constraints(name)),
            "foreign_keys": sorted([f.get("name") or "", list(f["constrained_columns"]), f["referred_table"],
                                    list(f["referred_columns"])] for f in inspector.get_foreign_keys(name)),
        }


def _type_text(sa_type: sa.types.TypeEngine[Any], connection: sa.Connection) -> str:
    try:
        return str(sa_type.compile(dialect=connection.dialect))
    except sa.exc.CompileError:
        return repr(sa_type)


def table_checksum(connection: sa.Connection, name: str, leave_out: Iterable[str] = ()) -> tuple[int, str]:
    """Row count and a digest of every row that ignores row order (so no ORDER BY, no key needed).

    Each row hashes its values by column name; the digests are summed modulo 2**128, which a
    lost, added or changed row moves, whatever order the rows come in. ``leave_out``: columns
    whose values may differ by design.
    """
    skipped = set(leave_out)
    table = sa.table(name, *[sa.column(c["name"]) for c in sa.inspect(connection).get_columns(name)
                             if c["name"] not in skipped])
    names = sorted(c.name for c in table.columns)
    total, count = 0, 0
    result = connection.execution_options(yield_per=5000).execute(sa.select(*[table.c[n] for n in names]))
    for row in result:
        text = json.dumps(list(row), default=str, sort_keys=True, separators=(",", ":"))
        total = (total + int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big")) % 2**128
        count += 1
    return count, f"{total:032x}"


def take_snapshot(connection: sa.Connection, tables: Iterable[str],
                  leave_out: dict[str, list[str]] | None = None) -> Snapshot:
    """``leave_out``: table -> columns left out of its checksum (see `filled_columns`)."""
    existing = user_tables(connection)
    affected = [t for t in tables if t in existing]
    return Snapshot(
        tables=existing,
        shapes={t: table_shape(connection, t) for t in affected},
        checksums={t: table_checksum(connection, t, (leave_out or {}).get(t, ())) for t in affected},
        zdm_objects=for_connection(connection).zdm_objects(connection),
        objects=user_objects(connection),
    )


def user_objects(connection: sa.Connection) -> dict[str, str]:
    """The app's views, triggers and functions: a ``down`` must drop what its ``up`` created.

    Definitions are compared with quotes and spacing evened out: SQLite rewrites a view's text
    when a table it names is renamed, and renaming back leaves the names quoted.
    """
    found = for_connection(connection).user_objects(connection)
    return {name: " ".join(definition.replace('"', "").split()) for name, definition in found.items()}


def snapshot_differences(before: Snapshot, after: Snapshot) -> list[str]:
    """What the database lost or gained, one line each; empty when it is as it was."""
    found = []
    if before.tables != after.tables:
        gone, new = sorted(set(before.tables) - set(after.tables)), sorted(set(after.tables) - set(before.tables))
        found.append(f"tables differ: missing {gone}, new {new}")
    for name in sorted(set(before.objects) | set(after.objects)):
        was, now = before.objects.get(name), after.objects.get(name)
        if was is None or now is None:
            found.append(f"{name}: was {'absent' if was is None else 'present'}, now "
                         f"{'absent' if now is None else 'present'}")
        elif was != now:
            found.append(f"{name}: definition changed")
    for name, shape in before.shapes.items():
        shape_now = after.shapes.get(name)
        if shape_now is None:
            continue
        for column in sorted(set(shape["columns"]) | set(shape_now["columns"])):
            was_column, now_column = shape["columns"].get(column), shape_now["columns"].get(column)
            if was_column != now_column:
                found.append(f"{name}.{column}: was {_column_text(was_column)}, now {_column_text(now_column)}")
        for part, was in shape.items():
            if part != "columns" and shape_now[part] != was:
                found.append(f"{name} {part.replace('_', ' ')}: was {_brief(was)}, now {_brief(shape_now[part])}")
        rows, digest = before.checksums[name]
        rows_now, digest_now = after.checksums[name]
        if rows != rows_now:
            found.append(f"{name}: {rows:,} rows before, {rows_now:,} after")
        elif digest != digest_now:
            found.append(f"{name}: same {rows:,} rows, but their values changed (checksum {digest[:12]} -> "
                         f"{digest_now[:12]})")
    if after.zdm_objects != before.zdm_objects:
        left = sorted(set(after.zdm_objects) - set(before.zdm_objects))
        found.append(f"zdm objects left behind: {', '.join(left) or '(some were removed)'}")
    return found


def _column_text(column: list[Any] | None) -> str:
    if column is None:
        return "absent"
    type_text, nullable, default, key = column
    return " ".join([type_text, "NULL" if nullable else "NOT NULL", *([f"DEFAULT {default}"] if default else []),
                     *(["PRIMARY KEY"] if key else [])])


def _brief(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 160 else text[:157] + "..."


