"""Offline (`alembic upgrade --sql`) prints every step the online run takes.

Offline there is no database to read: zdm compiles each operation from its picture of the tables
(zdm.alembic.offline). What online reads from the live catalog (index copies, constraint copies,
what hangs on a column) must then come from that picture, or the printed script silently does
less than `alembic upgrade` would: a rename whose new column has no unique index, a type change
that loses its CHECK.
"""

from __future__ import annotations

import io
import sqlite3
import textwrap
from argparse import Namespace
from pathlib import Path
from typing import Any

import alembic.command
import pglast
import psycopg
import pytest
import sqlalchemy as sa
from alembic.config import Config

from zdm import db, introspect, planfile
from zdm.actions import Statement
from zdm.plan import MigrationPlan
from zdm.planfile import PlanFile

ROOT = Path(__file__).resolve().parent.parent

TABLES = [
    "CREATE TABLE teams (id INTEGER PRIMARY KEY, label TEXT)",
    "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, code TEXT, name TEXT, "
    "team_id INTEGER REFERENCES teams (id), age INTEGER CHECK (age > 0), CONSTRAINT users_email_key UNIQUE (email))",
    "CREATE UNIQUE INDEX users_code_ix ON users (code)",
    "CREATE INDEX users_name_ix ON users (name)",
    "CREATE TABLE badges (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users (id))",
    "CREATE TABLE tags (id INTEGER NOT NULL, label TEXT DEFAULT 'x')",
]
OPERATIONS: list[dict[str, Any]] = [
    {"op": "rename_column", "table": "users", "column": "email", "new_name": "email_address"},
    {"op": "rename_column", "table": "users", "column": "code", "new_name": "user_code"},
    {"op": "rename_column", "table": "users", "column": "name", "new_name": "full_name"},
    {"op": "alter_column", "table": "users", "column": "age", "type": "BIGINT"},
    {"op": "alter_column", "table": "users", "column": "team_id", "type": "BIGINT"},
    {"op": "alter_column", "table": "users", "column": "name", "type": "VARCHAR(50)"},
    {"op": "alter_column", "table": "teams", "column": "label", "type": "VARCHAR(80)"},
    {"op": "alter_column", "table": "teams", "column": "id", "type": "BIGINT"},  # a key other tables refer to
    {"op": "set_not_null", "table": "users", "column": "name", "fill": "anon"},
    {"op": "drop_not_null", "table": "users", "column": "id"},
    {"op": "add_column", "table": "users", "column": "nick", "type": "TEXT", "from_column": "name"},
    {"op": "drop_column", "table": "users", "column": "name"},
    {"op": "set_default", "table": "users", "column": "name", "default": "x"},
    {"op": "create_index", "table": "users", "name": "users_age_ix", "columns": ["age"]},
    {"op": "add_unique", "table": "users", "name": "users_name_key", "columns": ["name"]},
    {"op": "add_check", "table": "users", "name": "users_name_check", "condition": "name <> ''"},
    {"op": "add_foreign_key", "table": "badges", "name": "badges_team_fk", "columns": ["user_id"],
     "ref_table": "users", "ref_columns": ["id"]},
    {"op": "drop_index", "table": "users", "name": "users_name_ix"},
    {"op": "drop_constraint", "table": "users", "name": "users_email_key"},
    {"op": "drop_constraint", "table": "users", "name": "users_code_ix"},  # SQLite: add_unique's index
    {"op": "rename_table", "table": "teams", "new_name": "squads"},
    {"op": "add_primary_key", "table": "tags", "columns": ["id"], "name": "tags_pkey"},
    {"op": "drop_default", "table": "tags", "column": "label"},
    {"op": "drop_table", "table": "badges"},
    {"op": "create_table", "table": "notes", "columns": [{"name": "id", "type": "INTEGER", "primary_key": True}]},
]


def statements(plan: MigrationPlan) -> list[tuple[str, str, list[str]]]:
    """Each step's phase, description and forward SQL; offline does not know the schema name."""
    return [(step.phase.value, step.description,
             [action.sql.strip().replace("public.", "") if isinstance(action, Statement) else type(action).__name__
              for action in step.forward]) for step in plan.steps]


def test_offline_compiles_the_steps_online_compiles(zdm_database_url: str) -> None:
    """Each operation on the same tables: online from the live catalog, offline from the model of it
    (what create_table, hints and earlier revisions give zdm). Every step, every statement; what only
    the live catalog can tell is refused by name offline, never silently left out."""
    engine = db.create_engine(zdm_database_url)
    with engine.begin() as connection:
        for statement in TABLES:
            connection.exec_driver_sql(statement)
    differing: dict[str, Any] = {}
    for operation in OPERATIONS:
        plan = PlanFile.model_validate({"id": "p1", "operations": [operation]})
        with engine.connect() as connection:
            try:
                online = planfile.compile_plan(plan, connection)
            except ValueError as exc:  # PostgreSQL: drop_constraint of a plain index is refused online
                assert operation.get("name") == "users_code_ix" and engine.dialect.name == "postgresql", exc
                continue
            schema = introspect.read_schema(connection)
        try:
            offline = planfile.compile_plan(plan, None, schema=schema, dialect=engine.dialect.name)
        except ValueError as exc:
            assert "instead of offline" in str(exc) and operation["column"] == "id", exc
            continue
        if statements(offline) != statements(online):
            differing[f"{operation['op']} {operation.get('column') or operation.get('name')}"] = (
                [step for step in statements(online) if step not in statements(offline)],
                [step for step in statements(offline) if step not in statements(online)])
    engine.dispose()
    assert differing == {}  # operation -> (online only, offline only)


REVISIONS = {
    "r1_users.py": """\
        import sqlalchemy as sa
        from alembic import op

        revision, down_revision = "r1", None

        def upgrade():
            op.create_table("users", sa.Column("id", sa.Integer, primary_key=True),
                            sa.Column("email", sa.Text, {unique}))

        def downgrade():
            op.drop_table("users")
        """,
    "r2_rename.py": """\
        from alembic import op

        revision, down_revision = "r2", "r1"

        def upgrade():
            op.zdm_rename_column("users", "email", "email_address")

        def downgrade():
            op.zdm_rollback()
        """,
}


def run_script(url: str, script: str) -> None:
    """The printed script, as a reviewer would apply it (psql, sqlite3)."""
    if url.startswith("sqlite"):
        connection = sqlite3.connect(sa.make_url(url).database or "", isolation_level=None)
        connection.executescript(script)
        connection.close()
        return
    plain = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as connection:  # BEGIN/COMMIT are in the script
        for statement in pglast.split(script):
            connection.execute(statement)  # type: ignore[call-overload]


def test_offline_rename_script_keeps_the_new_column_unique(zdm_database_url: str, tmp_path: Path) -> None:
    """Applied to an empty database, the --sql script of a rename leaves the new name unique while
    both names are in use: the new app's upserts on it need the index online zdm builds."""
    url = zdm_database_url
    sqlite = url.startswith("sqlite")
    # SQLite keeps a UNIQUE constraint in an internal index with no SQL, which zdm does not copy online
    # either; a unique index it copies on both.
    unique = "unique=True, index=True" if sqlite else "unique=True"
    (tmp_path / "versions").mkdir()
    (tmp_path / "env.py").write_text((ROOT / "alembic" / "env.py").read_text())
    for name, source in REVISIONS.items():
        (tmp_path / "versions" / name).write_text(textwrap.dedent(source).replace("{unique}", unique))
    out = io.StringIO()
    cfg = Config(ROOT / "alembic.ini", cmd_opts=Namespace(x=[f"db={url}"]), output_buffer=out, stdout=io.StringIO())
    cfg.set_main_option("script_location", str(tmp_path))
    alembic.command.upgrade(cfg, "head", sql=True)
    script = out.getvalue()
    assert "CREATE UNIQUE INDEX" in script and "(email_address)" in script

    run_script(url, script)
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO users (id, email_address) VALUES (1, 'a@x')")
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO users (id, email_address) VALUES (2, 'a@x')")
    engine.dispose()
