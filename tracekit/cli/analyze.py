"""`tracekit analyze RUN | --all`: run every applicable registered analysis and store its findings."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from tracekit.cli.root import app
from tracekit.cli.output import DB_OPTION, FORMAT_OPTION, Format, emit


@app.command()
def analyze(
    run: Optional[str] = typer.Argument(None, help="Run id, id prefix, or name."),
    all_runs: bool = typer.Option(False, "--all", help="Analyse every run of the store."),
    only: Optional[list[str]] = typer.Option(None, "--analysis", "-a", help="Only this registered analysis (repeatable)."),
    db: Optional[Path] = DB_OPTION,
    fmt: Format = FORMAT_OPTION,
) -> None:
    """Run every registered analysis that applies to a run's kind and store its findings.

    training runs: collectives; agents runs: attribution; campaign runs: causality (stored under the
    campaign). Prints one row per analysis with its findings count and top finding; `--format json`
    prints every finding. Exits 2 if an analysis could not run.
    """
    import sys

    from tracekit.analysis import analyze_all, analyze_run
    from tracekit.cli.core import _with_progress
    from tracekit.store.db import connect
    from tracekit.store.queries import resolve_run

    if (run is None) == (not all_runs):
        raise typer.BadParameter("give a RUN or --all (not both)")
    with connect(db, create=False) as con:
        if all_runs:
            results = _with_progress(lambda progress: analyze_all(con, only=only, progress=progress), "analysing")
        else:
            results = analyze_run(con, resolve_run(con, run), only=only)
    if fmt is Format.json:
        emit([r.to_dict() for r in results], fmt)
    else:
        rows = [_row(r) for r in results]
        emit(rows, fmt, title="analyses", columns=["run_id", "run", "analysis", "stored_under", "findings", "top_finding"],
             table_view=[{**row, "run_id": row["run_id"][:12], "stored_under": row["stored_under"][:12]} for row in rows]
             if fmt is Format.table else None)
    for r in results:
        if r.error:
            print(f"error: {r.analysis} on run {r.run_name}: {r.error}", file=sys.stderr)
    if any(r.error for r in results):
        raise typer.Exit(2)


def _row(r: Any) -> dict[str, Any]:
    top = r.findings[0] if r.findings else None
    return {"run_id": r.run_id, "run": r.run_name, "analysis": r.analysis, "stored_under": r.subject,
            "findings": "error" if r.error else len(r.findings),
            "top_finding": f"{top.get('kind')} {top.get('subject')}" if top else ""}
