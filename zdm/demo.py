"""`zdm demo`: a rename walked through phase by phase on a real database.

It shows the promise rather than describing it: after start, an old-version client writing
``email`` and a new-version client writing ``email_address`` both succeed and see each other's
rows; a rollback keeps every row; a second start and a complete leave only the new shape.

The demo creates a ``users`` table and zdm's ``zdm_migrations``. It never drops what it did not
make: a database that has a ``users`` table, or plans of its own in ``zdm_migrations``, is
refused before anything changes. What an earlier demo left (its own plan, done, and its
``users`` table) is cleared, so the demo can run again on the same database.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table as RichTable

from zdm import db, planfile, state
from zdm.plan import Phase
from zdm.report import HumanReporter, JsonReporter
from zdm.runner import Reporter, Runner
from zdm.status import Record, format_record

TABLE = "users"
#: Every column the demo's users table has in some phase: a users table with another one is not the demo's.
DEMO_COLUMNS = frozenset({"id", "email", "email_address", "email_lower", "name"})

PLAN = {
    "id": "zdm-demo",
    "title": "users.email becomes users.email_address; add a lower-cased copy",
    "operations": [
        {"op": "rename_column", "table": "users", "column": "email", "new_name": "email_address"},
        {"op": "add_column", "table": "users", "column": "email_lower", "type": "TEXT",
         "from_column": "email_address", "transform": "lower"},
    ],
}


class DemoRefused(Exception):
    """The database has something the demo did not make; nothing was changed."""


def run_demo(url: str | None, rows: int, *, as_json: bool = False) -> dict[str, Any]:
    """Run the story; returns what `zdm demo --json` prints (the database, the plan, the snapshots)."""
    out = Console(highlight=False, quiet=as_json)
    if url is None:
        path = Path(tempfile.mkdtemp(prefix="zdm-demo-")) / "demo.sqlite"
        url = f"sqlite:///{path}"
    engine = db.create_engine(url)
    db.check_connection(engine)
    clear_earlier_demo(engine)
    reporter: Reporter = JsonReporter(engine=engine) if as_json else HumanReporter(
        out, show_sql=True, line_every_s=0.5, engine=engine)
    try:
        return _story(out, engine, reporter, rows, url)
    finally:
        reporter.close()  # type: ignore[attr-defined]


def _story(out: Console, engine: sa.Engine, reporter: Reporter, rows: int, url: str) -> dict[str, Any]:
    runner = Runner(engine, reporter, {"batch_size": 2000})
    plan_file = planfile.parse(PLAN, source="demo plan")
    snapshots: list[dict[str, Any]] = []

    out.rule("[bold]zdm demo")
    out.print(f"database: {db.describe(engine)}")
    _create_users(engine, rows)
    out.print(f"created table users with {rows:,} rows (id, email NOT NULL, name)")
    _show(out, engine, snapshots, "before", "SELECT id, email, name FROM users ORDER BY id LIMIT 3")

    out.rule("start: expand + migrate")
    runner.start(plan_file)
    _old_app_insert(engine, rows + 1)
    _new_app_insert(engine, rows + 2)
    out.print("old app inserted a row with [bold]email[/], new app one with [bold]email_address[/]")
    _show(out, engine, snapshots, "after start: both shapes readable and in sync",
          "SELECT id, email, email_address, email_lower FROM users ORDER BY id DESC LIMIT 3")

    out.rule("rollback: compensating SQL, newest step first")
    runner.rollback(plan_file.id)
    _show(out, engine, snapshots, "after rollback: original shape, the rows written meanwhile kept",
          "SELECT id, email, name FROM users ORDER BY id DESC LIMIT 3")

    out.rule("start again, then complete (after the new app is deployed)")
    show_sql = getattr(reporter, "show_sql", False)
    if show_sql:
        reporter.show_sql = False  # type: ignore[attr-defined]  # the same statements as above
    runner.start(plan_file)
    if show_sql:
        reporter.show_sql = True  # type: ignore[attr-defined]
    plan = runner.complete(plan_file.id)
    _show(out, engine, snapshots, "after complete: only the new shape",
          "SELECT id, email_address, email_lower, name FROM users ORDER BY id DESC LIMIT 3")

    out.rule("history (zdm status)")
    for stored, checkpoint in runner.status():
        if stored.id == plan_file.id:
            out.print(format_record(Record(stored, checkpoint)))
    out.print(f"\ntry it yourself: zdm status --db {db.describe(engine)}")
    return {"database": db.describe(engine), "plan": plan.to_dict(), "snapshots": snapshots}


def clear_earlier_demo(engine: sa.Engine) -> None:
    """Refuse a database with a users table or zdm plans the demo did not make; clear an earlier demo's.

    An earlier demo is recognised by its own plan (the only one in zdm_migrations, and done) and
    a users table with the demo's columns only. It is then dropped with that plan's record;
    nothing else is touched.
    """
    where = db.describe(engine)
    with engine.begin() as connection:
        inspector = sa.inspect(connection)
        has_users = inspector.has_table(TABLE)
        stored = state.load_all(connection) if inspector.has_table(state.migrations.name) else []
        others = [plan.id for plan, _ in stored if plan.id != PLAN["id"]]
        if others:
            raise DemoRefused(
                f"{where} has zdm plans of its own in zdm_migrations ({', '.join(sorted(others)[:3])}"
                f"{', ...' if len(others) > 3 else ''}): the demo only runs in a database of its own "
                "(leave out --db for a new SQLite file)")
        mine = next((plan for plan, _ in stored if plan.id == PLAN["id"]), None)
        if mine is not None and mine.phase not in (Phase.COMPLETE, Phase.ROLLED_BACK):
            raise DemoRefused(f"an earlier demo in {where} stopped with its plan {mine.id} {mine.phase.value}: "
                              f"`zdm rollback {mine.id} --db ...` first, or leave out --db for a new SQLite file")
        if has_users:
            columns = {column["name"] for column in inspector.get_columns(TABLE)}
            if mine is None or not columns <= DEMO_COLUMNS:
                raise DemoRefused(
                    f"{where} already has a users table that the demo did not make: the demo creates its own and "
                    "never drops yours (leave out --db for a new SQLite file)")
            connection.execute(sa.schema.DropTable(sa.Table(TABLE, sa.MetaData())))
        if mine is not None:
            connection.execute(state.migrations.delete().where(state.migrations.c.id == mine.id))


def _create_users(engine: sa.Engine, rows: int) -> None:
    with engine.begin() as connection:
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


def _show(out: Console, engine: sa.Engine, snapshots: list[dict[str, Any]], title: str, query: str) -> None:
    with engine.connect() as connection:
        result = connection.execute(sa.text(query))
        columns = list(result.keys())  # a Result iterates over rows, not names
        rows = [list(row) for row in result]
    table = RichTable(title=title, title_justify="left")
    for name in columns:
        table.add_column(name)
    for row in rows:
        table.add_row(*("NULL" if v is None else str(v) for v in row))
    out.print(table)
    snapshots.append({"title": title, "columns": columns, "rows": rows})
