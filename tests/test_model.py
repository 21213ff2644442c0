"""The reference model on its own: if the oracle is wrong, every comparison with it is worthless.

Each rule here is one a database enforces too (required columns, defaults on insert and on ADD
COLUMN, unknown and duplicate columns), so the model fails where the database would.
"""

from __future__ import annotations

import datetime as dt

import pytest

from zdm.model import Column, ColumnType, Link, ModelError, Schema, Table


def accounts() -> Table:
    return Table("accounts", [
        Column("id", ColumnType.INTEGER, nullable=False, primary_key=True),
        Column("email", ColumnType.TEXT, nullable=False),
        Column("plan", ColumnType.TEXT, nullable=False, default="free"),
        Column("note", ColumnType.TEXT),
    ])


def test_insert_fills_defaults_and_checks_required_columns() -> None:
    table = accounts()
    assert table.insert({"id": 1, "email": "a@x"}) == {"id": 1, "email": "a@x", "plan": "free", "note": None}
    with pytest.raises(ModelError, match=r"column accounts.email is required"):
        table.insert({"id": 2})
    with pytest.raises(ModelError, match=r"column accounts.plan cannot be NULL"):
        table.insert({"id": 2, "email": "b@x", "plan": None})
    with pytest.raises(ModelError, match="has no column 'nope'"):
        table.insert({"id": 2, "email": "b@x", "nope": 1})
    assert table.row_count() == 1  # a refused insert leaves nothing behind


def test_add_column_fills_existing_rows_like_alter_table() -> None:
    table = accounts()
    table.insert({"id": 1, "email": "a@x"})
    table.add_column(Column("active", ColumnType.BOOLEAN, nullable=False, default=True))
    table.add_column(Column("seen", ColumnType.TIMESTAMP))
    assert table.rows[0]["active"] is True and table.rows[0]["seen"] is None
    assert table.column_names() == ["id", "email", "plan", "note", "active", "seen"]
    with pytest.raises(ModelError, match="already has a column 'email'"):
        table.add_column(Column("email", ColumnType.TEXT))
    with pytest.raises(ModelError, match="cannot add NOT NULL column 'score' without a default"):
        table.add_column(Column("score", ColumnType.INTEGER, nullable=False))


def test_empty_table_takes_a_required_column() -> None:
    table = accounts()
    table.add_column(Column("score", ColumnType.INTEGER, nullable=False))
    assert table.column("score").required


def test_drop_and_rename_columns_carry_the_rows() -> None:
    table = accounts()
    table.insert({"id": 1, "email": "a@x", "note": "n"})
    assert table.drop_column("note").name == "note"
    table.rename_column("email", "email_address")
    assert table.rows == [{"id": 1, "email_address": "a@x", "plan": "free"}]
    assert table.column_names() == ["id", "email_address", "plan"]
    with pytest.raises(ModelError, match="has no column 'note'"):
        table.drop_column("note")
    with pytest.raises(ModelError, match="already has a column 'plan'"):
        table.rename_column("email_address", "plan")


def test_update_counts_matched_rows_and_coerces_values() -> None:
    table = accounts()
    table.add_column(Column("score", ColumnType.BIGINT))
    table.add_column(Column("at", ColumnType.TIMESTAMP))
    for key in (1, 2):
        table.insert({"id": key, "email": f"{key}@x"})
    assert table.update({"id": 2}, {"score": "7", "at": "2026-01-02T03:04:05"}) == 1
    with pytest.raises(ValueError, match="has a UTC offset"):  # the databases would drop it silently
        table.update({"id": 2}, {"at": "2026-01-02T03:04:05+02:00"})
    assert table.update({"id": 3}, {"score": 1}) == 0
    assert table.sorted_rows()[1]["score"] == 7
    assert table.sorted_rows()[1]["at"] == dt.datetime(2026, 1, 2, 3, 4, 5)


def test_links_behave_like_dual_write_triggers() -> None:
    table = accounts()
    table.add_column(Column("email_address", ColumnType.TEXT))
    table.links.append(Link("email", "email_address", up=lambda v: v, down=lambda v: v))
    old = table.insert({"id": 1, "email": "old@x"})
    new = table.insert({"id": 2, "email_address": "new@x"})
    assert old["email_address"] == "old@x" and new["email"] == "new@x"
    table.update({"id": 1}, {"email_address": "changed-by-new@x"})
    assert table.rows[0]["email"] == "changed-by-new@x"
    table.update({"id": 1}, {"email": "a@x", "email_address": "b@x"})  # both change: the old column wins
    assert table.rows[0]["email_address"] == "a@x"


def test_schema_tables() -> None:
    schema = Schema({"accounts": accounts()})
    schema.add_table(Table("teams", [Column("id", ColumnType.INTEGER, nullable=False, primary_key=True)]))
    with pytest.raises(ModelError, match="table 'teams' already exists"):
        schema.add_table(Table("teams"))
    schema.rename_table("teams", "groups")
    assert schema.has_table("groups") and not schema.has_table("teams")
    copied = schema.copy()
    copied.table("accounts").insert({"id": 1, "email": "a@x"})
    assert schema.table("accounts").row_count() == 0  # a copy shares nothing
    schema.drop_table("groups")
    with pytest.raises(ModelError, match="no table 'groups'"):
        schema.table("groups")
