"""Loading OTLP files: the OTLP importer's span records by run, checked and bulk-loaded in one transaction per file.

All runs of a file load together: one INSERT per stream, one duplicate check, run rows written in
one statement (a batch split by trace holds thousands of runs).

A file is recorded in ``spool_files`` under ``otlp:<sha256>``, so ingesting it again adds nothing;
spans a named run already holds (the same spans in another encoding, or from the spool) are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from tracekit import conventions as conv
from tracekit.errors import SpoolError
from tracekit.importers.otlp import OtlpFile, read_otlp
from tracekit.importers.otlp_runs import SPAN_MAPPERS, OtlpRun, split_runs, spool_run_by
from tracekit.ingest.liveness import refresh_run
from tracekit.ingest.report import IngestReport, Quarantined
from tracekit.ingest.spool import rows_to_table
from tracekit.store.load import Part, known_file_ids, load_tables, quarantine, remember_files
from tracekit.store.load_runs import known_run_spans, runs_fed_by_processes, settle_span_runs, stored_runs
from tracekit.store.sql import transaction
from tracekit.store.streams import LINKS, SPANS


_NODE = f"service:{conv.UNKNOWN_SERVICE}"


def _drop_known_spans(con: duckdb.DuckDBPyConnection, runs: dict[str, OtlpRun], existing: set[str]) -> None:
    """Leave out spans a stored run already holds (they arrived before: a retry, the spool, another encoding)."""
    pairs = [(run_id, r["span_id"]) for run_id in existing for r in runs[run_id].records]
    known = known_run_spans(con, [p[0] for p in pairs], [p[1] for p in pairs]) if pairs else set()
    for run_id in {k[0] for k in known}:
        run = runs[run_id]
        run.records = [r for r in run.records if (run_id, r["span_id"]) not in known]
        run.links = [lk for lk in run.links if (run_id, lk["dst_span_id"]) not in known]


def _parts_of(runs: dict[str, OtlpRun]) -> list[Part]:
    """All runs' span records as one Arrow table, sliced (zero-copy) into one part per run."""
    table = pa.Table.from_pylist([r for run in runs.values() for r in run.records], schema=SPANS.schema)
    parts, at = [], 0
    for run_id, run in runs.items():
        parts.append(Part(table.slice(at, len(run.records)), run_id, run.pid, _NODE))
        at += len(run.records)
    return parts


def _manifest(source: str, otlp: OtlpFile, run_id: str, run: OtlpRun,
              bounds: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """What a new run's row says (``liveness.refresh_run``'s manifest)."""
    first, last = bounds.get(run_id, (None, None))
    return {
        "run_id": run_id, "name": run.name, "kind": run.kind, "started_ns": first, "ended_ns": last,
        "attributes": {"source": source, "format": f"otlp-{otlp.encoding}", "resources": run.resources},
    }


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
    runs, bad = split_runs(otlp, spool_run_by(path))  # a serve spool's files: the keys serve grouped them by
    quarantined = [
        (run_id, Quarantined(str(path), None, b.span_id, f"span #{b.index}: {b.error}"), b.raw) for run_id, b in bad
    ]
    run_ids = list(runs)
    source = str(path.absolute())
    with transaction(con):
        existing = stored_runs(con, run_ids)
        _drop_known_spans(con, runs, existing)
        parts, links = [], []
        for run_id, run in runs.items():
            if SPAN_MAPPERS:  # records a mapper rewrote are checked like spool records
                table, more_bad = rows_to_table(run.records, SPANS, source=str(path), first_line=0)
                quarantined.extend((run_id, Quarantined(q.source, None, q.record_id, q.error), None) for q in more_bad)
                parts.append(Part(table, run_id, run.pid, _NODE))
            if run.links:
                links.append(Part(rows_to_table(run.links, LINKS, source=str(path), first_line=0)[0], run_id))
        if not SPAN_MAPPERS:  # built by the decoder with the right types: straight to Arrow, one table
            parts = _parts_of(runs)
        loaded = load_tables(con, SPANS, parts)
        load_tables(con, LINKS, links)
        bounds = {p.run_id: (min(p.table.column("start_ns").to_pylist()), max(p.table.column("end_ns").to_pylist()))
                  for p in parts if p.table.num_rows}
        fed = runs_fed_by_processes(con, run_ids)
        for run_id in fed:  # a run a spool's processes feed too: the run-by-run liveness rules
            refresh_run(con, run_id, None if run_id in existing else _manifest(source, otlp, run_id, runs[run_id], bounds))
        settle_span_runs(
            con, [(r, runs[r].kind, runs[r].name, _manifest(source, otlp, r, runs[r], bounds)["attributes"])
                  for r in run_ids if r not in existing and r not in fed],
            [r for r in run_ids if r in existing and r not in fed],
        )
        quarantine(con, [(run_id, q.source, q.line, q.record_id, q.error, raw) for run_id, q, raw in quarantined])
        first_run = next(iter(runs), None)
        remember_files(con, [(
            file_id, first_run, "otlp", source, None, None, None,
            min((b[0] for b in bounds.values()), default=None), max((b[1] for b in bounds.values()), default=None),
            otlp.size, loaded + len(quarantined), otlp.torn_bytes,
        )])
    report.files += 1
    report.records += loaded
    report.runs.update(runs)
    report.quarantined.extend(q for _run, q, _raw in quarantined)
    return first_run
