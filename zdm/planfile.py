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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from zdm import introspect
from zdm.dialects import for_connection, for_name, minted_names
from zdm.errors import printable
from zdm.model import Schema
from zdm.operations import AnyOperation, Compiler
from zdm.plan import STEP_PHASES, TABLES, MigrationPlan, MigrationStep, Phase

#: More operations than this in one plan is allowed, but deserves a second look.
MANY_OPERATIONS = 10
#: Limits of a plan file, checked before it is parsed into objects: a plan is a page, not a data set.
MAX_BYTES = 1_000_000
MAX_DEPTH = 20
MAX_OPERATIONS = 200


class PlanFileError(ValueError):
    """A plan file that cannot be read or does not validate; the message is one line."""


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Whole numbers only (strict: `true` is not 1), each in a range checked by `validate`.
    lock_timeout_ms: int = Field(500, ge=1, le=60_000, strict=True,
                                 description="lock budget of every DDL statement (1 to 60,000 ms)")
    lock_retries: int = Field(5, ge=0, le=100, strict=True, description="retries after a lock timeout (0 to 100)")
    batch_size: int = Field(1000, ge=1, le=1_000_000, strict=True,
                            description="first backfill batch size (1 to 1,000,000 rows)")
    batch_target_ms: int = Field(100, ge=1, le=60_000, strict=True,
                                 description="backfill batch duration to aim for (1 to 60,000 ms)")
    batch_pause_ms: int = Field(0, ge=0, le=60_000, strict=True,
                                description="pause between backfill batches (0 to 60,000 ms)")
    vacuum_every_pct: int = Field(5, ge=0, le=100, strict=True, description=(
        "PostgreSQL: VACUUM the table after each stretch of this percent of its rows (at least 1,000) "
        "that the backfill updated, so later batches reuse the space of the rows it left dead (0: never)"))
    max_replica_lag_ms: int | None = Field(None, ge=1, le=3_600_000, strict=True, description=(
        "PostgreSQL: wait before a backfill batch while a streaming replica lags more than this "
        "(pg_stat_replication, and the replicas of `replicas` measured on themselves)"))
    replicas: list[str] = Field(default_factory=list, description=(
        "database URLs of replicas whose lag is measured on the replica itself (with max_replica_lag_ms)"))
    max_active_sessions: int | None = Field(None, ge=1, le=100_000, strict=True, description=(
        "PostgreSQL: wait before a backfill batch while more app sessions than this run a statement"))
    probe_query: str | None = Field(None, min_length=1, description=(
        "a cheap query representative of the app, timed before each backfill batch (with max_probe_ms)"))
    max_probe_ms: int | None = Field(None, ge=1, le=3_600_000, strict=True,
                                     description="wait while probe_query takes longer than this")

    @model_validator(mode="after")
    def _pairs(self) -> Settings:
        if (self.probe_query is None) != (self.max_probe_ms is None):
            raise ValueError("probe_query and max_probe_ms go together: give both or neither")
        if self.replicas and self.max_replica_lag_ms is None:
            raise ValueError("replicas are measured against max_replica_lag_ms: give it too")
        return self


class PlanFile(BaseModel):
    """A declared change: an id, a title, and operations that run in order inside each phase."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")]
    title: Annotated[str, Field(max_length=200)] = ""
    settings: Settings = Field(default_factory=Settings)
    operations: Annotated[list[AnyOperation], Field(max_length=MAX_OPERATIONS)]

    @field_validator("title")
    @classmethod
    def _one_line(cls, title: str) -> str:
        if printable(title) != title:
            raise ValueError("a title is one line of printable characters (no newline, tab or escape code)")
        return title


def json_schema() -> dict[str, Any]:
    """The plan file's JSON Schema, for editors (`zdm schema` prints ``zdm/schemas/plan.schema.json``,
    which ``python -m zdm.schemas`` writes from this). A column type is a string of SQL
    (``zdm.coltypes.ColumnType`` describes what it takes); the database checks the rest.
    """
    return PlanFile.model_json_schema()


def load(path: str | Path) -> PlanFile:
    """Read, check the limits of, and validate a plan file (raises PlanFileError, one line).

    Limits come before any object is built: at most MAX_BYTES, nesting at most MAX_DEPTH deep, no
    YAML anchors or aliases (a few hundred bytes of them expand to gigabytes), no key given twice
    in one mapping (YAML and JSON parsers otherwise keep the last and drop the first silently).
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise PlanFileError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise PlanFileError(f"{path}: larger than {MAX_BYTES:,} bytes; a plan is a page of operations")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlanFileError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        data = _json(text) if kind == "JSON" else _yaml(text)
    except (json.JSONDecodeError, yaml.YAMLError, _Refused) as exc:
        raise PlanFileError(f"{path}: not valid {kind}: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise PlanFileError(f"{path}: not valid {kind}: nested more than {MAX_DEPTH} deep") from None
    return parse(data, source=str(path))


class _Refused(ValueError):
    """A plan file beyond a limit, or with a key given twice."""


def _no_duplicates(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    found: dict[Any, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _Refused(f"key {key!r} given twice")
        found[key] = value
    return found


def _json(text: str) -> Any:
    data = json.loads(text, object_pairs_hook=_no_duplicates)
    stack = [(data, 1)]  # depth, without recursion
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} deep")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack += [(child, depth + 1) for child in children]
    return data


class _PlanLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        pairs = [(self.construct_object(key, deep=deep), key.start_mark.line + 1) for key, _ in node.value]
        seen: dict[Any, int] = {}
        for key, line in pairs:
            if isinstance(key, str | int | float | bool) and key in seen:
                raise _Refused(f"key {key!r} given twice (lines {seen[key]} and {line})")
            if isinstance(key, str | int | float | bool):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _yaml(text: str) -> Any:
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):  # events: no recursion, nothing built yet
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _Refused("anchors and aliases (& and *) are not allowed in a plan file")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return yaml.load(text, Loader=_PlanLoader)


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
    replaced: dict[tuple[str, str], tuple[int, str]] = {}
    tables: set[str] = set()
    taken = sql_dialect.object_names(connection) if connection is not None else {}
    for number, operation in enumerate(plan.operations, 1):
        for name in operation.creates():
            if (key := sql_dialect.fold_name(name)) in taken:
                raise ValueError(f"operation {number} ({operation.describe()}): the name {name!r} is taken by "
                                 f"{taken[key]}; pick a name no object of the schema has")
            taken[key] = f"operation {number} of this plan"
        compiler = Compiler(sql_dialect, connection, working.copy(), plan.id, number, replaced)
        if errors := operation.check_live(compiler):
            raise ValueError(errors[0])
        tables |= operation.changed_tables(compiler)
        if (pair := operation.replaces_column(compiler)) is not None:
            replaced[pair[0], pair[1]] = (number, pair[2])
        compilers.append(compiler)
        for phase in STEP_PHASES:
            operation.apply_to_model(working, phase, sql_dialect)
    steps: list[MigrationStep] = []
    for phase in STEP_PHASES:
        for number, (operation, compiler) in enumerate(zip(plan.operations, compilers, strict=True), 1):
            with minted_names() as minted:
                steps += _phase_steps(operation, phase, compiler)
            for name in minted:  # zdm's own names too: a user's object so named would be dropped by rollback
                if (key := sql_dialect.fold_name(name)) in taken and taken[key] != f"operation {number} of this plan":
                    raise ValueError(f"operation {number} ({operation.describe()}): zdm names an object it makes "
                                     f"{name!r}, which is taken by {taken[key]}; rename or drop that object first")
    for step in steps:
        step.forward, step.compensate = sql_dialect.combine(step.forward), sql_dialect.combine(step.compensate)
        if connection is not None:  # what an action cannot do to the live table is refused before anything runs
            for action in (*step.forward, *step.compensate):
                action.check(connection, sql_dialect)
    return MigrationPlan(id=plan.id, title=plan.title or plan.id, steps=steps, phase=Phase.PENDING,
                         source={**plan.model_dump(mode="json"), TABLES: sorted(tables)})


def _phase_steps(operation: Any, phase: Phase, compiler: Compiler) -> list[MigrationStep]:
    method = {Phase.EXPANDING: operation.expand, Phase.MIGRATING: operation.migrate,
              Phase.CONTRACTING: operation.contract}[phase]
    return method(compiler)
