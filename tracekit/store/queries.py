"""Typed read queries over the store, used by the CLI, the analyses and the dashboard."""

from __future__ import annotations

import json
from typing import Any

import duckdb

from tracekit.errors import NotFoundError, QueryError
from tracekit.store.sql import one


def rows(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params) if params is not None else con.execute(sql)
    names = [d[0] for d in cur.description or []]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def resolve_run(con: duckdb.DuckDBPyConnection, ref: str) -> str:
    """A run id from an id, a unique id prefix, or a name (the newest run of that name)."""
    hit = one(con, 
        "SELECT run_id FROM runs WHERE run_id = $r OR name = $r "
        "ORDER BY (run_id = $r) DESC, started_ns DESC NULLS LAST LIMIT 1", {"r": ref}
    )
    if hit:
        return str(hit[0])
    if len(ref) >= 4:
        prefixed = con.execute("SELECT run_id FROM runs WHERE starts_with(run_id, ?)", [ref.lower()]).fetchall()
        if len(prefixed) == 1:
            return str(prefixed[0][0])
        if len(prefixed) > 1:
            raise NotFoundError(f"run id prefix {ref!r} matches {len(prefixed)} runs: give more characters")
    raise NotFoundError(f"no run with id or name {ref!r}: `tracekit runs` lists them")


_RUNS_SQL = """
WITH counts AS (
    SELECT run_id, count(*) AS spans, count(*) FILTER (WHERE status = 'error') AS errors
    FROM spans GROUP BY run_id
), top AS (
    SELECT run_id, arg_min(kind || ' ' || subject, rank_order) AS top_finding, count(*) AS findings
    FROM findings GROUP BY run_id
)
SELECT r.run_id, r.name, r.kind, r.status, r.started_ns, r.ended_ns,
       (r.ended_ns - r.started_ns) // 1000000 AS duration_ms,
       coalesce(c.spans, 0) AS spans, coalesce(c.errors, 0) AS errors, coalesce(t.findings, 0) AS findings,
       t.top_finding
FROM runs r LEFT JOIN counts c USING (run_id) LEFT JOIN top t USING (run_id)
WHERE ($kind IS NULL OR r.kind = $kind)
ORDER BY r.started_ns DESC NULLS LAST
LIMIT $limit
"""


def list_runs(con: duckdb.DuckDBPyConnection, *, kind: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    return rows(con, _RUNS_SQL, {"kind": kind, "limit": limit})


def get_run(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    found = rows(con, "SELECT * FROM runs WHERE run_id = ?", [run_id])
    if not found:
        raise NotFoundError(f"no run with id {run_id!r}")
    run = found[0]
    run["attributes"] = json.loads(run["attributes"] or "{}")
    return run


def list_spans(
    con: duckdb.DuckDBPyConnection, run_id: str, *, errors_only: bool = False, node: str | None = None,
    name: str | None = None, limit: int = 100,
) -> list[dict[str, Any]]:
    return rows(con, """
        SELECT span_id, parent_id, name, node, status, (end_ns - start_ns) / 1e6 AS duration_ms,
               status_message, start_ns, end_ns, trace_id
        FROM spans
        WHERE run_id = $run AND (NOT $errors OR status = 'error')
          AND ($node IS NULL OR node = $node) AND ($name IS NULL OR name = $name)
        ORDER BY start_ns LIMIT $limit
    """, {"run": run_id, "errors": errors_only, "node": node, "name": name, "limit": limit})


def span_events(con: duckdb.DuckDBPyConnection, run_id: str, span_id: str) -> list[dict[str, Any]]:
    return rows(con, "SELECT ts_ns, name, attributes FROM events WHERE run_id = ? AND span_id = ? ORDER BY ts_ns",
                [run_id, span_id])


_WRITE_WORDS = ("insert", "update", "delete", "create", "drop", "alter", "copy", "attach", "detach",
                "install", "load", "export", "import", "pragma", "set", "checkpoint", "call")


def run_sql(con: duckdb.DuckDBPyConnection, query: str, *, limit: int | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run a user's query on a read-only connection; errors become QueryError with DuckDB's message."""
    first = query.strip().split(None, 1)[0].lower() if query.strip() else ""
    if not first:
        raise QueryError("the query is empty")
    if first in _WRITE_WORDS:
        raise QueryError(f"`tracekit sql` is read-only: {first.upper()} statements are not allowed")
    try:
        cur = con.execute(query)
        names = [d[0] for d in cur.description or []]
        data = cur.fetchmany(limit) if limit else cur.fetchall()
    except duckdb.Error as exc:
        message = str(exc).strip().splitlines()[0]
        raise QueryError(f"query failed: {message}") from None
    return names, data
