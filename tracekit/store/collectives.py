"""Reads for the collective-anomaly analysis: one run's collectives, steps, probes, heartbeats and rank exits as Arrow."""

from __future__ import annotations

import duckdb
import pyarrow as pa

# A collective interrupted at SIGTERM is written once, as failed; the detectors compare only completed
# ones across ranks, so no de-duplication pass is needed here (it costs seconds on 8 M rows).
_COLLECTIVES_SQL = """
SELECT rank, world_size, process_group, seq, op, bytes, enter_ns, exit_ns, step, ok, peer, source, nonfinite, error
FROM collectives
WHERE run_id = $run
"""

_STEPS_SQL = """
SELECT rank, step, start_ns, end_ns, loss, grad_norm, nonfinite FROM steps WHERE run_id = $run
"""

_PROBES_SQL = """
SELECT rank, world_size, round, src, dst, bytes, ts_ns, dur_ns, step FROM probes WHERE run_id = $run
"""

_HEARTBEATS_SQL = """
SELECT rank, ts_ns, step, last_seq, inflight_op, inflight_seq, inflight_since_ns, state, sched_lag_ns, lag_step
FROM heartbeats WHERE run_id = $run
"""

# One row per rank: did every spool file of its process end with a footer (a clean exit)?
_RANK_EXITS_SQL = """
SELECT TRY_CAST(split_part(node, ':', 2) AS INTEGER) AS rank,
       bool_and(ended_ns IS NOT NULL) AS clean_exit,
       max(ended_ns) AS ended_ns, min(started_ns) AS started_ns, any_value(host) AS host
FROM spool_files
WHERE run_id = $run AND starts_with(node, 'rank:')
GROUP BY 1
"""


_WORKER_EXITS_SQL = """
SELECT rank, local_rank, worker_pid, exit_code, signal, ts_ns, host FROM worker_exits WHERE run_id = $run
"""


def _arrow(con: duckdb.DuckDBPyConnection, sql: str, run_id: str) -> pa.Table:
    cursor = con.cursor()  # a fresh cursor: the caller's connection may hold an unfinished result
    try:
        return cursor.sql(sql, params={"run": run_id}).to_arrow_table()
    finally:
        cursor.close()


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


def worker_exits_table(con: duckdb.DuckDBPyConnection, run_id: str) -> pa.Table:
    return _arrow(con, _WORKER_EXITS_SQL, run_id)


def run_exit_code(con: duckdb.DuckDBPyConnection, run_id: str) -> int | None:
    row = con.execute(
        "SELECT TRY_CAST(json_extract(attributes, '$.exit_code') AS INTEGER) FROM runs WHERE run_id = ?", [run_id]
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])
