"""zdm through Alembic, as a team with `alembic upgrade head` in its deploy pipeline meets it.

Every run goes through Alembic's command API on the example environment at the repository root
(alembic.ini, alembic/), never through zdm internals: upgrade starts a zdm revision, both app
versions write, contract comes later (`-x zdm=complete` or `zdm complete`), downgrade rolls back.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import shutil
import textwrap
from argparse import Namespace
from decimal import Decimal
from pathlib import Path
from typing import Any

import alembic.command
import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.util import CommandError
from click.testing import CliRunner
from support import zdm_objects

from zdm import db, introspect
from zdm.cli import main as zdm_cli

ROOT = Path(__file__).resolve().parent.parent
ADD, RENAME = "0002_add_email_lower", "0003_rename_email"


# -- driving Alembic and zdm as a user does ----------------------------------------------------
def config(url: str, *x: str, out: io.StringIO | None = None, scripts: Path | None = None) -> Config:
    """The example environment's alembic.ini, with `-x db=URL` (and its revisions, or a copy's)."""
    cfg = Config(ROOT / "alembic.ini", cmd_opts=Namespace(x=[f"db={url}", *x]), output_buffer=out,
                 stdout=out or io.StringIO())
    if scripts is not None:
        cfg.set_main_option("script_location", str(scripts))
    return cfg


def upgrade(url: str, revision: str, *x: str, scripts: Path | None = None) -> None:
    alembic.command.upgrade(config(url, *x, scripts=scripts), revision)


def current(url: str, scripts: Path | None = None) -> str:
    out = io.StringIO()
    alembic.command.current(config(url, out=out, scripts=scripts))
    return out.getvalue().split()[0]


def zdm(*args: str) -> Any:
    result = CliRunner().invoke(zdm_cli, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def zdm_phases(url: str) -> dict[str, str]:
    return {plan["id"]: plan["phase"] for plan in json.loads(zdm("status", "--json", "--db", url))["plans"]}


def assert_agree(url: str, revision: str, phase: str, scripts: Path | None = None) -> None:
    """`alembic current` and `zdm status` tell the same story about the newest revision."""
    assert current(url, scripts) == revision
    assert zdm_phases(url)[revision] == phase


# -- reading the database --------------------------------------------------------------------------
def execute(url: str, *statements: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        for statement in statements:
            connection.exec_driver_sql(statement)
    engine.dispose()


def shape(url: str, table: str = "users") -> dict[str, tuple[str, bool]]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        columns = sa.inspect(connection).get_columns(table)
    found = {c["name"]: (type(c["type"]).__name__, c["nullable"]) for c in columns}
    engine.dispose()
    return found


def rows(url: str, *columns: str) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        found = connection.execute(sa.select(*map(sa.column, columns)).select_from(sa.table("users"))
                                   .order_by(sa.column("id"))).all()
    engine.dispose()
    return [tuple(row) for row in found]


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        found = set(sa.inspect(connection).get_table_names())
    engine.dispose()
    return found


def leftovers(url: str) -> list[str]:
    engine = db.create_engine(url)
    found = zdm_objects(engine)
    engine.dispose()
    return found


def app_writes_during_rename(url: str) -> None:
    """The old app writes `email`, the new one `email_address`, at the same time."""
    execute(url, "INSERT INTO users (id, email, name) VALUES (101, 'Old@App', 'old')",
            "INSERT INTO users (id, email_address, name) VALUES (102, 'New@App', 'new')",
            "UPDATE users SET email = 'changed-by-old' WHERE id = 3",
            "UPDATE users SET email_address = 'changed-by-new' WHERE id = 4")
    assert rows(url, "email", "email_address")[-2:] == [("Old@App", "Old@App"), ("New@App", "New@App")]


SEEDED = [(i, f"User{i}@Example.COM") for i in range(1, 11)]
AFTER_WRITES = [(i, {3: "changed-by-old", 4: "changed-by-new"}.get(i, email)) for i, email in SEEDED] + [
    (101, "Old@App"), (102, "New@App")]


# -- the promises ----------------------------------------------------------------------------------
def test_deploy_cycle_through_alembic(zdm_database_url: str) -> None:
    url = zdm_database_url
    upgrade(url, ADD)  # deploy 1: create users, start the added column
    assert_agree(url, ADD, "MIGRATING")
    assert rows(url, "id", "email_lower")[:2] == [(1, "user1@example.com"), (2, "user2@example.com")]

    upgrade(url, RENAME, "zdm=complete")  # deploy 2: contract deploy 1, then start the rename
    assert zdm_phases(url)[ADD] == "COMPLETE"
    assert_agree(url, RENAME, "MIGRATING")
    app_writes_during_rename(url)

    zdm("complete", RENAME, "--db", url, "--quiet")  # the old app is gone
    assert_agree(url, RENAME, "COMPLETE")
    assert set(shape(url)) == {"id", "email_address", "name", "score", "email_lower"}
    assert shape(url)["email_address"][1] is False  # NOT NULL carried over
    assert rows(url, "id", "email_address") == AFTER_WRITES
    assert leftovers(url) == []
    execute(url, "INSERT INTO users (id, email_address) VALUES (103, 'newest@app')")  # the new app goes on


def test_downgrade_rolls_back_before_complete(zdm_database_url: str) -> None:
    url = zdm_database_url
    upgrade(url, ADD)
    upgrade(url, ADD, "zdm=complete")  # nothing to upgrade: contracts the started plan only
    assert_agree(url, ADD, "COMPLETE")
    original = shape(url)

    upgrade(url, RENAME)
    app_writes_during_rename(url)
    alembic.command.downgrade(config(url), ADD)
    assert shape(url) == original
    assert rows(url, "id", "email") == AFTER_WRITES  # every row, those written mid-migration too
    assert current(url) == ADD and zdm_phases(url)[RENAME] == "ROLLED_BACK"
    assert leftovers(url) == []

    upgrade(url, RENAME)  # start again, then undo it with zdm itself
    assert_agree(url, RENAME, "MIGRATING")
    zdm("rollback", RENAME, "--db", url, "--quiet")
    assert shape(url) == original and zdm_phases(url)[RENAME] == "ROLLED_BACK"
    alembic.command.downgrade(config(url), ADD)  # Alembic catches up; the plan is already rolled back
    assert current(url) == ADD and shape(url) == original
    assert rows(url, "id", "email") == AFTER_WRITES


def test_two_revisions_on_one_table_need_two_deploys(zdm_database_url: str) -> None:
    url = zdm_database_url
    upgrade(url, ADD)
    with pytest.raises(CommandError, match=r"being changed by zdm plan '0002_add_email_lower'.*-x zdm=complete"):
        upgrade(url, RENAME)
    assert current(url) == ADD and RENAME not in zdm_phases(url)
    assert "email_address" not in shape(url)


def test_complete_mode_contracts_only_on_the_way_up(zdm_database_url: str) -> None:
    """A pipeline that passes `-x zdm=complete` to every command must not contract by reading or undoing."""
    url = zdm_database_url
    upgrade(url, ADD)
    alembic.command.current(config(url, "zdm=complete"))
    assert_agree(url, ADD, "MIGRATING")
    with pytest.raises(CommandError, match="run the downgrade without -x zdm=complete"):
        alembic.command.downgrade(config(url, "zdm=complete"), "0001_create_users")
    assert_agree(url, ADD, "MIGRATING")
    assert "email_lower" in shape(url)
    alembic.command.downgrade(config(url), "0001_create_users")
    assert current(url) == "0001_create_users" and zdm_phases(url)[ADD] == "ROLLED_BACK"


def _project(tmp_path: Path, *revisions: tuple[str, str]) -> Path:
    """A copy of the example environment with 0001 and the given (file name, source) revisions."""
    (tmp_path / "versions").mkdir()
    shutil.copy(ROOT / "alembic" / "env.py", tmp_path / "env.py")
    shutil.copy(ROOT / "alembic" / "versions" / "0001_create_users.py", tmp_path / "versions")
    for name, source in revisions:
        (tmp_path / "versions" / name).write_text(source)
    return tmp_path


def _revision(revision: str, *upgrade: str) -> tuple[str, str]:
    """A revision after 0001 whose upgrade() runs ``upgrade`` and whose downgrade() rolls zdm back."""
    body = "\n".join(f"    {line}" for line in upgrade)
    return f"{revision}.py", (f"import sqlalchemy as sa\nfrom alembic import op\n\n"
                              f"revision, down_revision = {revision!r}, '0001_create_users'\n\n\n"
                              f"def upgrade():\n{body}\n\n\ndef downgrade():\n    op.zdm_rollback()\n")


def test_two_operations_of_one_revision_on_one_table_start_nothing(zdm_database_url: str, tmp_path: Path) -> None:
    """Refused at the first of them, before its backfill (or anything of the revision) runs."""
    url = zdm_database_url
    scripts = _project(tmp_path, _revision(
        "0002_two", 'op.create_table("audit", sa.Column("id", sa.Integer, primary_key=True))',
        'op.zdm_add_column("users", "nick", "TEXT", from_column="email", transform="lower")',
        'op.zdm_create_index("users", "users_email_ix", ["email"])'))
    upgrade(url, "0001_create_users", scripts=scripts)
    before = shape(url), rows(url, "id", "name")
    with pytest.raises(CommandError, match=r"op.zdm_add_column\(\) \(line 9\) and op.zdm_create_index\(\) "
                       r"\(line 10\) both change table 'users'.*two revisions.*nothing was started"):
        upgrade(url, "head", scripts=scripts)
    assert current(url, scripts) == "0001_create_users"  # Alembic did not stamp it, and zdm agrees
    assert "0002_two" not in zdm_phases(url) and "audit" not in tables(url)
    assert (shape(url), rows(url, "id", "name")) == before and leftovers(url) == []
    out = io.StringIO()  # offline refuses it too: the script would show what online never runs
    with pytest.raises(CommandError, match="both change table 'users'"):
        alembic.command.upgrade(config(url, out=out, scripts=scripts), "0001_create_users:head", sql=True)


def test_two_operations_hidden_from_the_source_are_refused_when_they_come(zdm_database_url: str,
                                                                         tmp_path: Path) -> None:
    """A table the source does not spell out (a variable): the second one is refused, the first rolled back."""
    url = zdm_database_url
    scripts = _project(tmp_path, _revision(
        "0002_two", 'table = "users"', 'op.zdm_add_column(table, "nick", "TEXT")',
        'op.zdm_create_index(table, "users_email_ix", ["email"])'))
    upgrade(url, "0001_create_users", scripts=scripts)
    with pytest.raises(CommandError, match=r"put the two operations in two revisions.*0002_two was rolled back"):
        upgrade(url, "head", scripts=scripts)
    assert current(url, scripts) == "0001_create_users" and zdm_phases(url) == {"0002_two": "ROLLED_BACK"}
    assert leftovers(url) == []


def test_a_downgrade_undoes_all_of_a_revision_or_nothing(zdm_database_url: str, tmp_path: Path) -> None:
    url = zdm_database_url
    scripts = _project(tmp_path, _revision(
        "0002_teams", 'op.zdm_create_table("teams", [{"name": "id", "type": "INTEGER", "primary_key": True}])',
        'op.zdm_add_column("users", "team_id", "INTEGER")'))
    upgrade(url, "head", scripts=scripts)
    zdm("complete", "0002_teams", "--db", url, "--quiet")  # one of the revision's two plans completed
    with pytest.raises(CommandError, match=r"zdm plan 0002_teams ran its contract phase.*nothing was rolled back"):
        alembic.command.downgrade(config(url, scripts=scripts), "0001_create_users")
    assert zdm_phases(url) == {"0002_teams": "COMPLETE", "0002_teams_2": "MIGRATING"}
    assert current(url, scripts) == "0002_teams" and "team_id" in shape(url)


def test_offline_prints_expand_and_migrate_with_compensation(zdm_database_url: str) -> None:
    url = zdm_database_url
    out = io.StringIO()
    alembic.command.upgrade(config(url, out=out), "head", sql=True)
    script = out.getvalue()
    assert re.search(r"^ALTER TABLE users ADD COLUMN email_address TEXT;$", script, re.M)
    assert re.search(r"^--   (ALTER TABLE users DROP COLUMN email_address|rebuild table users .*drop email_address)",
                     script, re.M)  # the compensation: SQLite drops a column through a rebuild
    assert re.search(r"^UPDATE users SET email_address = email WHERE", script, re.M)  # the backfill
    assert not re.search(r"^ALTER TABLE users DROP COLUMN email;", script, re.M)  # contract: on request
    assert "-x zdm=contract" in script

    out = io.StringIO()
    alembic.command.upgrade(config(url, "zdm=contract", out=out), f"{ADD}:{RENAME}", sql=True)
    script = out.getvalue()
    contract = script.split("-- zdm CONTRACTING")[-1]
    assert "DROP TRIGGER IF EXISTS zdm_tg_0003_rename_email" in contract
    assert "RENAME COLUMN email TO email_address" in contract  # the old column, renamed in place
    assert "ALTER TABLE users ADD COLUMN email_lower" not in script  # 0002 is before the range
    assert tables(url) == set()  # offline never touches the database


def test_failed_start_leaves_alembic_on_the_previous_revision(zdm_database_url: str, tmp_path: Path) -> None:
    url = zdm_database_url
    _project(tmp_path, _revision(  # rows 4 and 8 have no name, and no fill is given
        "0002_name_required", 'op.zdm_set_not_null("users", "name")'))

    with pytest.raises(CommandError, match="name is NULL in rows"):
        upgrade(url, "head", scripts=tmp_path)
    assert current(url, tmp_path) == "0001_create_users"  # not stamped: compensated, ready for a rerun
    assert zdm_phases(url) == {"0002_name_required": "ROLLED_BACK"}
    assert shape(url)["name"] == ("TEXT", True) and leftovers(url) == []

    execute(url, "UPDATE users SET name = 'anon' WHERE name IS NULL")  # fix the data, deploy again
    upgrade(url, "head", scripts=tmp_path)
    assert_agree(url, "0002_name_required", "MIGRATING", tmp_path)


def test_offline_hints_of_a_new_column_describe_the_table_not_the_column(tmp_path: Path) -> None:
    """An offline run that starts after the table was created learns it from the hints alone."""
    scripts = _project(tmp_path, _revision(
        "0002_bio", 'op.zdm_add_column("users", "bio", sa.Text(), existing_type=sa.Text(), existing_nullable=True, '
        'existing_primary_key=["id"])'))
    out = io.StringIO()
    alembic.command.upgrade(config("sqlite:///never-opened.db", out=out, scripts=scripts),
                            "0001_create_users:head", sql=True)
    assert re.search(r"^ALTER TABLE users ADD COLUMN bio TEXT;$", out.getvalue(), re.M)
    assert not Path("never-opened.db").exists()


STOCK_ENV = """\
import sqlalchemy as sa
from alembic import context

url = context.config.get_main_option("sqlalchemy.url")


def migrate():
    {run}


if context.is_offline_mode():
    context.configure(url=url, literal_binds=True)
    migrate()
else:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection)
        migrate()
"""
PLAIN_REVISIONS = {
    "r1_items.py": """\
        import sqlalchemy as sa
        from alembic import op

        revision, down_revision = "r1", None

        def upgrade():
            items = op.create_table("items", sa.Column("id", sa.Integer, primary_key=True),
                                    sa.Column("name", sa.Text, nullable=False))
            op.bulk_insert(items, [{"id": 1, "name": "pen"}, {"id": 2, "name": "ink"}])

        def downgrade():
            op.drop_table("items")
        """,
    "r2_price.py": """\
        import sqlalchemy as sa
        from alembic import op

        revision, down_revision = "r2", "r1"

        def upgrade():
            op.add_column("items", sa.Column("price", sa.Integer, server_default="0", nullable=False))
            op.create_index("ix_items_name", "items", ["name"])

        def downgrade():
            op.drop_index("ix_items_name", table_name="items")
            op.drop_column("items", "price")
        """,
}


def plain_project(base: Path, run: str) -> Path:
    (base / "versions").mkdir(parents=True)
    (base / "env.py").write_text(STOCK_ENV.format(run=run))
    for name, source in PLAIN_REVISIONS.items():
        (base / "versions" / name).write_text(textwrap.dedent(source))
    return base


def plain_config(script_location: Path, url: str, out: io.StringIO | None = None) -> Config:
    cfg = Config(output_buffer=out, stdout=io.StringIO())
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def snapshot(url: str) -> dict[str, Any]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        inspector = sa.inspect(connection)
        found = {name: ([(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(name)],
                        sorted(ix["name"] for ix in inspector.get_indexes(name)),
                        connection.execute(sa.text(f"SELECT * FROM {name} ORDER BY 1")).all())
                 for name in sorted(inspector.get_table_names())}
    engine.dispose()
    return found


def drop_everything(url: str) -> None:
    engine = sa.create_engine(url)
    metadata = sa.MetaData()
    with engine.begin() as connection:
        metadata.reflect(connection)
        metadata.drop_all(connection)
    engine.dispose()


def test_plain_alembic_project_behaves_as_before(zdm_database_url: str, tmp_path: Path) -> None:
    url = zdm_database_url
    stock = plain_project(tmp_path / "stock", "with context.begin_transaction():\n        context.run_migrations()")
    wired = plain_project(tmp_path / "wired", "import zdm.alembic\n    zdm.alembic.run_migrations(context)")
    for offline_url in (url, "mysql://app@db/app"):  # zdm does not run MySQL, nor need to here
        stock_offline, wired_offline = io.StringIO(), io.StringIO()
        alembic.command.upgrade(plain_config(stock, offline_url, stock_offline), "head", sql=True)
        alembic.command.upgrade(plain_config(wired, offline_url, wired_offline), "head", sql=True)
        assert wired_offline.getvalue() == stock_offline.getvalue()

    alembic.command.upgrade(plain_config(stock, url), "head")
    before = snapshot(url)
    drop_everything(url)
    alembic.command.upgrade(plain_config(wired, url), "head")
    assert snapshot(url) == before
    assert "zdm_migrations" not in tables(url)
    alembic.command.downgrade(plain_config(wired, url), "base")
    assert tables(url) == {"alembic_version"}


@pytest.mark.parametrize(("written", "default", "created", "value"), [
    ("sa.String(200)", "'x'", "VARCHAR(200)", "x"),
    ("sa.Numeric(10, 2)", "'0.50'", "NUMERIC(10,2)", Decimal("0.50")),
    ("sa.Date", "'2024-02-29'", "DATE", dt.date(2024, 2, 29)),
])
def test_sqlalchemy_types_are_created_as_written(zdm_database_url: str, tmp_path: Path, written: str, default: str,
                                                 created: str, value: Any) -> None:
    """``sa.String(200)`` is VARCHAR(200), ``sa.Numeric(10, 2)`` NUMERIC(10,2): read back exactly."""
    url = zdm_database_url
    scripts = _project(tmp_path, _revision(
        "0002_code", f'op.zdm_add_column("users", "code", {written}, nullable=False, default={default})'))
    upgrade(url, "head", scripts=scripts)
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        table = introspect.read_table(connection, "users", rows=True)
    engine.dispose()
    assert table.columns["code"].type.name == created
    assert {row["code"] for row in table.rows} == {value}


def test_a_type_zdm_would_not_create_as_written_is_refused(zdm_database_url: str, tmp_path: Path) -> None:
    """A collation would be lost; a type the database lacks is named (SQLite has no UUID)."""
    url = zdm_database_url
    dialect = sa.make_url(url).get_backend_name()
    refused = ('sa.String(200, collation="C")', "a collation would be lost") if dialect == "postgresql" \
        else ("sa.Uuid()", "SQLite has no type UUID")
    scripts = _project(tmp_path, _revision("0002_code", f'op.zdm_add_column("users", "code", {refused[0]})'))
    upgrade(url, "0001_create_users", scripts=scripts)
    before = shape(url)
    with pytest.raises(CommandError, match=re.escape(refused[1])):
        upgrade(url, "head", scripts=scripts)
    assert shape(url) == before and current(url, scripts) == "0001_create_users"


@pytest.mark.parametrize(("body", "column", "created"), [
    (('op.add_column("users", sa.Column("status", sa.String(20)))',
      'op.zdm_alter_column("users", "status", sa.Text())'), "status", "TEXT"),  # in place
    (('op.zdm_alter_column("users", "score", sa.Numeric(12, 4))',), "score", "NUMERIC(12,4)"),  # dual column
], ids=["varchar-to-text-in-place", "integer-to-numeric-dual"])
def test_alter_column_takes_sqlalchemy_types(zdm_database_url: str, tmp_path: Path, body: tuple[str, ...],
                                             column: str, created: str) -> None:
    url = zdm_database_url
    scripts = _project(tmp_path, _revision("0002_types", *body))
    upgrade(url, "head", scripts=scripts)
    zdm("complete", "0002_types", "--db", url)
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        assert introspect.read_table(connection, "users").columns[column].type.name == created
    engine.dispose()


# -- ordinary Alembic ops are transactional on every database (SQLite: pysqlite's legacy mode is not) -----
def _after(revision: str, down: str, *upgrade: str) -> tuple[str, str]:
    """A revision after ``down`` whose upgrade() runs ``upgrade``."""
    name, source = _revision(revision, *upgrade)
    return name, source.replace("'0001_create_users'", repr(down))


def test_a_revision_refused_for_overlap_changes_nothing(zdm_database_url: str, tmp_path: Path) -> None:
    """README: a revision refused for a table in flight is refused "before it changes anything"."""
    url = zdm_database_url
    scripts = _project(tmp_path, _revision("0002_nick", 'op.zdm_add_column("users", "nick", "TEXT")'),
                       _after("0003_audit", "0002_nick",
                              'op.create_table("audit", sa.Column("id", sa.Integer, primary_key=True))',
                              'op.zdm_add_column("users", "bio", "TEXT")'))
    upgrade(url, "0002_nick", scripts=scripts)
    with pytest.raises(CommandError, match=r"being changed by zdm plan '0002_nick'"):
        upgrade(url, "head", scripts=scripts)
    assert "audit" not in tables(url) and current(url, scripts) == "0002_nick"
    zdm("complete", "0002_nick", "--db", url, "--quiet")  # the next deploy: the rerun goes through
    upgrade(url, "head", scripts=scripts)
    assert "audit" in tables(url) and "bio" in shape(url)
    assert_agree(url, "0003_audit", "MIGRATING", scripts)


def test_ordinary_ops_after_a_zdm_op_are_retried_by_a_rerun(zdm_database_url: str, tmp_path: Path) -> None:
    """README: fix the cause and rerun (it skips the started plan and retries the ordinary ops)."""
    url = zdm_database_url
    scripts = _project(tmp_path, _revision(
        "0002_mixed", 'op.zdm_rename_column("users", "email", "email_address")',
        'op.add_column("users", sa.Column("nick", sa.Text()))', 'op.execute("SELECT * FROM no_such_table")'))
    upgrade(url, "0001_create_users", scripts=scripts)
    with pytest.raises(sa.exc.DBAPIError, match="no_such_table"):
        upgrade(url, "head", scripts=scripts)
    assert "nick" not in shape(url) and current(url, scripts) == "0001_create_users"
    execute(url, "CREATE TABLE no_such_table (id INTEGER)")  # the cause, fixed
    upgrade(url, "head", scripts=scripts)
    assert {"nick", "email", "email_address"} <= set(shape(url))
    assert_agree(url, "0002_mixed", "MIGRATING", scripts)


@pytest.mark.parametrize("change", [
    '"BIGINT"', '"UUID", up="gen_random_uuid()"'], ids=["bigint", "uuid"])
def test_offline_refuses_to_change_a_primary_key(zdm_database_url: str, tmp_path: Path, change: str) -> None:
    """Offline (--sql) zdm cannot see the tables whose foreign keys point at the key (nor the sequence
    and the constraints' definitions): a key change is refused with one clear line, nothing printed for it."""
    if "UUID" in change and zdm_database_url.startswith("sqlite"):
        pytest.skip("SQLite has no UUID (refused online and offline alike)")
    scripts = _project(tmp_path, _revision(
        "0002_widen", f'op.zdm_alter_column("users", "id", {change}, existing_type=sa.Integer(), '
        'existing_nullable=False, existing_primary_key=["id"])'))
    out = io.StringIO()
    with pytest.raises(Exception, match=r"users\.id is the primary key: changing it reads the live catalog .* "
                                        r"run zdm against the database instead of offline") as caught:
        alembic.command.upgrade(config(zdm_database_url, out=out, scripts=scripts), "0001_create_users:head",
                                sql=True)
    assert "\n" not in str(caught.value).strip()
    assert "id_zdm_new" not in out.getvalue()
    assert tables(zdm_database_url) == set()  # offline never touches the database
