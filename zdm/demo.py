"""`zdm demo`: a rename walked through phase by phase on a real database.

It shows the promise rather than describing it: after start, an old-version client writing
``email`` and a new-version client writing ``email_address`` both succeed and see each other's
rows; a rollback keeps every row; a second start and a complete leave only the new shape.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table as RichTable

from zdm import db, planfile
from zdm.report import HumanReporter
from zdm.runner import Runner

PLAN = {
    "id": "rename-email",
    "title": "users.email becomes users.email_address; add a lower-cased copy",
    "operations": [
        {"op": "rename_column", "table": "users", "column": "email", "new_name": "email_address"},
        {"op": "add_column", "table": "users", "column": "email_lower", "type": "TEXT",
         "from_column": "email_address", "transform": "lower"},
    ],
}


def run_demo(url: str | None, rows: int) -> None:
    out = Console(highlight=False)
    if url is None:
        path = Path(tempfile.mkdtemp(prefix="zdm-demo-")) / "demo.sqlite"
        url = f"sqlite:///{path}"
    engine = db.create_engine(url)
    db.check_connection(engine)
    reporter = HumanReporter(out, show_sql=True, line_every_s=0.5)
    runner = Runner(engine, reporter, {"batch_size": 2000})
    plan_file = planfile.parse(PLAN, source="demo plan")

    out.rule("[bold]zdm demo")
    out.print(f"database: {db.describe(engine)}")
    _create_users(engine, rows)
    out.print(f"created table users with {rows:,} rows (id, email NOT NULL, name)")
    _show(out, engine, "before", "SELECT id, email, name FROM users ORDER BY id LIMIT 3")

    out.rule("start: expand + migrate")
    runner.start(plan_file)
    _old_app_insert(engine, rows + 1)
    _new_app_insert(engine, rows + 2)
    out.print("old app inserted a row with [bold]email[/], new app one with [bold]email_address[/]")
    _show(out, engine, "after start: both shapes readable and in sync",
          "SELECT id, email, email_address, email_lower FROM users ORDER BY id DESC LIMIT 3")

    out.rule("rollback: compensating SQL, newest step first")
    runner.rollback(plan_file.id)
    _show(out, engine, "after rollback: original shape, the rows written meanwhile kept",
          "SELECT id, email, name FROM users ORDER BY id DESC LIMIT 3")

    out.rule("start again, then complete (after the new app is deployed)")
    reporter.show_sql = False  # the same statements as above
    runner.start(plan_file)
    reporter.show_sql = True
    runner.complete(plan_file.id)
    _show(out, engine, "after complete: only the new shape",
          "SELECT id, email_address, email_lower, name FROM users ORDER BY id DESC LIMIT 3")

    out.rule("history (zdm status)")
    from zdm.cli import format_status

    for plan, checkpoint in runner.status():
        out.print(format_status(plan, checkpoint))
    out.print(f"\ntry it yourself: zdm status --db {url}")


def _create_users(engine: sa.Engine, rows: int) -> None:
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE IF EXISTS users")
        connection.exec_driver_sql("DROP TABLE IF EXISTS zdm_migrations")
        connection.exec_driver_sql(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL, name TEXT)"
        )
        users = sa.table("users", sa.column("id"), sa.column("email"), sa.column("name"))
        for start in range(1, rows + 1, 10_000):
            connection.execute(users.insert(), [
                {"id": i, "email": f"User{i}@Example.COM", "name": f"user {i}"}
                for i in range(start, min(start + 10_000, rows + 1))
            ])


def _old_app_insert(engine: sa.Engine, key: int) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO users (id, email, name) VALUES (:i, 'Old@App.IO', 'old app')"),
                           {"i": key})


def _new_app_insert(engine: sa.Engine, key: int) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.text("INSERT INTO users (id, email_address, name) VALUES (:i, 'New@App.IO', 'new app')"), {"i": key}
        )


def _show(out: Console, engine: sa.Engine, title: str, query: str) -> None:
    with engine.connect() as connection:
        result = connection.execute(sa.text(query))
        table = RichTable(title=title, title_justify="left")
        columns = list(result.keys())  # a Result iterates over rows, not names
        for name in columns:
            table.add_column(name)
        for row in result:
            table.add_row(*("NULL" if v is None else str(v) for v in row))
    out.print(table)
