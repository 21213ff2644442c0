"""Every operation through start / rollback / start / complete, on SQLite and PostgreSQL.

One flow covers every promise: after start both app versions write and read, and the database
agrees with the reference model; rollback restores the original shape with every row written
meanwhile and leaves no zdm object; a second start and complete leave the final shape.
The explicit checks per case guard the model itself: if the model and the database were wrong
the same way, the comparison alone would not notice.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from support import (
    App,
    Phase,
    apply_phases,
    assert_agrees,
    learn_catalogue,
    rollback_model,
    runner,
    setup,
    users_schema,
    zdm_objects,
)

from zdm import planfile

Check = Callable[[App, int], None]


@dataclass
class Case:
    name: str
    operations: list[dict[str, Any]]
    old_insert: dict[str, Any]
    new_insert: dict[str, Any]
    old_update: dict[str, Any] = field(default_factory=dict)
    new_update: dict[str, Any] = field(default_factory=dict)
    final_columns: set[str] = field(default_factory=set)
    check: Check | None = None
    gone: set[str] = field(default_factory=set)  # columns that must not survive complete
    setup_sql: list[str] = field(default_factory=list)  # run on the database before the plan
    extra_insert: dict[str, Any] | None = None  # a third row, written by the new app
    more_tables: Callable[[Any], None] | None = None  # adds tables to the starting model


def _rename_email(app: App, base: int) -> None:
    # old app's row readable through the new name, new app's row through the old one
    assert app.read(base + 1, "email_address") == "Old@App.IO"
    assert app.read(base + 2, "email") == "New@App.IO"
    assert app.read(3, "email_address") == app.read(3, "email") == "changed-by-old@x"
    assert app.read(4, "email") == app.read(4, "email_address") == "changed-by-new@x"
    assert app.read(5, "email_address") == " User5@Example.COM "  # backfilled


def _rename_name(app: App, base: int) -> None:
    assert app.read(base + 1, "display_name") == "Olga"
    assert app.read(base + 2, "name") == "Nina"
    assert app.read(base + 3, "name") == app.read(base + 3, "display_name") == "anon"
    assert app.read(7, "display_name") is None  # NULL stays NULL


def _email_norm(app: App, base: int) -> None:
    assert app.read(base + 1, "email_norm") == "old@app.io"
    assert app.read(3, "email_norm") == "changed-by-old@x"
    assert app.read(10, "email_norm") == " user10@example.com "


def _email_trim(app: App, base: int) -> None:
    assert app.read(base + 1, "email_trim") == "Old@App.IO"
    assert app.read(10, "email_trim") == "User10@Example.COM"


def _active(app: App, base: int) -> None:
    assert app.read(base + 1, "active") is True  # old app never names it: the default
    assert app.read(base + 2, "active") is False
    assert app.read(1, "active") is True


def _rename_profile(app: App, base: int) -> None:
    assert app.read(base + 1, "settings") == {"theme": "dark"}
    assert app.read(base + 2, "profile") == {"theme": "light", "n": [1, 2]}


OLD_EMAIL = {"email": "Old@App.IO"}
CASES = [
    Case("add_column_nullable",
         [{"op": "add_column", "table": "users", "column": "nickname", "type": "TEXT"}],
         old_insert=OLD_EMAIL, new_insert={"email": "n@x", "nickname": "nick"},
         old_update={"name": "renamed by old"}, new_update={"nickname": "nick2"},
         final_columns={"nickname", "email"}),
    Case("add_column_not_null_default",
         [{"op": "add_column", "table": "users", "column": "active", "type": "BOOLEAN",
           "nullable": False, "default": True}],
         old_insert=OLD_EMAIL, new_insert={"email": "n@x", "active": False},
         new_update={"active": False}, final_columns={"active"}, check=_active),
    Case("add_column_from_lower",
         [{"op": "add_column", "table": "users", "column": "email_norm", "type": "TEXT",
           "from_column": "email", "transform": "lower"}],
         old_insert=OLD_EMAIL, new_insert={"email": "New@App.IO"},
         old_update={"email": "CHANGED-BY-OLD@X"}, final_columns={"email_norm", "email"}, check=_email_norm),
    Case("add_column_from_trim_with_default",
         [{"op": "add_column", "table": "users", "column": "email_trim", "type": "TEXT",
           "from_column": "email", "transform": "trim", "default": "?"}],
         old_insert=OLD_EMAIL, new_insert={"email": "  New@App.IO", "email_trim": "chosen"},
         old_update={"email": "  x@y  "}, final_columns={"email_trim"}, check=_email_trim),
    Case("rename_not_null",
         [{"op": "rename_column", "table": "users", "column": "email", "new_name": "email_address"}],
         old_insert=OLD_EMAIL, new_insert={"email_address": "New@App.IO"},
         old_update={"email": "changed-by-old@x"}, new_update={"email_address": "changed-by-new@x"},
         final_columns={"email_address"}, check=_rename_email),
    Case("rename_nullable_with_default",
         [{"op": "rename_column", "table": "users", "column": "name", "new_name": "display_name"}],
         old_insert={"email": "o@x", "name": "Olga"}, new_insert={"email": "n@x", "display_name": "Nina"},
         old_update={"name": None}, new_update={"display_name": "Dora"},
         final_columns={"display_name"}, check=_rename_name, extra_insert={"email": "nobody@x"}),
    Case("rename_bigint",
         [{"op": "rename_column", "table": "users", "column": "score", "new_name": "points"}],
         old_insert={"email": "o@x", "score": 2**40}, new_insert={"email": "n@x", "points": -(2**41)},
         old_update={"score": 2**45}, new_update={"points": 7}, final_columns={"points"}),
    Case("rename_json",
         [{"op": "rename_column", "table": "users", "column": "profile", "new_name": "settings"}],
         old_insert={"email": "o@x", "profile": {"theme": "dark"}},
         new_insert={"email": "n@x", "settings": {"theme": "light", "n": [1, 2]}},
         old_update={"profile": {"v": 1}}, new_update={"settings": None},
         final_columns={"settings"}, check=_rename_profile),
    Case("rename_timestamp",
         [{"op": "rename_column", "table": "users", "column": "created_at", "new_name": "signed_up_at"}],
         old_insert={"email": "o@x", "created_at": dt.datetime(2026, 5, 1, 10)},
         new_insert={"email": "n@x", "signed_up_at": dt.datetime(2026, 6, 1, 11, 30)},
         old_update={"created_at": None}, final_columns={"signed_up_at"}),
    Case("drop_column",
         [{"op": "drop_column", "table": "users", "column": "legacy_flag"}],
         old_insert={"email": "o@x", "legacy_flag": True}, new_insert={"email": "n@x"},
         old_update={"legacy_flag": False}),
    Case("rename_then_derive",
         [{"op": "rename_column", "table": "users", "column": "email", "new_name": "email_address"},
          {"op": "add_column", "table": "users", "column": "email_lower", "type": "TEXT",
           "from_column": "email_address", "transform": "lower"}],
         old_insert=OLD_EMAIL, new_insert={"email_address": "New@App.IO"},
         old_update={"email": "changed-by-old@x"}, new_update={"email_address": "changed-by-new@x"},
         final_columns={"email_address", "email_lower"}, check=_rename_email),
]

GONE = {"rename_not_null": {"email"}, "rename_nullable_with_default": {"name"}, "rename_bigint": {"score"},
        "rename_json": {"profile"}, "rename_timestamp": {"created_at"}, "drop_column": {"legacy_flag"},
        "rename_then_derive": {"email"}}


def _values(values: dict[str, Any], base: int) -> dict[str, Any]:
    """``{n}`` in a text value becomes the cycle's base, for values that must stay unique."""
    return {k: v.replace("{n}", str(base)) if isinstance(v, str) else v for k, v in values.items()}


def _write(case: Case, old: App, new: App, base: int) -> None:
    old.insert({"id": base + 1, **_values(case.old_insert, base)})
    new.insert({"id": base + 2, **_values(case.new_insert, base)})
    if case.extra_insert is not None:
        new.insert({"id": base + 3, **_values(case.extra_insert, base)})
    if case.old_update:
        old.update(3, case.old_update)
    if case.new_update:
        new.update(4, case.new_update)


def run_cycle(url: str, case: Case) -> None:
    """start -> writes -> rollback -> start -> writes -> complete, agreeing with the model throughout."""
    import sqlalchemy as sa

    model = users_schema()
    if case.more_tables:
        case.more_tables(model)
    original = model.copy()
    engine = setup(url, model)
    with engine.begin() as connection:
        for sql in case.setup_sql:
            connection.execute(sa.text(sql))
    learn_catalogue(engine, model)
    dialect = engine.dialect.name
    plan = planfile.parse({"id": case.name, "operations": case.operations})
    run = runner(engine)
    old, new = App(engine, model), App(engine, model)

    run.start(plan)
    apply_phases(plan, model, dialect, Phase.EXPANDING, Phase.MIGRATING)
    assert_agrees(engine, model)
    _write(case, old, new, base=10_000)
    assert_agrees(engine, model)
    if case.check:
        case.check(old, 10_000)

    run.rollback(plan.id)
    rollback_model(plan, model, dialect)
    assert_agrees(engine, model)
    assert model.table("users").shape() == original.table("users").shape()
    written = 2 + (case.extra_insert is not None)
    assert model.table("users").row_count() == original.table("users").row_count() + written
    assert zdm_objects(engine) == []

    run.start(plan)
    apply_phases(plan, model, dialect, Phase.EXPANDING, Phase.MIGRATING)
    _write(case, old, new, base=20_000)
    assert_agrees(engine, model)
    run.complete(plan.id)
    apply_phases(plan, model, dialect, Phase.CONTRACTING)
    assert_agrees(engine, model)
    assert zdm_objects(engine) == []
    columns = set(model.table("users").columns)
    assert case.final_columns <= columns
    assert not ((case.gone | GONE.get(case.name, set())) & columns)
    # the new app keeps working on the final shape
    final = {k: v for k, v in _values(case.new_insert, 30_000).items() if k in columns}
    new.insert({"id": 30_000, **final})
    assert_agrees(engine, model)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_start_rollback_start_complete(zdm_database_url: str, case: Case) -> None:
    run_cycle(zdm_database_url, case)


@pytest.mark.parametrize("case", [c for c in CASES if c.name in ("rename_not_null", "add_column_from_lower")],
                         ids=lambda c: c.name)
def test_apply_runs_every_phase(zdm_database_url: str, case: Case) -> None:
    model = users_schema()
    engine = setup(zdm_database_url, model)
    plan = planfile.parse({"id": case.name, "operations": case.operations})
    result = runner(engine).apply(plan)
    apply_phases(plan, model, engine.dialect.name, Phase.EXPANDING, Phase.MIGRATING, Phase.CONTRACTING)
    assert result.phase is Phase.COMPLETE
    assert_agrees(engine, model)
    assert zdm_objects(engine) == []


ACCOUNTS = ("CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT, "
            "age INTEGER CHECK (age > 0))")


def _indexes(engine: Any) -> dict[str, tuple[tuple[str, ...], bool]]:
    import sqlalchemy as sa

    with engine.connect() as connection:
        inspector = sa.inspect(connection)
        found = {ix["name"]: (tuple(ix["column_names"]), bool(ix["unique"]))
                 for ix in inspector.get_indexes("accounts") if not ix.get("duplicates_constraint")}
        found.update({u["name"] or "(unnamed)": (tuple(u["column_names"]), True)
                      for u in inspector.get_unique_constraints("accounts")})
    return found


def _accounts(url: str, *statements: str) -> Any:
    """An engine on a fresh accounts table, after ``statements`` (indexes, rows)."""
    from zdm import db

    engine = db.create_engine(url)
    with engine.begin() as connection:
        for statement in (ACCOUNTS, *statements):
            connection.exec_driver_sql(statement)
    return engine


ROWS = "INSERT INTO accounts VALUES (1, 'a@x', 'A', 30), (2, 'b@x', 'B', 40)"


def test_rename_carries_indexes_and_unique_constraints(zdm_database_url: str) -> None:
    import sqlalchemy as sa

    engine = _accounts(zdm_database_url, "CREATE INDEX accounts_email_name_ix ON accounts (email, name)", ROWS)
    original = _indexes(engine)
    plan = planfile.parse({"id": "login", "operations": [
        {"op": "rename_column", "table": "accounts", "column": "email", "new_name": "login"}]})
    run = runner(engine)

    run.start(plan)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:  # the new app cannot duplicate
        connection.exec_driver_sql("INSERT INTO accounts (id, login) VALUES (3, 'a@x')")
    run.rollback(plan.id)
    assert _indexes(engine) == original and zdm_objects(engine) == []

    run.start(plan)
    run.complete(plan.id)
    unique_name = "accounts_email_key" if engine.dialect.name == "postgresql" else "(unnamed)"  # kept as it was
    assert _indexes(engine) == {"accounts_email_name_ix": (("login", "name"), False), unique_name: (("login",), True)}
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO accounts (id, login) VALUES (3, 'b@x')")
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:  # the CHECK survived rebuilds
        connection.exec_driver_sql("INSERT INTO accounts (id, login, age) VALUES (4, 'c@x', -1)")
    assert zdm_objects(engine) == []


def test_drop_indexed_column(zdm_database_url: str) -> None:
    engine = _accounts(zdm_database_url, "CREATE INDEX accounts_email_name_ix ON accounts (email, name)",
                       "CREATE INDEX accounts_name_ix ON accounts (name)")
    plan = planfile.parse({"id": "drop-name", "operations": [
        {"op": "drop_column", "table": "accounts", "column": "name"}]})
    runner(engine).apply(plan)
    assert _indexes(engine) == {"(unnamed)" if engine.dialect.name == "sqlite" else "accounts_email_key":
                                (("email",), True)}


def test_two_renames_of_indexed_columns_in_one_plan(zdm_database_url: str) -> None:
    """Each column's index copies get names of their own."""
    engine = _accounts(zdm_database_url, "CREATE INDEX accounts_name_ix ON accounts (name)", ROWS)
    original = _indexes(engine)
    plan = planfile.parse({"id": "two", "operations": [
        {"op": "rename_column", "table": "accounts", "column": "email", "new_name": "login"},
        {"op": "rename_column", "table": "accounts", "column": "name", "new_name": "full_name"}]})
    run = runner(engine)
    run.start(plan)
    run.rollback(plan.id)
    assert _indexes(engine) == original and zdm_objects(engine) == []
    run.start(plan)
    run.complete(plan.id)
    unique_name = "accounts_email_key" if engine.dialect.name == "postgresql" else "(unnamed)"  # kept as it was
    assert _indexes(engine) == {"accounts_name_ix": (("full_name",), False), unique_name: (("login",), True)}
    assert zdm_objects(engine) == []


#: Indexes on the renamed column of every kind; both databases know the first three.
INDEXES = [
    "CREATE INDEX accounts_name_ix ON accounts (name DESC)",
    "CREATE INDEX accounts_name_ix ON accounts (lower(name))",
    "CREATE INDEX accounts_name_ix ON accounts (name) WHERE age > 18",
]
INDEXES_ON_POSTGRESQL = [
    "CREATE INDEX accounts_name_ix ON accounts USING hash (name)",
    "CREATE INDEX accounts_name_ix ON accounts (name text_pattern_ops)",
    'CREATE INDEX accounts_name_ix ON accounts (name COLLATE "C")',
    "CREATE INDEX accounts_name_ix ON accounts (name) INCLUDE (age)",
    "CREATE UNIQUE INDEX accounts_name_ix ON accounts (name) NULLS NOT DISTINCT",
]


def _index_definition(engine: Any) -> str:
    import sqlalchemy as sa

    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            return connection.scalar(sa.text("SELECT pg_get_indexdef('accounts_name_ix'::regclass)"))
        return connection.scalar(sa.text("SELECT sql FROM sqlite_master WHERE name = 'accounts_name_ix'"))


def _carries(url: str, statement: str) -> None:
    """A rename keeps the index, whatever its kind: rollback leaves it as it was, complete renames it in place."""
    engine = _accounts(url, statement, ROWS)
    before = _index_definition(engine)
    plan = planfile.parse({"id": "name", "operations": [
        {"op": "rename_column", "table": "accounts", "column": "name", "new_name": "full_name"}]})
    run = runner(engine)
    run.start(plan)
    run.rollback(plan.id)
    assert _index_definition(engine) == before
    run.start(plan)
    run.complete(plan.id)
    assert _index_definition(engine) == re.sub(r"\bname\b", "full_name", before)
    assert zdm_objects(engine) == []


@pytest.mark.parametrize("statement", INDEXES, ids=range(len(INDEXES)))
def test_a_rename_carries_every_kind_of_index(zdm_database_url: str, statement: str) -> None:
    _carries(zdm_database_url, statement)


@pytest.mark.parametrize("statement", INDEXES_ON_POSTGRESQL, ids=range(len(INDEXES_ON_POSTGRESQL)))
def test_a_rename_carries_every_kind_of_index_on_postgresql(zdm_postgres_url: str, statement: str) -> None:
    _carries(zdm_postgres_url, statement)


def test_a_rename_keeps_a_check_on_the_column(zdm_database_url: str) -> None:
    import sqlalchemy as sa

    engine = _accounts(zdm_database_url, ROWS)
    plan = planfile.parse({"id": "age", "operations": [
        {"op": "rename_column", "table": "accounts", "column": "age", "new_name": "years"}]})
    runner(engine).start(plan)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:  # the new app, through the old CHECK
        connection.exec_driver_sql("INSERT INTO accounts (id, email, years) VALUES (5, 'e@x', -1)")
    runner(engine).complete(plan.id)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO accounts (id, email, years) VALUES (5, 'e@x', -1)")
    with engine.connect() as connection:
        checks = sa.inspect(connection).get_check_constraints("accounts")
    assert [c["sqltext"] for c in checks] == ["years > 0"]
    assert zdm_objects(engine) == []


@pytest.mark.parametrize("kind", ["sequence", "random"])
def test_a_rename_carries_a_default_that_changes_on_every_call(zdm_database_url: str, kind: str) -> None:
    """An insert that leaves the column out gets a fresh value in both columns, from either app version."""
    import sqlalchemy as sa

    from zdm import db

    engine = db.create_engine(zdm_database_url)
    postgres = engine.dialect.name == "postgresql"
    column = {("sequence", True): "ticket serial", ("random", True): "ticket uuid DEFAULT gen_random_uuid()",
              ("sequence", False): "ticket INTEGER DEFAULT (abs(random()))",
              ("random", False): "ticket TEXT DEFAULT (hex(randomblob(8)))"}[kind, postgres]
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT, {column})")
        connection.exec_driver_sql("INSERT INTO orders (id, note) VALUES (1, 'a'), (2, 'b')")
    plan = planfile.parse({"id": "ticket", "operations": [
        {"op": "rename_column", "table": "orders", "column": "ticket", "new_name": "ticket_no"}]})
    runner(engine).start(plan)
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO orders (id, note) VALUES (3, 'old app'), (4, 'new app')")
        rows = connection.execute(sa.text("SELECT id, ticket, ticket_no FROM orders ORDER BY id")).all()
    assert all(ticket is not None and ticket == ticket_no for _, ticket, ticket_no in rows)
    assert len({ticket for _, ticket, _ in rows}) == 4
    runner(engine).complete(plan.id)
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO orders (id, note) VALUES (5, 'after')")
        assert connection.scalar(sa.text("SELECT ticket_no FROM orders WHERE id = 5")) is not None
    assert zdm_objects(engine) == []


def test_a_rename_keeps_the_column_collation(zdm_database_url: str) -> None:
    from zdm import db

    engine = db.create_engine(zdm_database_url)
    postgres = engine.dialect.name == "postgresql"
    collation = '"C"' if postgres else "NOCASE"
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT COLLATE {collation})")
        connection.exec_driver_sql("INSERT INTO people VALUES (1, 'a@x')")
    runner(engine).apply(planfile.parse({"id": "login", "operations": [
        {"op": "rename_column", "table": "people", "column": "email", "new_name": "login"}]}))
    with engine.connect() as connection:
        if postgres:
            found = connection.exec_driver_sql("SELECT collation_name FROM information_schema.columns "
                                               "WHERE table_name = 'people' AND column_name = 'login'").scalar()
            assert found == "C"
        else:  # NOCASE: the comparison still ignores case
            assert connection.exec_driver_sql("SELECT count(*) FROM people WHERE login = 'A@X'").scalar() == 1


def test_a_rename_that_changes_only_case(zdm_database_url: str) -> None:
    """SQLite compares column names without case: "E_Mail" and "e_mail" cannot both exist while the
    old app and the new one run, so the rename is refused before anything runs; PostgreSQL has two
    names and renames."""
    import sqlalchemy as sa

    from zdm.errors import PlanInvalid

    engine = sa.create_engine(zdm_database_url)
    with engine.begin() as connection:
        connection.exec_driver_sql('CREATE TABLE people (id integer PRIMARY KEY, "E_Mail" text)')
        connection.exec_driver_sql("INSERT INTO people VALUES (1, 'a@x')")
    plan = planfile.parse({"id": "case", "operations": [
        {"op": "rename_column", "table": "people", "column": "E_Mail", "new_name": "e_mail"}]})
    if engine.dialect.name == "sqlite":
        with pytest.raises(PlanInvalid, match=r"same column as people\.E_Mail"):
            runner(engine).start(plan)
        with engine.connect() as connection:
            assert [c["name"] for c in sa.inspect(connection).get_columns("people")] == ["id", "E_Mail"]
    else:
        runner(engine).apply(plan)
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT e_mail FROM people").scalar() == "a@x"
    engine.dispose()
