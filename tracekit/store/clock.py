"""Host clock offsets stored with a run: ``runs.attributes.clock_offsets_ns`` (per host, ns, from analysis.clock)."""

from __future__ import annotations

import json

import duckdb


def save_clock_offsets(con: duckdb.DuckDBPyConnection, run_id: str, offsets: dict[str, int]) -> None:
    """Set the run's estimated host clock offsets (other attributes are kept; ingest keeps these)."""
    con.execute(
        "UPDATE runs SET attributes = json_merge_patch(coalesce(attributes, '{}'), ?) WHERE run_id = ?",
        [json.dumps({"clock_offsets_ns": None}), run_id],
    )
    con.execute(
        "UPDATE runs SET attributes = json_merge_patch(coalesce(attributes, '{}'), ?) WHERE run_id = ?",
        [json.dumps({"clock_offsets_ns": offsets}), run_id],
    )


def clock_offsets(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, int]:
    """The run's stored host clock offsets ({} when none were estimated)."""
    row = con.execute("SELECT json_extract(attributes, '$.clock_offsets_ns') FROM runs WHERE run_id = ?",
                      [run_id]).fetchone()
    return {} if row is None or row[0] is None else {k: int(v) for k, v in json.loads(row[0]).items()}
