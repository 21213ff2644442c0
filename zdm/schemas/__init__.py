"""JSON Schemas shipped with zdm: ``plan.schema.json`` (plan files) and ``output.schema.json`` (what
``--json`` prints). `zdm schema` prints them from here without importing the plan compiler.

``plan.schema.json`` is generated from the pydantic models: after changing an operation's fields
run ``python -m zdm.schemas`` (tests/test_schemas.py fails while the file is stale).
``output.schema.json`` is written by hand, next to the code that builds the documents.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
PLAN = HERE / "plan.schema.json"
OUTPUT = HERE / "output.schema.json"


def plan_schema_text() -> str:
    import json

    from zdm.planfile import json_schema

    return json.dumps(json_schema(), indent=2) + "\n"
