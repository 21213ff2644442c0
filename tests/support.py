"""Shared test scaffolding: a users table in both the model and the database, and app clients.

An ``App`` writes through a real connection and applies the same write to the model, so a test
reads as the story it checks: the old app writes, the new app writes, both agree with the model.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa

from zdm import db, introspect, oracle, planfile
from zdm.dialects import for_name
from zdm.model import Column, ColumnType, Schema, Table
from zdm.plan import STEP_PHASES, Phase
from zdm.runner import Runner


def users_schema(rows: int = 120) -> Schema:
    table = Table("users", [
        Column("id", ColumnType.INTEGER, nullable=False, primary_key=True),
        Column("email", ColumnType.TEXT, nullable=False),
        Column("name", ColumnType.TEXT, default="anon"),
        Column("legacy_flag", ColumnType.BOOLEAN),
        Column("created_at", ColumnType.TIMESTAMP),
        Column("profile", ColumnType.JSON),
        Column("score", ColumnType.BIGINT),
        Column("age", ColumnType.INTEGER),
        Column("code", ColumnType.TEXT),  # digits as text, to convert
        Column("prefs", ColumnType.TEXT),  # JSON as text, to convert
    ])
    for i in range(1, rows + 1):
        table.insert({
            "id": i,
            "email": f" User{i}@Example.COM ",
            "name": None if i % 7 == 0 else f"user {i}",
            "legacy_flag": i % 2 == 0,
            "created_at": dt.datetime(2026, 1, 1) + dt.timedelta(minutes=i),
            "profile": {"n": i, "tags": ["a", "b"]} if i % 3 else None,
            "score": i * 1_000_000_000,
            "age": 18 + i % 60,
            "code": f"{i:05d}",
            "prefs": json.dumps({"n": i}) if i % 5 else None,
        })
    return Schema({"users": table})


def without_fsync(engine: sa.Engine) -> sa.Engine:
    """On SQLite, commits that do not wait for the disk (``PRAGMA synchronous = OFF``): a test's
    file needs no durability, and an fsync per commit was half of a SQLite workload case on a busy
    disk. Transactions, locks and what each connection sees are unchanged. (PostgreSQL test
    databases commit without waiting for the WAL flush: zdm.testing sets ``synchronous_commit``.)"""
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", lambda connection, _: connection.execute("PRAGMA synchronous = OFF"))
    return engine


def setup(url: str, schema: Schema) -> sa.Engine:
    engine = without_fsync(db.create_engine(url))
    with engine.begin() as connection:
        oracle.create(connection, schema)
    return engine


def learn_catalogue(engine: sa.Engine, model: Schema) -> None:
    """After a test changed the catalogue with raw SQL (an index, a trigger...), the model learns it
    from the database: the catalogue only, never the rows, which the model alone predicts."""
    with engine.connect() as connection:
        model.types = for_name(engine.dialect.name).user_types(connection)
        for name, table in model.tables.items():
            found = introspect.read_table(connection, name)
            table.indexes, table.uniques = found.indexes, found.uniques
            table.checks, table.foreign_keys = found.checks, found.foreign_keys
            for column in table.columns.values():
                column.default, column.comment = found.columns[column.name].default, found.columns[column.name].comment


def assert_agrees(engine: sa.Engine, model: Schema) -> None:
    with engine.connect() as connection:
        found = oracle.differences(oracle.read(connection), model, comments=engine.dialect.supports_comments)
    assert not found, "\n".join(found)


def zdm_objects(engine: sa.Engine) -> list[str]:
    from zdm.dialects import for_connection

    with engine.connect() as connection:
        return for_connection(engine).zdm_objects(connection)


def apply_phases(plan: planfile.PlanFile, model: Schema, dialect: str, *phases: Phase) -> None:
    for phase in phases:
        for operation in plan.operations:
            operation.apply_to_model(model, phase, for_name(dialect))


def rollback_model(plan: planfile.PlanFile, model: Schema, dialect: str) -> None:
    for operation in reversed(plan.operations):
        operation.apply_to_model(model, Phase.ROLLED_BACK, for_name(dialect))


def runner(engine: sa.Engine, **overrides: Any) -> Runner:
    return Runner(engine, overrides={"batch_size": 37, **overrides})


class App:
    """One app version: writes through SQL and, identically, to the model."""

    def __init__(self, engine: sa.Engine, model: Schema, table: str = "users", *, rowcount: bool = True) -> None:
        self.engine, self.model, self.table = engine, model, table
        #: False where the database cannot count the rows a write changed (SQLite, through a view).
        self.rowcount = rowcount

    def _sa(self, names: list[str]) -> sa.TableClause:
        from zdm.coltypes import to_sa

        model = self.model.table(self.table)
        return sa.table(self.table, *[sa.column(n, to_sa(model.column(n).type)) for n in names])

    def insert(self, values: dict[str, Any]) -> None:
        with self.engine.begin() as connection:
            connection.execute(self._sa(list(values)).insert().values(values))
        self.model.insert(self.table, values)

    def update(self, key: int, values: dict[str, Any]) -> None:
        table = self._sa([*values, "id"])
        with self.engine.begin() as connection:
            result = connection.execute(table.update().where(table.c.id == key).values(values))
        assert result.rowcount == 1 or not self.rowcount
        assert self.model.update(self.table, {"id": key}, values) == 1

    def read(self, key: int, column: str) -> Any:
        table = self._sa([column, "id"])
        with self.engine.connect() as connection:
            return connection.execute(sa.select(table.c[column]).where(table.c.id == key)).scalar_one()


__all__ = ["STEP_PHASES", "App", "Phase"]
