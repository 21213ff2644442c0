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


def read_table(connection: sa.Connection, name: str, *, rows: bool = False,
               inspector: sa.Inspector | None = None) -> Table:
    """The live table as the model sees it: columns, the catalogue around them and (with ``rows``) its rows.

    ``inspector``: one already in use on ``connection`` (its cache spares the catalogue queries
    asked before); by default a new one.
    """
    inspector = inspector or sa.inspect(connection)
    if not inspector.has_table(name):
        raise ModelError(f"no table {name!r}")
    return _read(connection, name, _Catalogue(inspector), rows=rows)


#: What reading a table asks the inspector (its ``get_<what>``, or ``get_multi_<what>`` for many tables).
_ASKED = ("columns", "pk_constraint", "unique_constraints", "indexes", "check_constraints", "foreign_keys")
#: Expression indexes are not reflected (and SQLAlchemy says so, in these two).
_QUIET = frozenset({"unique_constraints", "indexes"})


class _Catalogue:
    """The inspector's answers about tables, asked table by table; with ``names``, asked once for all
    of them (one query per kind instead of one per kind and table: reading the app workload's four
    tables on PostgreSQL takes 17 statements instead of 41). A table the bulk answers miss (a view
    named on purpose, say) is asked about on its own, as before."""

    def __init__(self, inspector: sa.Inspector, names: list[str] | None = None) -> None:
        self.inspector = inspector
        self.found: dict[str, dict[str, Any]] = {}
        if names and len(names) > 1:
            default = inspector.default_schema_name
            for what in _ASKED:
                with warnings.catch_warnings():
                    if what in _QUIET:
                        warnings.simplefilter("ignore", sa.exc.SAWarning)
                    answer = getattr(inspector, f"get_multi_{what}")(filter_names=names)
                for (schema, name), value in answer.items():
                    if schema in (None, default):
                        self.found.setdefault(name, {})[what] = value

    def __call__(self, what: str, name: str) -> Any:
        known = self.found.get(name, {})
        if what in known:
            return known[what]
        with warnings.catch_warnings():
            if what in _QUIET:
                warnings.simplefilter("ignore", sa.exc.SAWarning)
            return getattr(self.inspector, f"get_{what}")(name)


def _read(connection: sa.Connection, name: str, catalogue: _Catalogue, *, rows: bool) -> Table:
    columns, pk = catalogue("columns", name), catalogue("pk_constraint", name)
    primary_key = set(pk.get("constrained_columns") or [])
    table = Table(name)
    for info in columns:
        ctype = column_type(info["type"])
        key = info["name"] in primary_key
        # SQLite reports INTEGER PRIMARY KEY as nullable; no key column is, in either database.
        column = Column(info["name"], ctype, nullable=bool(info["nullable"]) and not key, primary_key=key,
                        default=default_value(connection, info.get("default"), ctype),
                        comment=info.get("comment"))
        table.columns[column.name] = column
    _read_catalogue(catalogue, table)
    if rows:
        table.rows = _rows(connection, _live(name, columns, pk))
    return table


def _ours(name: str | None) -> bool:
    return name is not None and name.startswith(ZDM_PREFIX)


def _read_catalogue(catalogue: _Catalogue, table: Table) -> None:
    name = table.name
    uniques = catalogue("unique_constraints", name)
    indexes = catalogue("indexes", name)
    table.uniques = {u["name"] or f"(unnamed unique {', '.join(u['column_names'])})": tuple(u["column_names"])
                     for u in uniques if not _ours(u["name"])}
    table.indexes = {ix["name"]: Index(tuple(c for c in ix["column_names"] if c), bool(ix["unique"]))
                     for ix in indexes if ix["name"] and not _ours(ix["name"])
                     and not ix.get("duplicates_constraint") and None not in ix["column_names"]}
    table.checks = {c["name"] or f"(unnamed check {c['sqltext']})": c["sqltext"]
                    for c in catalogue("check_constraints", name) if not _ours(c["name"])}
    table.foreign_keys = {
        fk["name"] or f"(unnamed foreign key {', '.join(fk['constrained_columns'])})": ForeignKey(
            tuple(fk["constrained_columns"]), fk["referred_table"], tuple(fk["referred_columns"]),
            _on_delete(fk.get("options", {}).get("ondelete")))
        for fk in catalogue("foreign_keys", name) if not _ours(fk["name"])}


def _on_delete(action: str | None) -> str | None:
    action = " ".join(action.upper().split()) if action else None
    return None if action == "NO ACTION" else action


def live_table(connection: sa.Connection, name: str, inspector: sa.Inspector | None = None) -> sa.Table:
    """Columns and primary key only: enough to read and update rows, and cheap to reflect.

    (Full reflection would also read constraints, and SQLAlchemy warns on NOT VALID ones.)
    ``inspector``: as for :func:`read_table`.
    """
    inspector = inspector or sa.inspect(connection)
    return _live(name, inspector.get_columns(name), inspector.get_pk_constraint(name))


def _live(name: str, columns: list[Any], pk: Any) -> sa.Table:
    primary_key = set(pk.get("constrained_columns") or [])
    return sa.Table(name, sa.MetaData(), *[
        sa.Column(info["name"], info["type"], primary_key=info["name"] in primary_key) for info in columns])


def read_rows(connection: sa.Connection, name: str, inspector: sa.Inspector | None = None
              ) -> list[dict[str, Any]]:
    """Every row, typed like the model types them, in primary-key order (``inspector``: as for
    :func:`read_table`)."""
    return _rows(connection, live_table(connection, name, inspector))


def _rows(connection: sa.Connection, reflected: sa.Table) -> list[dict[str, Any]]:
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
    names = [n for n in names if n not in INTERNAL_TABLES and not n.startswith("_alembic_tmp_")]
    if tables is not None:
        names = [n for n in names if inspector.has_table(n)]
    catalogue = _Catalogue(inspector, names)
    for name in names:
        schema.add_table(_read(connection, name, catalogue, rows=rows))
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
