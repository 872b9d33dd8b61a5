"""The pipeline's derive step: what ingest adds to a run once its records are loaded (agent edges from span attributes)."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from tracekit.store.agents import has_agent_spans, replace_derived_links, run_spans
from tracekit.store.load_runs import runs_with_agent_spans


def derive_links(con: duckdb.DuckDBPyConnection, run_id: str) -> int:
    """Derive the run's agent edges from its GenAI / OpenInference span attributes and store them in
    ``links`` (replacing earlier derived ones, so ingesting again adds nothing). Runs without such
    spans are left alone; returns the links stored."""
    if not has_agent_spans(con, run_id):
        return 0
    from tracekit.importers.genai import derive_links as from_attributes

    return replace_derived_links(con, run_id, from_attributes(run_spans(con, run_id)))


def derive_run(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Every derivation for one ingested run."""
    derive_links(con, run_id)


def derive_runs(con: duckdb.DuckDBPyConnection, run_ids: Sequence[str]) -> None:
    """Every derivation for the ingested runs; runs without agent spans are found in one query
    (an OTLP batch split by trace holds thousands of runs)."""
    for run_id in runs_with_agent_spans(con, run_ids):
        derive_run(con, run_id)
