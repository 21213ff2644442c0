"""SQLite table rebuilds carry the whole table: one test per item of CARRIED, one per refusal.

A NOT NULL rename rebuilds the table four times on SQLite: at start (the old column is relaxed
to NULL so the new app may omit it), at rollback (NOT NULL again), at the second start, and at
complete (the old column goes, the new one takes NOT NULL). Each test drives that cycle through
the real runner on a real file and checks its item after every step.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from support import runner, zdm_objects

from zdm import db, planfile
from zdm.actions import Rebuild
from zdm.dialects.sqlite_rebuild import CARRIED, run_rebuild
from zdm.runner import MigrationFailed, PlanInvalid

MOMENTS = ("start", "rollback", "start again", "complete")

#: CARRIED item -> the test that checks it (filled by @carries).
TESTED: dict[str, str] = {}


def carries(*prefixes: str) -> Callable[[Any], Any]:
    """Mark a test as the check of the CARRIED items starting with these words."""
    def mark(test: Any) -> Any:
        for prefix in prefixes:
            items = [item for item in CARRIED if item.startswith(prefix)]
            assert len(items) == 1, f"{prefix!r} names {len(items)} items of CARRIED"
            TESTED[items[0]] = test.__name__
        return test
    return mark


def _engine(url: str, *statements: str) -> sa.Engine:
    engine = db.create_engine(url)
    with engine.begin() as connection:
        for statement in statements:
            connection.exec_driver_sql(statement)
    return engine


def through_rebuilds(engine: sa.Engine, table: str, check: Callable[[str], None], column: str = "email") -> None:
    """Rename ``column`` (NOT NULL) to ``<column>_address``: start, rollback, start, complete,
    each a rebuild of ``table``; ``check(moment)`` after each."""
    plan = planfile.parse({"id": f"rebuild_{table}", "operations": [
        {"op": "rename_column", "table": table, "column": column, "new_name": f"{column}_address"}]})
    run = runner(engine)
    run.start(plan)
    check("start")
    run.rollback(plan.id)
    check("rollback")
    run.start(plan)
    check("start again")
    run.complete(plan.id)
    check("complete")
    assert zdm_objects(engine) == []


def email(moment: str) -> str:
    """The renamed column's name at ``moment``; before complete the old name still writes both."""
    return "email_address" if moment == "complete" else "email"


@contextlib.contextmanager
def app(engine: sa.Engine) -> Iterator[sqlite3.Connection]:
    """A connection as an app opens it (foreign keys on), in a transaction that is rolled back,
    so a check can write without changing what the next step sees."""
    connection = sqlite3.connect(str(engine.url.database), isolation_level=None)
    try:
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("BEGIN")
        yield connection
    finally:
        connection.execute("ROLLBACK")
        connection.close()


def master(engine: sa.Engine, table: str) -> dict[tuple[str, str], str]:
    """(type, name) -> SQL of the table, its indexes and its triggers, as sqlite_master keeps them."""
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT type, name, sql FROM sqlite_master WHERE tbl_name = :t "
                                          "AND sql IS NOT NULL"), {"t": table}).all()
    return {(kind, name): sql for kind, name, sql in rows}


def scalar(engine: sa.Engine, sql: str) -> Any:
    with engine.connect() as connection:
        return connection.exec_driver_sql(sql).scalar()


def rows(engine: sa.Engine, sql: str) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.exec_driver_sql(sql)]


# -- the table a rebuild must carry whole ---------------------------------------------------------

TEAMS = "CREATE TABLE teams (id INTEGER PRIMARY KEY, name TEXT)"
RICH = """CREATE TABLE rich (
    -- a rebuild must keep every line of this
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    email TEXT NOT NULL,
    code VARCHAR(20) CONSTRAINT rich_code_nn NOT NULL ON CONFLICT FAIL COLLATE NOCASE,
    price NUMERIC(10, 2) DEFAULT (round(1.5 * 2, 2)) CHECK (price >= 0),
    note TEXT DEFAULT 'at :noon',
    created DATETIME DEFAULT CURRENT_TIMESTAMP,
    team_id INTEGER REFERENCES teams (id) ON DELETE CASCADE ON UPDATE SET NULL DEFERRABLE INITIALLY DEFERRED,
    upper_code TEXT GENERATED ALWAYS AS (upper(code)) VIRTUAL,
    doubled NUMERIC AS (price * 2) STORED,
    CONSTRAINT rich_code_uq UNIQUE (code),
    UNIQUE (note, created),
    CONSTRAINT rich_note_ck CHECK (note <> 'forbidden'),
    CHECK (length(code) <= 20)
)"""
RICH_INDEXES = [
    "CREATE INDEX rich_partial_ix ON rich (price) WHERE price > 0",
    "CREATE INDEX rich_lower_ix ON rich (lower(note))",
    "CREATE INDEX rich_created_desc_ix ON rich (created DESC, id)",
    "CREATE INDEX rich_note_nocase_ix ON rich (note COLLATE NOCASE)",
    "CREATE UNIQUE INDEX rich_team_note_uq ON rich (team_id, note)",
]
RICH_TRIGGER = ("CREATE TRIGGER rich_note_audit AFTER UPDATE OF note ON rich BEGIN "
                "INSERT INTO audit (msg) VALUES ('note ' || NEW.note); END")
RICH_SETUP = [
    TEAMS, RICH, *RICH_INDEXES, "CREATE TABLE audit (msg TEXT)", RICH_TRIGGER,
    "CREATE VIEW rich_view AS SELECT id, code, note, upper_code FROM rich",
    "INSERT INTO teams VALUES (1, 'one'), (2, 'two')",
    "INSERT INTO rich (email, code, price, note, team_id) VALUES "
    "('a@x', 'a1', 10, 'first', 1), ('b@x', 'b2', 0, 'second', 2), ('c@x', 'c3', 7.25, 'third', 1)",
]


@pytest.fixture
def rich(zdm_sqlite_url: str) -> sa.Engine:
    return _engine(zdm_sqlite_url, *RICH_SETUP)


def test_rollback_restores_the_table_exactly(rich: sa.Engine) -> None:
    """sqlite_master holds the same SQL for the table, its indexes and triggers after rollback,
    and after complete everything the rename did not touch is still as it was written."""
    original = master(rich, "rich")

    def check(moment: str) -> None:
        found = master(rich, "rich")
        if moment == "rollback":
            assert found == original
        else:  # zdm's own triggers and index copies come and go
            assert {k: v for k, v in found.items() if k[0] != "table" and not k[1].startswith("zdm_")} == \
                   {k: v for k, v in original.items() if k[0] != "table"}
        table = found[("table", "rich")]
        assert "email_address" in table if moment != "rollback" else "email_address" not in table
        for line in original[("table", "rich")].splitlines():
            if "email" not in line:
                assert line.rstrip(",") in table, line

    through_rebuilds(rich, "rich", check)


@pytest.mark.parametrize("operation", [
    {"op": "drop_not_null", "column": "code"},
    {"op": "set_default", "column": "note", "default": "changed"},
    {"op": "drop_default", "column": "price"},
    {"op": "add_check", "name": "rich_price_ck", "condition": "price < 1000"},
    {"op": "add_foreign_key", "name": "rich_team_fk", "columns": ["team_id"], "ref_table": "teams",
     "ref_columns": ["id"], "on_delete": "CASCADE"},
], ids=lambda operation: operation["op"])
def test_every_rebuild_a_rollback_undoes_leaves_the_text_as_it_was(rich: sa.Engine, operation: dict[str, Any]) -> None:
    original = master(rich, "rich")
    plan = planfile.parse({"id": "undo", "operations": [{"table": "rich", **operation}]})
    runner(rich).start(plan)
    assert master(rich, "rich") != original
    runner(rich).rollback(plan.id)
    assert master(rich, "rich") == original


@carries("column names and order", "declared types as written")
def test_columns_their_order_and_declared_types(rich: sa.Engine) -> None:
    def columns() -> list[tuple[Any, ...]]:
        return rows(rich, "SELECT name, type, hidden FROM pragma_table_xinfo('rich')")

    original = columns()
    assert ("price", "NUMERIC(10, 2)", 0) in original and ("code", "VARCHAR(20)", 0) in original

    def check(moment: str) -> None:
        if moment == "complete":  # renamed in place: same position, same declared type
            assert columns() == [("email_address", *c[1:]) if c[0] == "email" else c for c in original]
        elif moment == "rollback":
            assert columns() == original
        else:
            assert columns() == [*original, ("email_address", "TEXT", 0)]

    through_rebuilds(rich, "rich", check)


@carries("declared types as written")
def test_int_primary_key_stays_apart_from_the_rowid_and_integer_primary_key_stays_its_alias(zdm_sqlite_url: str
                                                                                            ) -> None:
    """INTEGER PRIMARY KEY is the rowid; INT PRIMARY KEY is not (a re-rendered type would mix them up)."""
    engine = _engine(zdm_sqlite_url,
                     "CREATE TABLE a (id INTEGER PRIMARY KEY, email TEXT NOT NULL)",
                     "CREATE TABLE b (id INT PRIMARY KEY, email TEXT NOT NULL)",
                     "INSERT INTO a VALUES (5, 'x')", "INSERT INTO b (rowid, id, email) VALUES (9, 5, 'x')")

    def alias(moment: str) -> None:
        assert rows(engine, "SELECT rowid, id FROM a") == [(5, 5)]
        with app(engine) as connection:
            connection.execute(f"INSERT INTO a ({email(moment)}) VALUES ('y')")
            assert connection.execute("SELECT id FROM a WHERE rowid = 6").fetchone() == (6,)

    def apart(moment: str) -> None:
        assert rows(engine, "SELECT rowid, id FROM b") == [(9, 5)]
        with app(engine) as connection:
            connection.execute(f"INSERT INTO b ({email(moment)}) VALUES ('y')")  # the key stays NULL
            assert connection.execute("SELECT id FROM b WHERE rowid = 10").fetchone() == (None,)

    through_rebuilds(engine, "a", alias)
    through_rebuilds(engine, "b", apart)


@carries("declared types as written")
def test_unusual_type_spellings(zdm_sqlite_url: str) -> None:
    """A type SQLite takes is a type zdm keeps, however it is spelled."""
    engine = _engine(zdm_sqlite_url, "CREATE TABLE odd (id INTEGER PRIMARY KEY, email TEXT NOT NULL, a generated, "
                     "b 'weird type', c \"quoted type\", d DOUBLE PRECISION, e DECIMAL(10, -2), f, g UNSIGNED BIG INT, "
                     "h INTEGER REFERENCES odd ON INSERT CASCADE MATCH FULL NOT DEFERRABLE INITIALLY IMMEDIATE)")
    types = "SELECT name, type FROM pragma_table_info('odd') WHERE name NOT LIKE 'email%'"
    original = rows(engine, types)
    assert original[1:4] == [("a", "generated"), ("b", "weird type"), ("c", "quoted type")]

    def check(moment: str) -> None:
        assert rows(engine, types) == original

    through_rebuilds(engine, "odd", check)


@carries("COLLATE")
def test_collations(rich: sa.Engine) -> None:
    def check(moment: str) -> None:
        assert scalar(rich, "SELECT count(*) FROM rich WHERE code = 'A1'") == 1  # NOCASE
        with pytest.raises(sa.exc.IntegrityError), rich.begin() as connection:  # UNIQUE, without case
            connection.exec_driver_sql(f"INSERT INTO rich ({email(moment)}, code) VALUES ('d@x', 'B2')")

    through_rebuilds(rich, "rich", check)


@carries("defaults as written")
def test_defaults(zdm_sqlite_url: str) -> None:
    engine = _engine(zdm_sqlite_url, "CREATE TABLE d (id INTEGER PRIMARY KEY, email TEXT NOT NULL, "
                     "note TEXT DEFAULT 'at :noon, ok', price REAL DEFAULT -1.5, day TEXT DEFAULT CURRENT_DATE, "
                     "n INTEGER DEFAULT (abs(-7) + 1), flag DEFAULT TRUE, raw BLOB DEFAULT x'00ff')")
    original = rows(engine, "SELECT name, dflt_value FROM pragma_table_info('d') WHERE name <> 'email'")

    def check(moment: str) -> None:
        assert rows(engine, "SELECT name, dflt_value FROM pragma_table_info('d') WHERE name NOT LIKE 'email%'") \
            == original
        with app(engine) as connection:
            connection.execute(f"INSERT INTO d (id, {email(moment)}) VALUES (1, 'x')")
            found = connection.execute("SELECT note, price, day IS NOT NULL, n, flag, raw FROM d").fetchone()
        assert found == ("at :noon, ok", -1.5, 1, 8, 1, b"\x00\xff")

    through_rebuilds(engine, "d", check)


@carries("NOT NULL")
def test_not_null_with_its_name_and_conflict_clause(rich: sa.Engine) -> None:
    def check(moment: str) -> None:
        assert "CONSTRAINT rich_code_nn NOT NULL ON CONFLICT FAIL" in master(rich, "rich")[("table", "rich")]
        with pytest.raises(sa.exc.IntegrityError, match="NOT NULL"), rich.begin() as connection:
            connection.exec_driver_sql(f"INSERT INTO rich ({email(moment)}, code) VALUES ('d@x', NULL)")
        if moment == "complete":  # and the renamed column has its NOT NULL back
            with pytest.raises(sa.exc.IntegrityError, match="NOT NULL"), rich.begin() as connection:
                connection.exec_driver_sql("INSERT INTO rich (email_address, code) VALUES (NULL, 'zz')")

    through_rebuilds(rich, "rich", check)


@carries("PRIMARY KEY")
def test_composite_primary_key(zdm_sqlite_url: str) -> None:
    engine = _engine(zdm_sqlite_url, "CREATE TABLE pairs (a INTEGER, b TEXT, email TEXT NOT NULL, "
                     "PRIMARY KEY (a DESC, b) ON CONFLICT ABORT)", "INSERT INTO pairs VALUES (1, 'x', 'e')")

    def check(moment: str) -> None:
        with engine.connect() as connection:
            assert sa.inspect(connection).get_pk_constraint("pairs")["constrained_columns"] == ["a", "b"]
        assert "PRIMARY KEY (a DESC, b) ON CONFLICT ABORT" in master(engine, "pairs")[("table", "pairs")]
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
            connection.exec_driver_sql(f"INSERT INTO pairs (a, b, {email(moment)}) VALUES (1, 'x', 'f')")

    through_rebuilds(engine, "pairs", check)


@carries("AUTOINCREMENT", "the sqlite_sequence value")
def test_autoincrement_never_reuses_a_deleted_highest_id(rich: sa.Engine) -> None:
    """The issue: the highest row deleted, a rebuild reset sqlite_sequence, and the next insert
    took the deleted row's id."""
    with rich.begin() as connection:
        connection.exec_driver_sql("DELETE FROM rich WHERE id = 3")
    given = [3]

    def check(moment: str) -> None:
        assert "AUTOINCREMENT" in master(rich, "rich")[("table", "rich")]
        assert scalar(rich, "SELECT seq FROM sqlite_sequence WHERE name = 'rich'") == given[-1]
        with rich.begin() as connection:
            connection.exec_driver_sql(f"INSERT INTO rich ({email(moment)}, code) VALUES ('n@x', 'n{len(given)}')")
            given.append(connection.exec_driver_sql("SELECT max(id) FROM rich").scalar())
            connection.exec_driver_sql(f"DELETE FROM rich WHERE id = {given[-1]}")  # the highest, again
        assert given[-1] == given[-2] + 1

    through_rebuilds(rich, "rich", check)
    assert given == [3, 4, 5, 6, 7]


@carries("UNIQUE constraints")
def test_unique_constraints_stay_constraints(zdm_sqlite_url: str) -> None:
    """Also the copy of the renamed column's own UNIQUE: a unique index in its place is drift
    that `alembic check` reports forever."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = _engine(zdm_sqlite_url, "CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, "
                     "code TEXT, CONSTRAINT accounts_code_uq UNIQUE (code))",
                     "INSERT INTO accounts VALUES (1, 'a@x', 'a')")

    def check(moment: str) -> None:
        column = "email_address" if moment in ("start", "start again", "complete") else "email"
        with engine.connect() as connection:
            inspector = sa.inspect(connection)
            uniques = {tuple(u["column_names"]): u["name"] for u in inspector.get_unique_constraints("accounts")}
            plain = [ix for ix in inspector.get_indexes("accounts") if not ix["name"].startswith("zdm_")]
        assert uniques[("code",)] == "accounts_code_uq" and plain == []
        if moment == "complete":
            assert set(uniques) == {("code",), ("email_address",)}
            assert "email_address TEXT NOT NULL UNIQUE" in master(engine, "accounts")[("table", "accounts")]
        else:
            assert ("email",) in uniques
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
            connection.exec_driver_sql(f"INSERT INTO accounts (id, {column}, code) VALUES (2, 'a@x', 'b')")

    through_rebuilds(engine, "accounts", check)
    metadata = sa.MetaData()
    sa.Table("accounts", metadata, sa.Column("id", sa.Integer, primary_key=True),
             sa.Column("code", sa.Text), sa.Column("email_address", sa.Text, nullable=False, unique=True),
             sa.UniqueConstraint("code", name="accounts_code_uq"))
    with engine.connect() as connection:
        drift = compare_metadata(MigrationContext.configure(connection), metadata)
    assert [d for d in drift if "index" in d[0] or "constraint" in d[0]] == []


@carries("CHECK constraints")
def test_named_and_unnamed_checks_are_enforced(rich: sa.Engine) -> None:
    def check(moment: str) -> None:
        with rich.connect() as connection:
            names = {c["name"] for c in sa.inspect(connection).get_check_constraints("rich")}
        assert "rich_note_ck" in names
        too_long = "k" + "3" * 20
        for values in ("'n@x', 'k1', -1, 'x'", "'n@x', 'k2', 1, 'forbidden'", f"'n@x', '{too_long}', 1, 'x'"):
            with pytest.raises(sa.exc.IntegrityError, match="CHECK"), rich.begin() as connection:
                connection.exec_driver_sql(f"INSERT INTO rich ({email(moment)}, code, price, note) VALUES ({values})")

    through_rebuilds(rich, "rich", check)


@carries("FOREIGN KEYs")
def test_foreign_key_actions_still_work(rich: sa.Engine) -> None:
    def check(moment: str) -> None:
        assert rows(rich, 'SELECT "table", "from", "to", on_update, on_delete FROM pragma_foreign_key_list(\'rich\')') \
            == [("teams", "team_id", "id", "SET NULL", "CASCADE")]
        with app(rich) as connection:
            connection.execute("UPDATE teams SET id = 20 WHERE id = 2")  # ON UPDATE SET NULL
            assert connection.execute("SELECT team_id FROM rich WHERE code = 'b2'").fetchone() == (None,)
            connection.execute("DELETE FROM teams WHERE id = 1")  # ON DELETE CASCADE
            assert connection.execute("SELECT count(*) FROM rich").fetchone() == (1,)
        with app(rich) as connection:  # DEFERRABLE INITIALLY DEFERRED: checked at COMMIT
            connection.execute(f"INSERT INTO rich ({email(moment)}, code, team_id) VALUES ('o@x', 'o', 99)")
            with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
                connection.execute("COMMIT")  # which leaves the transaction open, for app() to roll back

    through_rebuilds(rich, "rich", check)


@carries("generated columns")
def test_generated_columns(rich: sa.Engine) -> None:
    def check(moment: str) -> None:
        assert rows(rich, "SELECT name, hidden FROM pragma_table_xinfo('rich') WHERE hidden > 0") == \
            [("upper_code", 2), ("doubled", 3)]
        with app(rich) as connection:
            connection.execute(f"INSERT INTO rich ({email(moment)}, code, price) VALUES ('g@x', 'gg', 4)")
            assert connection.execute("SELECT upper_code, doubled FROM rich WHERE code = 'gg'").fetchone() == ("GG", 8)
        assert rows(rich, "SELECT upper_code, doubled FROM rich ORDER BY id") == [("A1", 20), ("B2", 0), ("C3", 14.5)]

    through_rebuilds(rich, "rich", check)


@carries("table options")
def test_without_rowid_and_strict(zdm_sqlite_url: str) -> None:
    engine = _engine(zdm_sqlite_url, "CREATE TABLE s (code TEXT PRIMARY KEY, email TEXT NOT NULL, n INTEGER) "
                     "WITHOUT ROWID, STRICT", "INSERT INTO s VALUES ('a', 'x', 1)")

    def check(moment: str) -> None:
        assert master(engine, "s")[("table", "s")].endswith(") WITHOUT ROWID, STRICT")
        assert rows(engine, "SELECT wr, strict FROM pragma_table_list('s')") == [(1, 1)]
        with pytest.raises(sa.exc.IntegrityError, match="cannot store TEXT value in INTEGER"), \
                engine.begin() as connection:
            connection.exec_driver_sql(f"INSERT INTO s (code, {email(moment)}, n) VALUES ('b', 'y', 'many')")

    through_rebuilds(engine, "s", check)


@carries("comments and layout")
def test_comments_and_layout(rich: sa.Engine) -> None:
    original = master(rich, "rich")[("table", "rich")]

    def check(moment: str) -> None:
        table = master(rich, "rich")[("table", "rich")]
        assert "    -- a rebuild must keep every line of this\n" in table
        if moment == "rollback":
            assert table == original
        else:  # ADD COLUMN wrote email_address after the last column; complete dropped it and renamed email
            assert table.count("\n") == original.count("\n")

    through_rebuilds(rich, "rich", check)


@carries("the rows")
def test_every_value_byte_exact_and_every_rowid(zdm_sqlite_url: str) -> None:
    """Values whose storage class is not the column's affinity, BLOBs, NUL bytes, and the rowids
    of a table whose key is not its rowid (gaps included)."""
    engine = _engine(zdm_sqlite_url, "CREATE TABLE mixed (key TEXT PRIMARY KEY, email TEXT NOT NULL, i INTEGER, "
                     "t TEXT, r REAL, n NUMERIC, b BLOB, x)")
    values = [
        ("abc", "text", 1.5, "007", b"\x00\xff", None),
        (1.5, b"\x00\x01", "not a number", 2**63 - 1, "", -0.0),
        (b"\xde\xad", "a\x00b", -(2**63), 1e308, None, "über"),
        (None, "12", 7, "1e3", b"", 3),
    ]
    with engine.begin() as connection:
        for n, row in enumerate(values * 2):
            connection.execute(sa.text("INSERT INTO mixed VALUES (:k, 'e', :i, :t, :r, :n, :b, :x)"),
                               dict(zip(["k", "i", "t", "r", "n", "b", "x"], [f"k{n}", *row], strict=True)))
        connection.exec_driver_sql("DELETE FROM mixed WHERE rowid IN (2, 5)")

    def snapshot() -> list[tuple[Any, ...]]:
        return rows(engine, "SELECT rowid, key, i, typeof(i), t, typeof(t), r, typeof(r), n, typeof(n), b, typeof(b), "
                            "x, typeof(x) FROM mixed ORDER BY rowid")

    original = snapshot()
    assert [row[0] for row in original] == [1, 3, 4, 6, 7, 8]
    assert original[0][2:4] == ("abc", "text") and original[1][2:4] == (b"\xde\xad", "blob")

    def check(moment: str) -> None:
        assert snapshot() == original

    through_rebuilds(engine, "mixed", check)


@carries("indexes exactly as written")
def test_indexes_as_written(rich: sa.Engine) -> None:
    original = {k: v for k, v in master(rich, "rich").items() if k[0] == "index"}
    assert len(original) == len(RICH_INDEXES)

    def check(moment: str) -> None:
        assert {k: v for k, v in master(rich, "rich").items() if k[0] == "index"} == original
        assert rows(rich, "SELECT name, desc FROM pragma_index_xinfo('rich_created_desc_ix') WHERE key") == \
            [("created", 1), ("id", 0)]
        with rich.connect() as connection:  # the planner still uses the partial and expression indexes
            plan = " ".join(str(r[-1]) for r in connection.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT id FROM rich WHERE lower(note) = 'first'"))
        assert "rich_lower_ix" in plan

    through_rebuilds(rich, "rich", check)


@carries("triggers on the table")
def test_triggers_as_written_and_firing(rich: sa.Engine) -> None:
    def check(moment: str) -> None:
        assert master(rich, "rich")[("trigger", "rich_note_audit")] == RICH_TRIGGER
        with app(rich) as connection:
            connection.execute("UPDATE rich SET note = 'changed' WHERE id = 1")
            assert connection.execute("SELECT msg FROM audit").fetchall() == [("note changed",)]

    through_rebuilds(rich, "rich", check)


@carries("ANALYZE statistics")
def test_statistics(rich: sa.Engine) -> None:
    with rich.begin() as connection:
        connection.exec_driver_sql("ANALYZE")
    query = "SELECT tbl, idx, stat FROM sqlite_stat1 WHERE tbl = 'rich' ORDER BY idx"
    original = rows(rich, query)
    assert len(original) >= len(RICH_INDEXES)

    def check(moment: str) -> None:
        assert rows(rich, query) == original

    through_rebuilds(rich, "rich", check)


@carries("views using the table")
def test_views_still_work(rich: sa.Engine) -> None:
    def check(moment: str) -> None:
        assert rows(rich, "SELECT id, code, note, upper_code FROM rich_view ORDER BY id") == \
            [(1, "a1", "first", "A1"), (2, "b2", "second", "B2"), (3, "c3", "third", "C3")]

    through_rebuilds(rich, "rich", check)


@carries("foreign keys of other tables")
def test_foreign_keys_of_other_tables_still_resolve(zdm_sqlite_url: str) -> None:
    """teams is rebuilt; members reference it: no 'foreign key mismatch', no violation."""
    engine = _engine(zdm_sqlite_url,
                     "CREATE TABLE teams (id INTEGER PRIMARY KEY, email TEXT NOT NULL, code TEXT UNIQUE)",
                     "CREATE TABLE members (id INTEGER PRIMARY KEY, "
                     "team_id INTEGER REFERENCES teams ON DELETE CASCADE, team_code TEXT REFERENCES teams (code))",
                     "INSERT INTO teams VALUES (1, 't@x', 'one')", "INSERT INTO members VALUES (1, 1, 'one')")

    def check(moment: str) -> None:
        with app(engine) as connection:
            assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
            connection.execute("INSERT INTO members VALUES (2, 1, 'one')")
            with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
                connection.execute("INSERT INTO members VALUES (3, 99, NULL)")
            connection.execute("DELETE FROM teams WHERE id = 1")
            assert connection.execute("SELECT count(*) FROM members").fetchone() == (0,)

    through_rebuilds(engine, "teams", check)


def test_every_carried_item_has_its_test() -> None:
    assert set(TESTED) == set(CARRIED), set(CARRIED) - set(TESTED)


# -- foreign_key_check in the same transaction -----------------------------------------------------

PARENT_CHILD = [
    "CREATE TABLE parent (id INTEGER PRIMARY KEY, code TEXT NOT NULL, CONSTRAINT parent_code_uq UNIQUE (code))",
    "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_code TEXT REFERENCES parent (code))",
    "INSERT INTO parent VALUES (1, 'a')", "INSERT INTO child VALUES (1, 'a')",
]


@pytest.mark.parametrize("operation", [{"op": "rename_column", "new_name": "new_code"},
                                       {"op": "alter_column", "type": "TEXT", "new_name": "new_code"}],
                         ids=["rename", "type change"])
def test_a_foreign_key_to_a_renamed_column_follows_it(zdm_database_url: str, operation: dict[str, Any]) -> None:
    """Issue 16, item 7: start and complete used to pass, then every insert into child failed with
    'foreign key mismatch'. Now the other table's foreign key follows the column to its new name,
    on both databases, and keeps being enforced."""
    engine = _engine(zdm_database_url, *PARENT_CHILD)
    plan = planfile.parse({"id": "code", "operations": [{"table": "parent", "column": "code", **operation}]})
    runner(engine).start(plan)
    runner(engine).complete(plan.id)
    with engine.connect() as connection:
        keys = sa.inspect(connection).get_foreign_keys("child")
    assert [(k["referred_table"], k["referred_columns"]) for k in keys] == [("parent", ["new_code"])]
    if engine.dialect.name == "sqlite":
        with app(engine) as connection:
            connection.execute("INSERT INTO parent (id, new_code) VALUES (2, 'b')")
            connection.execute("INSERT INTO child VALUES (2, 'b')")  # no 'foreign key mismatch'
            with pytest.raises(sqlite3.IntegrityError):
                connection.execute("INSERT INTO child VALUES (3, 'nobody')")
    else:
        with engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO parent (id, new_code) VALUES (2, 'b')")
            connection.exec_driver_sql("INSERT INTO child VALUES (2, 'b')")
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO child VALUES (3, 'nobody')")
    assert zdm_objects(engine) == []
    engine.dispose()


def test_dropping_a_column_another_tables_foreign_key_references_is_refused(zdm_sqlite_url: str) -> None:
    engine = _engine(zdm_sqlite_url, *PARENT_CHILD)
    before = master(engine, "parent")
    plan = planfile.parse({"id": "drop", "operations": [{"op": "drop_column", "table": "parent", "column": "code"}]})
    with pytest.raises(PlanInvalid, match=r"cannot drop parent.code: foreign key of child \(parent_code\) references "
                                          r"parent \(code\), and would fail with 'foreign key mismatch'"):
        runner(engine).apply(plan)
    assert master(engine, "parent") == before


def test_a_rebuild_that_breaks_a_foreign_key_fails_its_phase(zdm_sqlite_url: str) -> None:
    """Dropping the UNIQUE constraint child's foreign key needs: foreign_key_check reports the
    mismatch in the rebuild's transaction, which rolls back."""
    engine = _engine(zdm_sqlite_url, *PARENT_CHILD)
    before = master(engine, "parent")
    plan = planfile.parse({"id": "uq", "operations": [{"op": "drop_constraint", "table": "parent",
                                                       "name": "parent_code_uq"}]})
    with pytest.raises(MigrationFailed, match=r"PRAGMA foreign_key_check reports foreign key mismatch - "
                                              r"\"child\" referencing \"parent\""):
        runner(engine).apply(plan)
    assert master(engine, "parent") == before
    with app(engine) as connection:
        connection.execute("INSERT INTO child VALUES (2, 'a')")


def test_a_rebuild_that_leaves_orphans_fails_and_old_orphans_do_not(zdm_sqlite_url: str) -> None:
    engine = _engine(zdm_sqlite_url, *PARENT_CHILD, "INSERT INTO child VALUES (2, 'gone')",  # foreign keys are off
                     "CREATE TABLE other (id INTEGER PRIMARY KEY, parent_id INTEGER)",
                     "INSERT INTO other VALUES (1, 1), (2, 42)")
    child = master(engine, "child")
    with engine.begin() as connection:  # an orphan that was there before is not the rebuild's doing
        run_rebuild(connection, Rebuild("child", alter={"parent_code": {"nullable": False}}))
    with pytest.raises(RuntimeError, match=r"PRAGMA foreign_key_check reports row 2 of other references a missing "
                                           r"row of parent"), engine.begin() as connection:
        key = {"name": "other_parent_fk", "columns": ["parent_id"], "ref_table": "parent", "ref_columns": ["id"]}
        run_rebuild(connection, Rebuild("other", create_foreign_keys=[key]))
    assert "other_parent_fk" not in master(engine, "other")[("table", "other")]
    assert master(engine, "child") != child  # the first rebuild went through: NOT NULL


# -- what a rebuild refuses, before anything runs --------------------------------------------------

REFUSALS = {
    "foreign_keys_on": ([], {"op": "drop_not_null", "table": "t", "column": "email"}, "PRAGMA foreign_keys=ON"),
    "generated_column": (["CREATE TABLE g (id INTEGER PRIMARY KEY, a TEXT, b TEXT AS (upper(a)))"],
                         {"op": "drop_column", "table": "g", "column": "a"},
                         r"cannot drop g.a: generated column b uses it; drop or change b first"),
    "virtual_table": (["CREATE VIRTUAL TABLE docs USING fts5(title, body)"],
                      {"op": "drop_column", "table": "docs", "column": "body"}, "docs: it is a virtual table"),
    "shadow_table": (["CREATE VIRTUAL TABLE docs USING fts5(title, body)"],
                     {"op": "drop_column", "table": "docs_content", "column": "c1"},
                     "docs_content: it is the shadow table of a virtual table"),
    "hidden_rowid": (["CREATE TABLE h (id TEXT PRIMARY KEY, rowid TEXT, _rowid_ TEXT, oid TEXT, email TEXT NOT NULL)"],
                     {"op": "drop_not_null", "table": "h", "column": "email"},
                     "its columns named rowid, _rowid_ and oid hide the row ids"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_what_cannot_be_carried_is_refused_before_anything_runs(zdm_sqlite_url: str, case: str) -> None:
    statements, operation, message = REFUSALS[case]
    engine = _engine(zdm_sqlite_url, "CREATE TABLE t (id INTEGER PRIMARY KEY, email TEXT NOT NULL)", *statements)
    if case == "foreign_keys_on":  # as an app's engine might: every new connection
        engine.dispose()
        sa.event.listen(engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA foreign_keys = ON"))
    with engine.connect() as connection:
        before = connection.exec_driver_sql("SELECT type, name, sql FROM sqlite_master").all()
    with pytest.raises(PlanInvalid, match=message):
        runner(engine).apply(planfile.parse({"id": "refused", "operations": [operation]}))
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT type, name, sql FROM sqlite_master").all() == before
    engine.dispose()


def test_a_named_unique_constraint_can_be_dropped(zdm_sqlite_url: str) -> None:
    """It lives in the CREATE TABLE (as the copies a rename makes now do): a rebuild drops it."""
    engine = _engine(zdm_sqlite_url, "CREATE TABLE parent (id INTEGER PRIMARY KEY, code TEXT, "
                     "CONSTRAINT parent_code_uq UNIQUE (code))")
    runner(engine).apply(planfile.parse({"id": "uq", "operations": [
        {"op": "drop_constraint", "table": "parent", "name": "parent_code_uq"}]}))
    assert master(engine, "parent") == {("table", "parent"): "CREATE TABLE parent (id INTEGER PRIMARY KEY, code TEXT)"}


def test_a_mismatch_that_was_there_before_does_not_fail_a_rebuild(zdm_sqlite_url: str) -> None:
    """foreign_key_check raises 'foreign key mismatch' for a key that was already broken: only a
    new one is the rebuild's doing."""
    engine = _engine(zdm_sqlite_url, "CREATE TABLE parent (id INTEGER PRIMARY KEY, code TEXT, email TEXT NOT NULL)",
                     "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_code TEXT REFERENCES parent (code))",
                     "INSERT INTO parent VALUES (1, 'a', 'x')")
    through_rebuilds(engine, "parent", lambda moment: None)
    assert [c for c, in rows(engine, "SELECT name FROM pragma_table_info('parent')")] == ["id", "code", "email_address"]
