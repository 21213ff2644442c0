"""sql: raw statements for what the catalogue lacks, with the statements that undo them.

zdm cannot see inside raw SQL, so the compensating ``down`` is required before contract, and
the reference model is left unchanged: `zdm rehearse` is how to learn what it really does. On
PostgreSQL a statement known to take a long lock, rewrite a table or break the old app is refused
(see zdm.risks; the finding names its rule id) unless the step says ``assume_safe: true``, or a
``-- zdm: ignore[rule-id] reason`` comment before the statement vouches for it: the catalogue has a
safe form for each of them, and an author who knows better (a small table, a stopped app) says so.
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from zdm.actions import statements
from zdm.dialects import Dialect, syntax_error_anywhere
from zdm.model import Schema
from zdm.operations.base import Compiler, Identifier, Operation
from zdm.plan import MigrationStep, Phase
from zdm.risks import lock_risks

PHASES = {"expand": Phase.EXPANDING, "migrate": Phase.MIGRATING, "contract": Phase.CONTRACTING}


class RawSql(Operation):
    op: Literal["sql"] = "sql"
    #: The table the statements change, so that two plans on it do not overlap (optional).
    table: Identifier | None = None  # type: ignore[assignment]
    phase: Literal["expand", "migrate", "contract"] = "expand"
    up: str | list[str]
    down: str | list[str] | None = None
    #: False for statements PostgreSQL refuses inside a transaction (CREATE INDEX CONCURRENTLY...).
    transactional: bool = True
    #: The author vouches for statements zdm would refuse on PostgreSQL (long locks, rewrites).
    assume_safe: bool = False

    @model_validator(mode="after")
    def _undoable(self) -> RawSql:
        up, down = self._listed()
        if not up or any(not statement.strip() for statement in [*up, *down]):
            raise ValueError("`up` needs a statement, and no statement of `up` or `down` may be blank")
        if self.down is None and self.phase != "contract":
            raise ValueError("a sql step before contract needs `down`, the statements that undo it")
        for key, texts in (("up", up), ("down", down)):
            for number, text in enumerate(texts, 1):
                if problem := syntax_error_anywhere(text):
                    raise ValueError(f"`{key}`{f' statement {number}' if len(texts) > 1 else ''}: {problem}")
        return self

    def describe(self) -> str:
        """``sql (expand): `` and the start of the first statement, cut between words (`` ...``)."""
        statements = [self.up] if isinstance(self.up, str) else self.up
        text = " ".join(statements[0].split())
        if len(text) > 60 or len(statements) > 1:
            cut = text.rfind(" ", 0, 61) if len(text) > 60 else len(text)
            text = (text[:cut] if cut > 0 else text[:60]) + " ..."
        return f"sql ({self.phase}): {text}"

    def check(self, schema: Schema) -> list[str]:
        if self.table is not None and not schema.has_table(self.table):
            return [f"table {self.table!r} does not exist"]
        return []

    def _listed(self) -> tuple[list[str], list[str]]:
        up = [self.up] if isinstance(self.up, str) else self.up
        down = [] if self.down is None else [self.down] if isinstance(self.down, str) else self.down
        return up, down

    def check_live(self, c: Compiler) -> list[str]:
        up, down = self._listed()
        for key, texts in (("up", up), ("down", down)):
            for text in texts:
                if problem := c.dialect.syntax_error(text):
                    return [f"{self.describe()}: `{key}` is {problem}"]
        if not c.dialect.judges_raw_sql or self.assume_safe:
            return []
        # `down` runs at rollback, when only what `up` added goes: a drop there is the undo.
        before_contract = PHASES[self.phase] is not Phase.CONTRACTING
        risks = [*lock_risks(up, old_app_running=before_contract, connection=c.connection,
                             in_transaction=self.transactional),
                 *lock_risks(down, old_app_running=False, connection=c.connection, in_transaction=self.transactional)]
        if not risks:
            return []
        more = f" (and {len(risks) - 1} more)" if len(risks) > 1 else ""
        return [f"{self.describe()}: {risks[0]}{more}; if you know it is harmless here, set "
                "assume_safe: true on the step and prove it with `zdm rehearse`"]

    def _steps(self, phase: Phase, c: Compiler) -> list[MigrationStep]:
        if PHASES[self.phase] is not phase:
            return []
        up, down = self._listed()
        return [MigrationStep(phase, self.describe(), forward=statements(up), compensate=statements(down),
                              transactional=self.transactional)]

    def expand(self, c: Compiler) -> list[MigrationStep]:
        return self._steps(Phase.EXPANDING, c)

    def migrate(self, c: Compiler) -> list[MigrationStep]:
        return self._steps(Phase.MIGRATING, c)

    def contract(self, c: Compiler) -> list[MigrationStep]:
        return self._steps(Phase.CONTRACTING, c)

    def apply_to_model(self, schema: Schema, phase: Phase, dialect: Dialect) -> None:
        """Raw SQL is opaque to the model."""
