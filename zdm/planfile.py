"""Plan files (YAML or JSON) -> a validated declaration -> a compiled MigrationPlan.

Structure is checked by pydantic, so an invalid file gets an error naming the file, the field
and the problem. Meaning is checked against the live schema (tables and columns exist, new names
are free) before any SQL runs. Compiling turns the declaration into the steps of every phase.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from zdm import introspect
from zdm.dialects import for_connection, for_name
from zdm.model import ColumnType, Schema
from zdm.operations import AnyOperation, Compiler
from zdm.plan import STEP_PHASES, MigrationPlan, MigrationStep, Phase

#: More operations than this in one plan is allowed, but deserves a second look.
MANY_OPERATIONS = 10


class PlanFileError(ValueError):
    """A plan file that cannot be read or does not validate; the message is one line."""


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lock_timeout_ms: int = Field(500, ge=1, description="lock budget of every DDL statement")
    lock_retries: int = Field(5, ge=0, description="retries after a lock timeout")
    batch_size: int = Field(1000, ge=1, description="first backfill batch size (rows)")
    batch_target_ms: int = Field(100, ge=1, description="backfill batch duration to aim for")
    batch_pause_ms: int = Field(0, ge=0, description="pause between backfill batches")


class PlanFile(BaseModel):
    """A declared change: an id, a title, and operations that run in order inside each phase."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")]
    title: str = ""
    settings: Settings = Field(default_factory=Settings)
    operations: list[AnyOperation]


def json_schema() -> dict[str, Any]:
    """The plan file's JSON Schema, for editors (`zdm schema` prints ``zdm/schemas/plan.schema.json``,
    which ``python -m zdm.schemas`` writes from this).

    ``OTHER`` stands for the types zdm carries but does not declare: every operation refuses it,
    so the schema does not offer it.
    """
    schema = PlanFile.model_json_schema()
    column_type = schema.get("$defs", {}).get("ColumnType", {})
    if "enum" in column_type:
        column_type["enum"] = [t for t in column_type["enum"] if t != ColumnType.OTHER.value]
    return schema


def load(path: str | Path) -> PlanFile:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanFileError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise PlanFileError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise PlanFileError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                            f"{' '.join(str(exc).split())}") from None
    return parse(data, source=str(path))


def parse(data: Any, source: str = "<plan>") -> PlanFile:
    if not isinstance(data, dict):
        raise PlanFileError(f"{source}: a plan is a mapping with id, title and operations")
    try:
        return PlanFile.model_validate(data)
    except ValidationError as exc:
        raise PlanFileError(f"{source}: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc}: {message}{more}"


# -- checks before anything runs --------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    level: str  # "error" stops the run, "warning" is printed
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


def check(plan: PlanFile, schema: Schema) -> list[Problem]:
    """Safety rules and live-schema checks; each operation sees the ones before it applied."""
    problems: list[Problem] = []
    if not plan.operations:
        return [Problem("error", f"plan {plan.id!r} has no operations")]
    working = schema.copy()
    touched: dict[tuple[str, str], int] = {}
    for number, operation in enumerate(plan.operations, 1):
        where = f"operation {number} ({operation.describe()})"
        errors = operation.check(working)
        for table, column in sorted(operation.touches()):
            if (table, column) in touched:
                errors.append(f"{table}.{column} is already changed by operation {touched[table, column]}; "
                              "split the plan in two")
            touched.setdefault((table, column), number)
        if errors:
            problems += [Problem("error", f"{where}: {e}") for e in errors]
            break
        problems += [Problem("warning", f"{where}: {w}") for w in operation.warnings(working)]
        for phase in STEP_PHASES:
            operation.apply_to_model(working, phase, for_name("generic"))
    if len(plan.operations) > MANY_OPERATIONS:
        problems.append(Problem("warning", f"{len(plan.operations)} operations in one plan: many steps are "
                                "slower to review and to roll back; consider splitting it"))
    destructive = [op for op in plan.operations if op.deletes_data]
    additive = [op for op in plan.operations if not op.deletes_data]
    if destructive and not additive:
        problems.append(Problem("warning", "the plan only contracts (drops) without expanding: data-loss "
                                "risk; make sure no deployed app version still uses what it drops"))
    return problems


def compile_plan(
    plan: PlanFile,
    connection: sa.Connection | None,
    *,
    schema: Schema | None = None,
    dialect: str | None = None,
) -> MigrationPlan:
    """The steps of every phase, with their exact SQL, for this database as it is now.

    Offline (no connection, e.g. Alembic's --sql mode) the caller gives the ``schema`` as the
    model knows it and the ``dialect`` name instead.
    """
    if connection is not None:
        sql_dialect = for_connection(connection)
        working = introspect.read_schema(connection) if schema is None else schema.copy()
    else:
        if schema is None or dialect is None:
            raise ValueError("compiling offline needs the schema and the dialect name")
        sql_dialect, working = for_name(dialect), schema.copy()
    compilers = []
    taken = sql_dialect.object_names(connection) if connection is not None else {}
    for number, operation in enumerate(plan.operations, 1):
        for name in operation.creates():
            if (key := sql_dialect.fold_name(name)) in taken:
                raise ValueError(f"operation {number} ({operation.describe()}): the name {name!r} is taken by "
                                 f"{taken[key]}; pick a name no object of the schema has")
            taken[key] = f"operation {number} of this plan"
        compiler = Compiler(sql_dialect, connection, working.copy(), plan.id)
        if errors := operation.check_live(compiler):
            raise ValueError(errors[0])
        compilers.append(compiler)
        for phase in STEP_PHASES:
            operation.apply_to_model(working, phase, sql_dialect)
    steps: list[MigrationStep] = []
    for phase in STEP_PHASES:
        for operation, compiler in zip(plan.operations, compilers, strict=True):
            steps += _phase_steps(operation, phase, compiler)
    for step in steps:
        step.forward, step.compensate = sql_dialect.combine(step.forward), sql_dialect.combine(step.compensate)
        if connection is not None:  # what an action cannot do to the live table is refused before anything runs
            for action in (*step.forward, *step.compensate):
                action.check(connection, sql_dialect)
    return MigrationPlan(id=plan.id, title=plan.title or plan.id, steps=steps, phase=Phase.PENDING,
                         source=plan.model_dump(mode="json"))


def _phase_steps(operation: Any, phase: Phase, compiler: Compiler) -> list[MigrationStep]:
    method = {Phase.EXPANDING: operation.expand, Phase.MIGRATING: operation.migrate,
              Phase.CONTRACTING: operation.contract}[phase]
    return method(compiler)
