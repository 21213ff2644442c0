"""The `zdm` command.

Results go to stdout (``--json`` for machines), progress and diagnostics to stderr.
Exit codes: 0 success; 1 runtime failure (a statement failed and was compensated, the database
is unreachable, another runner holds the lock); 2 bad input (plan file, unknown table or
column, a command that does not fit the plan's phase, bad options); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click
import sqlalchemy as sa

from zdm import __version__, db, planfile
from zdm.model import ModelError
from zdm.plan import STEP_PHASES, MigrationPlan, MigrationStep, Phase
from zdm.report import HumanReporter, JsonReporter, describe_progress
from zdm.runner import Reporter, Runner, ZdmError, describe_action
from zdm.state import RunnerBusy, runner_at_work

USAGE, RUNTIME, INTERRUPTED = 2, 1, 130


def fail(message: str, code: int) -> None:
    click.echo(f"zdm: error: {' '.join(message.split())}", err=True)
    sys.exit(code)


def handles_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Every known failure becomes one line on stderr and its exit code, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (planfile.PlanFileError, ModelError) as exc:
            fail(str(exc), USAGE)
        except ZdmError as exc:
            fail(str(exc), exc.exit_code)
        except (db.DatabaseUnavailable, RunnerBusy) as exc:
            fail(str(exc), RUNTIME)
        except sa.exc.DBAPIError as exc:
            fail(f"database error: {exc.orig}", RUNTIME)
        except sa.exc.SQLAlchemyError as exc:
            fail(f"database error: {exc}", RUNTIME)

    return wrapper


def db_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--db", "url", envvar="ZDM_DATABASE_URL", required=True, metavar="URL",
        help="SQLAlchemy URL, e.g. sqlite:///app.db or postgresql+psycopg://user@host/db ($ZDM_DATABASE_URL)",
    )(command)


def output_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--json", "as_json", is_flag=True,
                           help="Result as JSON on stdout; progress as JSON lines on stderr.")(command)
    command = click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")(command)
    return click.option("--sql", "show_sql", is_flag=True, help="Print every statement as it runs.")(command)


def run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--lock-timeout", "lock_timeout_ms", type=click.IntRange(min=1), metavar="MS",
                     help="Lock budget of each statement (default: the plan's, else 500 ms)."),
        click.option("--lock-retries", type=click.IntRange(min=0), help="Retries after a lock timeout."),
        click.option("--batch-size", type=click.IntRange(min=1), help="First backfill batch size (rows)."),
        click.option("--batch-target-ms", type=click.IntRange(min=1), help="Backfill batch duration to aim for."),
        click.option("--batch-pause-ms", type=click.IntRange(min=0), help="Pause between backfill batches."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def make_reporter(quiet: bool, as_json: bool, show_sql: bool) -> Reporter:
    if quiet:
        return Reporter()
    if as_json:
        return JsonReporter()
    return HumanReporter(show_sql=show_sql)


def connect(url: str) -> sa.Engine:
    engine = db.create_engine(url)
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database not in (None, "", ":memory:") and not os.path.exists(database):
        # SQLite would create an empty database and zdm would report on it: a typo must not look fine.
        raise db.DatabaseUnavailable(f"no SQLite database at {database}")
    db.check_connection(engine)
    return engine


def make_runner(url: str, quiet: bool, as_json: bool, show_sql: bool, **overrides: Any) -> Runner:
    return Runner(connect(url), make_reporter(quiet, as_json, show_sql), overrides)


def emit_result(plan: MigrationPlan, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(plan.to_dict(), indent=2))
    elif plan.phase is Phase.ROLLED_BACK:
        undone = sum(1 for s in plan.steps if s.rolled_back)
        click.echo(f"{plan.id}: ROLLED_BACK ({undone} steps undone)")
    else:
        done = sum(1 for s in plan.steps if s.executed)
        click.echo(f"{plan.id}: {plan.phase.value} ({done}/{len(plan.steps)} steps, {plan.progress:.0f}%)")


class Zdm(click.Group):
    """click parses the command line; a usage error is still one ``zdm: error:`` line, and Ctrl-C
    says where the plan stands instead of click's bare ``Aborted!``."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.pop("standalone_mode", True):
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(USAGE)
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "zdm"
            fail(f"{exc.format_message().rstrip('.')} (see `{command} --help`)", USAGE)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            fail("interrupted: a plan stays where it stopped; `zdm status` shows it, `zdm start` resumes, "
                 "`zdm rollback` undoes", INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)


# -- commands ---------------------------------------------------------------------------------
@click.group(cls=Zdm, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zdm")
def main() -> None:
    """Zero-downtime schema migrations: expand, migrate, contract."""


@main.command("plan")
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@db_option
@click.option("--json", "as_json", is_flag=True, help="The compiled plan as JSON.")
@handles_errors
def plan_command(plan_path: str, url: str, as_json: bool) -> None:
    """Print each phase's forward and compensating SQL; changes nothing."""
    plan_file = planfile.load(plan_path)
    runner = Runner(connect(url), HumanReporter() if not as_json else Reporter())
    plan = runner.plan(plan_file)
    if as_json:
        click.echo(json.dumps(plan.to_dict(), indent=2))
    else:
        click.echo(format_plan(plan, runner))


@main.command()
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@db_option
@run_options
@output_options
@handles_errors
def start(plan_path: str, url: str, quiet: bool, as_json: bool, show_sql: bool, **overrides: Any) -> None:
    """Run EXPANDING then MIGRATING; resumes a start that was interrupted."""
    plan_file = planfile.load(plan_path)
    plan = make_runner(url, quiet, as_json, show_sql, **overrides).start(plan_file)
    emit_result(plan, as_json)


@main.command()
@click.argument("plan_id")
@db_option
@run_options
@output_options
@handles_errors
def complete(plan_id: str, url: str, quiet: bool, as_json: bool, show_sql: bool, **overrides: Any) -> None:
    """Run CONTRACTING once no deployed app uses the old shape."""
    emit_result(make_runner(url, quiet, as_json, show_sql, **overrides).complete(plan_id), as_json)


@main.command()
@click.argument("plan_id")
@db_option
@run_options
@output_options
@handles_errors
def rollback(plan_id: str, url: str, quiet: bool, as_json: bool, show_sql: bool, **overrides: Any) -> None:
    """Undo a started plan: compensating SQL, newest step first."""
    emit_result(make_runner(url, quiet, as_json, show_sql, **overrides).rollback(plan_id), as_json)


@main.command()
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@db_option
@run_options
@output_options
@handles_errors
def apply(plan_path: str, url: str, quiet: bool, as_json: bool, show_sql: bool, **overrides: Any) -> None:
    """Run every phase in one go (dev databases, single-version apps)."""
    plan_file = planfile.load(plan_path)
    emit_result(make_runner(url, quiet, as_json, show_sql, **overrides).apply(plan_file), as_json)


@main.command()
@click.argument("plan_id", required=False)
@db_option
@click.option("--json", "as_json", is_flag=True, help="Status as JSON.")
@handles_errors
def status(plan_id: str | None, url: str, as_json: bool) -> None:
    """What ran: phase, progress, backfill checkpoint and history of each plan."""
    engine = connect(url)
    records = Runner(engine).status()
    if plan_id is not None:
        records = [r for r in records if r[0].id == plan_id]
        if not records:
            fail(f"no plan {plan_id!r} in this database", USAGE)
    runner = runner_at_work(engine)
    if as_json:
        click.echo(json.dumps([{**p.to_dict(), "checkpoint": c, "runner": runner} for p, c in records], indent=2))
        return
    if not records:
        click.echo("no zdm plans in this database")
    for plan, checkpoint in records:
        click.echo(format_status(plan, checkpoint, runner))


@main.command()
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@click.option("--db", "url", envvar="ZDM_DATABASE_URL", metavar="URL",
              help="Also check against this database's live schema.")
@handles_errors
def validate(plan_path: str, url: str | None) -> None:
    """Check a plan file (and, with --db, that it fits the live schema)."""
    plan_file = planfile.load(plan_path)
    if url:
        Runner(connect(url), HumanReporter()).plan(plan_file)
    click.echo(f"{plan_path}: ok ({len(plan_file.operations)} operations)")


@main.command()
def schema() -> None:
    """Print the plan file's JSON Schema (for editors)."""
    click.echo(json.dumps(planfile.json_schema(), indent=2))


@main.command()
@click.option("--db", "url", metavar="URL", help="Database to run the demo in (default: a new SQLite file).")
@click.option("--rows", default=20_000, show_default=True, type=click.IntRange(min=1), help="Rows in the demo table.")
@handles_errors
def demo(url: str | None, rows: int) -> None:
    """Walk through a rename phase by phase on a demo table, printing SQL and history."""
    from zdm.demo import run_demo

    run_demo(url, rows)


@main.command()
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@db_option
@click.option("--complete", "and_complete", is_flag=True,
              help="After the rollback, start again and complete: the database is LEFT COMPLETED (new shape).")
@click.option("--max-rewrite-rows", type=click.IntRange(min=0), default=10_000, show_default=True,
              help="Fail when a statement rewrites a table with more rows than this.")
@run_options
@output_options
@handles_errors
def rehearse(plan_path: str, url: str, and_complete: bool, max_rewrite_rows: int, quiet: bool, as_json: bool,
             show_sql: bool, **overrides: Any) -> None:
    """Rehearse a plan on a staging database: start, probe, roll back, prove nothing changed.

    Records each statement's locks (PostgreSQL: pg_locks), how long they were held and whether
    it rewrote a table; probes that the old and the new app shape both read and write; rolls
    back and compares the schema and a checksum of every row with a snapshot taken before.
    The lock budget is --lock-timeout, else the plan's lock_timeout_ms. Without --complete the
    database ends as it began (plus a ROLLED_BACK record in zdm_migrations).

    Exit codes: 0 every promise kept; 1 a promise broken (a lock stronger than SHARE UPDATE
    EXCLUSIVE held past the budget, a rewrite of a table over --max-rewrite-rows, a failed
    probe, a rollback that does not restore the snapshot, a failed step) or a runtime error;
    2 bad input (invalid plan, a plan already started or complete in this database).
    """
    from rich.console import Console

    from zdm.rehearse import print_report
    from zdm.rehearse import rehearse as run_rehearsal

    plan_file = planfile.load(plan_path)
    result = run_rehearsal(connect(url), plan_file, complete=and_complete, max_rewrite_rows=max_rewrite_rows,
                           overrides=overrides, reporter=make_reporter(quiet, as_json, show_sql))
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        wide = sys.stdout.isatty() or "COLUMNS" in os.environ  # else a log: wider than rich's 80 columns
        print_report(result, Console(highlight=False, width=None if wide else 120))
    if not result.ok:
        sys.exit(RUNTIME)


# -- formatting -------------------------------------------------------------------------------
def action_text(action: str | dict[str, Any], runner: Runner) -> str:
    text = describe_action(action, runner.dialect)
    return text if isinstance(action, dict) else text + ";"


def format_step(step: MigrationStep, runner: Runner) -> list[str]:
    lines = [f"  -- {step.description}"]
    if step.backfill is not None:
        lines.append(f"  {step.backfill.describe()};")
    lines += ["  " + line for a in step.forward for line in action_text(a, runner).splitlines()]
    if step.compensate:
        lines.append("  -- compensate:")
        lines += ["  --   " + line for a in step.compensate for line in action_text(a, runner).splitlines()]
    if not step.transactional:
        lines.append("  -- (runs outside a transaction)")
    return lines


def format_plan(plan: MigrationPlan, runner: Runner) -> str:
    lines = [f"plan {plan.id}: {plan.title}  [{runner.dialect.name}]"]
    for phase in STEP_PHASES:
        steps = plan.steps_of(phase)
        lines.append(f"\n{phase.value} ({len(steps)} steps)")
        if not steps:
            lines.append("  (nothing)")
        for step in steps:
            lines += format_step(step, runner)
    return "\n".join(lines)


def format_status(plan: MigrationPlan, checkpoint: dict[str, Any], runner: str | None = None) -> str:
    """``runner``: who holds the runner lock now; a plan mid-way is then at work, not interrupted."""
    done = sum(1 for s in plan.steps if s.executed)
    lines = [f"{plan.id}: {plan.phase.value}, {done}/{len(plan.steps)} steps ({plan.progress:.0f}%) — {plan.title}"]
    if plan.is_started:
        lines.append(f"  started: deploy the new app, then `zdm complete {plan.id}` (or `zdm rollback {plan.id}`)")
    if checkpoint.get("until") is not None:
        from zdm.backfill import BackfillProgress

        step = plan.steps[checkpoint["step"]]
        table = step.backfill.table if step.backfill else "?"
        lines.append("  " + describe_progress(BackfillProgress(
            table, checkpoint["rows_done"], checkpoint["rows_total"], 0.0, None, 0, 0.0))
                     + (f" (a runner is at work: {runner})" if runner else " (interrupted)"))
    if checkpoint.get("outside_transaction"):
        lines.append(f"  in flight: {plan.steps[checkpoint['step']].description} (outside a transaction: "
                     f"`zdm start` runs it again, `zdm rollback {plan.id}` undoes it)")
    for entry in plan.history:
        note = f"  {entry.note}" if entry.note else ""
        lines.append(f"  {entry.at}  {entry.phase.value}{note}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name=os.path.basename(sys.argv[0]))
