"""One-line migration checks for users' own tests: a plan is reversible, completes to the shape it
declares, stays within a lock budget; an Alembic history walks up and down."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from zdm.testing.servers import _short_error

if TYPE_CHECKING:  # imported lazily below: the plugin loads in every pytest session
    from alembic.config import Config as AlembicConfig
    from sqlalchemy.engine import Engine

    from zdm.planfile import PlanFile
    from zdm.rehearse import Rehearsal

# --------------------------------------------------------------------------- #
# Helpers: one-line migration checks for a test suite
# --------------------------------------------------------------------------- #

PlanLike = Union["PlanFile", Mapping[str, Any], str, Path]


def _plan_file(plan: PlanLike) -> PlanFile:
    """A PlanFile from a PlanFile, a plan dict, or the path of a YAML/JSON plan file."""
    from zdm import planfile

    if isinstance(plan, planfile.PlanFile):
        return plan
    if isinstance(plan, Mapping):
        return planfile.parse(dict(plan))
    return planfile.load(plan)


@contextmanager
def _engine(url: str) -> Iterator[Engine]:
    from zdm import db

    engine = db.create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def _broken(rehearsal: Rehearsal, kinds: set[str]) -> list[str]:
    return [f"{v.kind}: {v.message}" for v in rehearsal.violations if v.kind in kinds]


def assert_reversible(url: str, plan: PlanLike) -> Rehearsal:
    """``start`` then ``rollback`` gives back the schema and every row (by checksum).

    Leaves the database as it was (plus a ROLLED_BACK record in ``zdm_migrations``).
    Returns the rehearsal, for further checks on its statements.
    """
    __tracebackhide__ = True
    from zdm.rehearse import rehearse

    plan_file = _plan_file(plan)
    with _engine(url) as engine:
        rehearsal = rehearse(engine, plan_file, probes=False, max_rewrite_rows=None)
    problems = _broken(rehearsal, {"failed", "rollback"})
    if problems:
        raise AssertionError(f"plan {plan_file.id!r} is not reversible:\n  " + "\n  ".join(problems))
    return rehearsal


def assert_completes(
    url: str, plan: PlanLike, expected_columns: Iterable[str] | Mapping[str, Iterable[str]] | None = None
) -> None:
    """``start`` then ``complete`` leaves the declared shape and no zdm trigger or function.

    ``expected_columns``: the column names of the plan's table (a list, for a plan on one
    table) or of each table (a mapping). Without it, the shape (names, types, NULL-ability)
    the reference model predicts. Leaves the database completed.
    """
    __tracebackhide__ = True
    from zdm import introspect
    from zdm.dialects import for_connection
    from zdm.rehearse import affected_tables, final_model
    from zdm.runner import Runner, ZdmError

    plan_file = _plan_file(plan)
    with _engine(url) as engine:
        runner = Runner(engine)
        try:
            runner.plan(plan_file)  # an invalid plan fails here, before the model is asked about it
            with engine.connect() as connection:
                tables = affected_tables(connection, plan_file)
                predicted = final_model(plan_file, introspect.read_schema(connection, tables), for_connection(engine))
            runner.start(plan_file)
            runner.complete(plan_file.id)
        except ZdmError as exc:
            raise AssertionError(f"plan {plan_file.id!r} did not complete: {exc}") from None
        with engine.connect() as connection:
            found = introspect.read_schema(connection, tables)
            leftovers = for_connection(connection).zdm_objects(connection)
    problems = [f"zdm objects left behind: {', '.join(leftovers)}"] if leftovers else []
    if expected_columns is None:
        for name in sorted(set(found.tables) | set(predicted.tables)):
            shape = found.tables[name].shape() if name in found.tables else None
            wanted = predicted.tables[name].shape() if name in predicted.tables else None
            if shape != wanted:
                problems.append(f"{name}: columns {shape}, the plan declares {wanted}")
    else:
        named: list[str] = sorted({op.table for op in plan_file.operations if isinstance(op.table, str)})
        expected = _expected_columns(expected_columns, named or tables)  # a list: the table the plan names
        for name, columns in expected.items():
            have = set(found.tables[name].columns) if name in found.tables else set()
            if have != columns:
                problems.append(f"{name}: columns {sorted(have)}, expected {sorted(columns)} "
                                f"(missing {sorted(columns - have)}, unexpected {sorted(have - columns)})")
    if problems:
        raise AssertionError(f"plan {plan_file.id!r} completed, but not to the declared shape:\n  "
                             + "\n  ".join(problems))


def _expected_columns(
    expected: Iterable[str] | Mapping[str, Iterable[str]], tables: list[str]
) -> dict[str, set[str]]:
    if isinstance(expected, Mapping):
        return {name: set(columns) for name, columns in expected.items()}
    if isinstance(expected, str) or len(tables) != 1:
        raise TypeError("expected_columns: a list of column names for a plan on one table, "
                        "else a mapping {table: [columns]}")
    return {tables[0]: set(expected)}


def assert_within_lock_budget(url: str, plan: PlanLike, budget_ms: float) -> Rehearsal:
    """No statement of start or rollback holds a lock that blocks writes longer than ``budget_ms``.

    Built on `zdm rehearse`'s tracer: on PostgreSQL the locks come from ``pg_locks``; on SQLite
    every write transaction counts as holding the database write lock. Leaves the database rolled back.
    """
    __tracebackhide__ = True
    from zdm.rehearse import rehearse

    plan_file = _plan_file(plan)
    with _engine(url) as engine:
        rehearsal = rehearse(engine, plan_file, probes=False, lock_budget_ms=budget_ms, max_rewrite_rows=None)
    problems = _broken(rehearsal, {"failed", "lock"})
    if problems:
        raise AssertionError(f"plan {plan_file.id!r} breaks the lock budget of {budget_ms} ms:\n  "
                             + "\n  ".join(problems))
    return rehearsal


def assert_alembic_stairway(config: AlembicConfig | str | Path, url: str | None = None) -> list[str]:
    """Walk every revision in order: upgrade, downgrade one step, upgrade again.

    Each downgrade must give back the schema from before its upgrade, and the second upgrade
    must build the same schema as the first: a revision that only works once, or whose
    downgrade forgets something, fails here rather than on a production rollback.
    ``config`` is an Alembic Config or the path of an alembic.ini; ``url`` (optional) replaces
    its ``sqlalchemy.url``, which the script directory's env.py must use. Run it on an empty
    database (a fixture's) with a linear history (one head). Returns the revision ids checked,
    oldest first. zdm revisions are completed (``-x zdm=complete``, as the next deploy would)
    before the next revision is walked: their plans wait in MIGRATING after an upgrade, and zdm
    runs one plan per table at a time. Without zdm in env.py the extra argument is ignored.
    """
    __tracebackhide__ = True
    from alembic.command import downgrade, upgrade
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    if not isinstance(config, Config):
        config = Config(str(config))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url)
    target = config.get_main_option("sqlalchemy.url")
    if not target:
        raise ValueError("assert_alembic_stairway needs a database: give url= or set sqlalchemy.url")
    revisions = list(reversed(list(ScriptDirectory.from_config(config).walk_revisions("base", "heads"))))
    engine = create_engine(target, poolclass=NullPool)

    def run(what: str, step: Callable[[], object]) -> None:
        __tracebackhide__ = True
        try:
            step()
        except Exception as exc:
            raise AssertionError(f"{what} failed: {_short_error(exc)}") from exc

    try:
        before = _schema_shapes(engine)
        for revision in revisions:
            name = f"revision {revision.revision}"
            run(f"{name}: upgrade", partial(upgrade, config, revision.revision))
            upgraded = _schema_shapes(engine)
            run(f"{name}: downgrade", partial(downgrade, config, "-1"))
            _same_schema(before, _schema_shapes(engine), f"{name}: its downgrade")
            run(f"{name}: upgrade after its downgrade", partial(upgrade, config, revision.revision))
            _same_schema(upgraded, _schema_shapes(engine), f"{name}: upgrading again")
            run(f"{name}: complete", partial(upgrade, _with_x(config, "zdm=complete"), revision.revision))
            before = _schema_shapes(engine)
    finally:
        engine.dispose()
    return [revision.revision for revision in revisions]


def _with_x(config: AlembicConfig, argument: str) -> AlembicConfig:
    """A copy of ``config`` with one more ``-x`` argument."""
    from argparse import Namespace
    from copy import copy

    extended = copy(config)
    extended.cmd_opts = Namespace(**{**vars(config.cmd_opts or Namespace()),
                                     "x": [*(getattr(config.cmd_opts, "x", None) or []), argument]})
    return extended


def _schema_shapes(engine: Engine) -> dict[str, dict[str, Any]]:
    from zdm.rehearse import table_shape, user_tables

    with engine.connect() as connection:
        return {t: table_shape(connection, t) for t in user_tables(connection) if t != "alembic_version"}


def _same_schema(expected: dict[str, dict[str, Any]], found: dict[str, dict[str, Any]], what: str) -> None:
    __tracebackhide__ = True
    problems = []
    if set(expected) != set(found):
        problems.append(f"tables {sorted(found)}, expected {sorted(expected)}")
    for name in sorted(set(expected) & set(found)):
        for part, value in expected[name].items():
            if found[name][part] != value:
                problems.append(f"{name} {part.replace('_', ' ')}: {found[name][part]}, expected {value}")
    if problems:
        raise AssertionError(f"{what} does not give the schema back:\n  " + "\n  ".join(problems))
