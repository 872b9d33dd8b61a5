"""Set-based SQL for loading many runs at once: which runs and spans exist already, and run rows refreshed in bulk.

An OTLP batch split by trace holds thousands of small runs; asking and writing run by run cost
~10 ms per run (and a transaction of 18,000 runs stayed in COMMIT for minutes). Everything here
takes all runs of a batch in one statement, with the run list passed as an Arrow table, and runs
inside the caller's transaction (see :func:`tracekit.store.sql.transaction`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from tracekit.store.segments import agent_condition, materialise, spans_source

_SETTLE_SQL = """
    INSERT OR REPLACE INTO runs
    SELECT q.run_id,
           CASE WHEN r.run_id IS NULL THEN coalesce(q.kind, 'service') ELSE r.kind END,
           CASE WHEN r.run_id IS NULL THEN coalesce(q.name, left(q.run_id, 12)) ELSE r.name END,
           b.first_ns, b.last_ns,
           CASE WHEN coalesce(b.root_errors, 0) > 0 THEN 'error' ELSE 'ok' END,
           CASE WHEN r.run_id IS NULL THEN coalesce(q.attributes, '{}')::JSON ELSE r.attributes END
    FROM tk_runs q
    LEFT JOIN runs r ON r.run_id = q.run_id
    LEFT JOIN (
        SELECT s.run_id, min(s.start_ns) AS first_ns, max(s.end_ns) AS last_ns,
               count(*) FILTER (WHERE s.parent_id IS NULL AND s.status = 'error') AS root_errors
        FROM spans s SEMI JOIN tk_runs q ON s.run_id = q.run_id
        GROUP BY s.run_id
    ) b ON b.run_id = q.run_id
"""


def _with_table(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table, sql: str) -> list[tuple[Any, ...]]:
    con.register(name, table)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.unregister(name)


def _ids(run_ids: Sequence[str]) -> pa.Table:
    return pa.table({"run_id": pa.array(list(run_ids), pa.string())})


def stored_runs(con: duckdb.DuckDBPyConnection, run_ids: Sequence[str]) -> set[str]:
    """Which of these runs have a row already."""
    if not run_ids:
        return set()
    found = _with_table(con, "tk_runs", _ids(run_ids),
                        "SELECT r.run_id FROM runs r SEMI JOIN tk_runs q ON r.run_id = q.run_id")
    return {r[0] for r in found}


def runs_fed_by_processes(con: duckdb.DuckDBPyConnection, run_ids: Sequence[str]) -> set[str]:
    """Which of these runs are more than OTLP spans: a spool's processes, or hosts of a multi-host job,
    feed them (their row needs the run-by-run liveness rules)."""
    if not run_ids:
        return set()
    found = _with_table(con, "tk_runs", _ids(run_ids), """
        SELECT f.run_id FROM spool_files f SEMI JOIN tk_runs q ON f.run_id = q.run_id WHERE f.pid IS NOT NULL
        UNION
        SELECT r.run_id FROM runs r SEMI JOIN tk_runs q ON r.run_id = q.run_id
        WHERE json_exists(r.attributes, '$.hosts')
    """)
    return {r[0] for r in found}


def known_run_spans(con: duckdb.DuckDBPyConnection, run_ids: Sequence[str], span_ids: Sequence[str]) -> set[tuple[str, str]]:
    """Which (run id, span id) pairs (given as two parallel lists) the store already holds."""
    if not span_ids:
        return set()
    pairs = pa.table({"run_id": pa.array(list(run_ids), pa.string()), "span_id": pa.array(list(span_ids), pa.string())})
    found = _with_table(con, "tk_pairs", pairs, """
        SELECT s.run_id, s.span_id FROM spans s
        JOIN (SELECT DISTINCT run_id, span_id FROM tk_pairs) q ON s.run_id = q.run_id AND s.span_id = q.span_id
    """)
    return {(r[0], r[1]) for r in found}


def settle_span_runs(con: duckdb.DuckDBPyConnection, new_runs: Sequence[tuple[str, str, str, dict[str, Any]]],
                     run_ids: Sequence[str] = ()) -> int:
    """Write the rows of runs made of spans alone, from their stored spans, in one statement.

    ``new_runs`` are (run id, kind, name, attributes) of runs that may have no row yet; ``run_ids``
    are further runs that have one (their kind, name and attributes stay). Each row's times are its
    spans' first start and last end; its status is ``error`` when a root span failed, else ``ok``
    (as ``tracekit.ingest.liveness.refresh_run`` decides for a run no process feeds). Returns the rows.
    """
    fresh = {r[0] for r in new_runs}
    ids = [r[0] for r in new_runs] + [r for r in dict.fromkeys(run_ids) if r not in fresh]
    if not ids:
        return 0
    table = pa.table({
        "run_id": pa.array(ids, pa.string()),
        "kind": pa.array([r[1] for r in new_runs] + [None] * (len(ids) - len(new_runs)), pa.string()),
        "name": pa.array([r[2] for r in new_runs] + [None] * (len(ids) - len(new_runs)), pa.string()),
        "attributes": pa.array([json.dumps(r[3], default=str) for r in new_runs]
                               + [None] * (len(ids) - len(new_runs)), pa.string()),
    })
    _with_table(con, "tk_runs", table, _SETTLE_SQL)
    return len(ids)


def runs_with_agent_spans(con: duckdb.DuckDBPyConnection, run_ids: Sequence[str]) -> list[str]:
    """Which of these runs hold a span with GenAI or OpenInference agent attributes (the bulk form of
    ``tracekit.store.agents.has_agent_spans``)."""
    if not run_ids:
        return []
    source = spans_source(con, ["run_id", "attributes"], agent_only=True)  # segments without any are not read
    found = _with_table(con, "tk_runs", _ids(run_ids), f"""
        SELECT DISTINCT s.run_id FROM {source} s SEMI JOIN tk_runs q ON s.run_id = q.run_id
        WHERE {agent_condition("s.attributes")}
    """)
    return sorted(r[0] for r in found)


def spans_named(con: duckdb.DuckDBPyConnection, span_ids: Sequence[str]) -> set[str]:
    """Which of these span ids some stored span has."""
    if not span_ids:
        return set()
    found = _with_table(con, "tk_ids", pa.table({"span_id": pa.array(list(span_ids), pa.string())}),
                        "SELECT DISTINCT s.span_id FROM spans s SEMI JOIN tk_ids q ON s.span_id = q.span_id")
    return {r[0] for r in found}


def add_span_events(con: duckdb.DuckDBPyConnection, events: Sequence[tuple[str, int, str, str]]) -> list[tuple[str, str]]:
    """Add events (span id, time ns or 0 for the span's start, name, attributes JSON) to the stored spans
    they name, leaving out any the span holds already (same name and time); returns the (run id, span id)
    of spans that got one."""
    if not events:
        return []
    table = pa.table({
        "span_id": pa.array([e[0] for e in events], pa.string()), "ts_ns": pa.array([e[1] for e in events], pa.int64()),
        "name": pa.array([e[2] for e in events], pa.string()), "attributes": pa.array([e[3] for e in events], pa.string()),
    })
    found = _with_table(con, "tk_events", table, """
        INSERT INTO events (run_id, span_id, ts_ns, name, attributes)
        SELECT DISTINCT m.run_id, m.span_id, m.ts_ns, m.name, m.attributes::JSON FROM (
            SELECT s.run_id, e.span_id, CASE WHEN e.ts_ns > 0 THEN e.ts_ns ELSE s.start_ns END AS ts_ns, e.name, e.attributes
            FROM tk_events e JOIN spans s ON s.span_id = e.span_id
        ) m ANTI JOIN events v ON v.run_id = m.run_id AND v.span_id = m.span_id AND v.ts_ns = m.ts_ns AND v.name = m.name
        RETURNING run_id, span_id
    """)
    return sorted({(r[0], r[1]) for r in found})


def span_events_of(con: duckdb.DuckDBPyConnection, spans: Sequence[tuple[str, str]],
                   prefix: str) -> list[tuple[str, str, str, list[tuple[str, str]]]]:
    """(run id, span id, attributes JSON, [(event name, event attributes JSON)] in time order) of these
    spans, with their events whose name starts with `prefix`."""
    if not spans:
        return []
    keys = pa.table({"run_id": pa.array([s[0] for s in spans], pa.string()),
                     "span_id": pa.array([s[1] for s in spans], pa.string())})
    con.register("tk_keys", keys)
    try:
        found = con.execute("""
            SELECT s.run_id, s.span_id, any_value(s.attributes)::VARCHAR,
                   list((v.name, v.attributes::VARCHAR) ORDER BY v.ts_ns) FILTER (WHERE v.name IS NOT NULL)
            FROM spans s SEMI JOIN tk_keys k ON s.run_id = k.run_id AND s.span_id = k.span_id
            LEFT JOIN events v ON v.run_id = s.run_id AND v.span_id = s.span_id AND starts_with(v.name, $prefix)
            GROUP BY s.run_id, s.span_id
        """, {"prefix": prefix}).fetchall()
    finally:
        con.unregister("tk_keys")
    return [(r[0], r[1], r[2], [(e[0], e[1]) if isinstance(e, tuple) else (e["name"], e["attributes"])
                                for e in (r[3] or [])]) for r in found]


def set_span_attributes(con: duckdb.DuckDBPyConnection, rows: Sequence[tuple[str, str, str]]) -> list[Path]:
    """Replace the attributes (JSON text) of stored spans: (run id, span id, attributes). Spans stored in a
    segment are moved into ``span_rows`` first; returns the segment files to delete once the caller commits."""
    if not rows:
        return []
    unused = materialise(con, sorted({r[0] for r in rows}))
    table = pa.table({"run_id": pa.array([r[0] for r in rows], pa.string()),
                      "span_id": pa.array([r[1] for r in rows], pa.string()),
                      "attributes": pa.array([r[2] for r in rows], pa.string())})
    _with_table(con, "tk_upd", table, """
        UPDATE span_rows SET attributes = u.attributes::JSON FROM tk_upd u
        WHERE span_rows.run_id = u.run_id AND span_rows.span_id = u.span_id
    """)
    return unused
