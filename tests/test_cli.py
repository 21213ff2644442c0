"""The `zdm` command as a user meets it: results on stdout, one-line errors, exit codes, no side effects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from support import setup, users_schema

from zdm import oracle
from zdm.cli import main

RENAME_YAML = """\
id: rename_email
title: users.email becomes email_address
operations:
  - op: rename_column
    table: users
    column: email
    new_name: email_address
"""


def zdm(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def snapshot(url: str) -> object:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        found = (oracle.read(connection), sorted(sa.inspect(connection).get_table_names()))
    engine.dispose()
    return found


@pytest.fixture
def plan_path(tmp_path: Path) -> Path:
    path = tmp_path / "rename_email.yaml"
    path.write_text(RENAME_YAML)
    return path


def test_full_cycle_through_the_cli(zdm_database_url: str, plan_path: Path) -> None:
    setup(zdm_database_url, users_schema(50))
    before = snapshot(zdm_database_url)

    code, out, _ = zdm("plan", str(plan_path), "--db", zdm_database_url)
    assert code == 0
    assert "EXPANDING" in out and "CONTRACTING" in out and "-- compensate:" in out
    assert "email_address" in out
    assert snapshot(zdm_database_url) == before  # plan changes nothing

    code, out, err = zdm("start", str(plan_path), "--db", zdm_database_url)
    assert (code, out.strip()) == (0, "rename_email: MIGRATING (4/6 steps, 67%)") or (code == 0 and "MIGRATING" in out)
    assert "EXPANDING" in err and "backfill users" in err  # progress on stderr

    code, out, err = zdm("start", str(plan_path), "--db", zdm_database_url)
    assert code == 2 and err.count("\n") == 1 and "already started" in err

    code, out, _ = zdm("status", "--db", zdm_database_url, "--json")
    assert code == 0
    [record] = json.loads(out)["plans"]
    assert record["phase"] == "MIGRATING" and record["id"] == "rename_email" and record["activity"] == "waiting"

    code, out, _ = zdm("complete", "rename_email", "--db", zdm_database_url, "--quiet")
    assert code == 0 and "COMPLETE" in out
    code, out, _ = zdm("status", "rename_email", "--db", zdm_database_url)
    assert "rename_email: COMPLETE" in out and "CONTRACTING" in out


def test_json_output_is_machine_readable(zdm_database_url: str, plan_path: Path) -> None:
    setup(zdm_database_url, users_schema(20))
    code, out, err = zdm("apply", str(plan_path), "--db", zdm_database_url, "--json")
    assert code == 0
    assert json.loads(out)["plan"]["phase"] == "COMPLETE"
    events = [json.loads(line)["event"] for line in err.splitlines()]
    assert {"phase", "step", "statement", "backfill"} <= set(events)


BAD_PLANS = {
    "malformed_yaml": ("id: x\noperations: [\n", "not valid YAML"),
    "missing_field": ("id: x\noperations:\n  - op: rename_column\n    table: users\n    column: email\n",
                      "operations.0.rename_column.new_name: Field required"),
    "unknown_operation": ("id: x\noperations:\n  - op: explode\n    table: users\n", "operations.0"),
    "quote_in_name": ('id: x\noperations:\n  - op: drop_column\n    table: users\n    column: \'a"b\'\n',
                      "is not a plain identifier"),
    "sql_in_name": ("id: x\noperations:\n  - op: rename_column\n    table: users\n    column: email\n"
                    "    new_name: 'x; DROP TABLE users; --'\n", "is not a plain identifier"),
    "unknown_transform": ("id: x\noperations:\n  - op: add_column\n    table: users\n    column: c\n    type: TEXT\n"
                          "    from_column: email\n    transform: reverse\n", "unknown transform 'reverse'"),
    "unknown_column": ("id: x\noperations:\n  - op: rename_column\n    table: users\n    column: mail\n"
                       "    new_name: m\n", "has no column 'mail'"),
    "unknown_table": ("id: x\noperations:\n  - op: drop_column\n    table: accounts\n    column: c\n",
                      "table 'accounts' does not exist"),
    "no_operations": ("id: x\noperations: []\n", "has no operations"),
    "timestamp_offset": ("id: x\noperations:\n  - {op: add_column, table: users, column: seen, type: TIMESTAMP, "
                         "default: '2024-03-01T12:00:00+05:30'}\n", "has a UTC offset"),
    "not_a_type": ("id: x\noperations:\n  - {op: add_column, table: users, column: c, type: 'varchar(20'}\n",
                   "type: 'varchar(20' is not a column type"),
    "type_parameters": ("id: x\noperations:\n  - {op: add_column, table: users, column: c, type: 'uuid(3)'}\n",
                        "uuid takes no parameters"),
    "unknown_type": ("id: x\noperations:\n  - {op: add_column, table: users, column: c, type: mood_nope}\n",
                     "has no type mood_nope"),  # PostgreSQL has no type..., SQLite has no type...
    "bad_id": ("id: 'x y'\noperations: []\n", "id: String should match pattern"),
}


@pytest.mark.parametrize("name", sorted(BAD_PLANS))
def test_bad_plan_is_one_line_exit_2_and_changes_nothing(zdm_database_url: str, tmp_path: Path, name: str) -> None:
    setup(zdm_database_url, users_schema(10))
    text, message = BAD_PLANS[name]
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    before = snapshot(zdm_database_url)
    for command in ("start", "apply", "plan"):
        code, out, err = zdm(command, str(path), "--db", zdm_database_url)
        assert code == 2, (command, err)
        assert err.startswith("zdm: error: ") and err.count("\n") == 1, err
        assert message in err
        assert out == ""
    assert snapshot(zdm_database_url) == before


def test_unreachable_database_is_one_line_exit_1(plan_path: Path, tmp_path: Path) -> None:
    for url, message in (("postgresql+psycopg://postgres@127.0.0.1:1/nope", "cannot connect to "),
                         ("sqlite:////nonexistent-dir/x.db", "no SQLite database at /nonexistent-dir/x.db"),
                         (f"sqlite:///{tmp_path}/typo.db", "no SQLite database at ")):
        for command in (["start", str(plan_path)], ["status"], ["plan", str(plan_path)]):
            code, out, err = zdm(*command, "--db", url)
            assert code == 1 and out == ""
            assert err.startswith(f"zdm: error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "typo.db").exists()  # a typo creates no empty database


def test_usage_errors(tmp_path: Path) -> None:
    code, _, err = zdm("start", str(tmp_path / "missing.yaml"), "--db", "sqlite://")
    assert code == 2 and "cannot read" in err
    code, _, err = zdm("start", str(tmp_path / "missing.yaml"), "--db", "mysql://x@localhost/db")
    assert code == 2 and "cannot read" in err  # the plan file is read before connecting
    (tmp_path / "p.yaml").write_text(RENAME_YAML)
    code, _, err = zdm("start", str(tmp_path / "p.yaml"), "--db", "mysql://x@localhost/db")
    assert code == 2 and "supports postgresql and sqlite, not 'mysql'" in err
    for args, message in ((["start", str(tmp_path / "p.yaml")], "Missing option '--db'"),
                          (["start", str(tmp_path / "p.yaml"), "--db", "sqlite://", "--lock-timeout", "0"],
                           "Invalid value for '--lock-timeout'"),
                          (["start", "--frobnicate"], "No such option '--frobnicate' (see"),
                          (["launch"], "No such command 'launch'")):
        code, out, err = zdm(*args)
        assert (code, out) == (2, ""), err
        assert err.startswith("zdm: error: ") and message in err and err.count("\n") == 1, err
    (tmp_path / "latin1.yaml").write_bytes("id: caf\xe9\noperations: []\n".encode("latin-1"))
    code, _, err = zdm("start", str(tmp_path / "latin1.yaml"), "--db", "sqlite://")
    assert code == 2 and err == f"zdm: error: {tmp_path / 'latin1.yaml'}: not UTF-8 text (byte 7)\n"


def test_schema_command_prints_the_plan_json_schema() -> None:
    code, out, _ = zdm("schema")
    schema = json.loads(out)
    assert code == 0
    assert set(schema["properties"]) >= {"id", "title", "settings", "operations"}
    assert {"AddColumn", "RenameColumn", "DropColumn"} <= set(schema["$defs"])


def test_demo_runs_as_installed(tmp_path: Path) -> None:
    """The README's first command: the console script, a fresh SQLite file, the whole story."""
    env = {**os.environ, "COLUMNS": "120"}
    result = subprocess.run([sys.executable, "-m", "zdm.cli", "demo", "--rows", "500"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    for text in ("EXPANDING", "MIGRATING", "ROLLED_BACK", "CONTRACTING", "COMPLETE",
                 "CREATE TRIGGER", "backfill users: 500/500 rows", "New@App.IO", "Old@App.IO"):
        assert text in result.stdout
