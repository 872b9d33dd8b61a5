"""OTLP spans as tracekit's records: each decoded span as a ``spans`` stream record, grouped by the run it belongs to.

Pure: reads no file and no store. `split_runs` takes a decoded `OtlpFile` (``tracekit.importers.otlp``)
and returns, per run id, the records of the spool's ``spans`` and ``links`` streams
(``tracekit.conventions.SPANS`` / ``LINKS``) with the run's name, kind and process id, plus the spans
that could not be decoded; the ingest pipeline (``tracekit.ingest.otlp``) checks and loads them.

Run identity: the resource attribute ``tracekit.run_id`` if present, else an id derived from the
file's content hash, so ingesting the same file twice adds nothing (ingest records the file in
``spool_files`` under ``otlp:<sha256>``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracekit import conventions as conv
from tracekit.importers.otlp import OTLP_SUFFIXES, BadSpan, OtlpFile, OtlpSpan, ResourceSpans

__all__ = ["span_record", "default_node", "run_identity", "split_runs", "OtlpRun", "SpanMapper", "SPAN_MAPPERS"]


# ---------------------------------------------------------------------------------------------
# conversion to spool records


def _attrs_json(attributes: dict[str, Any]) -> str:
    return json.dumps(attributes, separators=(",", ":"), default=str, ensure_ascii=False)


def default_node(resource: ResourceSpans) -> str:
    """The node a resource's spans are blamed on: ``tracekit.node``, else ``service:<service.name>``."""
    node = resource.attributes.get(conv.NODE)
    if node not in (None, ""):
        return str(node)
    return f"service:{resource.service_name or conv.UNKNOWN_SERVICE}"


def span_record(span: OtlpSpan, resource: ResourceSpans) -> dict[str, Any]:
    """One decoded OTLP span as the spool's span record (``tracekit.conventions.SPANS``)."""
    attributes = dict(span.attributes)
    node = attributes.pop(conv.NODE, None)
    attributes.pop(conv.RUN_ID, None)
    record: dict[str, Any] = {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_id": span.parent_id,
        "name": span.name,
        "node": str(node) if node not in (None, "") else default_node(resource),
        "kind": span.kind,
        "start_ns": span.start_ns,
        "end_ns": span.end_ns,
        "status": span.status,
        "status_message": span.status_message,
        "attributes": _attrs_json(attributes),
        "events": [
            {"ts_ns": e.ts_ns, "name": e.name, "attributes": _attrs_json(e.attributes)} for e in span.events
        ] or None,
    }
    return record


# Hooks run on every converted span record, in order: ``mapper(span, resource, record)`` may rewrite
# the record in place (node, attributes) — e.g. a GenAI / OpenInference mapping naming agents.
SpanMapper = Callable[[OtlpSpan, ResourceSpans, dict[str, Any]], None]
SPAN_MAPPERS: list[SpanMapper] = []


def _stem(source: str) -> str:
    name = Path(source).name
    for suffix in OTLP_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem or name


def run_identity(otlp: OtlpFile, resource: ResourceSpans) -> tuple[str, str, str]:
    """(run_id, name, kind) of a resource's spans.

    ``tracekit.run_id`` on the resource names the run (its name is ``tracekit.run_name`` or
    ``service.name``); otherwise the run is the file itself: an id derived from the content hash
    and the file's stem as its name.
    """
    from tracekit.config import RUN_KINDS

    kind = str(resource.attributes.get(conv.RUN_KIND) or "service")
    if kind not in RUN_KINDS:
        kind = "service"
    run_id = resource.attributes.get(conv.RUN_ID)
    if isinstance(run_id, str) and run_id.strip():
        name = resource.attributes.get(conv.RUN_NAME) or resource.service_name or run_id[:12]
        return run_id.strip().lower(), str(name), kind
    return otlp.sha256[:32], str(resource.attributes.get(conv.RUN_NAME) or _stem(otlp.source)), kind


# ---------------------------------------------------------------------------------------------
# a file's spans grouped by run (what the ingest pipeline loads)


@dataclass
class OtlpRun:
    """The spans of one run in an OTLP file, as records of the spool's ``spans`` and ``links`` streams
    (``tracekit.conventions.SPANS`` / ``LINKS``; span events nested, as in spool format 1)."""

    name: str
    kind: str
    records: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)  # up to 16 distinct resources' attributes
    pid: int | None = None


def split_runs(otlp: OtlpFile) -> tuple[dict[str, OtlpRun], list[tuple[str, BadSpan]]]:
    """The file's spans by run id (see `run_identity`), each mapped by `SPAN_MAPPERS`, and the spans
    that could not be decoded with the run they belong to. Pure: reads and writes no store."""
    runs: dict[str, OtlpRun] = {}
    bad: list[tuple[str, BadSpan]] = []
    for resource in otlp.resources:
        run_id, name, kind = run_identity(otlp, resource)
        run = runs.setdefault(run_id, OtlpRun(name, kind))
        if resource.attributes and len(run.resources) < 16 and resource.attributes not in run.resources:
            run.resources.append(resource.attributes)
        pid = resource.attributes.get(conv.PROCESS_PID)
        if isinstance(pid, int) and run.pid is None:
            run.pid = pid
        for span in resource.spans:
            record = span_record(span, resource)
            for mapper in SPAN_MAPPERS:
                mapper(span, resource, record)
            run.records.append(record)
            for link in span.links:
                run.links.append({
                    "src_span_id": link.span_id, "dst_span_id": span.span_id,
                    "relation": conv.OTEL_LINK_RELATION, "provenance": conv.OTEL_LINK_PROVENANCE,
                    "confidence": 1.0, "attributes": _attrs_json({"trace_id": link.trace_id, **link.attributes}),
                })
        bad.extend((run_id, b) for b in resource.bad)
    return runs, bad
