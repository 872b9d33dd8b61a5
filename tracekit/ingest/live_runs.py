"""Runs fed by a live OTLP endpoint: `running` while their spans keep arriving, settled (ok / error) once they stop.

`tracekit serve` calls `update_live_runs` after each ingest cycle with the runs that just received
spans and those idle long enough to be settled; the status of a settled run is recomputed from
its spans as for any other run (``liveness.refresh_run``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from tracekit.ingest.liveness import refresh_run
from tracekit.store.db import connect
from tracekit.store.load import mark_running
from tracekit.store.load_runs import runs_fed_by_processes, settle_span_runs
from tracekit.store.sql import transaction


def update_live_runs(db: str | os.PathLike[str] | None, running: Iterable[str], settled: Iterable[str]) -> None:
    """Mark `running` runs as running and recompute the status of `settled` ones, in one transaction."""
    running, settled = sorted(set(running)), sorted(set(settled))
    if not running and not settled:
        return
    con = connect(db)
    try:
        with transaction(con):
            if running:
                mark_running(con, running)
            fed = runs_fed_by_processes(con, settled)
            for run_id in fed:  # a spool's processes feed it too: the run-by-run liveness rules
                refresh_run(con, run_id, None)
            settle_span_runs(con, [], [r for r in settled if r not in fed])  # all others in one statement
    finally:
        con.close()
