"""`tracekit campaign run|report|list`: causal fault-injection campaigns (thin glue over tracekit.inject)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tracekit.cli.root import app
from tracekit.cli.output import DB_OPTION, FORMAT_OPTION, Format, emit, emit_object, fmt_ns

campaign_app = typer.Typer(help="Causal fault-injection campaigns: run, report, list.", no_args_is_help=True)
app.add_typer(campaign_app, name="campaign")


@campaign_app.command("run")
def run(
    file: Path = typer.Argument(..., help="Campaign file (TOML), e.g. fixtures/campaigns/retry_storm.toml."),
    budget: Optional[int] = typer.Option(None, "--budget", help="Total runs (profile + injection) [default: the file's]."),
    workers: int = typer.Option(1, "--workers", min=1, help="Runs executed at the same time."),
    executor: str = typer.Option("local", "--executor", help="local (process groups on this machine) or ray."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address [default: a local Ray instance]."),
    strategy: Optional[str] = typer.Option(
        None, "--strategy", help="three-phase, breadth, random or exhaustive [default: the file's]."),
    name: Optional[str] = typer.Option(None, "--name", help="Store the campaign under this name [default: the file's]."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only the profile runs: print the points found, the "
                                 "number of experiments and the exhaustive budget."),
    fail_on_cycle: bool = typer.Option(False, "--fail-on-cycle", help="Exit with status 1 when a cycle is found (CI)."),
    db: Optional[Path] = DB_OPTION,
    fmt: Format = FORMAT_OPTION,
) -> None:
    """Run a campaign: profile runs, then one injected fault per experiment, within the budget."""
    from tracekit.cli.campaign_view import plan_rows, progress_bar, summary_rows
    from tracekit.inject.campaign import load_campaign
    from tracekit.inject.runner import run_campaign

    campaign = load_campaign(file, name=name, strategy=strategy)
    if executor == "ray":
        from tracekit.cli.extras import require

        require("ray")  # now, not after the first runs
    with progress_bar(campaign.name, quiet=fmt is not Format.table) as advance:
        result = run_campaign(campaign, budget=budget, workers=workers, executor=executor, address=address,
                              db=db, progress=advance, dry_run=dry_run)
    if dry_run:
        plan_rows(result.plan, fmt)
        return
    emit_object(summary_rows(result.summary()), fmt)
    if fail_on_cycle and result.report.get("cycles"):
        raise typer.Exit(1)


@campaign_app.command("report")
def report(
    campaigns: list[str] = typer.Argument(..., help="Campaign id, id prefix or name; several are stitched together."),
    db: Optional[Path] = DB_OPTION,
    fmt: Format = FORMAT_OPTION,
) -> None:
    """Fault-propagation edges, stitched chains and cycles, each with the runs that prove it."""
    from tracekit.analysis.causality import analyze_campaign
    from tracekit.cli.campaign_view import print_report
    from tracekit.inject.runner import resolve_unambiguous
    from tracekit.store.db import connect

    with connect(db, read_only=True) as con:
        result = analyze_campaign(con, [resolve_unambiguous(con, c) for c in campaigns])
    if fmt is Format.json:
        emit_object(result, fmt)
    else:
        print_report(result, fmt)


@campaign_app.command("list")
def list_(
    limit: int = typer.Option(100, help="At most this many campaigns, newest first."),
    db: Optional[Path] = DB_OPTION,
    fmt: Format = FORMAT_OPTION,
) -> None:
    """List campaigns: id, name, strategy, budget, runs, status."""
    from tracekit.store.campaigns import list_campaigns
    from tracekit.store.db import connect

    with connect(db, read_only=True) as con:
        records = list_campaigns(con, limit)
    view = [{**r, "start": fmt_ns(r["started_ns"])} for r in records]
    emit(records, fmt, title="campaigns", table_view=view if fmt is Format.table else None,
         columns=["campaign_id", "name", "strategy", "budget", "executor", "runs", "status", "start"]
         if fmt is Format.table else None)
