"""The model as an oracle: build a database from it, and tell where a database differs from it.

Tests (ours and users') set up tables and rows once, in the model, create the same in the
database, then after every phase compare what the database holds with what the model predicts:
the catalogue (columns with their defaults and comments, indexes, constraints) and every row.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from zdm import introspect
from zdm.coltypes import Family, to_sa
from zdm.db import sql_text
from zdm.model import ColumnType, Schema, SqlDefault, Table, same_row


def _server_default(column_type: ColumnType, default: Any) -> Any:
    if default is None:
        return None
    if isinstance(default, SqlDefault):
        return sql_text(default.sql)
    value = column_type.coerce(default)
    if column_type.family is Family.JSON:  # SQLAlchemy renders no JSON literal; both databases read the text
        return sa.literal(json.dumps(value), sa.Text())
    return sa.literal(value, to_sa(column_type))


def sa_table(table: Table, metadata: sa.MetaData | None = None) -> sa.Table:
    """The model's table as SQLAlchemy Core: columns, key, indexes and constraints, all named."""
    items: list[Any] = [
        sa.Column(
            column.name,
            to_sa(column.type),
            primary_key=column.primary_key,
            nullable=column.nullable or column.primary_key,
            server_default=_server_default(column.type, column.default),
            autoincrement=False,
            comment=column.comment,
        )
        for column in table.columns.values()
    ]
    items += [sa.UniqueConstraint(*columns, name=name) for name, columns in table.uniques.items()]
    items += [sa.CheckConstraint(sql_text(condition), name=name) for name, condition in table.checks.items()]
    items += [sa.ForeignKeyConstraint(list(fk.columns), [f"{fk.ref_table}.{c}" for c in fk.ref_columns],
                                      name=name, ondelete=fk.on_delete)
              for name, fk in table.foreign_keys.items()]
    result = sa.Table(table.name, metadata or sa.MetaData(), *items)
    for name, index in table.indexes.items():
        sa.Index(name, *[result.c[c] for c in index.columns], unique=index.unique)
    return result


def create(connection: sa.Connection, schema: Schema) -> None:
    """Create the model's tables, with their catalogue, and rows in the database."""
    metadata = sa.MetaData()
    tables = {name: sa_table(t, metadata) for name, t in schema.tables.items()}
    metadata.create_all(connection, tables=list(tables.values()))
    for table in metadata.sorted_tables:  # parents before children
        model = schema.tables[table.name]
        if model.rows:
            connection.execute(table.insert(), model.rows)


def read(connection: sa.Connection, tables: list[str] | None = None) -> Schema:
    """The database's user tables, catalogues and rows, as a model Schema."""
    return introspect.read_schema(connection, tables, rows=True)


def differences(database: Schema, model: Schema, *, comments: bool = True) -> list[str]:
    """Human-readable differences; empty when the database agrees with the model.

    ``comments``: False for a database that keeps no comments (SQLite).
    """
    found: list[str] = []
    if set(database.tables) != set(model.tables):
        found.append(f"tables: database {sorted(database.tables)} != model {sorted(model.tables)}")
    for name in sorted(set(database.tables) & set(model.tables)):
        db_table, model_table = database.tables[name], model.tables[name]
        db_catalogue, model_catalogue = db_table.catalogue(), model_table.catalogue()
        if not comments:
            for catalogue in (db_catalogue, model_catalogue):
                catalogue["columns"] = {c: described[:3] for c, described in catalogue["columns"].items()}
        for part in model_catalogue:
            if db_catalogue[part] != model_catalogue[part]:
                found.append(f"{name} {part}: database {db_catalogue[part]} != model {model_catalogue[part]}")
        if db_table.shape() != model_table.shape():
            continue
        db_rows, model_rows = db_table.sorted_rows(), model_table.sorted_rows()
        if len(db_rows) != len(model_rows):
            found.append(f"{name}: database has {len(db_rows)} rows, model {len(model_rows)}")
        for db_row, model_row in zip(db_rows, model_rows, strict=False):
            if not same_row(db_row, model_row):
                found.append(f"{name} row: database {db_row} != model {model_row}")
                break
    return found

