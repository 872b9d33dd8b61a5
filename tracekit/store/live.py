"""Reads for live detection: the last steps of a run still being written (a window keeps each poll's cost flat)."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from tracekit.store import collectives as full

_LAST_STEP_SQL = "SELECT max(step) FROM collectives WHERE run_id = $run"

_WINDOW = {
    "collectives": full._COLLECTIVES_SQL + " AND (step IS NULL OR step >= $since)",
    "steps": full._STEPS_SQL + " AND step >= $since",
    "probes": full._PROBES_SQL + " AND (step IS NULL OR step >= $since)",
    "heartbeats": full._HEARTBEATS_SQL + " AND (step IS NULL OR step >= $since)",
}


def last_step(con: duckdb.DuckDBPyConnection, run_id: str) -> int | None:
    """The highest step any rank's collectives reached (None: no collective yet)."""
    row = con.execute(_LAST_STEP_SQL.replace("$run", "?"), [run_id]).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def window_tables(con: duckdb.DuckDBPyConnection, run_id: str, steps: int) -> dict[str, pa.Table]:
    """The run's collectives, steps, probes and heartbeats of its last `steps` steps, and every rank's exit."""
    top = last_step(con, run_id)
    since = -(1 << 62) if top is None else top - steps + 1
    cursor = con.cursor()
    try:
        out = {name: cursor.sql(sql, params={"run": run_id, "since": since}).to_arrow_table()
               for name, sql in _WINDOW.items()}
    finally:
        cursor.close()
    out["rank_exits"] = full.rank_exits_table(con, run_id, live=True)  # a clean exit unknown while files are open
    out["worker_exits"] = full.worker_exits_table(con, run_id)
    return out


def run_state(con: duckdb.DuckDBPyConnection, run_id: str) -> tuple[str, int | None] | None:
    """(status, ended_ns) of a stored run, or None when the run is not in the store yet."""
    row = con.execute("SELECT status, ended_ns FROM runs WHERE run_id = ?", [run_id]).fetchone()
    return None if row is None else (str(row[0]), row[1])
