"""`zdm lint`: the migrations a team already has, judged by the rules of zdm's `sql` step.

Three kinds of file, one rule catalogue (``zdm.risks.RULES``):

- **.sql files**: every statement, as PostgreSQL's parser reads it. The file owns its
  transactions (BEGIN/COMMIT move statements in and out of one; outside, each statement commits
  on its own, as psql runs it) unless ``assume_transaction`` says a tool wraps the whole file.
- **zdm plan files** (.yaml/.yml/.json): the ``sql`` steps, ``up`` in its phase (before contract
  the old app still runs) and ``down`` as the rollback runs it; catalogue operations are safe by
  construction. ``assume_safe: true`` on a step suppresses its findings.
- **Alembic revisions** (.py): read through Alembic itself. The revision's ``upgrade()`` runs
  against a recording ``Operations`` in offline mode (``as_sql``), so every ``op.*`` call and
  ``op.execute`` string is seen as the SQL Alembic would emit for the dialect, attributed to the
  line of the revision that called it. ``op.zdm_*`` operations are zdm's and are not judged;
  Alembic's own COMMIT/BEGIN around ``autocommit_block()`` move the transaction, and one
  written by hand in ``op.execute`` is a finding. The revision runs in a transaction, before the
  deploy (the old app is running), as Alembic runs it on PostgreSQL. ``downgrade()`` is read the
  same way, on its own, and its findings say so (``[downgrade()]``, ``"function": "downgrade"``):
  it runs while the revision's app version still does, so what it drops breaks that app.

Suppressions need a reason: ``-- zdm: ignore[rule-id] reason`` before a SQL statement (or at the
end of its line), ``# zdm: ignore[rule-id] reason`` on or above an Alembic op's line,
``zdm: ignore-file[rule-id] reason`` anywhere in a file for the whole file, and in
``pyproject.toml``::

    [tool.zdm.lint]
    ignore = ["drop-index-blocking"]          # rules off for the project
    pg-version = 15
    [tool.zdm.lint.per-file-ignores]
    "migrations/versions/0001_init.py" = ["create-index-blocking"]
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import linecache
import sys
import tokenize
import tomllib
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pglast
import sqlalchemy as sa
import yaml

from zdm import __version__
from zdm.risks import RULES, Catalog, Finding, judge

#: What `zdm lint` reads, by suffix.
SQL_SUFFIXES = (".sql",)
PLAN_SUFFIXES = (".yaml", ".yml", ".json")
ALEMBIC_SUFFIXES = (".py",)
FILE_MARKER = "zdm: ignore-file["
LINE_MARKER = "zdm: ignore["


class LintError(Exception):
    """A file zdm cannot read (missing, not parseable, a revision that fails to run): exit 2."""


@dataclass(frozen=True)
class Problem:
    """A finding in a file: where (1-based line and column), which rule, what to do instead."""

    path: str
    line: int
    column: int
    rule: str
    message: str
    suppressed: str | None = None
    #: The table the statement acts on, when it names one.
    table: str | None = None
    #: For an Alembic revision: the function the statement is in, ``upgrade`` or ``downgrade``.
    function: str | None = None

    @property
    def where(self) -> str:
        """`` [downgrade()]`` for a finding in a revision's downgrade(), so that it reads apart."""
        return " [downgrade()]" if self.function == "downgrade" else ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "does": RULES[self.rule].does, "instead": RULES[self.rule].instead}


@dataclass
class Config:
    """``[tool.zdm.lint]`` of the nearest pyproject.toml, and the command line's say."""

    ignore: set[str] = field(default_factory=set)
    per_file: dict[str, set[str]] = field(default_factory=dict)
    pg_version: int | None = None
    assume_transaction: bool = False
    #: Judge Alembic revisions' downgrade() too (``downgrade = false`` in pyproject.toml, ``--no-downgrade``).
    downgrade: bool = True

    @classmethod
    def find(cls, start: Path) -> Config:
        """The config of the first pyproject.toml from ``start`` upwards; an empty one if none."""
        for directory in [start, *start.parents]:
            candidate = directory / "pyproject.toml"
            if candidate.is_file():
                return cls.read(candidate)
        return cls()

    @classmethod
    def read(cls, path: Path) -> Config:
        try:
            section = tomllib.loads(path.read_text()).get("tool", {}).get("zdm", {}).get("lint", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise LintError(f"{path}: {exc}") from exc
        ignore = set(section.get("ignore", []))
        per_file = {name: set(rules) for name, rules in section.get("per-file-ignores", {}).items()}
        unknown = (ignore | {rule for rules in per_file.values() for rule in rules}) - RULES.keys()
        if unknown:
            raise LintError(f"{path}: [tool.zdm.lint] names unknown rules: {', '.join(sorted(unknown))} "
                            "(`zdm lint --rules` lists them)")
        base = path.parent
        return cls(ignore, {str((base / name).resolve()): rules for name, rules in per_file.items()},
                   section.get("pg-version"), bool(section.get("assume-transaction", False)),
                   bool(section.get("downgrade", True)))


def lint(paths: Iterable[str], config: Config, connection: sa.Connection | None = None,
         dialect: str = "postgresql") -> tuple[list[Problem], int]:
    """Every finding in ``paths`` (files or directories), and how many files were read.

    ``connection``: a live PostgreSQL database, asked what names stand for (function volatility,
    domains, nullability) and how big each table is. Raises LintError for a file it cannot read.
    """
    problems: list[Problem] = []
    files = list(files_in(paths))
    catalog = Catalog(connection)
    for path in files:
        found = _lint_file(path, config, connection, dialect)
        ignored = config.ignore | config.per_file.get(str(path.resolve()), set())
        file_wide = _file_suppressions(path)
        for problem in found:
            reason = problem.suppressed
            if reason is None and problem.rule in file_wide:
                reason = file_wide[problem.rule]
            if reason is None and problem.rule in ignored:
                reason = "pyproject.toml [tool.zdm.lint]"
            problems.append(replace(problem, suppressed=reason))
    if connection is not None:
        problems = [_with_size(problem, catalog) for problem in problems]
    return problems, len(files)


def _with_size(problem: Problem, catalog: Catalog) -> Problem:
    size = catalog.size(problem.table) if problem.table else None
    return replace(problem, message=f"{problem.message} ({problem.table}: {_human(size)})") if size else problem


def _human(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def files_in(paths: Iterable[str]) -> Iterator[Path]:
    """The files ``zdm lint`` reads in ``paths``: files as given, in a directory its .sql and plan files and the
    .py files of a ``versions/`` directory. Raises LintError for a path that does not exist."""
    for name in paths:
        path = Path(name)
        if path.is_dir():
            for found in sorted(path.rglob("*")):
                if found.suffix in SQL_SUFFIXES + PLAN_SUFFIXES or (
                        found.suffix in ALEMBIC_SUFFIXES and found.parent.name == "versions"):
                    yield found
        elif path.is_file():
            yield path
        else:
            raise LintError(f"{name}: no such file or directory")


def _lint_file(path: Path, config: Config, connection: sa.Connection | None, dialect: str) -> list[Problem]:
    if path.suffix in SQL_SUFFIXES:
        return _lint_sql(path, config, connection)
    if path.suffix in PLAN_SUFFIXES:
        return _lint_plan(path, config, connection)
    if path.suffix in ALEMBIC_SUFFIXES:
        return _lint_revision(path, config, connection, dialect)
    raise LintError(f"{path}: not a .sql file, a plan file (.yaml/.yml/.json) or an Alembic revision (.py)")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise LintError(f"{path}: {exc}") from exc


def _position(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a UTF-8 byte offset in ``text``."""
    before = text.encode()[:offset].decode(errors="replace")
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1


def _first_token(text: str, offset: int) -> int:
    """The byte offset of the first token at or after ``offset`` that is not a comment."""
    try:
        tokens = pglast.parser.scan(text)
    except pglast.parser.ParseError:
        return offset
    return next((token.start for token in tokens if token.start >= offset
                 and token.name not in ("SQL_COMMENT", "C_COMMENT")), offset)


# -- .sql ------------------------------------------------------------------------------------------
def _lint_sql(path: Path, config: Config, connection: sa.Connection | None) -> list[Problem]:
    text = _read(path)
    try:
        pglast.parse_sql(text)
    except pglast.parser.ParseError as exc:
        raise LintError(f"{path}: not SQL PostgreSQL parses: {exc}") from exc
    findings = judge([text], old_app_running=True, connection=connection, in_transaction=config.assume_transaction,
                     managed_transaction=False, pg_version=config.pg_version)
    return [_at(path, text, finding, 0) for finding in findings]


def _at(path: Path, text: str, finding: Finding, line_base: int) -> Problem:
    line, column = _position(text, _first_token(text, finding.offset))
    return Problem(str(path), line + line_base, column, finding.rule, finding.message, finding.suppressed,
                   finding.table)


# -- plan files ------------------------------------------------------------------------------------
def _lint_plan(path: Path, config: Config, connection: sa.Connection | None) -> list[Problem]:
    from zdm import planfile
    from zdm.operations.sql import PHASES, RawSql
    from zdm.plan import Phase

    try:
        plan = planfile.load(str(path))
    except planfile.PlanFileError as exc:
        raise LintError(str(exc)) from exc
    lines = _operation_lines(_read(path))
    problems: list[Problem] = []
    for index, operation in enumerate(plan.operations):
        if not isinstance(operation, RawSql):
            continue
        up, down = operation._listed()
        before_contract = PHASES[operation.phase] is not Phase.CONTRACTING
        for texts, old_app in ((up, before_contract), (down, False)):
            for finding in judge(texts, old_app_running=old_app, connection=connection,
                                 in_transaction=operation.transactional, pg_version=config.pg_version,
                                 lock_budget=True):  # zdm's runner holds each step to its lock budget
                line = lines[index] if index < len(lines) else 1
                reason = finding.suppressed or ("assume_safe: true" if operation.assume_safe else None)
                text = texts[finding.statement]
                statement_line, _ = _position(text, _first_token(text, finding.offset))
                problems.append(Problem(str(path), line + statement_line - 1, 1, finding.rule, finding.message,
                                        reason, finding.table))
    return problems


def _operation_lines(text: str) -> list[int]:
    """The 1-based line of each operation of a YAML (or JSON) plan file."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return []
    if not isinstance(root, yaml.MappingNode):
        return []
    for key, value in root.value:
        if key.value == "operations" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


# -- Alembic revisions ----------------------------------------------------------------------------
@dataclass
class _Emitted:
    sql: str
    line: int
    column: int
    #: Alembic's own COMMIT/BEGIN around an autocommit block, not the revision's.
    alembic_transaction: bool


class _Recorder(io.StringIO):
    """Alembic's offline output buffer: each statement Alembic writes, with the revision's line."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = str(path.resolve())
        self.emitted: list[_Emitted] = []

    def write(self, text: str) -> int:
        stack = traceback.extract_stack()
        caller = next((frame for frame in reversed(stack) if frame.filename == self.path), None)
        line = caller.lineno or 0 if caller is not None else 0
        source = linecache.getline(self.path, line)
        column = len(source) - len(source.lstrip()) + 1
        own = any(frame.name in ("emit_begin", "emit_commit") for frame in stack)
        if text.strip():
            self.emitted.append(_Emitted(text, line, column, own))
        return len(text)


def _lint_revision(path: Path, config: Config, connection: sa.Connection | None, dialect: str) -> list[Problem]:
    """``upgrade()``, and ``downgrade()`` unless the config says not to, each read on its own."""
    source = _read(path)
    comments = _python_suppressions(source)
    problems = []
    for function in ("upgrade", "downgrade") if config.downgrade else ("upgrade",):
        emitted, transactional = _record_revision(path, function, dialect)
        _parses(path, emitted, dialect)
        findings = judge([item.sql for item in emitted], old_app_running=True, connection=connection,
                         in_transaction=transactional, pg_version=config.pg_version)
        for finding in findings:
            item = emitted[finding.statement]
            if item.alembic_transaction and finding.rule == "transaction-control":
                continue
            reason = finding.suppressed
            for line in (item.line, item.line - 1):
                reason = reason or comments.get(line, {}).get(finding.rule)
            problems.append(Problem(str(path), item.line, item.column, finding.rule, finding.message, reason,
                                    finding.table, function))
    return problems


def _parses(path: Path, emitted: list[_Emitted], dialect: str) -> None:
    """Every statement the revision emits is SQL ``dialect``'s parser reads, else a LintError (exit 2):
    what cannot be read cannot be judged (``op.execute("SELEC 1")``)."""
    from zdm.dialects import for_name

    try:
        parser = for_name(dialect)
    except ValueError:
        return  # a dialect zdm has no parser for: nothing to hold the text to
    for item in emitted:
        if problem := parser.syntax_error(item.sql):
            raise LintError(f"{path}:{item.line}:{item.column}: {problem}")


def _record_revision(path: Path, function: str, dialect: str) -> tuple[list[_Emitted], bool]:
    """What the revision's ``function`` emits through Alembic in offline mode, statement by statement,
    and whether Alembic runs it in a transaction on ``dialect``.

    A revision without ``downgrade()`` has nothing to judge there; one without ``upgrade()`` is not
    a revision. A downgrade runs while the revision's own app version (the new one) still runs, so
    what it drops or renames breaks that app: it is judged like an upgrade.
    """
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    from zdm.alembic.operations import ZdmOperation, ZdmRollback

    spec = importlib.util.spec_from_file_location(f"zdm_lint_revision_{abs(hash(str(path)))}", path)
    if spec is None or spec.loader is None:
        raise LintError(f"{path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    recorder = _Recorder(path)
    context = MigrationContext.configure(dialect_name=dialect, opts={"as_sql": True, "output_buffer": recorder,
                                                                     "literal_binds": True})
    operations = Operations(context)
    invoke = operations.invoke

    def recording(operation: Any) -> Any:
        if isinstance(operation, (ZdmOperation, ZdmRollback)):
            return None  # zdm's own: safe by construction, run by zdm's runner
        return invoke(operation)

    operations.invoke = recording  # type: ignore[method-assign]
    operations._install_proxy()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # what the revision prints is no part of the report
            spec.loader.exec_module(module)
            if not callable(getattr(module, "upgrade", None)):
                raise LintError(f"{path}: not an Alembic revision (no upgrade())")
            run = getattr(module, function, None)
            if callable(run):
                run()
    except LintError:
        raise
    except Exception as exc:
        raise LintError(f"{path}: {function}() failed in offline mode: {type(exc).__name__}: {exc}") from exc
    finally:
        operations._remove_proxy()
        sys.modules.pop(spec.name, None)
    return recorder.emitted, bool(context.impl.transactional_ddl)


def _python_suppressions(source: str) -> dict[int, dict[str, str | None]]:
    """``# zdm: ignore[rule] reason`` comments of a Python file: line -> {rule: reason or None}."""
    found: dict[int, dict[str, str | None]] = {}
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return found
    for token in tokens:
        if token.type == tokenize.COMMENT:
            for rule, reason in _directive(token.string.lstrip("# "), LINE_MARKER).items():
                found.setdefault(token.start[0], {})[rule] = reason
    return found


def _directive(comment: str, marker: str) -> dict[str, str | None]:
    """{rule: reason} of one comment starting with ``marker``; a missing reason is None (no effect)."""
    if not comment.startswith(marker) or "]" not in comment:
        return {}
    rules, _, reason = comment[len(marker):].partition("]")
    return {rule.strip(): reason.strip() or None for rule in rules.split(",")}


def _file_suppressions(path: Path) -> dict[str, str]:
    """``zdm: ignore-file[rule] reason`` comments anywhere in a file (SQL, YAML or Python comments)."""
    found: dict[str, str] = {}
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return found
    for line in text.splitlines():
        comment = line.strip().lstrip("-#/* ").strip()
        for rule, reason in _directive(comment, FILE_MARKER).items():
            if reason:
                found[rule] = reason
    return found


# -- output -----------------------------------------------------------------------------------------
def as_text(problems: list[Problem], files: int) -> str:
    shown = [p for p in problems if p.suppressed is None]
    lines = [f"{p.path}:{p.line}:{p.column}: {p.rule}{p.where} {p.message}" for p in shown]
    suppressed = len(problems) - len(shown)
    lines.append(f"{len(shown)} finding{'s' if len(shown) != 1 else ''} in {files} file{'s' if files != 1 else ''}"
                 + (f" ({suppressed} suppressed)" if suppressed else ""))
    return "\n".join(lines)


def as_json(problems: list[Problem], files: int) -> dict[str, Any]:
    shown = [p for p in problems if p.suppressed is None]
    return {"files": files, "findings": [p.to_dict() for p in problems], "unsuppressed": len(shown)}


def as_sarif(problems: list[Problem]) -> str:
    """SARIF 2.1.0, as GitHub code scanning and other CI tools read it."""
    rules = [{"id": rule.id, "shortDescription": {"text": rule.does}, "help": {"text": rule.instead}}
             for rule in RULES.values()]
    results = []
    for problem in problems:
        result: dict[str, Any] = {
            "ruleId": problem.rule, "level": "error",
            "message": {"text": ("in downgrade(): " if problem.function == "downgrade" else "") + problem.message},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": Path(problem.path).as_posix()},
                                                "region": {"startLine": problem.line,
                                                           "startColumn": problem.column}}}]}
        if problem.suppressed is not None:
            result["suppressions"] = [{"kind": "inSource", "justification": problem.suppressed}]
        results.append(result)
    return json.dumps({"version": "2.1.0", "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
                       "runs": [{"tool": {"driver": {"name": "zdm", "version": __version__,
                                                     "informationUri": "https://github.com/zdm/zdm",
                                                     "rules": rules}},
                                 "results": results}]}, indent=2)


def as_github(problems: list[Problem]) -> str:
    """GitHub Actions workflow commands: one ``::error`` annotation per finding."""

    def data(value: str) -> str:
        return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")

    def prop(value: str) -> str:
        return data(value).replace(":", "%3A").replace(",", "%2C")

    return "\n".join(f"::error file={prop(p.path)},line={p.line},col={p.column},"
                     f"title={prop('zdm ' + p.rule + p.where)}::"
                     f"{data(p.message)}" for p in problems if p.suppressed is None)


def rules_text() -> str:
    return "\n".join(f"{rule.id}\n    does: {rule.does}\n    instead: {rule.instead}" for rule in RULES.values())
