"""Reads for the collective-anomaly analysis: one run's collectives, steps, probes, heartbeats and rank exits as Arrow."""

from __future__ import annotations

import duckdb
import pyarrow as pa

# A collective may be recorded twice when a rank wrote it as interrupted at SIGTERM and then (rarely)
# completed it: keep one row per (rank, group, seq, op, peer), preferring the completed one.
_COLLECTIVES_SQL = """
SELECT rank, world_size, process_group, seq, op, bytes, enter_ns, exit_ns, step, ok, peer, async_op,
       source, nonfinite, error
FROM collectives
WHERE run_id = $run
QUALIFY row_number() OVER (
    PARTITION BY rank, process_group, seq, op, peer ORDER BY ok DESC NULLS LAST, exit_ns NULLS LAST) = 1
"""

_STEPS_SQL = """
SELECT rank, step, start_ns, end_ns, loss, grad_norm, nonfinite FROM steps WHERE run_id = $run
"""

_PROBES_SQL = """
SELECT rank, world_size, round, src, dst, bytes, ts_ns, dur_ns, step FROM probes WHERE run_id = $run
"""

_HEARTBEATS_SQL = """
SELECT rank, ts_ns, step, last_seq, inflight_op, inflight_seq, inflight_since_ns, state, sched_lag_ns
FROM heartbeats WHERE run_id = $run
"""

# One row per rank: did every spool file of its process end with a footer (a clean exit)?
_RANK_EXITS_SQL = """
SELECT TRY_CAST(split_part(node, ':', 2) AS INTEGER) AS rank,
       bool_and(ended_ns IS NOT NULL) AS clean_exit,
       max(ended_ns) AS ended_ns, min(started_ns) AS started_ns
FROM spool_files
WHERE run_id = $run AND starts_with(node, 'rank:')
GROUP BY 1
"""


def _arrow(con: duckdb.DuckDBPyConnection, sql: str, run_id: str) -> pa.Table:
    return con.sql(sql, params={"run": run_id}).to_arrow_table()


def collectives_table(con: duckdb.DuckDBPyConnection, run_id: str) -> pa.Table:
    return _arrow(con, _COLLECTIVES_SQL, run_id)


def steps_table(con: duckdb.DuckDBPyConnection, run_id: str) -> pa.Table:
    return _arrow(con, _STEPS_SQL, run_id)


def probes_table(con: duckdb.DuckDBPyConnection, run_id: str) -> pa.Table:
    return _arrow(con, _PROBES_SQL, run_id)


def heartbeats_table(con: duckdb.DuckDBPyConnection, run_id: str) -> pa.Table:
    return _arrow(con, _HEARTBEATS_SQL, run_id)


def rank_exits_table(con: duckdb.DuckDBPyConnection, run_id: str) -> pa.Table:
    return _arrow(con, _RANK_EXITS_SQL, run_id)


def run_exit_code(con: duckdb.DuckDBPyConnection, run_id: str) -> int | None:
    row = con.execute(
        "SELECT TRY_CAST(json_extract(attributes, '$.exit_code') AS INTEGER) FROM runs WHERE run_id = ?", [run_id]
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])
