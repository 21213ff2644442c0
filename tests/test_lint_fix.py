"""`zdm lint --fix`: unsafe ops rewritten into their zdm forms, and the result runs.

A revision with one unsafe ordinary op per table is fixed in place; the fixed revision lints
clean and runs through `alembic upgrade` (zdm start) and `-x zdm=complete` on both databases,
leaving the shape the original ops meant. What has no zdm form is left and marked. A .sql file
becomes a plan file that validates against the database.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from argparse import Namespace
from pathlib import Path

import alembic.command
import pytest
import sqlalchemy as sa
import yaml
from alembic.config import Config
from test_cli import zdm
from test_lint import SEVEN_UNSAFE

ROOT = Path(__file__).resolve().parent.parent
TABLES = ("a_type", "b_not_null", "c_index", "d_unique", "e_key", "f_check", "g_drop", "h_rename", "i_execute")
CREATE = '''\
import sqlalchemy as sa
from alembic import op

revision, down_revision = "0001", None


def upgrade():
    op.create_table("parents", sa.Column("id", sa.Integer, primary_key=True))
    op.bulk_insert(sa.table("parents", sa.column("id")), [{"id": n} for n in range(1, 6)])
    for name in TABLES:
        table = op.create_table(name, sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Integer),
                                sa.Column("parent_id", sa.Integer))
        op.bulk_insert(table, [{"id": n, "v": n * 10, "parent_id": n} for n in range(1, 6)])


def downgrade():
    pass
'''.replace("TABLES", repr(TABLES), 1)
UNSAFE = '''\
"""One unsafe ordinary op per table."""
import sqlalchemy as sa
from alembic import op

revision, down_revision = "0002", "0001"


def upgrade():
    op.alter_column("a_type", "v", type_=sa.BigInteger(), existing_type=sa.Integer())
    op.alter_column("b_not_null", "v", nullable=False, existing_type=sa.Integer())
    op.create_index("c_index_v_ix", "c_index", ["v"])
    op.create_unique_constraint("d_unique_v_key", "d_unique", ["v"])
    op.create_foreign_key("e_key_parent_fk", "e_key", "parents", ["parent_id"], ["id"])
    op.create_check_constraint("f_check_v_positive", "f_check",
                               sa.text("v > 0"))
    op.drop_column("g_drop", "v")
    op.alter_column("h_rename", "v", new_column_name="value", existing_type=sa.Integer())
    op.execute("ALTER TABLE i_execute ADD CONSTRAINT i_execute_v_small CHECK (v < 1000)")


def downgrade():
    op.execute("ALTER TABLE i_execute DROP CONSTRAINT i_execute_v_small")
    op.alter_column("h_rename", "value", new_column_name="v", existing_type=sa.Integer())
    op.add_column("g_drop", sa.Column("v", sa.Integer()))
    op.drop_constraint("f_check_v_positive", "f_check", type_="check")
    op.drop_constraint("e_key_parent_fk", "e_key", type_="foreignkey")
    op.drop_constraint("d_unique_v_key", "d_unique", type_="unique")
    op.drop_index("c_index_v_ix", table_name="c_index")
    op.alter_column("b_not_null", "v", nullable=True, existing_type=sa.Integer())
    op.alter_column("a_type", "v", type_=sa.Integer(), existing_type=sa.BigInteger())
'''
FIXED_UPGRADE = [
    "op.zdm_alter_column(table='a_type', column='v', type='BIGINT')",
    "op.zdm_set_not_null(table='b_not_null', column='v')",
    "op.zdm_create_index(table='c_index', name='c_index_v_ix', columns=['v'])",
    "op.zdm_add_unique(table='d_unique', name='d_unique_v_key', columns=['v'])",
    "op.zdm_add_foreign_key(table='e_key', name='e_key_parent_fk', columns=['parent_id'], ref_table='parents', "
    "ref_columns=['id'])",
    "op.zdm_add_check(table='f_check', name='f_check_v_positive', condition='v > 0')",
    "op.zdm_drop_column(table='g_drop', column='v')",
    "op.zdm_rename_column(table='h_rename', column='v', new_name='value')",
    "op.zdm_add_check(table='i_execute', name='i_execute_v_small', condition='v < 1000')",
]


def body(text: str, function: str) -> list[str]:
    part = text.split(f"def {function}():")[1].split("\ndef ")[0]
    return [line.strip() for line in part.splitlines() if line.strip()[:1] not in ("", '"')]


def project(tmp_path: Path) -> Path:
    (tmp_path / "versions").mkdir()
    shutil.copy(ROOT / "alembic" / "env.py", tmp_path / "env.py")
    (tmp_path / "versions" / "0001_create.py").write_text(CREATE)
    (tmp_path / "versions" / "0002_unsafe.py").write_text(UNSAFE)
    return tmp_path


def alembic_config(url: str, scripts: Path, *x: str) -> Config:
    cfg = Config(ROOT / "alembic.ini", cmd_opts=Namespace(x=[f"db={url}", *x]), stdout=io.StringIO())
    cfg.set_main_option("script_location", str(scripts))
    return cfg


def test_fixed_revision_lints_clean_and_runs_start_and_complete(zdm_database_url: str, tmp_path: Path) -> None:
    url = zdm_database_url
    scripts = project(tmp_path)
    revision = scripts / "versions" / "0002_unsafe.py"
    code, out, err = zdm("lint", "--fix", "--format", "json", str(revision))
    assert code == 0, out
    assert json.loads(out)["findings"] == []
    assert "9 converted to zdm operations, 0 marked" in err
    fixed = revision.read_text()
    assert body(fixed, "upgrade") == FIXED_UPGRADE
    assert body(fixed, "downgrade") == ["op.zdm_rollback()"]  # it undoes every converted op
    assert fixed.startswith('"""One unsafe ordinary op per table."""\nimport sqlalchemy as sa\n')  # the rest as written

    alembic.command.upgrade(alembic_config(url, scripts), "head")  # zdm start: every plan MIGRATING
    phases = {plan["id"]: plan["phase"] for plan in json.loads(zdm("status", "--json", "--db", url)[1])["plans"]}
    assert sorted(phases.values()) == ["MIGRATING"] * 9
    alembic.command.upgrade(alembic_config(url, scripts, "zdm=complete"), "head")
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        inspector = sa.inspect(connection)
        columns = {name: {c["name"]: c for c in inspector.get_columns(name)} for name in TABLES}
        assert re.match("BIGINT", str(columns["a_type"]["v"]["type"]).upper())
        assert columns["b_not_null"]["v"]["nullable"] is False
        assert "c_index_v_ix" in {ix["name"] for ix in inspector.get_indexes("c_index")}
        uniques = [u["column_names"] for u in inspector.get_unique_constraints("d_unique")] + [
            ix["column_names"] for ix in inspector.get_indexes("d_unique") if ix["unique"]]  # SQLite: an index
        assert ["v"] in uniques
        assert [fk["referred_table"] for fk in inspector.get_foreign_keys("e_key")] == ["parents"]
        assert {c["name"] for c in inspector.get_check_constraints("f_check")} == {"f_check_v_positive"}
        assert "v" not in columns["g_drop"] and "value" in columns["h_rename"]
        assert {c["name"] for c in inspector.get_check_constraints("i_execute")} == {"i_execute_v_small"}
        assert connection.exec_driver_sql("SELECT sum(value) FROM h_rename").scalar() == 150
    engine.dispose()
    phases = {plan["id"]: plan["phase"] for plan in json.loads(zdm("status", "--json", "--db", url)[1])["plans"]}
    assert sorted(phases.values()) == ["COMPLETE"] * 9


def test_what_has_no_zdm_form_is_left_and_marked(tmp_path: Path) -> None:
    """The issue's revision: one zdm plan per table, so the first op of users converts; the rest stay,
    each marked with why; a second --fix changes nothing."""
    revision = tmp_path / "versions" / "0007.py"
    revision.parent.mkdir()
    revision.write_text(SEVEN_UNSAFE)
    code, _, err = zdm("lint", "--fix", str(revision))
    assert code == 1 and "1 converted to zdm operations, 6 marked" in err
    fixed = revision.read_text()
    lines = body(fixed, "upgrade")
    assert lines[0] == "op.zdm_alter_column(table='users', column='age', type='BIGINT')"
    marks = [line for line in lines if line.startswith("# zdm: not converted")]
    assert [re.match(r"# zdm: not converted \[([a-z-]+)\]", mark).group(1) for mark in marks] == [  # type: ignore[union-attr]
        "set-not-null", "create-index-blocking", "add-column-rewrite", "add-foreign-key-validating",
        "add-check-validating", "drop-column"]
    assert "op.zdm_alter_column changes users in this revision already" in marks[0]
    assert "no zdm operation does this" in marks[2]  # a volatile default
    assert body(fixed, "downgrade") == ["op.zdm_rollback()"]
    zdm("lint", "--fix", str(revision))
    assert revision.read_text() == fixed


SQL = """\
-- the patch, as the team wrote it
CREATE INDEX orders_total_ix ON orders (total);
ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id);
ALTER TABLE customers ALTER COLUMN code TYPE bigint;
ALTER TABLE customers ADD COLUMN nick text NOT NULL DEFAULT 'x';
ALTER TABLE orders ADD CONSTRAINT orders_total_positive CHECK (total > 0);
ALTER TABLE customers RENAME COLUMN name TO full_name;
CREATE TABLE notes (id integer PRIMARY KEY);
CREATE INDEX CONCURRENTLY customers_code_ix ON customers (code);
"""


def test_a_sql_file_becomes_a_plan_file_that_validates(zdm_database_url: str, tmp_path: Path) -> None:
    url = zdm_database_url
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE customers (id INTEGER PRIMARY KEY, code INTEGER, name TEXT)")
        connection.exec_driver_sql("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, total INTEGER)")
        connection.exec_driver_sql("CREATE TABLE drafts (id INTEGER PRIMARY KEY)")
    engine.dispose()
    patch = tmp_path / "0042.sql"
    patch.write_text(SQL)
    code, out, err = zdm("lint", "--fix", "--format", "json", str(patch))
    plan = tmp_path / "0042.yaml"
    assert code == 0 and "7 converted to zdm operations, 0 marked" in err and f"{plan}" in err
    operations = yaml.safe_load(plan.read_text())["operations"]
    assert [op["op"] for op in operations] == ["create_index", "add_foreign_key", "alter_column", "add_column",
                                               "add_check", "rename_column", "sql", "create_index"]
    assert operations[-2] == {"op": "sql", "up": "CREATE TABLE notes (id integer PRIMARY KEY)", "down": []}
    code, out, _ = zdm("validate", str(plan), "--db", url, "--json")
    assert code == 0, out

    patch.write_text("TRUNCATE drafts;\n")  # no zdm form: a marked sql step, which lint and validate refuse
    code, out, err = zdm("lint", "--fix", "--format", "json", str(patch))
    text = plan.read_text()
    assert code == 1 and "0 converted to zdm operations, 1 marked" in err
    assert [f["rule"] for f in json.loads(out)["findings"]] == ["truncate"]
    assert "# zdm: not converted [truncate]: no zdm operation does this" in text


def test_a_second_table_converted_later_keeps_one_rollback(tmp_path: Path) -> None:
    """A revision whose downgrade() rolls zdm back already gets no second op.zdm_rollback()."""
    revision = tmp_path / "versions" / "0003.py"
    revision.parent.mkdir()
    revision.write_text(UNSAFE.replace('revision, down_revision = "0002", "0001"', 'revision = "0003"\n'
                                       'down_revision = None').replace(
        "def downgrade():\n", "def downgrade():\n    op.zdm_rollback()\n"))
    zdm("lint", "--fix", str(revision))
    assert revision.read_text().count("op.zdm_rollback()") == 1


@pytest.mark.parametrize(("name", "text", "message"), [
    ("versions/0004.py", "x = 1\n", "not an Alembic revision (no upgrade())"),
    ("versions/0005.py", "revision = '5'\ndown_revision = None\ndef upgrade():\n    raise RuntimeError('boom')\n",
     "upgrade() failed in offline mode: RuntimeError: boom"),
    ("0006.sql", "ALTER TABLE;\n", "not SQL PostgreSQL parses"),
])
def test_a_file_fix_cannot_read_is_one_line_exit_2_and_left_as_it_was(tmp_path: Path, name: str, text: str,
                                                                    message: str) -> None:
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    code, out, err = zdm("lint", "--fix", str(path))
    assert code == 2 and out == "" and err.startswith("zdm: error: ") and err.count("\n") == 1, err
    assert message in err
    assert path.read_text() == text and sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_an_op_in_a_block_is_marked_not_rewritten(tmp_path: Path) -> None:
    revision = tmp_path / "versions" / "0008.py"
    revision.parent.mkdir()
    revision.write_text('''\
from alembic import op

revision, down_revision = "0008", None


def upgrade():
    for table in ("users",):
        op.create_index("users_email_ix", table, ["email"])


def downgrade():
    pass
''')
    code, _, err = zdm("lint", "--fix", str(revision))
    assert code == 1 and "0 converted to zdm operations, 1 marked" in err
    assert body(revision.read_text(), "upgrade")[0] == (
        "# zdm: not converted [create-index-blocking]: op.zdm_create_index does this, but --fix edits only an op "
        "call that is a statement of upgrade() of its own (not in a loop, an if or a with block): write it by hand")


@pytest.mark.parametrize("line", [
    'op.alter_column("t4", "d", new_column_name="e"); op.drop_column("t4", "f")',
    'op.drop_column("t5", "f"); op.alter_column("t4", "d", new_column_name="e")',
    'op.alter_column(\n        "t4", "d", new_column_name="e"); print("after")',
])
def test_code_sharing_a_line_with_an_op_is_never_cut_out(tmp_path: Path, line: str) -> None:
    """--fix replaces whole lines: an op that shares one with other code is marked, not rewritten,
    and every statement of the file is still there."""
    revision = tmp_path / "versions" / "0009.py"
    revision.parent.mkdir()
    revision.write_text(f'''\
from alembic import op

revision, down_revision = "0009", None


def upgrade():
    {line}


def downgrade():
    pass
''')
    zdm("lint", "--fix", str(revision))
    fixed = revision.read_text()
    assert "op.zdm_rename_column(" not in fixed and "put each op call on a line of its own" in fixed
    for call in ('op.alter_column(', 'op.drop_column("t', 'print("after")'):
        assert fixed.count(call) == line.count(call), fixed
    assert "# zdm: not converted [" in fixed


def test_what_a_revision_prints_stays_out_of_the_report(tmp_path: Path) -> None:
    """Linting runs the revision's code: its print() (and Alembic's offline SQL of a batch op) go to
    stderr, so `--format json` stays one JSON document and --fix prints only its summary."""
    revision = tmp_path / "versions" / "0010.py"
    revision.parent.mkdir()
    revision.write_text('''\
from alembic import op

revision, down_revision = "0010", None
print("loaded")


def upgrade():
    print("upgrading")
    op.create_index("users_email_ix", "users", ["email"])


def downgrade():
    pass
''')
    code, out, err = zdm("lint", "--format", "json", str(revision))
    assert code == 1 and json.loads(out)["findings"], out
    assert "upgrading" in err and "loaded" in err
    code, out, _ = zdm("lint", "--fix", str(revision))
    assert "upgrading" not in out and "CREATE INDEX" not in out, out
