"""`alembic revision --autogenerate` with zdm wired in, on both databases, as a team runs it.

A model change autogenerates a revision whose unsafe ops are their op.zdm_* forms (and which
`zdm lint` passes); the revision runs through `alembic upgrade`; a second autogenerate finds
nothing. Mid-flight (a zdm rename started, the new app's model declared), autogenerate finds
nothing either: zdm's index copies, the old column and its unique constraint are not drift.
"""

from __future__ import annotations

import io
import re
import shutil
import textwrap
from argparse import Namespace
from pathlib import Path

import alembic.command
import sqlalchemy as sa
from alembic.config import Config
from test_cli import zdm

ROOT = Path(__file__).resolve().parent.parent
ENV = '''\
import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import context

import zdm.alembic

spec = importlib.util.spec_from_file_location("models", Path(__file__).parent / "models.py")
models = importlib.util.module_from_spec(spec)
spec.loader.exec_module(models)
engine = sa.create_engine(context.get_x_argument(as_dictionary=True)["db"], poolclass=sa.pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=models.metadata, transaction_per_migration=True,
                      compare_type=True)
    zdm.alembic.run_migrations(context)
'''
BEFORE = """\
    users = sa.Table("users", metadata, sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("email", sa.Text, unique=True), sa.Column("age", sa.Integer))
    orders = sa.Table("orders", metadata, sa.Column("id", sa.Integer, primary_key=True),
                      sa.Column("total", sa.Integer))
    accounts = sa.Table("accounts", metadata, sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("name", sa.Text))
"""
AFTER = (BEFORE.replace('sa.Column("age", sa.Integer)', 'sa.Column("age", sa.BigInteger)')
         .replace('sa.Column("total", sa.Integer))', 'sa.Column("total", sa.Integer, index=True))')
         .replace('sa.Column("name", sa.Text))', 'sa.Column("name", sa.Text, nullable=False))'))


def project(tmp_path: Path, tables: str) -> Path:
    where = tmp_path / "migrations"
    (where / "versions").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "alembic" / "script.py.mako", where / "script.py.mako")
    (where / "env.py").write_text(ENV)
    (where / "models.py").write_text("import sqlalchemy as sa\n\nmetadata = sa.MetaData()\nif True:\n"
                                     + textwrap.indent(textwrap.dedent(tables), "    "))
    return where


def config(where: Path, url: str, *x: str) -> Config:
    cfg = Config(cmd_opts=Namespace(x=[f"db={url}", *x]), stdout=io.StringIO())
    cfg.set_main_option("script_location", str(where))
    return cfg


def autogenerate(where: Path, url: str, rev_id: str) -> tuple[str, str, str]:
    """The generated file's text, its upgrade() body and its downgrade() body."""
    alembic.command.revision(config(where, url), message="model change", autogenerate=True, rev_id=rev_id)
    text = next((where / "versions").glob(f"{rev_id}_*.py")).read_text()
    upgrade = text.split("def upgrade()")[1].split("def downgrade()")[0]
    return text, upgrade, text.split("def downgrade()")[1]


def commands(body: str) -> list[str]:
    return [line.strip() for line in body.splitlines() if line.strip().startswith("op.")]


def start_schema(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE users (id INTEGER NOT NULL PRIMARY KEY, email TEXT UNIQUE, "
                                   "age INTEGER)")
        connection.exec_driver_sql("CREATE TABLE orders (id INTEGER NOT NULL PRIMARY KEY, total INTEGER)")
        connection.exec_driver_sql("CREATE TABLE accounts (id INTEGER NOT NULL PRIMARY KEY, name TEXT)")
        for n in range(1, 21):
            connection.exec_driver_sql(f"INSERT INTO users VALUES ({n}, 'u{n}@x', {n})")
            connection.exec_driver_sql(f"INSERT INTO orders VALUES ({n}, {n * 3})")
            connection.exec_driver_sql(f"INSERT INTO accounts VALUES ({n}, 'a{n}')")
    engine.dispose()


def test_autogenerate_writes_zero_downtime_ops_that_run(zdm_database_url: str, tmp_path: Path) -> None:
    url = zdm_database_url
    start_schema(url)
    where = project(tmp_path, BEFORE)
    _, upgrade, _ = autogenerate(where, url, "0001")
    assert commands(upgrade) == [], upgrade  # the model matches the database
    alembic.command.upgrade(config(where, url), "head")
    where = project(tmp_path, AFTER)
    _, upgrade, downgrade = autogenerate(where, url, "0002")
    assert sorted(commands(upgrade)) == [
        "op.zdm_alter_column(table='users', column='age', type='BIGINT')",
        "op.zdm_create_index(table='orders', name='ix_orders_total', columns=['total'])",
        "op.zdm_set_not_null(table='accounts', column='name')"], upgrade
    assert commands(downgrade) == ["op.zdm_rollback()"], downgrade
    code, out, _ = zdm("lint", str(next((where / "versions").glob("0002_*.py"))))
    assert code == 0, out
    alembic.command.upgrade(config(where, url, "zdm=apply"), "head")
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        inspector = sa.inspect(connection)
        age = next(c for c in inspector.get_columns("users") if c["name"] == "age")
        name = next(c for c in inspector.get_columns("accounts") if c["name"] == "name")
        assert re.match(r"BIGINT", str(age["type"]).upper()) and not name["nullable"]
        assert "ix_orders_total" in {ix["name"] for ix in inspector.get_indexes("orders")}
        assert connection.exec_driver_sql("SELECT sum(age) FROM users").scalar() == 210
    engine.dispose()
    _, upgrade, _ = autogenerate(where, url, "0003")
    assert commands(upgrade) == [], upgrade


def test_autogenerate_mid_flight_finds_no_drift(zdm_database_url: str, tmp_path: Path) -> None:
    """A rename started (both columns, zdm's index copy, the old unique constraint), the new app's
    model declared: the revision autogenerate writes is empty, and drops nothing zdm needs."""
    url = zdm_database_url
    start_schema(url)
    where = project(tmp_path, BEFORE)
    (where / "versions" / "0001_rename.py").write_text(textwrap.dedent('''\
        from alembic import op

        revision = "0001"
        down_revision = None


        def upgrade():
            op.zdm_rename_column("users", "email", "email_address")


        def downgrade():
            op.zdm_rollback()
        '''))
    alembic.command.upgrade(config(where, url), "head")  # start: the plan rests in MIGRATING
    where = project(tmp_path, BEFORE.replace('sa.Column("email", sa.Text, unique=True)',
                                             'sa.Column("email_address", sa.Text, unique=True)'))
    _, upgrade, downgrade = autogenerate(where, url, "0002")
    assert commands(upgrade) == [] and commands(downgrade) == [], upgrade + downgrade
    alembic.command.upgrade(config(where, url, "zdm=complete"), "head")
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        columns = {c["name"] for c in sa.inspect(connection).get_columns("users")}
    engine.dispose()
    assert "email_address" in columns and "email" not in columns


def test_alembic_check_finds_no_drift_after_a_rename_completes(zdm_database_url: str, tmp_path: Path) -> None:
    """A UNIQUE constraint stays a constraint through a rename (SQLite: through the rebuilds that
    relax and restore NOT NULL), named or not, so `alembic check` agrees with the new model."""
    url = zdm_database_url
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE users (id INTEGER NOT NULL PRIMARY KEY, email TEXT NOT NULL UNIQUE, "
                                   "code TEXT, age INTEGER, CONSTRAINT users_code_uq UNIQUE (code))")
        connection.exec_driver_sql("INSERT INTO users VALUES (1, 'a@x', 'c1', 3), (2, 'b@x', 'c2', 4)")
    engine.dispose()
    where = project(tmp_path, 'users = sa.Table("users", metadata, sa.Column("id", sa.Integer, primary_key=True))\n')
    (where / "versions" / "0001_rename.py").write_text(textwrap.dedent('''\
        from alembic import op

        revision = "0001"
        down_revision = None


        def upgrade():
            op.zdm_rename_column("users", "email", "email_address")


        def downgrade():
            op.zdm_rollback()
        '''))
    where = project(tmp_path, """\
        users = sa.Table("users", metadata, sa.Column("id", sa.Integer, primary_key=True),
                         sa.Column("email_address", sa.Text, nullable=False, unique=True),
                         sa.Column("code", sa.Text), sa.Column("age", sa.Integer),
                         sa.UniqueConstraint("code", name="users_code_uq"))
        """)
    alembic.command.upgrade(config(where, url), "head")
    alembic.command.upgrade(config(where, url, "zdm=complete"), "head")
    alembic.command.check(config(where, url))  # raises "New upgrade operations detected" on drift
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        uniques = sa.inspect(connection).get_unique_constraints("users")
        indexes = sa.inspect(connection).get_indexes("users")
    engine.dispose()
    assert sorted(tuple(u["column_names"]) for u in uniques) == [("code",), ("email_address",)]
    assert [ix["name"] for ix in indexes if not ix.get("duplicates_constraint")] == []


def test_alembic_check_reports_a_zdm_op_as_drift(zdm_database_url: str, tmp_path: Path) -> None:
    """A model whose type differs from the database: autogenerate would write op.zdm_alter_column,
    and `alembic check` (the CLI, as a user runs it) reports it as drift (Alembic's FAILED message,
    non-zero exit), no traceback."""
    import subprocess
    import sys

    url = zdm_database_url
    start_schema(url)
    where = project(tmp_path, BEFORE.replace('sa.Column("age", sa.Integer)', 'sa.Column("age", sa.BigInteger)'))
    ini = tmp_path / "alembic.ini"
    ini.write_text(f"[alembic]\nscript_location = {where}\n")
    alembic_cli = Path(sys.executable).parent / "alembic"
    checked = subprocess.run([str(alembic_cli), "-c", str(ini), "-x", f"db={url}", "check"],
                             capture_output=True, text=True, timeout=60)
    said = checked.stdout + checked.stderr
    assert checked.returncode != 0 and "Traceback" not in said and "NotImplementedError" not in said, said
    assert "New upgrade operations detected: [('zdm_alter_column', 'users', {'column': 'age', 'type': 'BIGINT'})]" \
        in said, said
    where = project(tmp_path, BEFORE)  # the model agrees with the database: no drift
    agreed = subprocess.run([str(alembic_cli), "-c", str(ini), "-x", f"db={url}", "check"],
                            capture_output=True, text=True, timeout=60)
    assert agreed.returncode == 0, agreed.stdout + agreed.stderr


def test_every_zdm_op_class_has_a_diff_tuple() -> None:
    """The op classes of revision files and of autogenerate answer UpgradeOps.as_diffs()."""
    from alembic.operations import ops

    from zdm.alembic.autogenerate import ZdmOp, ZdmRollbackOp
    from zdm.alembic.offline import Hints
    from zdm.alembic.operations import ZdmOperation, ZdmRollback
    from zdm.planfile import PlanFile

    operation = PlanFile.model_validate({"id": "x", "operations": [
        {"op": "set_not_null", "table": "t", "column": "c"}]}).operations[0]
    upgrade = ops.UpgradeOps(ops=[ZdmOp(operation, Hints()), ZdmOperation(operation, Hints()), ZdmRollbackOp(),
                                  ZdmRollback()])
    assert upgrade.as_diffs() == [("zdm_set_not_null", "t", {"column": "c"})] * 2 + [("zdm_rollback",)] * 2
