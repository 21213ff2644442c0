"""Every plan shipped in examples/ and plans/ runs, through the CLI, on both databases.

The examples are documentation a user copies; a broken one is a bug. Each gets a fresh copy of
examples/users.sql, then `zdm plan` and `zdm apply` as a user would type them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from support import zdm_objects

from zdm import db
from zdm.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml")) + sorted((ROOT / "plans").glob("*.yaml"))


def load_schema(url: str) -> sa.Engine:
    engine = db.create_engine(url)
    lines = (ROOT / "examples" / "users.sql").read_text().splitlines()
    script = "\n".join(line for line in lines if not line.lstrip().startswith("--"))
    with engine.begin() as connection:
        for statement in filter(str.strip, script.split(";")):
            connection.exec_driver_sql(statement)
    return engine


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_example_plans_and_applies(zdm_database_url: str, path: Path) -> None:
    engine = load_schema(zdm_database_url)
    # "# requires (postgresql): SQL" lines: what the example needs besides users.sql, on that database only
    needs = re.findall(r"^# requires \((\w+)\): (.+)$", path.read_text(), re.MULTILINE)
    if needs and engine.dialect.name not in {database for database, _ in needs}:
        pytest.skip(f"the example needs {needs[0][0]}")
    with engine.begin() as connection:
        for database, statement in needs:
            if database == engine.dialect.name:
                connection.exec_driver_sql(statement)
    for command in ("plan", "apply"):
        result = CliRunner().invoke(main, [command, str(path), "--db", zdm_database_url, "--quiet"]
                                    if command == "apply" else [command, str(path), "--db", zdm_database_url])
        assert result.exit_code == 0, result.stderr
    assert "COMPLETE" in result.stdout
    assert zdm_objects(engine) == []
