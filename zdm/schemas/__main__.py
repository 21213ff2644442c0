"""``python -m zdm.schemas``: write plan.schema.json from the plan file's pydantic models."""

from zdm.schemas import PLAN, plan_schema_text

PLAN.write_text(plan_schema_text(), encoding="utf-8")
print(f"wrote {PLAN}")
