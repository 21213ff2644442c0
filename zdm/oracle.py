"""The model as an oracle: build a database from it, and tell where a database differs from it.

Tests (ours and users') set up tables and rows once, in the model, create the same in the
database, then after every phase compare what the database holds with what the model predicts.
"""

from __future__ import annotations

import json

import sqlalchemy as sa

from zdm import introspect
from zdm.dialects import SA_TYPES
from zdm.model import ColumnType, Schema, Table


def sa_table(table: Table, metadata: sa.MetaData | None = None) -> sa.Table:
    columns = []
    for column in table.columns.values():
        default = None
        if column.default is not None:
            value = column.type.coerce(column.default)
            default = (sa.literal(json.dumps(value), sa.Text()) if column.type is ColumnType.JSON  # no JSON literal
                       else sa.literal(value, SA_TYPES[column.type]()))
        columns.append(sa.Column(
            column.name,
            SA_TYPES[column.type](),
            primary_key=column.primary_key,
            nullable=column.nullable or column.primary_key,
            server_default=default,
            autoincrement=False,
        ))
    return sa.Table(table.name, metadata or sa.MetaData(), *columns)


def create(connection: sa.Connection, schema: Schema) -> None:
    """Create the model's tables and rows in the database."""
    metadata = sa.MetaData()
    tables = [sa_table(t, metadata) for t in schema.tables.values()]
    metadata.create_all(connection, tables=tables)
    for table, model in zip(tables, schema.tables.values(), strict=True):
        if model.rows:
            connection.execute(table.insert(), model.rows)


def read(connection: sa.Connection, tables: list[str] | None = None) -> Schema:
    """The database's user tables, shapes and rows, as a model Schema."""
    return introspect.read_schema(connection, tables, rows=True)


def differences(database: Schema, model: Schema) -> list[str]:
    """Human-readable differences; empty when the database agrees with the model."""
    found: list[str] = []
    if set(database.tables) != set(model.tables):
        found.append(f"tables: database {sorted(database.tables)} != model {sorted(model.tables)}")
    for name in sorted(set(database.tables) & set(model.tables)):
        db_table, model_table = database.tables[name], model.tables[name]
        if db_table.shape() != model_table.shape():
            found.append(f"{name} columns: database {db_table.shape()} != model {model_table.shape()}")
            continue
        db_rows, model_rows = db_table.sorted_rows(), model_table.sorted_rows()
        if len(db_rows) != len(model_rows):
            found.append(f"{name}: database has {len(db_rows)} rows, model {len(model_rows)}")
        for db_row, model_row in zip(db_rows, model_rows, strict=False):
            if db_row != model_row:
                found.append(f"{name} row: database {db_row} != model {model_row}")
                break
    return found
