"""Exports of a run: Chrome trace-event JSON (Perfetto, chrome://tracing) and hive-partitioned Parquet."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import duckdb

from tracekit.store.sql import literal, one

EXPORT_TABLES = ("runs", "spans", "events", "links", "collectives", "steps", "faults", "findings")


def chrome_trace(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    """Spans as complete ('X') events: one process per node, one thread per trace; microsecond times."""
    nodes = [r[0] for r in con.execute(
        "SELECT node FROM spans WHERE run_id = ? GROUP BY node ORDER BY min(start_ns)", [run_id]).fetchall()]
    pid_of = {node: i + 1 for i, node in enumerate(nodes)}
    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": node}}
        for node, pid in pid_of.items()
    ]
    cur = con.execute("""
        SELECT name, node, start_ns, end_ns, status, status_message, attributes, span_id, parent_id,
               dense_rank() OVER (PARTITION BY node ORDER BY trace_id) AS lane
        FROM spans WHERE run_id = ? ORDER BY start_ns
    """, [run_id])
    for name, node, start, end, status, message, attrs, span_id, parent_id, lane in cur.fetchall():
        args = json.loads(attrs or "{}")
        args.update({"span_id": span_id, "parent_id": parent_id, "status": status})
        if message:
            args["status_message"] = message
        events.append({
            "name": name, "cat": "error" if status == "error" else "span", "ph": "X",
            "ts": start / 1000.0, "dur": max(end - start, 0) / 1000.0,
            "pid": pid_of[node], "tid": int(lane), "args": args,
        })
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"run_id": run_id}}


def run_spans_with_events(con: duckdb.DuckDBPyConnection, run_id: str) -> list[dict[str, Any]]:
    """Every span of a run (all columns, attributes decoded) with its events, in start order (for OTLP export)."""
    cur = con.execute("""
        SELECT s.trace_id, s.span_id, s.parent_id, s.name, s.node, s.kind, s.start_ns, s.end_ns, s.status,
               s.status_message, s.attributes,
               (SELECT list({'ts_ns': e.ts_ns, 'name': e.name, 'attributes': e.attributes} ORDER BY e.ts_ns)
                FROM events e WHERE e.run_id = s.run_id AND e.span_id = s.span_id) AS events
        FROM spans s WHERE s.run_id = ? ORDER BY s.start_ns
    """, [run_id])
    names = [d[0] for d in cur.description]
    out = []
    for row in cur.fetchall():
        span = dict(zip(names, row))
        span["attributes"] = json.loads(span["attributes"] or "{}")
        span["events"] = [{**e, "attributes": json.loads(e["attributes"] or "{}")} for e in span["events"] or []]
        out.append(span)
    return out


def write_chrome_trace(con: duckdb.DuckDBPyConnection, run_id: str, out: Path) -> int:
    doc = chrome_trace(con, run_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, out)
    return sum(1 for e in doc["traceEvents"] if e["ph"] == "X")


def write_parquet(con: duckdb.DuckDBPyConnection, run_ids: list[str], out_dir: Path) -> dict[str, int]:
    """One hive-partitioned dataset per table: ``out_dir/<table>/run_id=<id>/*.parquet``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for table in EXPORT_TABLES:
        con.execute(f"CREATE OR REPLACE TEMP TABLE tk_export AS SELECT * FROM {table} "
                    "WHERE list_contains($ids, run_id)", {"ids": run_ids})
        n = one(con, "SELECT count(*) FROM tk_export")[0]
        counts[table] = int(n)
        if n:
            con.execute(
                f"COPY tk_export TO {literal(str(out_dir / table))} "
                "(FORMAT parquet, PARTITION_BY (run_id), OVERWRITE_OR_IGNORE true)"
            )
        con.execute("DROP TABLE tk_export")
    return counts
