"""The zdm.testing helpers as a user's CI meets them, on SQLite and PostgreSQL.

Each helper must pass a plan that keeps its promise and fail, naming the reason, one that does
not: a helper that never fails would be worse than none.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.config import Config
from support import assert_agrees, setup, users_schema, zdm_objects

from zdm.testing import assert_alembic_stairway, assert_completes, assert_reversible, assert_within_lock_budget

RENAME = {"id": "rename_email", "operations": [
    {"op": "rename_column", "table": "users", "column": "email", "new_name": "email_address"}]}
ADD_NICKNAME = {"id": "add_nickname", "operations": [
    {"op": "add_column", "table": "users", "column": "nickname", "type": "TEXT"}]}
#: Raw SQL the reference model cannot see, and a `down` that damages rows instead of undoing `up`.
LOSSY = {"id": "lossy", "operations": [
    {"op": "sql", "table": "users", "up": "ALTER TABLE users ADD COLUMN note TEXT",
     "down": "UPDATE users SET name = 'lost' WHERE id IN (1, 2, 3)"}]}
ADD_NOTE = {"id": "add_note", "operations": [
    {"op": "sql", "table": "users", "up": "ALTER TABLE users ADD COLUMN note TEXT",
     "down": "ALTER TABLE users DROP COLUMN note"}]}


def test_assert_reversible_passes_a_rename_and_leaves_every_row(zdm_database_url: str) -> None:
    model = users_schema(40)
    engine = setup(zdm_database_url, model)
    rehearsal = assert_reversible(zdm_database_url, RENAME)
    assert rehearsal.restored
    assert_agrees(engine, model)
    assert zdm_objects(engine) == []
    engine.dispose()


def test_assert_reversible_names_what_a_lossy_down_left(zdm_database_url: str) -> None:
    setup(zdm_database_url, users_schema(40)).dispose()
    with pytest.raises(AssertionError, match="not reversible") as failure:
        assert_reversible(zdm_database_url, LOSSY)
    assert "users.note: was absent" in str(failure.value)


def test_assert_completes_checks_the_declared_columns(zdm_database_url: str) -> None:
    model = users_schema(40)
    setup(zdm_database_url, model).dispose()
    renamed = ["email_address" if name == "email" else name for name in model.table("users").columns]
    assert_completes(zdm_database_url, RENAME, expected_columns=renamed)


def test_assert_completes_compares_with_the_model_by_default(zdm_database_url: str, tmp_path: Path) -> None:
    setup(zdm_database_url, users_schema(40)).dispose()
    plan = tmp_path / "add_nickname.yaml"
    plan.write_text("id: add_nickname\noperations:\n  - {op: add_column, table: users, column: nickname, type: TEXT}\n")
    assert_completes(zdm_database_url, plan)


def test_assert_completes_fails_when_the_shape_is_not_the_declared_one(zdm_database_url: str) -> None:
    setup(zdm_database_url, users_schema(40)).dispose()
    # The model cannot see inside raw SQL, so it predicts no `note` column.
    with pytest.raises(AssertionError, match="not to the declared shape") as failure:
        assert_completes(zdm_database_url, ADD_NOTE)
    assert "note" in str(failure.value)


def test_assert_within_lock_budget(zdm_database_url: str) -> None:
    setup(zdm_database_url, users_schema(40)).dispose()
    rehearsal = assert_within_lock_budget(zdm_database_url, ADD_NICKNAME, budget_ms=5_000)
    assert rehearsal.restored
    # ADD COLUMN takes ACCESS EXCLUSIVE (SQLite: the database write lock) for more than a microsecond.
    with pytest.raises(AssertionError, match=r"breaks the lock budget of 0\.001 ms") as failure:
        assert_within_lock_budget(zdm_database_url, ADD_NICKNAME, budget_ms=0.001)
    assert ("ACCESS EXCLUSIVE users" if "postgresql" in zdm_database_url else "DATABASE WRITE") in str(failure.value)


# -- Alembic stairway ---------------------------------------------------------------------------
ENV_PY = """\
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
engine = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                            poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
"""

#: revision -> (down_revision, upgrade, downgrade): one statement each.
REVISIONS = {
    "a1": (None, 'op.create_table("accounts", sa.Column("id", sa.Integer, primary_key=True), '
                 'sa.Column("email", sa.Text, nullable=False))', 'op.drop_table("accounts")'),
    "b2": ("a1", 'op.add_column("accounts", sa.Column("nickname", sa.Text))', 'op.drop_column("accounts", "nickname")'),
    "c3": ("b2", 'op.create_index("ix_accounts_email", "accounts", ["email"], unique=True)',
           'op.drop_index("ix_accounts_email", table_name="accounts")'),
}
#: A downgrade that forgets the index its upgrade built.
FORGETFUL = {"d4": ("c3", 'op.create_index("ix_accounts_nickname", "accounts", ["nickname"])', "pass")}


def alembic_config(directory: Path, url: str, revisions: dict[str, tuple[str | None, str, str]]) -> Config:
    (directory / "versions").mkdir(parents=True)
    (directory / "env.py").write_text(ENV_PY)
    for revision, (down, upgrade, downgrade) in revisions.items():
        (directory / "versions" / f"{revision}.py").write_text(
            f"import sqlalchemy as sa\nfrom alembic import op\n\nrevision = {revision!r}\ndown_revision = {down!r}\n\n"
            f"def upgrade():\n    {upgrade}\n\ndef downgrade():\n    {downgrade}\n"
        )
    config = Config()
    config.set_main_option("script_location", str(directory))
    config.set_main_option("sqlalchemy.url", url)
    return config


def test_alembic_stairway_walks_every_revision(zdm_database_url: str, tmp_path: Path) -> None:
    config = alembic_config(tmp_path / "migrations", zdm_database_url, REVISIONS)
    assert assert_alembic_stairway(config) == ["a1", "b2", "c3"]


def test_alembic_stairway_catches_a_forgetful_downgrade(zdm_database_url: str, tmp_path: Path) -> None:
    config = alembic_config(tmp_path / "migrations", "sqlite://", {**REVISIONS, **FORGETFUL})
    with pytest.raises(AssertionError, match="revision d4: its downgrade does not give the schema back") as failure:
        assert_alembic_stairway(config, url=zdm_database_url)
    assert "ix_accounts_nickname" in str(failure.value)


def test_alembic_stairway_walks_the_zdm_example_environment(zdm_database_url: str) -> None:
    """Two zdm revisions on one table need the first completed before the second starts, as a deploy would."""
    config = Config(str(Path(__file__).resolve().parent.parent / "alembic.ini"))
    assert assert_alembic_stairway(config, url=zdm_database_url) == [
        "0001_create_users", "0002_add_email_lower", "0003_rename_email", "0004_score_bigint", "0005_name_not_null"]


WIDEN_PARENT = {"id": "widen_parent", "operations": [
    {"op": "alter_column", "table": "parent", "column": "id", "type": "BIGINT"}]}


def test_assert_completes_a_key_widening_checks_the_referencing_table_too(zdm_database_url: str) -> None:
    """The plan names one table and changes two: a list of columns is the named table's."""
    from sqlalchemy import create_engine

    engine = create_engine(zdm_database_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE parent (id integer PRIMARY KEY, name text)")
        connection.exec_driver_sql("CREATE TABLE child (id integer PRIMARY KEY, "
                                   "parent_id integer NOT NULL REFERENCES parent (id))")
        connection.exec_driver_sql("INSERT INTO parent VALUES (1, 'a')")
        connection.exec_driver_sql("INSERT INTO child VALUES (1, 1)")
    engine.dispose()
    assert_completes(zdm_database_url, WIDEN_PARENT, expected_columns=["id", "name"])
