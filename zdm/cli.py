"""The `zdm` command.

Results go to stdout, progress and diagnostics to stderr. With ``--json`` every outcome, errors
included, is one JSON document on stdout (``zdm/schemas/output.schema.json``), and progress is
JSON lines on stderr.

Exit codes: 0 success; 1 runtime failure (a statement failed and was compensated, the database
is unreachable, another runner holds the lock, a rehearsal found a broken promise); 2 bad input
(plan file, database URL, unknown table or column, a command that does not fit the plan's phase,
bad options, a throttle that cannot be measured); 130 interrupted by Ctrl-C (SIGINT); 143 stopped
by SIGTERM. Interrupted runs keep their state and checkpoint, like a lost connection.

Start-up time matters (every deploy step and every shell completion runs this), so this module
imports click and nothing heavy: each command imports what it uses when it runs.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from zdm import __version__
from zdm.errors import printable

if TYPE_CHECKING:
    import sqlalchemy as sa

    from zdm.actions import Action
    from zdm.plan import MigrationPlan
    from zdm.runner import Reporter, Runner

USAGE, RUNTIME, INTERRUPTED, TERMINATED = 2, 1, 130, 143
#: zdm rehearse: no promise broken, but a probe could not be judged.
NOT_JUDGED = 3
#: zdm status: a plan in flight needs the team (a zdm trigger that does not fire, the database
#: disagreeing with the record): `zdm complete` refuses it until then.
ATTENTION = 4


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Python runs the signal handler: a run stops as it does on Ctrl-C."""


class CommandFailed(Exception):
    """An outcome a command reports as an error: ``kind`` (see ERROR_KINDS) and an exit code."""

    def __init__(self, kind: str, message: str, exit_code: int, **extra: Any) -> None:
        super().__init__(message)
        self.kind, self.exit_code, self.extra = kind, exit_code, extra


#: The ``error.kind`` of a JSON error document, and its exit code.
ERROR_KINDS = {
    "usage": (USAGE, "the command line: unknown command or option, missing or invalid value"),
    "plan_file": (USAGE, "the plan file cannot be read or does not validate"),
    "plan_invalid": (USAGE, "the plan does not fit the live schema, or a raw SQL step is unsafe"),
    "plan_state": (USAGE, "the command does not fit the plan's phase, no such plan, or the database disagrees with "
                          "the plan's record (a zdm object missing or INVALID, a zdm trigger that does not fire)"),
    "throttle": (USAGE, "a throttle the database cannot measure (replica lag, sessions on SQLite), a --replica "
                        "that is not a replica or cannot be reached, a --probe-query that fails"),
    "database_url": (USAGE, "the database URL is malformed, names another database, or a driver zdm cannot load"),
    "database_in_use": (USAGE, "zdm demo: the database has tables the demo did not make"),
    "database": (RUNTIME, "the database is unreachable, or a statement failed outside a plan's steps"),
    "runner_busy": (RUNTIME, "another zdm runner is working on this database"),
    "failed": (RUNTIME, "a step failed (and was compensated), or no lock within the budget; the message says "
                        "what state was left"),
    "broken_promise": (RUNTIME, "zdm rehearse: a lock, rewrite, probe or rollback broke a promise"),
    "not_judged": (NOT_JUDGED, "zdm rehearse: no promise broken, but a probe could not be judged (a required "
                               "column zdm cannot make a value for, a foreign key with no row to reference)"),
    "not_running": (RUNTIME, "zdm status --watch: the plan stopped mid-phase and no runner is at work"),
    "lint_input": (USAGE, "zdm lint: a file cannot be read, parsed or (an Alembic revision) run offline, or "
                          "pyproject.toml names an unknown rule"),
    "interrupted": (INTERRUPTED, "Ctrl-C (exit 130) or SIGTERM (exit 143); state and checkpoint are saved"),
}


# -- one invocation: its outcome on stdout ---------------------------------------------------------
@dataclass
class Invocation:
    """What one command run reports, and what an interruption needs to record where the plan stopped."""

    command: str | None
    as_json: bool = False
    #: Set once a command knows which stored plan it is running (start, complete, rollback, apply...).
    url: str | None = None
    plan_id: str | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)

    def result(self, payload: dict[str, Any], text: str | None = None, exit_code: int = 0) -> None:
        """The command's outcome on stdout; ``exit_code`` other than 0: it ran, and what it found is not ok
        (`zdm status` of a plan that needs attention). The process exits with it."""
        if self.as_json:
            click.echo(json.dumps({"command": self.command, "ok": exit_code == 0, "exit_code": exit_code,
                                   **payload}, indent=2, default=str))
        elif text is not None:
            click.echo(printable(text, lines=True))
        if exit_code:
            sys.exit(exit_code)

    def fail(self, kind: str, message: str, exit_code: int, **extra: Any) -> None:
        message = " ".join(message.split())
        if self.as_json:
            click.echo(json.dumps({"command": self.command, "ok": False, "exit_code": exit_code,
                                   "error": {"kind": kind, "message": message}, **extra}, indent=2, default=str))
        else:
            click.echo(f"zdm: error: {printable(message)}", err=True)
        sys.exit(exit_code)

    def close(self) -> None:
        for closer in self.closers:
            closer()
        self.closers.clear()


def classify(exc: BaseException) -> tuple[str, str, int] | None:
    """An exception zdm knows as (kind, message, exit code); None for a bug, which keeps its traceback.

    Modules are looked up where already imported: an exception of a module no one imported cannot
    have been raised, and importing it here would only slow every command down.
    """
    if isinstance(exc, CommandFailed):
        return exc.kind, str(exc), exc.exit_code
    modules = sys.modules
    if (planfile := modules.get("zdm.planfile")) and isinstance(exc, planfile.PlanFileError):
        return "plan_file", str(exc), USAGE
    if (model := modules.get("zdm.model")) and isinstance(exc, model.ModelError):
        return "plan_invalid", str(exc), USAGE
    if runner := modules.get("zdm.errors"):  # zdm.runner re-exports these; `zdm pause` raises them without it
        if isinstance(exc, runner.PlanInvalid):
            return "plan_invalid", str(exc), exc.exit_code
        if isinstance(exc, runner.PlanStateError):
            return "plan_state", str(exc), exc.exit_code
        if isinstance(exc, runner.ThrottleInvalid):
            return "throttle", str(exc), exc.exit_code
        if isinstance(exc, runner.ZdmError):
            return "failed", str(exc), exc.exit_code
    if db := modules.get("zdm.db"):
        if isinstance(exc, db.BadDatabaseUrl):
            return "database_url", str(exc), USAGE
        if isinstance(exc, db.DatabaseUnavailable):
            return "database", str(exc), RUNTIME
    if (lint := modules.get("zdm.lint")) and isinstance(exc, lint.LintError):
        return "lint_input", str(exc), USAGE
    if (demo := modules.get("zdm.demo")) and isinstance(exc, demo.DemoRefused):
        return "database_in_use", str(exc), USAGE
    if (state := modules.get("zdm.state")) and isinstance(exc, state.RunnerBusy):
        return "runner_busy", str(exc), RUNTIME
    if sa_exc := modules.get("sqlalchemy.exc"):
        if isinstance(exc, sa_exc.DBAPIError):
            return "database", f"database error: {exc.orig}", RUNTIME
        if isinstance(exc, sa_exc.SQLAlchemyError):
            return "database", f"database error: {exc}", RUNTIME
    return None


def zdm_command(command: Callable[..., Any]) -> Callable[..., Any]:
    """Every known failure becomes one outcome (a ``zdm: error:`` line, or a JSON document) and its
    exit code, never a traceback; Ctrl-C and SIGTERM record where the plan stopped."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        context = click.get_current_context()
        # lint's --format json is --json: its errors are a JSON document too
        invocation = Invocation(context.info_name, bool(kwargs.get("as_json") or kwargs.get("output_format") == "json"))
        context.meta["zdm.invocation"] = invocation
        try:
            return command(invocation, *args, **kwargs)
        except KeyboardInterrupt as exc:
            invocation.close()
            interrupted(invocation, exc)
        except Exception as exc:
            invocation.close()
            known = classify(exc)
            if known is None:
                raise
            invocation.fail(*known, **(exc.extra if isinstance(exc, CommandFailed) else {}))
        finally:
            invocation.close()

    return wrapper


def interrupted(invocation: Invocation, exc: KeyboardInterrupt) -> None:
    """Ctrl-C or SIGTERM: the runner has stopped where it was (its transaction rolled back, state and
    checkpoint saved); note the interruption in the plan's history and say where it stands."""
    if _main_thread():  # a second signal must not cut this short (Zdm.main restores the handlers)
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)
    terminated = isinstance(exc, Terminated)
    reason = "SIGTERM" if terminated else "Ctrl-C"
    code = TERMINATED if terminated else INTERRUPTED
    where = ""
    if invocation.url and invocation.plan_id:
        try:
            record = _record_interruption(invocation.url, invocation.plan_id, reason)
        except Exception:  # the database may be the reason for stopping; the state is saved either way
            record = None
        if record is not None:
            from zdm.status import resume_hint

            where = (f": plan {record.plan.id} stopped during {record.plan.phase.value}, state and checkpoint "
                     f"saved; `zdm status` shows it, {resume_hint(record.plan)}")
        else:
            where = f": `zdm status {invocation.plan_id}` shows where the plan stands"
    invocation.fail("interrupted", f"interrupted by {reason}{where}", code)


def _record_interruption(url: str, plan_id: str, reason: str) -> Any:
    from zdm import db, state
    from zdm.status import read

    engine = db.create_engine(url)
    try:
        found = read(engine, plan_id)
        if not found or found[0].activity != "interrupted":
            return None  # not left mid-phase: nothing to resume
        state.record_interruption(engine, plan_id, reason)
        return found[0]
    finally:
        engine.dispose()


def _raise_terminated(_signum: int, _frame: Any) -> None:
    raise Terminated


# -- options --------------------------------------------------------------------------------------
def db_option(required: bool = True, help: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--db", "url", envvar="ZDM_DATABASE_URL", required=required, metavar="URL",
        help=help or "SQLAlchemy URL, e.g. sqlite:///app.db or postgresql://user@host/db ($ZDM_DATABASE_URL)",
    )


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True,
                        help="The outcome as one JSON document on stdout, errors included.")(command)


def output_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--json", "as_json", is_flag=True,
                           help="The outcome as one JSON document on stdout, errors included; progress as JSON "
                                "lines on stderr.")(command)
    command = click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")(command)
    return click.option("--sql", "show_sql", is_flag=True, help="Print every statement as it runs.")(command)


def run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--lock-timeout", "lock_timeout_ms", type=click.IntRange(min=1, max=60_000), metavar="MS",
                     help="Lock budget of each statement (default: the plan's, else 500 ms)."),
        click.option("--lock-retries", type=click.IntRange(min=0, max=100), help="Retries after a lock timeout."),
        click.option("--batch-size", type=click.IntRange(min=1, max=1_000_000),
                     help="First backfill batch size (rows)."),
        click.option("--batch-target-ms", type=click.IntRange(min=1, max=60_000),
                     help="Backfill batch duration to aim for."),
        click.option("--batch-pause-ms", type=click.IntRange(min=0, max=60_000),
                     help="Pause between backfill batches."),
        click.option("--vacuum-every-pct", type=click.IntRange(min=0, max=100), metavar="PCT",
                     help="PostgreSQL: VACUUM the table after each PCT% of its rows backfilled (5; 0: never)."),
        click.option("--max-replica-lag", "max_replica_lag_ms", type=click.IntRange(min=1), metavar="MS",
                     help="PostgreSQL: wait before a backfill batch while a streaming replica lags more than this "
                          "(pg_stat_replication, and each --replica measured on itself)."),
        click.option("--replica", "replicas", multiple=True, metavar="URL",
                     help="A replica whose lag is measured on itself (repeatable; with --max-replica-lag)."),
        click.option("--max-active-sessions", type=click.IntRange(min=1), metavar="N",
                     help="PostgreSQL: wait before a backfill batch while more app sessions than N run a statement."),
        click.option("--probe-query", metavar="SQL",
                     help="The app's own cheap, representative query, timed before each batch (with --max-probe-ms)."),
        click.option("--max-probe-ms", type=click.IntRange(min=1), metavar="MS",
                     help="Wait before a backfill batch while --probe-query takes longer than this."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def plan_ids(*phases: str) -> Callable[[click.Context, click.Parameter, str], list[Any]]:
    """Shell completion of plan ids from the database of ``--db`` (or $ZDM_DATABASE_URL), in these phases."""

    def complete(context: click.Context, _parameter: click.Parameter, incomplete: str) -> list[Any]:
        from click.shell_completion import CompletionItem

        url = context.params.get("url") or os.environ.get("ZDM_DATABASE_URL")
        if not url:
            return []
        try:
            engine = connect(url)
            try:
                from zdm import state

                with engine.connect() as connection:
                    if not connection.dialect.has_table(connection, state.migrations.name):
                        return []
                    rows = connection.execute(state.migrations.select().with_only_columns(
                        state.migrations.c.id, state.migrations.c.phase)).all()
            finally:
                engine.dispose()
        except Exception:  # completion must never print a traceback into the shell
            return []
        return [CompletionItem(row.id, help=row.phase) for row in sorted(rows)
                if row.id.startswith(incomplete) and (not phases or row.phase in phases)]

    return complete


# -- helpers the commands share -------------------------------------------------------------------
def connect(url: str) -> sa.Engine:
    from zdm import db
    from zdm.dialects import for_connection

    engine = db.create_engine(url)
    if missing := for_connection(engine).missing_database(engine.url):
        raise db.DatabaseUnavailable(missing)
    db.check_connection(engine)
    return engine


def check_url(url: str, option: str) -> None:
    """A URL given to an option parses (BadDatabaseUrl, exit 2, otherwise)."""
    from zdm import db

    try:
        db.create_engine(url).dispose()
    except db.BadDatabaseUrl as exc:
        raise db.BadDatabaseUrl(f"{option}: {exc}") from None


def make_reporter(invocation: Invocation, quiet: bool, show_sql: bool, engine: sa.Engine | None = None) -> Reporter:
    from zdm.report import HumanReporter, JsonReporter
    from zdm.runner import Reporter

    if quiet:
        return Reporter()
    reporter = JsonReporter(engine=engine) if invocation.as_json else HumanReporter(show_sql=show_sql, engine=engine)
    invocation.closers.append(reporter.close)
    return reporter


def make_runner(invocation: Invocation, url: str, quiet: bool, show_sql: bool, **overrides: Any) -> Runner:
    from zdm.runner import Runner

    overrides["replicas"] = list(overrides.get("replicas") or []) or None
    if overrides["replicas"] and overrides.get("max_replica_lag_ms") is None:
        raise click.UsageError("--replica needs --max-replica-lag (the lag it is measured against)")
    for url_given in overrides["replicas"] or []:
        check_url(url_given, "--replica")
    engine = connect(url)
    invocation.url = url
    return Runner(engine, make_reporter(invocation, quiet, show_sql, engine), overrides)


def load_plan_file(path: str) -> Any:
    from zdm import planfile

    return planfile.load(path)


def plan_result(invocation: Invocation, plan: MigrationPlan) -> None:
    from zdm.status import plural

    if plan.phase.value == "ROLLED_BACK":
        undone = sum(1 for s in plan.steps if s.rolled_back)
        text = f"{plan.id}: ROLLED_BACK ({plural(undone, 'step')} undone)"
    else:
        done = sum(1 for s in plan.steps if s.executed)
        text = f"{plan.id}: {plan.phase.value} ({done}/{plural(len(plan.steps), 'step')}, {plan.progress:.0f}%)"
    invocation.result({"plan": plan.to_dict()}, text)


class SafeOutput:
    """stdout or stderr, where a failed write (a closed pipe: ``zdm start ... | head``, a lost
    terminal, a full disk) never reaches the command: output is what zdm says about a run, never
    a reason to stop one halfway. The first failure sends the stream to the null device (so
    nothing, Python's exit flush included, tries it again); later writes are dropped."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.broken = False

    def write(self, text: Any) -> int:
        if not self.broken:
            try:
                return int(self._stream.write(text) or 0)
            except (OSError, ValueError):  # ValueError: a stream closed under us
                self._give_up()
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._give_up()

    def _give_up(self) -> None:
        self.broken = True
        with contextlib.suppress(Exception):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def safe_output() -> Iterator[None]:
    """stdout and stderr as `SafeOutput` while a command runs (see there)."""
    previous = sys.stdout, sys.stderr
    if sys.stdout is not None:
        sys.stdout = SafeOutput(sys.stdout)
    if sys.stderr is not None:
        sys.stderr = SafeOutput(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = previous


class Zdm(click.Group):
    """click parses the command line; a usage error is still one ``zdm: error:`` line (or a JSON
    document with --json), and SIGTERM stops a run the way Ctrl-C does."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        options = argv[:argv.index("--")] if "--" in argv else argv
        invocation = Invocation(next((a for a in options if a in self.commands), None), "--json" in options)
        previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
        if _main_thread():
            signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            with safe_output():
                code = self._run(argv, prog_name, complete_var, invocation, **extra)
        finally:
            if _main_thread():
                for number, handler in previous.items():
                    signal.signal(number, handler)
        sys.exit(code if isinstance(code, int) else 0)

    def _run(self, argv: list[str], prog_name: str | None, complete_var: str | None, invocation: Invocation,
             **extra: Any) -> Any:
        try:
            return super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(USAGE)
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "zdm"
            invocation.fail("usage", f"{exc.format_message().rstrip('.')} (see `{command} --help`)", USAGE)
        except click.ClickException as exc:
            invocation.fail("usage", exc.format_message(), exc.exit_code)
        except click.Abort as exc:  # an interruption outside a command's own handling (while parsing)
            terminated = isinstance(exc.__cause__, Terminated)
            invocation.fail("interrupted", f"interrupted by {'SIGTERM' if terminated else 'Ctrl-C'}",
                            TERMINATED if terminated else INTERRUPTED)
        return None


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# -- commands ---------------------------------------------------------------------------------------
@click.group(cls=Zdm, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zdm")
def main() -> None:
    """Zero-downtime schema migrations: expand, migrate, contract.

    Shell completion (commands, options, plan ids from --db or $ZDM_DATABASE_URL):
    eval "$(_ZDM_COMPLETE=bash_source zdm)" in ~/.bashrc (zsh_source, fish_source for those shells).
    """


def notes_reporter() -> Any:
    """A reporter that keeps the plan's notes (its warnings) for a JSON document."""
    from zdm.runner import Reporter

    class Notes(Reporter):
        def __init__(self) -> None:
            self.notes: list[str] = []

        def note(self, message: str) -> None:
            self.notes.append(message)

    return Notes()


@main.command("plan")
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@db_option()
@json_option
@zdm_command
def plan_command(invocation: Invocation, plan_path: str, url: str, as_json: bool) -> None:
    """Print each phase's forward and compensating SQL; changes nothing."""
    from zdm.runner import Runner

    plan_file = load_plan_file(plan_path)
    # The plan's warnings go to stderr as notes; with --json, into the document's `warnings`.
    notes = notes_reporter()
    runner = Runner(connect(url), notes if as_json else make_reporter(invocation, False, False))
    plan = runner.plan(plan_file)
    invocation.result({"dialect": runner.dialect.name, "plan": plan.to_dict(), "warnings": notes.notes},
                      None if as_json else format_plan(plan, runner))


@main.command()
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@db_option()
@run_options
@output_options
@zdm_command
def start(invocation: Invocation, plan_path: str, url: str, quiet: bool, as_json: bool, show_sql: bool,
          **overrides: Any) -> None:
    """Run EXPANDING then MIGRATING; resumes a start that was interrupted."""
    plan_file = load_plan_file(plan_path)
    runner = make_runner(invocation, url, quiet, show_sql, **overrides)
    invocation.plan_id = plan_file.id
    plan_result(invocation, runner.start(plan_file))


@main.command()
@click.argument("plan_id", shell_complete=plan_ids("MIGRATING", "CONTRACTING"))
@db_option()
@run_options
@output_options
@zdm_command
def complete(invocation: Invocation, plan_id: str, url: str, quiet: bool, as_json: bool, show_sql: bool,
             **overrides: Any) -> None:
    """Run CONTRACTING once no deployed app uses the old shape."""
    runner = make_runner(invocation, url, quiet, show_sql, **overrides)
    invocation.plan_id = plan_id
    plan_result(invocation, runner.complete(plan_id))


@main.command()
@click.argument("plan_id", shell_complete=plan_ids("EXPANDING", "MIGRATING", "CONTRACTING"))
@db_option()
@run_options
@output_options
@zdm_command
def rollback(invocation: Invocation, plan_id: str, url: str, quiet: bool, as_json: bool, show_sql: bool,
             **overrides: Any) -> None:
    """Undo a started plan: compensating SQL, newest step first."""
    runner = make_runner(invocation, url, quiet, show_sql, **overrides)
    invocation.plan_id = plan_id
    plan_result(invocation, runner.rollback(plan_id))


@main.command()
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@db_option()
@run_options
@output_options
@zdm_command
def apply(invocation: Invocation, plan_path: str, url: str, quiet: bool, as_json: bool, show_sql: bool,
          **overrides: Any) -> None:
    """Run every phase in one go (dev databases, single-version apps)."""
    plan_file = load_plan_file(plan_path)
    runner = make_runner(invocation, url, quiet, show_sql, **overrides)
    invocation.plan_id = plan_file.id
    plan_result(invocation, runner.apply(plan_file))


@main.command()
@click.argument("plan_id", required=False, shell_complete=plan_ids())
@db_option()
@click.option("--watch", "-w", is_flag=True,
              help="Follow the plan live (phase, progress, rows/s, ETA) until it leaves its phase.")
@click.option("--interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True, metavar="S",
              help="Seconds between two looks with --watch.")
@json_option
@zdm_command
def status(invocation: Invocation, plan_id: str | None, url: str, watch: bool, interval: float,
           as_json: bool) -> None:
    """What ran: phase, progress, backfill checkpoint and history of each plan (or of plan ID).

    Exits 4 when a plan in flight needs attention: a zdm trigger of it does not fire (disabled), or
    the database disagrees with its record."""
    from zdm.status import format_record, read

    engine = connect(url)
    if watch:
        return watch_plan(invocation, engine, plan_id, interval)
    records = read(engine, plan_id)
    code = ATTENTION if any(record.needs_attention for record in records) else 0
    if plan_id is not None:
        if not records:
            raise CommandFailed("plan_state", f"no plan {plan_id!r} in this database", USAGE)
        invocation.result({"plan": records[0].to_json()}, format_record(records[0]), code)
        return
    invocation.result({"plans": [r.to_json() for r in records]},
                      "\n".join(format_record(r) for r in records) or "no zdm plans in this database", code)


def watch_plan(invocation: Invocation, engine: sa.Engine, plan_id: str | None, interval: float) -> None:
    from zdm import status as status_module

    if plan_id is None:
        # In flight: neither COMPLETE nor ROLLED_BACK, whether a runner is at work, it stopped, or it waits.
        moving = [r.plan.id for r in status_module.read(engine) if r.activity != "done"]
        if len(moving) != 1:
            raise CommandFailed("usage", "--watch needs a plan id" + (
                f": {len(moving)} plans are in flight ({', '.join(moving)})" if moving else ""), USAGE)
        plan_id = moving[0]
    live = LiveLine(invocation.as_json)
    try:
        record, watched = status_module.watch(engine, plan_id, interval, live.show)
    except LookupError:
        raise CommandFailed("plan_state", f"no plan {plan_id!r} in this database", USAGE) from None
    finally:
        live.end()
    payload = {"plan": record.to_json(), "watched_phase": watched.value}
    if record.activity == "interrupted" and record.plan.phase is watched:
        raise CommandFailed("not_running", f"plan {plan_id} is not being run: it stopped during {watched.value}; "
                            f"{status_module.resume_hint(record.plan)}", RUNTIME, **payload)
    if record.plan.phase is not watched:
        left = f"left {watched.value}, now {record.plan.phase.value}"
    elif record.activity == "waiting" and not record.needs_attention:
        left = (f"{watched.value} done, waiting: deploy the new app, then `zdm complete {plan_id}` "
                f"(or `zdm rollback {plan_id}`)")
    else:
        left = f"{watched.value}, {record.activity}"
    lines = [f"{plan_id}: {left}", *(f"  {line}" for line in status_module.attention(record))]
    invocation.result(payload, "\n".join(lines), ATTENTION if record.needs_attention else 0)


class LiveLine:
    """`status --watch` output: one line rewritten in place on a terminal, a line per change elsewhere,
    JSON lines on stderr with --json (stdout then gets the final document only)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.terminal = not as_json and sys.stdout.isatty()
        self.last = ""

    def show(self, fields: dict[str, Any]) -> None:
        from zdm.status import watch_text

        if self.as_json:
            click.echo(json.dumps({"event": "watch", **fields}), err=True)
            return
        text = watch_text(fields)
        if self.terminal:
            click.echo(f"\r\x1b[2K{text}", nl=False)
        elif text != self.last:
            click.echo(text)
        self.last = text

    def end(self) -> None:
        if self.terminal and self.last:
            click.echo()


def control_result(invocation: Invocation, engine: sa.Engine, plan_id: str, control: Any, text: str) -> None:
    from zdm import state
    from zdm.control import describe

    runner = state.runner_at_work(engine)
    where = (f"a runner is at work ({runner}): it takes this up before its next batch" if runner else
             "no runner is at work: the next `zdm start` takes this up")
    invocation.result({"plan_id": plan_id, "control": control.to_dict(), "runner": runner},
                      f"{plan_id}: {text}; {describe(control)}\n  {where}")


@main.command()
@click.argument("plan_id", shell_complete=plan_ids("EXPANDING", "MIGRATING"))
@db_option()
@json_option
@zdm_command
def pause(invocation: Invocation, plan_id: str, url: str, as_json: bool) -> None:
    """Ask the plan's runner to wait before its next backfill batch, until `zdm resume`."""
    from zdm import control

    engine = connect(url)
    control_result(invocation, engine, plan_id, control.pause(engine, plan_id), "pause asked")


@main.command()
@click.argument("plan_id", shell_complete=plan_ids("EXPANDING", "MIGRATING"))
@db_option()
@json_option
@zdm_command
def resume(invocation: Invocation, plan_id: str, url: str, as_json: bool) -> None:
    """Lift a `zdm pause`: the runner goes on with its next batch."""
    from zdm import control

    engine = connect(url)
    control_result(invocation, engine, plan_id, control.resume(engine, plan_id), "resume asked")


@main.command()
@click.argument("plan_id", shell_complete=plan_ids("EXPANDING", "MIGRATING"))
@db_option()
@click.option("--batch-target-ms", type=click.IntRange(min=1, max=60_000), metavar="MS",
              help="Backfill batch duration to aim for.")
@click.option("--batch-pause-ms", type=click.IntRange(min=0, max=60_000), metavar="MS",
              help="Pause between backfill batches.")
@click.option("--max-replica-lag", "max_replica_lag_ms", type=click.IntRange(min=0), metavar="MS",
              help="Replica lag limit (0: none).")
@click.option("--max-active-sessions", type=click.IntRange(min=0), metavar="N", help="Active sessions limit (0: none).")
@click.option("--max-probe-ms", type=click.IntRange(min=0), metavar="MS", help="Probe query limit (0: none).")
@click.option("--reset", is_flag=True, help="Drop what earlier `zdm throttle` calls set: the run's own settings again.")
@json_option
@zdm_command
def throttle(invocation: Invocation, plan_id: str, url: str, reset: bool, as_json: bool, **settings: Any) -> None:
    """Change a running backfill's settings from its next batch on (stored in the state table)."""
    from zdm import control

    given = {name: value for name, value in settings.items() if value is not None}
    if not given and not reset:
        raise click.UsageError("give at least one setting to change, or --reset")
    engine = connect(url)
    control_result(invocation, engine, plan_id, control.throttle(engine, plan_id, given, reset=reset),
                   "throttle asked")


@main.command()
@click.argument("plan_id", shell_complete=plan_ids())
@db_option()
@json_option
@zdm_command
def history(invocation: Invocation, plan_id: str, url: str, as_json: bool) -> None:
    """Each phase a plan went through: its start, end and duration, interruptions included."""
    from zdm.status import format_history, phase_periods, read

    records = read(connect(url), plan_id)
    if not records:
        raise CommandFailed("plan_state", f"no plan {plan_id!r} in this database", USAGE)
    plan = records[0].plan
    invocation.result({"plan_id": plan.id, "title": plan.title, "phase": plan.phase.value,
                       "phases": phase_periods(plan)}, format_history(records[0]))


@main.command()
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@db_option(required=False, help="Also check against this database's live schema ($ZDM_DATABASE_URL).")
@json_option
@zdm_command
def validate(invocation: Invocation, plan_path: str, url: str | None, as_json: bool) -> None:
    """Check a plan file (and, with --db, that it fits the live schema)."""
    from zdm.runner import Runner

    plan_file = load_plan_file(plan_path)
    notes = notes_reporter()
    if url:
        Runner(connect(url), notes).plan(plan_file)
    for message in notes.notes if not as_json else []:
        click.echo(f"  ! {message}", err=True)
    count = len(plan_file.operations)
    invocation.result({"plan_file": plan_path, "plan_id": plan_file.id, "operations": count,
                       "checked_against_database": bool(url), "warnings": notes.notes},
                      f"{plan_path}: ok ({count} operation{'' if count == 1 else 's'}"
                      f"{', fits the database' if url else ''})")


@main.command()
@click.option("--output", "which", flag_value="output",
              help="The JSON Schema of what --json prints, instead of the plan file's.")
@click.option("--plan", "which", flag_value="plan", default=True, hidden=True)
@click.option("--json", "as_json", is_flag=True, help="Accepted for uniformity: a schema is JSON already.")
@zdm_command
def schema(invocation: Invocation, which: str, as_json: bool) -> None:
    """Print the plan file's JSON Schema (for editors), or with --output that of --json's documents."""
    from importlib.resources import files

    click.echo(files("zdm.schemas").joinpath(f"{which}.schema.json").read_text(encoding="utf-8"), nl=False)


@main.command()
@click.argument("paths", metavar="PATH...", nargs=-1, type=click.Path())
@click.option("--format", "output_format", type=click.Choice(["text", "json", "sarif", "github"]), default="text",
              show_default=True, help="text: file:line:col rule message; github: workflow annotations.")
@click.option("--pg-version", type=click.IntRange(min=9), metavar="N",
              help="Target PostgreSQL major version (default: --db's, else pyproject's, else current).")
@click.option("--dialect", default="postgresql", show_default=True, help="Dialect Alembic revisions are read for.")
@click.option("--assume-transaction", is_flag=True, help="Each .sql file runs in one transaction (a tool wraps it).")
@click.option("--fix", "fix", is_flag=True,
              help="Rewrite unsafe ops into their zdm forms: Alembic revisions in place (op.zdm_*), .sql files "
                   "into a plan file next to them (<name>.yaml); what has no zdm form is marked. Then lint the result.")
@click.option("--no-downgrade", "skip_downgrade", is_flag=True,
              help="Judge Alembic revisions' upgrade() only, not their downgrade().")
@click.option("--rules", "list_rules", is_flag=True, help="List the rules (id, what it does, what to do instead).")
@click.option("--db", "url", metavar="URL",
              help="A PostgreSQL database to ask what names stand for and how big tables are (read only).")
@json_option
@zdm_command
def lint(invocation: Invocation, paths: tuple[str, ...], output_format: str, pg_version: int | None, dialect: str,
         assume_transaction: bool, fix: bool, skip_downgrade: bool, list_rules: bool, url: str | None,
         as_json: bool) -> None:
    """Judge Alembic revisions, .sql files and plan files by zdm's rules.

    Exit 0: no finding; 1: findings (each not suppressed); 2: a file zdm cannot read or run.
    """
    from pathlib import Path

    from zdm import lint as linting

    if list_rules:
        invocation.result({"rules": [vars(rule) for rule in linting.RULES.values()]}, linting.rules_text())
        return
    if not paths:
        raise CommandFailed("usage", "zdm lint needs at least one PATH (a file or a directory)", USAGE)
    config = linting.Config.find(Path.cwd())
    config.assume_transaction = config.assume_transaction or assume_transaction
    config.downgrade = config.downgrade and not skip_downgrade
    if fix:
        paths = _fixed(paths, config, dialect)
    engine = connect(url) if url else None
    try:
        connection = engine.connect() if engine is not None else None
        if connection is not None and connection.dialect.name == "postgresql":
            config.pg_version = int((connection.dialect.server_version_info or (0,))[0]) or None
        if pg_version is not None:
            config.pg_version = pg_version
        problems, files = linting.lint(paths, config, connection, dialect)
    finally:
        if engine is not None:
            engine.dispose()
    code = RUNTIME if any(p.suppressed is None for p in problems) else 0
    if as_json or output_format == "json":
        click.echo(json.dumps({"command": "lint", "ok": code == 0, "exit_code": code,
                               **linting.as_json(problems, files)}, indent=2))
    elif output_format == "sarif":
        click.echo(linting.as_sarif(problems))
    elif output_format == "github":
        click.echo(linting.as_github(problems))
    else:
        click.echo(linting.as_text(problems, files))
    sys.exit(code)


def _fixed(paths: tuple[str, ...], config: Any, dialect: str) -> tuple[str, ...]:
    """``zdm lint --fix``: convert every file, say what was done on stderr; the paths to lint after."""
    from pathlib import Path

    from zdm import convert
    from zdm import lint as linting

    linted: list[str] = []
    for path in linting.files_in(paths):  # a LintError is a file zdm cannot read: exit 2 (see _classify)
        done = convert.fix(path, config, dialect)
        if done.converted or done.marked or done.written != path:
            click.echo(f"{done.written}: {done.converted} converted to zdm operations, {done.marked} marked"
                       + (f" (from {path})" if done.written != path else ""), err=True)
        linted.append(str(done.written))
    return tuple(linted) if linted else tuple(str(Path(p)) for p in paths)


@main.command()
@click.option("--db", "url", metavar="URL",
              help="Database to run the demo in (default: a new SQLite file). It must not have a users or "
                   "zdm_migrations table the demo did not make.")
@click.option("--rows", default=20_000, show_default=True, type=click.IntRange(min=1), help="Rows in the demo table.")
@json_option
@zdm_command
def demo(invocation: Invocation, url: str | None, rows: int, as_json: bool) -> None:
    """Walk through a rename phase by phase on a demo table, printing SQL and history."""
    from zdm.demo import run_demo

    invocation.result(run_demo(url, rows, as_json=as_json))


@main.command()
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@db_option()
@click.option("--complete", "and_complete", is_flag=True,
              help="After the rollback, start again and complete: the database is LEFT COMPLETED (new shape).")
@click.option("--max-rewrite-rows", type=click.IntRange(min=0), default=10_000, show_default=True,
              help="Fail when a statement rewrites a table with more rows than this.")
@run_options
@output_options
@zdm_command
def rehearse(invocation: Invocation, plan_path: str, url: str, and_complete: bool, max_rewrite_rows: int,
             quiet: bool, as_json: bool, show_sql: bool, **overrides: Any) -> None:
    """Rehearse a plan on a staging database: start, probe, roll back, prove nothing changed.

    Records each statement's locks (PostgreSQL: pg_locks), how long they were held and whether
    it rewrote a table; probes that the old and the new app shape both read and write; rolls
    back and compares the schema and a checksum of every row with a snapshot taken before.
    The lock budget is --lock-timeout, else the plan's lock_timeout_ms. Without --complete the
    database ends as it began (plus a ROLLED_BACK record in zdm_migrations).

    Exit codes: 0 every promise kept; 1 a promise broken (a lock stronger than SHARE UPDATE
    EXCLUSIVE held past the budget, a rewrite of a table over --max-rewrite-rows, a failed
    probe, a rollback that does not restore the snapshot, a failed step) or a runtime error;
    2 bad input (invalid plan, a plan already started or complete in this database); 3 no
    promise broken, but a probe could not be judged (a required column of a type zdm makes no
    value for).
    """
    from rich.console import Console

    from zdm.rehearse import print_report
    from zdm.rehearse import rehearse as run_rehearsal

    plan_file = load_plan_file(plan_path)
    engine = connect(url)
    invocation.url, invocation.plan_id = url, plan_file.id
    result = run_rehearsal(engine, plan_file, complete=and_complete, max_rewrite_rows=max_rewrite_rows,
                           overrides=overrides, reporter=make_reporter(invocation, quiet, show_sql, engine))
    if not as_json:
        wide = sys.stdout.isatty() or "COLUMNS" in os.environ  # else a log: wider than rich's 80 columns
        print_report(result, Console(highlight=False, width=None if wide else 120))
    if result.violations:
        if not as_json:
            sys.exit(RUNTIME)  # the report said why, on stdout
        broken = len(result.violations)
        raise CommandFailed("broken_promise", f"rehearsal of {plan_file.id}: {broken} broken "
                            f"promise{'' if broken == 1 else 's'}", RUNTIME, rehearsal=result.to_dict())
    if result.not_judged:
        if not as_json:
            sys.exit(NOT_JUDGED)  # the report said which, on stdout
        first = result.not_judged[0]
        raise CommandFailed("not_judged", f"rehearsal of {plan_file.id}: no promise broken, but "
                            f"{len(result.not_judged)} probe(s) not judged: {first.table}: {first.detail}",
                            NOT_JUDGED, rehearsal=result.to_dict())
    invocation.result({"rehearsal": result.to_dict()})


# -- formatting -------------------------------------------------------------------------------------
def action_text(action: Action, runner: Runner) -> str:
    from zdm.actions import Statement

    text = action.describe(runner.dialect)
    return text + ";" if isinstance(action, Statement) else text


def format_step(step: Any, runner: Runner) -> list[str]:
    lines = [f"  -- {step.description}"]
    if step.backfill is not None:
        lines.append(f"  {step.backfill.describe()};")
    lines += ["  " + line for a in step.forward for line in action_text(a, runner).splitlines()]
    if step.compensate or step.undo_backfill:
        lines.append("  -- compensate:")
        if step.undo_backfill is not None:
            lines += [f"  --   {sql};" for sql in (step.undo_backfill.prepare, step.undo_backfill.describe()) if sql]
        lines += ["  --   " + line for a in step.compensate for line in action_text(a, runner).splitlines()]
    if not step.transactional:
        lines.append("  -- (runs outside a transaction)")
    return lines


def format_plan(plan: MigrationPlan, runner: Runner) -> str:
    from zdm.plan import STEP_PHASES
    from zdm.status import plural

    lines = [f"plan {plan.id}: {printable(plan.title)}  [{runner.dialect.name}]"]
    for phase in STEP_PHASES:
        steps = plan.steps_of(phase)
        lines.append(f"\n{phase.value} ({plural(len(steps), 'step')})")
        if not steps:
            lines.append("  (nothing)")
        for step in steps:
            lines += format_step(step, runner)
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name=os.path.basename(sys.argv[0]))
