"""Runs fed by a live OTLP endpoint: `running` while their spans keep arriving, settled (ok / error) once they stop;
log records joined to spans stored in earlier cycles.

`tracekit serve` calls `update_live_runs` after each ingest cycle with the runs that just received
spans and those idle long enough to be settled; the status of a settled run is recomputed from
its spans as for any other run (``liveness.refresh_run``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

from tracekit.importers.genai import content_from_events
from tracekit.importers.otlp import LogEvent
from tracekit.ingest.derive import derive_runs
from tracekit.ingest.liveness import refresh_run
from tracekit.store.db import connect
from tracekit.store.load import mark_running
from tracekit.store.load_runs import (
    add_span_events, runs_fed_by_processes, set_span_attributes, settle_span_runs, span_events_of, spans_named,
)
from tracekit.store.segments import remove_files
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


def join_log_events(db: str | os.PathLike[str] | None, events: Sequence[LogEvent]) -> set[int]:
    """Add OTLP log records to the stored spans they name, as span events (once: a record already
    added is not added again), lifting GenAI message text into the span's content attributes where it
    has none (``importers.genai.content_from_events``); returns the indexes of `events` whose span is
    stored. One transaction; runs whose spans got content have their agent links derived again."""
    wanted = {e.span_id for e in events if e.span_id}
    if not wanted:
        return set()
    con = connect(db, create=False)
    try:
        with transaction(con):
            stored = spans_named(con, sorted(wanted))
            if not stored:
                return set()
            rows = [(e.span_id, e.ts_ns, e.name, json.dumps(e.attributes, default=str, ensure_ascii=False))
                    for e in events if e.span_id in stored]
            touched = add_span_events(con, rows)
            updates = []
            for run_id, span_id, attrs_text, genai in span_events_of(con, touched, "gen_ai."):
                attributes = json.loads(attrs_text or "{}")
                lifted = content_from_events([(name, json.loads(a or "{}")) for name, a in genai])
                missing = {k: v for k, v in lifted.items() if k not in attributes}
                if missing:
                    updates.append((run_id, span_id, json.dumps({**attributes, **missing}, ensure_ascii=False)))
            unused = set_span_attributes(con, updates)
        remove_files(unused)
        if updates:
            derive_runs(con, sorted({u[0] for u in updates}))
    finally:
        con.close()
    return {i for i, e in enumerate(events) if e.span_id in stored}
