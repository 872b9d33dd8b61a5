"""The ingest pipeline, the store's single writer: discover → parse (spool files, importers) → load (store) → derive.

    discover.py   sort the given paths into spool runs and OTLP files
    spool.py      read spool files: header check, JSON lines → Arrow, validation, quarantine
    resume.py     what each file had loaded before (ingesting again adds only what is new)
    liveness.py   each run's row: status (ok, error, aborted, running), times, attributes
    otlp.py       load the OTLP importer's records by run
    derive.py     what is derived from loaded runs (agent edges from span attributes)
    pipeline.py   the orchestration and the one entry point, `ingest_paths`

Importers (``tracekit.importers``) are pure parsers returning records of the streams declared in
``tracekit.conventions``; the store (``tracekit.store.load``) holds the SQL that loads them.
"""

from __future__ import annotations

from tracekit.ingest.pipeline import ingest_paths
from tracekit.ingest.report import IngestReport, Quarantined

__all__ = ["ingest_paths", "IngestReport", "Quarantined"]
