"""Imported training runs (e.g. Flight Recorder dumps): a run's rows replaced whole, so importing again adds nothing."""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa

from tracekit import conventions as conv
from tracekit.store.load import load_table, upsert_run
from tracekit.store.sql import transaction
from tracekit.store.streams import StreamSpec

_REPLACEABLE = {"collectives": "DELETE FROM collectives WHERE run_id = ?",
                "heartbeats": "DELETE FROM heartbeats WHERE run_id = ?",
                "steps": "DELETE FROM steps WHERE run_id = ?"}


def replace_training_run(con: duckdb.DuckDBPyConnection, run: dict[str, Any],
                         records: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    """Replace the run's rows of each stream in `records` (collectives, heartbeats, steps) and its run row,
    in one transaction; returns the rows loaded per stream."""
    unknown = set(records) - set(_REPLACEABLE)
    if unknown:
        raise ValueError(f"cannot replace streams {sorted(unknown)}")
    run_id = str(run["run_id"])
    loaded = {}
    with transaction(con):
        for stream, rows in records.items():
            con.execute(_REPLACEABLE[stream], [run_id])
            spec = StreamSpec.of(conv.STREAMS[stream])
            loaded[stream] = load_table(con, spec, pa.Table.from_pylist(rows, schema=spec.schema), run_id=run_id)
        upsert_run(con, run_id, kind=run.get("kind", "training"), name=run.get("name"),
                   started_ns=run.get("started_ns"), ended_ns=run.get("ended_ns"), status=run.get("status", "ok"),
                   attributes=run.get("attributes") or {})
    return loaded
