"""Findings: analyses' results stored back into the store (one row per finding), and read for CLI and dashboard."""

from __future__ import annotations

import json
import time
from typing import Any

import duckdb

from tracekit.store.queries import rows


def write_findings(
    con: duckdb.DuckDBPyConnection, run_id: str, analysis: str, findings: list[dict[str, Any]]
) -> int:
    """Replace the findings of one analysis on one run. Each finding: kind, subject, score, confidence,
    first_step (optional) and any other keys, which go into `detail` JSON. Order = rank order."""
    now = time.time_ns()
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM findings WHERE run_id = ? AND analysis = ?", [run_id, analysis])
        if findings:
            con.executemany(
                "INSERT INTO findings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    [run_id, analysis, f.get("kind"), f.get("subject"), f.get("score"), i,
                     f.get("first_step"), f.get("confidence"), json.dumps(f, default=str), now]
                    for i, f in enumerate(findings)
                ],
            )
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return len(findings)


def read_findings(
    con: duckdb.DuckDBPyConnection, run_id: str, analysis: str | None = None
) -> list[dict[str, Any]]:
    """Stored findings, in rank order; each is the dict the analysis produced."""
    found = rows(con, """
        SELECT detail FROM findings WHERE run_id = $run AND ($analysis IS NULL OR analysis = $analysis)
        ORDER BY analysis, rank_order
    """, {"run": run_id, "analysis": analysis})
    return [json.loads(r["detail"]) for r in found]
