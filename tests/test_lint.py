"""`zdm lint` on the migrations a team already has: Alembic revisions, .sql files, plan files.

An Alembic revision is read through Alembic (offline, recording what it would emit), so each op
is judged as the SQL it becomes and reported at its own line; every output format and every way
to suppress a finding (with a reason) is exercised; bad input is one line and exit 2.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from test_cli import zdm

SEVEN_UNSAFE = '''\
"""The issue's revision: seven ordinary ops, each unsafe on a busy table."""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = None


def upgrade():
    op.alter_column("users", "age", type_=sa.BigInteger(), existing_type=sa.Integer())
    op.alter_column("users", "name", nullable=False, existing_type=sa.Text())
    op.create_index("users_email_ix", "users", ["email"])
    op.add_column("users", sa.Column("token", sa.Text(), server_default=sa.text("gen_random_uuid()")))
    op.create_foreign_key("users_org_fk", "users", "orgs", ["org_id"], ["id"])
    op.execute("ALTER TABLE users ADD CONSTRAINT users_age_ok CHECK (age >= 0)")
    op.drop_column("users", "legacy")


def downgrade():
    pass
'''
SEVEN_RULES = [(10, "alter-column-type"), (11, "set-not-null"), (12, "create-index-blocking"),
               (13, "add-column-rewrite"), (14, "add-foreign-key-validating"), (15, "add-check-validating"),
               (16, "drop-column")]
SAFE_REVISION = '''\
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade():
    op.add_column("users", sa.Column("nick", sa.Text()))
    op.zdm_alter_column("users", "age", type="BIGINT")
    op.create_index("users_code_ix", "users", ["code"])  # zdm: ignore[create-index-blocking] users is tiny
    with op.get_context().autocommit_block():
        op.create_index("users_nick_ix", "users", ["nick"], postgresql_concurrently=True)
    op.execute("ALTER TABLE users ADD CONSTRAINT c CHECK (age > 0) NOT VALID")


def downgrade():
    pass
'''


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def lint_json(*args: str) -> tuple[int, dict]:
    code, out, _ = zdm("lint", "--format", "json", *args)
    return code, json.loads(out)


def test_each_unsafe_alembic_op_is_named_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "versions/0007_unsafe.py", SEVEN_UNSAFE)
    code, document = lint_json(str(path))
    assert code == 1 and not document["ok"]
    assert [(f["line"], f["rule"]) for f in document["findings"]] == SEVEN_RULES
    assert all(f["column"] == 5 and f["instead"] for f in document["findings"])


def test_zdm_ops_concurrent_blocks_and_suppressed_lines_pass(tmp_path: Path) -> None:
    path = write(tmp_path, "versions/0008_safe.py", SAFE_REVISION)
    code, document = lint_json(str(path))
    assert code == 0, document
    assert [(f["line"], f["suppressed"]) for f in document["findings"]] == [(11, "users is tiny")]


def test_a_commit_written_in_a_revision_is_a_finding(tmp_path: Path) -> None:
    path = write(tmp_path, "versions/0009.py", SAFE_REVISION.replace(
        "    op.execute(\"ALTER TABLE users ADD CONSTRAINT c CHECK (age > 0) NOT VALID\")",
        "    op.execute(\"COMMIT\")\n    op.execute(\"CREATE INDEX CONCURRENTLY i ON users (age)\")"))
    code, document = lint_json(str(path))
    assert code == 1
    assert [(f["line"], f["rule"]) for f in document["findings"] if not f["suppressed"]] == [
        (14, "transaction-control")]


DOWNGRADE = '''\
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = None


def upgrade():
    op.add_column("users", sa.Column("nick", sa.Text()))


def downgrade():
    op.create_index("users_age_ix", "users", ["age"])  # zdm: ignore[create-index-blocking] tiny in every env
    op.drop_column("users", "nick")
'''


def test_a_revision_s_downgrade_is_judged_and_said_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A downgrade runs while the revision's app version still runs: dropping its column breaks it."""
    path = write(tmp_path, "versions/0010.py", DOWNGRADE)
    code, document = lint_json(str(path))
    assert code == 1
    assert [(f["line"], f["rule"], f["function"], f["suppressed"]) for f in document["findings"]] == [
        (13, "create-index-blocking", "downgrade", "tiny in every env"), (14, "drop-column", "downgrade", None)]
    code, out, _ = zdm("lint", str(path))
    assert f"{path}:14:5: drop-column [downgrade()] " in out
    code, out, _ = zdm("lint", "--format", "github", str(path))
    assert "title=zdm drop-column [downgrade()]::" in out
    code, document = lint_json("--no-downgrade", str(path))
    assert code == 0 and document["findings"] == []
    write(tmp_path, "pyproject.toml", "[tool.zdm.lint]\ndowngrade = false\n")
    monkeypatch.chdir(tmp_path)
    assert zdm("lint", str(path))[0] == 0


SQL = """\
-- orders: 40 GB in production
CREATE INDEX orders_total_ix ON orders (total);
ALTER TABLE orders ADD COLUMN note text;  -- harmless

-- zdm: ignore[set-not-null] orders is empty in every environment
ALTER TABLE orders
    ALTER COLUMN note SET NOT NULL;
-- zdm: ignore[truncate]
TRUNCATE orders;
BEGIN;
ALTER TABLE orders ADD CONSTRAINT c CHECK (total > 0) NOT VALID;
ALTER TABLE orders VALIDATE CONSTRAINT c;
COMMIT;
CREATE INDEX CONCURRENTLY orders_note_ix ON orders (note);
"""


def test_a_sql_file_in_every_format(tmp_path: Path) -> None:
    path = write(tmp_path, "m.sql", SQL)
    code, out, _ = zdm("lint", str(path))
    assert code == 1
    assert out.splitlines() == [
        f"{path}:2:1: create-index-blocking CREATE INDEX on orders without CONCURRENTLY blocks writes to orders "
        "while it builds: use op create_index (or CONCURRENTLY with transactional: false)",
        f"{path}:9:1: truncate TRUNCATE orders empties it under an ACCESS EXCLUSIVE lock, and the app loses its "
        "rows: delete in batches, or drop the table at contract",
        f"{path}:12:1: validate-in-same-transaction VALIDATE CONSTRAINT c in the transaction that added it NOT VALID "
        "scans orders while still holding the ADD's lock, which blocks writes: validate in a step of its own",
        "3 findings in 1 file (1 suppressed)"]
    code, document = lint_json(str(path))
    assert code == 1 and document["unsuppressed"] == 3
    assert [(f["line"], f["rule"], f["suppressed"]) for f in document["findings"]][1] == (
        6, "set-not-null", "orders is empty in every environment")
    code, out, _ = zdm("lint", "--format", "sarif", str(path))
    sarif = json.loads(out)
    assert code == 1 and sarif["version"] == "2.1.0"
    results = sarif["runs"][0]["results"]
    assert [r["ruleId"] for r in results] == ["create-index-blocking", "set-not-null", "truncate",
                                            "validate-in-same-transaction"]
    assert results[1]["suppressions"] == [{"kind": "inSource", "justification": "orders is empty in every "
                                                                                "environment"}]
    assert {rule["id"] for rule in sarif["runs"][0]["tool"]["driver"]["rules"]} >= {r["ruleId"] for r in results}
    code, out, _ = zdm("lint", "--format", "github", str(path))
    assert code == 1 and out.splitlines()[0].startswith(
        f"::error file={path},line=2,col=1,title=zdm create-index-blocking::CREATE INDEX on orders")
    assert len(out.splitlines()) == 3


def test_a_whole_file_and_the_project_config_suppress_with_a_reason(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "db/m.sql", "-- zdm: ignore-file[truncate] a staging table\n" + SQL)
    write(tmp_path, "pyproject.toml", """\
        [tool.zdm.lint]
        ignore = ["validate-in-same-transaction"]
        [tool.zdm.lint.per-file-ignores]
        "db/m.sql" = ["create-index-blocking"]
        """)
    monkeypatch.chdir(tmp_path)
    code, document = lint_json("db")
    assert code == 0, document
    assert [f["suppressed"] for f in document["findings"]] == [
        "pyproject.toml [tool.zdm.lint]", "orders is empty in every environment", "a staging table",
        "pyproject.toml [tool.zdm.lint]"]
    write(tmp_path, "pyproject.toml", "[tool.zdm.lint]\nignore = [\"no-such-rule\"]\n")
    code, out, err = zdm("lint", "db")
    assert code == 2 and out == "" and err.strip() == (
        f"zdm: error: {tmp_path / 'pyproject.toml'}: [tool.zdm.lint] names unknown rules: no-such-rule "
        "(`zdm lint --rules` lists them)")


def test_a_plan_file_s_sql_steps_are_judged_in_their_phase(tmp_path: Path) -> None:
    path = write(tmp_path, "plan.yaml", """\
        id: p
        operations:
          - {op: add_column, table: users, column: nick, type: TEXT}
          - op: sql
            table: users
            up: ALTER TABLE users DROP COLUMN legacy
            down: SELECT 1
          - {op: sql, table: users, phase: contract, up: ALTER TABLE users DROP COLUMN legacy}
          - {op: sql, table: users, up: CREATE INDEX i ON users (age), down: DROP INDEX i, assume_safe: true}
        """)
    code, document = lint_json(str(path))
    assert code == 1
    # DROP INDEX in `down` waits for its brief lock under the runner's lock budget: no finding in a step
    assert [(f["line"], f["rule"], f["suppressed"]) for f in document["findings"]] == [
        (4, "drop-column", None), (9, "create-index-blocking", "assume_safe: true")]


@pytest.mark.parametrize(("name", "text", "message"), [
    ("missing.sql", None, "missing.sql: no such file or directory"),
    ("bad.sql", "ALTER TABLE;", "bad.sql: not SQL PostgreSQL parses: syntax error at or near \";\""),
    ("versions/broken.py", "def upgrade():\n    raise RuntimeError('boom')\n",
     "versions/broken.py: upgrade() failed in offline mode: RuntimeError: boom"),
    ("versions/not_a_revision.py", "x = 1\n", "versions/not_a_revision.py: not an Alembic revision (no upgrade())"),
    ("plan.yaml", "id: p\noperations: [{op: nope}]\n", "plan.yaml"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, name: str, text: str | None, message: str) -> None:
    if text is not None:
        write(tmp_path, name, text)
    code, out, err = zdm("lint", str(tmp_path / name))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"zdm: error: {tmp_path}/{message}"), err
    code, out, _ = zdm("lint", "--json", str(tmp_path / name))
    assert code == 2 and json.loads(out)["error"]["kind"] == "lint_input"


def test_rules_are_listed() -> None:
    code, out, _ = zdm("lint", "--rules")
    assert code == 0 and "set-not-null\n    does: scans the whole table under ACCESS EXCLUSIVE" in out


def test_with_a_database_findings_know_nullability_and_size(zdm_postgres_url: str, tmp_path: Path) -> None:
    engine = sa.create_engine(zdm_postgres_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE orders (id int PRIMARY KEY, total int, note text DEFAULT 'x')")
        connection.exec_driver_sql("INSERT INTO orders SELECT g, g, 'n' FROM generate_series(1, 2000) g")
    engine.dispose()
    path = write(tmp_path, "m.sql", "ALTER TABLE orders ALTER COLUMN note DROP DEFAULT;\n"
                                    "ALTER TABLE orders ALTER COLUMN total TYPE bigint;\n")
    code, document = lint_json(str(path))
    assert [f["rule"] for f in document["findings"]] == ["drop-default-not-null", "alter-column-type"]
    code, document = lint_json(str(path), "--db", zdm_postgres_url)
    assert code == 1 and [f["rule"] for f in document["findings"]] == ["alter-column-type"]
    assert document["findings"][0]["message"].endswith(" kB)") and "(orders: " in document["findings"][0]["message"]


# -- SQL zdm cannot parse, wherever it reads it (breaker finding 8) ---------------------------------
UNPARSEABLE_PLAN = """\
id: unparseable
operations:
  - op: sql
    table: orders
    up: "ALTER TABLE orders ADD COLUMN x int; SELEC 1"
    down: "ALTER TABLE orders DROP COLUMN x"
"""


def test_lint_and_validate_refuse_a_plan_step_no_parser_reads(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(UNPARSEABLE_PLAN)
    for command in (("lint",), ("validate",)):
        code, out, err = zdm(*command, str(path))
        assert code == 2 and out == "", (command, out, err)
        assert err.count("\n") == 1 and "`up`: not SQL PostgreSQL parses" in err and "SELEC" in err, err
    path.write_text(UNPARSEABLE_PLAN.replace('down: "ALTER TABLE orders DROP COLUMN x"', 'down: "DROP COLUM x"')
                    .replace("; SELEC 1", ""))
    code, _, err = zdm("validate", str(path))
    assert code == 2 and "`down`: not SQL PostgreSQL parses" in err, err
    # SQL one of the two databases reads is the database's to judge: not refused offline
    path.write_text(UNPARSEABLE_PLAN.replace("ALTER TABLE orders ADD COLUMN x int; SELEC 1",
                                             "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT)")
                    .replace("ALTER TABLE orders DROP COLUMN x", "DROP TABLE t"))
    assert zdm("validate", str(path))[0] == 0


def test_lint_refuses_an_alembic_execute_no_parser_reads(tmp_path: Path) -> None:
    path = tmp_path / "0001_execute.py"
    path.write_text(textwrap.dedent('''\
        from alembic import op

        revision = "0001"
        down_revision = None


        def upgrade():
            op.execute("SELECT 1")
            op.execute("SELEC 1")


        def downgrade():
            pass
        '''))
    code, out, err = zdm("lint", str(path))
    assert code == 2 and out == "" and f"{path}:9:5: not SQL PostgreSQL parses" in err, (out, err)
    code, out, _ = zdm("lint", "--json", str(path))
    document = json.loads(out)
    assert code == 2 and document["exit_code"] == 2 and "SELEC" in document["error"]["message"], out


def test_validate_with_db_refuses_sql_the_database_cannot_parse(zdm_database_url: str, tmp_path: Path) -> None:
    """SQL only the other database reads: refused against this one (exit 2), before anything runs."""
    engine = sa.create_engine(zdm_database_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)")
    engine.dispose()
    foreign = ("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT)" if zdm_database_url.startswith("postgresql")
               else "CREATE TABLE t (id int GENERATED ALWAYS AS IDENTITY)")
    path = tmp_path / "plan.yaml"
    path.write_text(UNPARSEABLE_PLAN.replace("ALTER TABLE orders ADD COLUMN x int; SELEC 1", foreign)
                    .replace("ALTER TABLE orders DROP COLUMN x", "DROP TABLE t"))
    for command in ("validate", "start"):
        code, out, err = zdm(command, str(path), "--db", zdm_database_url)
        assert code == 2 and "`up` is not SQL" in err and err.count("\n") == 1, (command, out, err)
    engine = sa.create_engine(zdm_database_url)
    with engine.connect() as connection:
        assert sorted(sa.inspect(connection).get_table_names()) == ["orders"]
    engine.dispose()


def test_every_lint_json_document_follows_the_output_schema(tmp_path: Path) -> None:
    """`zdm schema --output` covers lint's documents: clean, only suppressed, findings (an Alembic
    revision's upgrade and downgrade), a file lint cannot parse, and --rules (breaker finding 10)."""
    import jsonschema

    code, out, _ = zdm("schema", "--output")
    validator = jsonschema.Draft202012Validator(json.loads(out))
    clean = write(tmp_path, "clean.sql", "ALTER TABLE orders ADD COLUMN note text;\n")
    quiet = write(tmp_path, "quiet.sql", "-- zdm: ignore[truncate] staging only\nTRUNCATE orders;\n")
    revision = write(tmp_path, "versions/0007.py", SEVEN_UNSAFE)
    downgrade = write(tmp_path, "versions/0010.py", DOWNGRADE)
    broken = write(tmp_path, "broken.sql", "SELEC 1;\n")
    documents = []
    for args, expected in (([str(clean)], 0), ([str(quiet)], 0), ([str(revision), str(downgrade)], 1),
                           ([str(broken)], 2), (["--rules"], 0)):
        for flag in (("--json",), ("--format", "json")):
            code, out, _ = zdm("lint", *flag, *args)
            document = json.loads(out)
            assert code == expected == document["exit_code"], (args, out)
            validator.validate(document)
            documents.append(document)
    assert documents[0]["ok"] and documents[0]["findings"] == [] and documents[0]["files"] == 1
    assert documents[2]["ok"] and documents[2]["unsuppressed"] == 0 and documents[2]["findings"][0]["suppressed"]
    assert not documents[4]["ok"] and {f["function"] for f in documents[4]["findings"]} == {"upgrade", "downgrade"}
    assert documents[6]["error"]["kind"] == documents[7]["error"]["kind"] == "lint_input" and documents[8]["rules"]
    assert documents[9] == documents[8]
    # the schema holds lint's promises: a finding's keys, and ok only with nothing unsuppressed
    wrong = [{**documents[4], "ok": True}, {**documents[0], "unsuppressed": 1},
             {**documents[4], "findings": [{**documents[4]["findings"][0], "line": "10"}]},
             {**documents[0], "error": {"kind": "lint_input", "message": "x"}}]
    for document in wrong:
        assert not validator.is_valid(document), document


def test_a_condition_no_parser_reads_is_refused(tmp_path: Path) -> None:
    """add_check's condition and alter_column's `up` are SQL too: one neither database parses is
    refused when the plan is read (validate, lint: exit 2); one either parses passes."""
    path = tmp_path / "plan.yaml"
    for operation, field in (("op: add_check\n    name: orders_amount_ok\n    condition", "condition"),
                             ("op: alter_column\n    column: id\n    type: UUID\n    up", "up")):
        for value, expected in (("amount >= 0 AND", 2), ("amount >= 0", 0)):
            path.write_text(f"id: c\noperations:\n  - {operation}: \"{value}\"\n    table: orders\n")
            for command in ("validate", "lint"):
                code, _, err = zdm(command, str(path))
                assert code == expected, (command, value, err)
                if expected:
                    assert f"{field}: '{value}' is not SQL PostgreSQL parses" in err and err.count("\n") == 1, err
