"""The live database read back into the reference model.

Validation checks a plan against what is really there, and tests compare the database with the
model through the very same reading, so a difference means one of them is wrong. Objects zdm owns
while a plan is in flight (``zdm_*`` indexes and constraints, the ``zdm_migrations`` table) are not
part of the user's schema and are left out.
"""

from __future__ import annotations

import warnings
from typing import Any

import sqlalchemy as sa

from zdm import coltypes
from zdm.model import Column, ColumnType, ForeignKey, Index, ModelError, Schema, SqlDefault, Table

#: Tables zdm owns; never part of the user's schema.
INTERNAL_TABLES = frozenset({"zdm_migrations"})
#: The prefix of the tables a plan owns while it is in flight (set_not_null's table of filled keys).
PLAN_TABLE_PREFIX = "zdm_filled_"


def internal_table(name: str) -> bool:
    """A table zdm owns (its state, or a plan's while in flight): never part of the user's schema."""
    return name in INTERNAL_TABLES or name.startswith(PLAN_TABLE_PREFIX)
#: The prefix of every index, constraint, trigger and function zdm creates.
ZDM_PREFIX = "zdm_"


def column_type(sa_type: sa.types.TypeEngine[Any]) -> ColumnType:
    """The model's exact type of a reflected SQLAlchemy type (``VARCHAR(255)`` stays ``VARCHAR(255)``,
    an enum keeps its labels); family OTHER for a type zdm copies but does not model (see zdm.coltypes)."""
    return coltypes.from_sa(sa_type)


def _constant(sql: str) -> bool:
    """Whether a default, as the database reports it, is a constant (a literal, maybe cast)."""
    import pglast
    from pglast import ast

    from zdm.sqltree import expression

    try:
        node: Any = expression(sql)
    except (pglast.parser.ParseError, AttributeError, IndexError):
        return False
    while isinstance(node, ast.TypeCast) or (isinstance(node, ast.A_Expr) and node.lexpr is None):
        node = node.arg if isinstance(node, ast.TypeCast) else node.rexpr
    return isinstance(node, ast.A_Const)


def default_value(connection: sa.Connection, sql: str | None, ctype: ColumnType) -> Any:
    """A column's default as the model holds it: a constant is evaluated by the database itself
    (so ``'anon'::text`` and ``'anon'`` both read ``anon``); anything else stays SQL."""
    if sql is None:
        return None
    if not _constant(sql):
        return SqlDefault(sql)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sa.exc.SAWarning)
        value = connection.execute(sa.select(sa.literal_column(f"({sql})"))).scalar()
    return ctype.coerce(value)


def read_table(connection: sa.Connection, name: str, *, rows: bool = False) -> Table:
    """The live table as the model sees it: columns, the catalogue around them and (with ``rows``) its rows."""
    inspector = sa.inspect(connection)
    if not inspector.has_table(name):
        raise ModelError(f"no table {name!r}")
    primary_key = set(inspector.get_pk_constraint(name).get("constrained_columns") or [])
    table = Table(name)
    for info in inspector.get_columns(name):
        ctype = column_type(info["type"])
        key = info["name"] in primary_key
        # SQLite reports INTEGER PRIMARY KEY as nullable; no key column is, in either database.
        column = Column(info["name"], ctype, nullable=bool(info["nullable"]) and not key, primary_key=key,
                        default=default_value(connection, info.get("default"), ctype),
                        comment=info.get("comment"))
        table.columns[column.name] = column
    _read_catalogue(inspector, table)
    if rows:
        table.rows = read_rows(connection, name)
    return table


def _ours(name: str | None) -> bool:
    return name is not None and name.startswith(ZDM_PREFIX)


def _read_catalogue(inspector: sa.Inspector, table: Table) -> None:
    name = table.name
    with warnings.catch_warnings():  # expression indexes are not reflected (and SQLAlchemy says so)
        warnings.simplefilter("ignore", sa.exc.SAWarning)
        uniques = inspector.get_unique_constraints(name)
        indexes = inspector.get_indexes(name)
    table.uniques = {u["name"] or f"(unnamed unique {', '.join(u['column_names'])})": tuple(u["column_names"])
                     for u in uniques if not _ours(u["name"])}
    table.indexes = {ix["name"]: Index(tuple(c for c in ix["column_names"] if c), bool(ix["unique"]))
                     for ix in indexes if ix["name"] and not _ours(ix["name"])
                     and not ix.get("duplicates_constraint") and None not in ix["column_names"]}
    table.checks = {c["name"] or f"(unnamed check {c['sqltext']})": c["sqltext"]
                    for c in inspector.get_check_constraints(name) if not _ours(c["name"])}
    table.foreign_keys = {
        fk["name"] or f"(unnamed foreign key {', '.join(fk['constrained_columns'])})": ForeignKey(
            tuple(fk["constrained_columns"]), fk["referred_table"], tuple(fk["referred_columns"]),
            _on_delete(fk.get("options", {}).get("ondelete")))
        for fk in inspector.get_foreign_keys(name) if not _ours(fk["name"])}


def _on_delete(action: str | None) -> str | None:
    action = " ".join(action.upper().split()) if action else None
    return None if action == "NO ACTION" else action


def live_table(connection: sa.Connection, name: str) -> sa.Table:
    """Columns and primary key only: enough to read and update rows, and cheap to reflect.

    (Full reflection would also read constraints, and SQLAlchemy warns on NOT VALID ones.)
    """
    inspector = sa.inspect(connection)
    primary_key = set(inspector.get_pk_constraint(name).get("constrained_columns") or [])
    columns = [
        sa.Column(info["name"], info["type"], primary_key=info["name"] in primary_key)
        for info in inspector.get_columns(name)
    ]
    return sa.Table(name, sa.MetaData(), *columns)


def read_rows(connection: sa.Connection, name: str) -> list[dict[str, Any]]:
    """Every row, typed like the model types them, in primary-key order."""
    reflected = live_table(connection, name)
    order = list(reflected.primary_key.columns) or list(reflected.columns)
    result = connection.execute(sa.select(reflected).order_by(*order))
    types = {c.name: column_type(c.type) for c in reflected.columns}
    return [
        {k: types[k].coerce(v) for k, v in row._mapping.items()} for row in result
    ]


def read_schema(
    connection: sa.Connection, tables: list[str] | None = None, *, rows: bool = False
) -> Schema:
    """The user's tables (all, or the ones named) as a model Schema."""
    inspector = sa.inspect(connection)
    names = tables if tables is not None else inspector.get_table_names()
    from zdm.dialects import for_connection

    dialect = for_connection(connection)
    schema = Schema(types=dialect.user_types(connection), type_limits=dialect.enforces_type_limits)
    for name in names:
        if internal_table(name) or name.startswith("_alembic_tmp_"):
            continue
        if inspector.has_table(name):
            schema.add_table(read_table(connection, name, rows=rows))
    return schema


def server_default(connection: sa.Connection, table: str, column: str) -> str | None:
    """The column's DEFAULT clause as the database reports it (SQL text), or None."""
    for info in sa.inspect(connection).get_columns(table):
        if info["name"] == column:
            return info.get("default")
    raise ModelError(f"table {table!r} has no column {column!r}")


def referencing_foreign_keys(connection: sa.Connection, table: str, column: str | None = None
                             ) -> list[dict[str, Any]]:
    """Foreign keys, of any table (``table`` itself included), that reference ``table``.

    Only those that reference ``column`` when it is given. Each is SQLAlchemy's reflected
    foreign key, with its ``table`` added and ``referred_columns`` filled in (a bare
    ``REFERENCES parent`` means the parent's primary key). Works on both databases: an operation
    that renames, retypes or drops a column calls it at compile time and refuses what it finds,
    since those foreign keys would stop resolving.
    """
    inspector = sa.inspect(connection)
    found = []
    for child in inspector.get_table_names():
        for key in inspector.get_foreign_keys(child):
            elsewhere = key.get("referred_schema") not in (None, inspector.default_schema_name)
            if key["referred_table"] != table or elsewhere:
                continue
            referred = key["referred_columns"] or inspector.get_pk_constraint(table)["constrained_columns"]
            if column is None or column in referred:
                found.append({**key, "table": child, "referred_columns": referred})
    return found


def describe_reference(key: dict[str, Any], table: str) -> str:
    """'foreign key child_fk of child (parent_code) references parent (code)'"""
    name = f" {key['name']}" if key.get("name") else ""
    return (f"foreign key{name} of {key['table']} ({', '.join(key['constrained_columns'])}) references "
            f"{table} ({', '.join(key['referred_columns'])})")
