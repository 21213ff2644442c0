"""The human report of a rehearsal."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from zdm.rehearse.locks import LOCK_MODES, UNREAD_LOCK, Lock
from zdm.rehearse.run import Rehearsal, first_line
from zdm.rehearse.tracer import StatementTrace

#: A rewrite of a table with more rows than this breaks the promise (``--max-rewrite-rows``).

# -- the human report -------------------------------------------------------------------------
def print_report(result: Rehearsal, console: Console) -> None:
    """A table per phase (statement, locks, held for, rewrite, rows), then probes, rollback, verdict."""
    budget = f"lock budget {result.lock_budget_ms:,g} ms"
    rewrites = "no rewrite limit" if result.max_rewrite_rows is None else \
        f"rewrites up to {result.max_rewrite_rows:,} rows"
    console.print(f"[bold]zdm rehearse {escape(result.plan_id)}[/] on {result.dialect} ({budget}, {rewrites})")
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    for phase in result.phases:
        if not phase.statements:
            continue
        table = RichTable(title=f"[bold]{phase.phase}[/]", title_justify="left", show_edge=False, pad_edge=False)
        table.add_column("statement", no_wrap=True, overflow="ellipsis", max_width=48)
        table.add_column("locks taken", no_wrap=True, overflow="ellipsis", max_width=32)
        for heading in ("held for", "rewrite", "rows"):
            table.add_column(heading, justify="left" if heading == "rewrite" else "right", no_wrap=True)
        for trace in phase.statements:
            late = trace.breaks_budget(result.lock_budget_ms)
            held = "" if trace.held_ms is None else _ms(trace.held_ms)
            if trace.rows is not None and held:  # a backfill: many short transactions
                held += "/batch"
            table.add_row(
                escape(first_line(trace.sql, 100)),
                escape(_locks(trace)),
                f"[red]{held}[/]" if late else held,
                ", ".join(f"[red]{escape(t)}[/]" if result.rewrite_too_big(t) else escape(t)
                          for t in trace.rewrote) or "no",
                _rows(trace, result),
            )
        console.print()
        console.print(table)
    traces = [t for phase in result.phases for t in phase.statements]
    if any(not t.traced and t.locks for t in traces):
        console.print("[dim]* known from the statement's kind (backfill batches, SQLite), "
                      "not read from the database[/]")
    if any(lock.mode == UNREAD_LOCK for t in traces for lock in t.locks):
        console.print("[dim]UNREAD: run outside a transaction, its locks were released before they could be "
                      "read; it counts as blocking writes for as long as it ran[/]")
    if result.probes:
        console.print()
        probes = RichTable(title="[bold]probes[/] (each in a transaction rolled back)", title_justify="left",
                           show_edge=False, pad_edge=False)
        for heading in ("when", "shape", "table", "result"):
            probes.add_column(heading)
        for p in result.probes:
            verdict = "[green]ok[/]" if p.ok else "[red]FAILED[/]" if p.ok is False else "[yellow]not judged[/]"
            probes.add_row(p.moment, p.shape, escape(p.table), f"{verdict}: {escape(p.detail)}")
        console.print(probes)
    console.print()
    if result.restored:
        tables = ", ".join(f"{t} ({rows:,} rows)" for t, rows in result.rows.items()) or "no tables"
        console.print(f"rollback: [green]restored[/] schema and row checksums of {escape(tables)}")
    elif result.restored is False:
        console.print("rollback: [red]did NOT restore the snapshot[/]")
        for difference in result.differences:
            console.print(f"  - {escape(difference)}")
    if result.completed:
        console.print("complete: [bold]the plan is COMPLETE[/]: this database now has the new shape")
    violations = result.violations
    if not violations and result.not_judged:
        count = len(result.not_judged)
        console.print(f"[bold yellow]NOT JUDGED[/]: no promise broken, but {count} probe{'s' if count > 1 else ''} "
                      f"could not be judged: {escape(result.not_judged[0].detail)}")
        return
    if not violations:
        console.print("[bold green]OK[/]: every statement kept the promise")
        return
    console.print(f"[bold red]FAILED[/]: {len(violations)} broken promise{'s' if len(violations) > 1 else ''}")
    for violation in violations:
        console.print(f"  - {violation.kind}: {escape(violation.message)}")


def _ms(ms: float) -> str:
    return f"{ms:,.1f} ms" if ms < 10 else f"{ms:,.0f} ms"


def _locks(trace: StatementTrace) -> str:
    if not trace.locks:
        return "(outside a transaction)" if not trace.traced and trace.held_ms is not None else ""
    def strength(lock: Lock) -> int:
        return LOCK_MODES.index(lock.mode) if lock.mode in LOCK_MODES else len(LOCK_MODES)

    strongest = max(trace.locks, key=strength)
    others = len(trace.locks) - 1
    return f"{strongest}{f' +{others}' if others else ''}{'' if trace.traced else ' *'}"


def _rows(trace: StatementTrace, result: Rehearsal) -> str:
    if trace.rows is not None:
        return f"{trace.rows:,}"
    if trace.rewrote:
        return f"{sum(result.rows.get(t, 0) for t in trace.rewrote):,}"
    return ""

