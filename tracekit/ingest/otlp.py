"""Loading OTLP files: the OTLP importer's span records by run, checked and bulk-loaded in one transaction per file.

A file is recorded in ``spool_files`` under ``otlp:<sha256>``, so ingesting it again adds nothing;
spans a named run already holds (the same spans in another encoding, or from the spool) are skipped.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from tracekit import conventions as conv
from tracekit.errors import SpoolError
from tracekit.importers.otlp import read_otlp
from tracekit.importers.otlp_runs import SPAN_MAPPERS, split_runs
from tracekit.ingest.liveness import refresh_run
from tracekit.ingest.report import IngestReport, Quarantined
from tracekit.ingest.spool import rows_to_table
from tracekit.store.load import (
    known_file_ids, known_span_ids, load_table, quarantine, remember_files, run_header,
)
from tracekit.store.sql import transaction
from tracekit.store.streams import LINKS, SPANS


def ingest_otlp_file(con: duckdb.DuckDBPyConnection, path: Path, report: IngestReport) -> str | None:
    """Load one OTLP file into the store in one transaction; returns a run id (None if rejected or known)."""
    path = Path(path)
    try:
        otlp = read_otlp(path)
    except SpoolError as exc:
        report.rejected.append((str(path), str(exc)))
        return None
    file_id = f"otlp:{otlp.sha256}"
    if known_file_ids(con, [file_id]):
        report.unchanged_files += 1
        return None
    if otlp.torn_bytes:
        report.torn.append((str(path), otlp.torn_bytes))
    runs, bad = split_runs(otlp)
    quarantined = [
        (run_id, Quarantined(str(path), None, b.span_id, f"span #{b.index}: {b.error}"), b.raw) for run_id, b in bad
    ]
    loaded = 0
    starts: list[int] = []
    ends: list[int] = []
    with transaction(con):
        for run_id, run in runs.items():
            existing = run_header(con, run_id) is not None
            known = known_span_ids(con, run_id, [r["span_id"] for r in run.records]) if existing else set()
            if known:  # the same spans already arrived (from the spool, or another encoding of this file)
                run.records = [r for r in run.records if r["span_id"] not in known]
                run.links = [lk for lk in run.links if lk["dst_span_id"] not in known]
            if SPAN_MAPPERS:  # records a mapper rewrote are checked like spool records
                table, more_bad = rows_to_table(run.records, SPANS, source=str(path), first_line=0)
                quarantined.extend((run_id, Quarantined(q.source, None, q.record_id, q.error), None) for q in more_bad)
            else:  # built by the decoder with the right types: straight to Arrow
                table = pa.Table.from_pylist(run.records, schema=SPANS.schema)
            loaded += load_table(con, SPANS, table, run_id=run_id, pid=run.pid,
                                 default_node=f"service:{conv.UNKNOWN_SERVICE}")
            if run.links:
                links, _ = rows_to_table(run.links, LINKS, source=str(path), first_line=0)
                load_table(con, LINKS, links, run_id=run_id)
            first = min(table.column("start_ns").to_pylist(), default=None)
            last = max(table.column("end_ns").to_pylist(), default=None)
            if first is not None and last is not None:
                starts.append(first)
                ends.append(last)
            manifest = None if existing else {
                "run_id": run_id, "name": run.name, "kind": run.kind,
                "started_ns": first, "ended_ns": last,
                "attributes": {"source": str(path.absolute()), "format": f"otlp-{otlp.encoding}",
                               "resources": run.resources},
            }
            refresh_run(con, run_id, manifest)
        quarantine(con, [(run_id, q.source, q.line, q.record_id, q.error, raw) for run_id, q, raw in quarantined])
        first_run = next(iter(runs), None)
        remember_files(con, [(
            file_id, first_run, "otlp", str(path.absolute()), None, None, None,
            min(starts) if starts else None, max(ends) if ends else None,
            otlp.size, loaded + len(quarantined), otlp.torn_bytes,
        )])
    report.files += 1
    report.records += loaded
    report.runs.update(runs)
    report.quarantined.extend(q for _run, q, _raw in quarantined)
    return first_run
