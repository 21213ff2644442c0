"""What a step does, one action at a time: a statement, a data check, a quiet write, a table rebuild.

Each kind says in one place how it runs, how a reader sees it (``zdm plan``, logs), how it is
stored with the plan in the state table, and what it can lock. The runner, rehearse, the Alembic
offline renderer and the command line ask the action; none of them looks inside it.

Stored form (the ``forward`` and ``compensate`` lists of a step in ``zdm_migrations``): a statement
is its SQL string, a data check ``{"check": {"query", "problem"}}``, a quiet write ``{"quiet_write":
{"sql", "table", "columns"}}``, a rebuild ``{"rebuild": {...}}``.
Plans stored by earlier releases use the same form and load unchanged.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from zdm.db import run_sql
from zdm.errors import DataCheckFailed

if TYPE_CHECKING:  # the parser is imported where a statement is read: `zdm status` never needs it
    from pglast import ast

    from zdm.dialects import Dialect


class Action:
    """One thing a step does. Subclasses are frozen dataclasses."""

    def run(self, connection: sa.Connection, dialect: Dialect) -> None:
        """Do it, inside the caller's transaction (or autocommit connection)."""
        raise NotImplementedError

    def check(self, connection: sa.Connection, dialect: Dialect) -> None:
        """Raise ValueError, before anything runs, if it cannot do what it says to the live database."""

    def describe(self, dialect: Dialect) -> str:
        """As ``zdm plan`` and ``--sql`` show it: the SQL itself, or a comment saying what zdm does."""
        raise NotImplementedError

    def to_json(self) -> str | dict[str, Any]:
        """The stored form (see the module docstring)."""
        raise NotImplementedError

    @property
    def only_reads(self) -> bool:
        """It reads and writes nothing: a contract runs these first, before any lock is taken."""
        return False

    def lets_writes_through(self) -> bool:
        """Whether its kind alone shows it takes no lock that blocks writes.

        Rehearse needs this for a statement run outside a transaction, whose locks are gone before
        they can be read: CONCURRENTLY index builds and drops, VALIDATE CONSTRAINT and plain VACUUM
        take at most SHARE UPDATE EXCLUSIVE, and checks only read.
        """
        return False

    def relations(self) -> list[str]:
        """The relations it names, for a report on what it may have locked."""
        return []

    def rewrites(self) -> list[str]:
        """The tables it copies whole (a rebuild)."""
        return []


@dataclass(frozen=True)
class Statement(Action):
    """One SQL statement (or several, as the plan's author wrote them in a ``sql`` step), run as written."""

    sql: str

    def run(self, connection: sa.Connection, dialect: Dialect) -> None:
        run_sql(connection, self.sql)

    def describe(self, dialect: Dialect) -> str:
        return self.sql

    def to_json(self) -> str:
        return self.sql

    def lets_writes_through(self) -> bool:
        import pglast

        try:
            parsed = pglast.parse_sql(self.sql)
        except pglast.parser.ParseError:
            return False  # SQL pglast cannot read may have blocked writes
        return all(raw.stmt is not None and _weak(raw.stmt) for raw in parsed)

    def relations(self) -> list[str]:
        import pglast
        from pglast.visitors import referenced_relations

        try:
            return sorted(referenced_relations(self.sql))
        except pglast.parser.ParseError:
            return []


def _weak(statement: ast.Node) -> bool:
    from pglast import ast
    from pglast.enums import AlterTableType

    from zdm.risks import option_on

    #: ALTER TABLE subcommands that take SHARE UPDATE EXCLUSIVE at most: reads and writes go on.
    weak_alters = {AlterTableType.AT_ValidateConstraint, AlterTableType.AT_SetStatistics,
                   AlterTableType.AT_ClusterOn, AlterTableType.AT_DropCluster}
    if isinstance(statement, (ast.IndexStmt, ast.DropStmt)):
        return bool(statement.concurrent)
    if isinstance(statement, ast.ReindexStmt):
        return option_on(statement.params, "concurrently")
    if isinstance(statement, ast.VacuumStmt):
        return not option_on(statement.options, "full")
    if isinstance(statement, ast.AlterTableStmt):
        return all(command.subtype in weak_alters for command in statement.cmds or ())
    return isinstance(statement, (ast.CreateStatsStmt, ast.VariableSetStmt))


@dataclass(frozen=True)
class DataCheck(Action):
    """Fails the phase, naming sample rows, when ``query`` returns any row.

    It guards data, not shape: unconvertible values, NULLs before NOT NULL, orphans before a
    foreign key, duplicates before a unique index. Placed first in a contract transaction, it
    also catches rows written late.
    """

    query: str
    problem: str

    def run(self, connection: sa.Connection, dialect: Dialect) -> None:
        rows = run_sql(connection, self.query).all()
        if rows:
            sample = "; ".join(", ".join(f"{k}={v!r}" for k, v in row._mapping.items()) for row in rows)
            raise DataCheckFailed(f"{self.problem}: {sample}")

    def describe(self, dialect: Dialect) -> str:
        return f"-- check, must return no row ({self.problem}):\n{self.query}"

    def to_json(self) -> dict[str, Any]:
        return {"check": {"query": self.query, "problem": self.problem}}

    @property
    def only_reads(self) -> bool:
        return True

    def lets_writes_through(self) -> bool:
        return True


@dataclass(frozen=True)
class QuietWrite(Action):
    """A write that takes back zdm's own changes to rows, in one statement: how plans stored by
    earlier releases give back the NULLs a fill replaced (plans compiled now do it in key
    batches, ``MigrationStep.undo_backfill``). Like a backfill batch, it keeps ``table``'s own
    triggers from firing where the dialect can (``Dialect.user_triggers_quiet``): an
    ``updated_at`` or audit trigger is for app writes, and zdm's undo is none."""

    sql: str
    table: str
    columns: tuple[str, ...]

    def run(self, connection: sa.Connection, dialect: Dialect) -> None:
        quiet, _ = dialect.user_triggers_quiet(connection, self.table, list(self.columns))
        with dialect.user_triggers_off(connection, self.table) if quiet else nullcontext():
            run_sql(connection, self.sql)

    def describe(self, dialect: Dialect) -> str:
        return self.sql

    def to_json(self) -> dict[str, Any]:
        return {"quiet_write": {"sql": self.sql, "table": self.table, "columns": list(self.columns)}}

    def relations(self) -> list[str]:
        return [self.table]


@dataclass(frozen=True)
class Rebuild(Action):
    """A SQLite table rebuilt to a new shape (copy, drop, rename), for what its ALTER TABLE cannot do.

    ``alter``: column -> changes, among ``nullable``, ``server_default`` (SQL or None), ``type``
    with ``values_from`` (a type change in place, values from another column). ``renames`` run
    last, as SQLite's own RENAME COLUMN. ``create_indexes`` items: ``name``, ``columns``,
    ``unique`` and, for a UNIQUE constraint, ``constraint: True``. The dialect runs it.
    """

    table: str
    alter: dict[str, dict[str, Any]] = field(default_factory=dict)
    drop: list[str] = field(default_factory=list)
    drop_indexes: list[str] = field(default_factory=list)
    create_indexes: list[dict[str, Any]] = field(default_factory=list)
    create_checks: list[dict[str, str]] = field(default_factory=list)
    create_foreign_keys: list[dict[str, Any]] = field(default_factory=list)
    drop_constraints: list[str] = field(default_factory=list)
    renames: dict[str, str] = field(default_factory=dict)

    def run(self, connection: sa.Connection, dialect: Dialect) -> None:
        dialect.run_rebuild(connection, self)

    def check(self, connection: sa.Connection, dialect: Dialect) -> None:
        dialect.check_rebuild(connection, self)

    def describe(self, dialect: Dialect) -> str:
        return dialect.describe_rebuild(self)

    def to_json(self) -> dict[str, Any]:
        return {"rebuild": asdict(self)}

    def rewrites(self) -> list[str]:
        return [self.table]


def from_json(stored: str | dict[str, Any]) -> Action:
    """An action from its stored form; raises ValueError for one zdm does not know."""
    if isinstance(stored, str):
        return Statement(stored)
    if "check" in stored:
        return DataCheck(**stored["check"])
    if "rebuild" in stored:
        return Rebuild(**stored["rebuild"])
    if "quiet_write" in stored:
        write = stored["quiet_write"]
        return QuietWrite(write["sql"], write["table"], tuple(write["columns"]))
    raise ValueError(f"unknown stored action {sorted(stored)}")


def statements(sqls: list[str]) -> list[Action]:
    """Statements from SQL strings (what the dialect's statement builders return)."""
    return [Statement(sql) for sql in sqls]
