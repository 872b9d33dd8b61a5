"""Training commands: `tracekit anomalies RUN` (C4-style collective-anomaly detection)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tracekit.cli.root import app
from tracekit.cli.output import DB_OPTION, FORMAT_OPTION, Format, emit


@app.command()
def anomalies(
    run: str = typer.Argument(..., help="Run id, id prefix, or name."),
    db: Optional[Path] = DB_OPTION,
    fmt: Format = FORMAT_OPTION,
) -> None:
    """Name the straggler, throttled, hung, crashed or non-finite rank and the slow link of a training run.

    Findings are stored in the findings table (analysis `collectives`) and printed most certain first;
    `--format json` prints one JSON array (empty for a healthy run).
    """
    from tracekit.analysis.collectives import detect_run
    from tracekit.store.db import connect
    from tracekit.store.queries import resolve_run

    with connect(db, create=False) as con:
        found = detect_run(con, resolve_run(con, run))
    view = [{**f, "evidence": f["summary"]} for f in found]
    emit(found, fmt, title=f"anomalies of {run}", table_view=view if fmt is Format.table else None,
         columns=["kind", "subject", "first_step", "confidence", "evidence"] if fmt is Format.table else None)
