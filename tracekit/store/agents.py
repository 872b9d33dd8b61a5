"""Store queries for multi-agent runs: imported runs replaced whole, a run's spans, links and error events."""

from __future__ import annotations

import json
from typing import Any

import duckdb

from tracekit.store.load import load_records, upsert_run
from tracekit.store.queries import rows
from tracekit.store.segments import agent_condition, materialise, remove_files, spans_source
from tracekit.store.sql import transaction
from tracekit.store.streams import LINKS, SPANS

_RUN_TABLES = ("span_rows", "events", "links", "findings")


def replace_run(
    con: duckdb.DuckDBPyConnection, run: dict[str, Any], spans: list[dict[str, Any]],
    links: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> int:
    """Write one imported run (its row, spans and links) in one transaction, replacing any earlier
    import of the same run id, so importing twice leaves the same rows. Returns the spans written."""
    run_id = run["run_id"]
    with transaction(con):
        unused = materialise(con, [run_id])  # spans stored in a segment become rows that can be deleted
        for table in _RUN_TABLES:
            con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])  # table names are constants
        upsert_run(con, run_id, kind=run.get("kind", "agents"), name=run.get("name"),
                   started_ns=run.get("started_ns"), ended_ns=run.get("ended_ns"),
                   status=run.get("status", "error"), attributes=run.get("attributes") or {})
        n = load_records(con, SPANS, spans, run_id=run_id, default_node="unknown")
        if links:
            load_records(con, LINKS, list(links), run_id=run_id)
    remove_files(unused)
    return n


def run_spans(con: duckdb.DuckDBPyConnection, run_id: str) -> list[dict[str, Any]]:
    """Every span of a run in start order, attributes decoded, with its error-event messages."""
    found = rows(con, """
        WITH ev AS (
            SELECT span_id, list(coalesce(json_extract_string(attributes, '$."exception.message"'), name)
                                 ORDER BY ts_ns) AS errors
            FROM events WHERE run_id = $run AND name = 'exception' GROUP BY span_id
        )
        SELECT s.span_id, s.parent_id, s.trace_id, s.name, s.node, s.kind, s.start_ns, s.end_ns,
               s.status, s.status_message, s.attributes, ev.errors
        FROM spans s LEFT JOIN ev USING (span_id)
        WHERE s.run_id = $run
        ORDER BY s.start_ns, s.span_id
    """, {"run": run_id})
    for span in found:
        span["attributes"] = json.loads(span["attributes"] or "{}")
        span["errors"] = list(span["errors"] or [])
    return found


def run_links(con: duckdb.DuckDBPyConnection, run_id: str) -> list[dict[str, Any]]:
    return rows(con, """
        SELECT src_span_id, dst_span_id, relation, provenance, confidence
        FROM links WHERE run_id = ? ORDER BY src_span_id, dst_span_id
    """, [run_id])


def agent_run_ids(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Runs of kind "agents", oldest first."""
    return [r["run_id"] for r in rows(
        con, "SELECT run_id FROM runs WHERE kind = 'agents' ORDER BY started_ns NULLS LAST, run_id")]


DERIVED_BY = "genai"  # links.attributes.derived_by of links derived from span attributes at ingest


def has_agent_spans(con: duckdb.DuckDBPyConnection, run_id: str) -> bool:
    """Whether any span of the run carries GenAI or OpenInference agent attributes."""
    source = spans_source(con, ["run_id", "attributes"], agent_only=True)
    row = con.execute(f"SELECT EXISTS (SELECT 1 FROM {source} WHERE run_id = ? AND {agent_condition()})",
                      [run_id]).fetchone()
    return bool(row and row[0])


def replace_derived_links(con: duckdb.DuckDBPyConnection, run_id: str, links: list[dict[str, Any]]) -> int:
    """Replace the run's links derived from span attributes (so ingesting again adds nothing)."""
    records = [{**link, "attributes": json.dumps({"derived_by": DERIVED_BY})} for link in links]
    with transaction(con):
        con.execute("DELETE FROM links WHERE run_id = ? AND json_extract_string(attributes, '$.derived_by') = ?",
                    [run_id, DERIVED_BY])
        return load_records(con, LINKS, records, run_id=run_id)
