"""OTLP spans as tracekit's records: each decoded span as a ``spans`` stream record, grouped by the run it belongs to.

Pure: reads no file and no store. `split_runs` takes a decoded `OtlpFile` (``tracekit.importers.otlp``)
and returns, per run id, the records of the spool's ``spans`` and ``links`` streams
(``tracekit.conventions.SPANS`` / ``LINKS``) with the run's name, kind and process id, plus the spans
that could not be decoded; the ingest pipeline (``tracekit.ingest.otlp``) checks and loads them.

Run identity: the resource attribute ``tracekit.run_id`` if present; else, trace by trace, the first
of the run keys (``TRACEKIT_RUN_BY``, comma-separated; default ``session.id,gen_ai.conversation.id,file``)
that any span of the trace (or its resource) carries: spans of one session or conversation are one
run, whichever files and batches they arrive in, so a conversation continuing later extends its run.
The last resort is ``trace`` (one run per trace id: what `tracekit serve` uses) or ``file`` (one run
per file, an id derived from the content hash, named after the file). A directory holding
``RUN_BY_MARKER`` (a `tracekit serve` spool) names the keys its files are grouped by, whatever
``TRACEKIT_RUN_BY`` says, so serve and `tracekit ingest` of its spool form the same runs. Ingesting the same file
twice adds nothing (ingest records it in ``spool_files`` under ``otlp:<sha256>``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracekit import conventions as conv
from tracekit.importers.genai import content_from_events
from tracekit.importers.otlp import OTLP_SUFFIXES, BadSpan, OtlpFile, OtlpSpan, ResourceSpans

__all__ = ["span_record", "default_node", "run_identity", "run_by", "trace_runs", "split_runs", "OtlpRun",
           "SpanMapper", "SPAN_MAPPERS", "RUN_BY_MARKER", "spool_run_by", "write_run_by_marker"]


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
    if span.events and any(e.name.startswith("gen_ai.") for e in span.events):
        # GenAI instrumentations put messages in events: lift them where the agent mapping reads content
        for key, value in content_from_events([(e.name, e.attributes) for e in span.events]).items():
            attributes.setdefault(key, value)
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


def run_by(raw: str | None = None) -> tuple[str, ...]:
    """The run keys in force: `raw` or ``TRACEKIT_RUN_BY`` (comma-separated attribute names, then
    ``trace`` or ``file``), else ``session.id,gen_ai.conversation.id,file``. A list without a last
    resort gets ``file`` appended.

    >>> run_by("app.request_id, trace")
    ('app.request_id', 'trace')
    >>> run_by("session.id")
    ('session.id', 'file')
    """
    text = raw if raw is not None else os.environ.get("TRACEKIT_RUN_BY", "")
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    if not keys:
        return conv.RUN_BY_FILES
    if not any(k in (conv.RUN_BY_TRACE, conv.RUN_BY_FILE) for k in keys):
        keys += (conv.RUN_BY_FILE,)
    return keys


RUN_BY_MARKER = ".tracekit-run-by"  # in a directory of OTLP files: the run keys its files were grouped by


def spool_run_by(path: str | os.PathLike[str]) -> tuple[str, ...] | None:
    """The run keys written beside an OTLP file (``RUN_BY_MARKER`` in its directory: `tracekit serve`
    writes one in its spool, so `tracekit ingest SPOOL/traces` forms the same runs), or None."""
    try:
        text = (Path(path).parent / RUN_BY_MARKER).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return run_by(text) if text else None


def write_run_by_marker(directory: str | os.PathLike[str], keys: tuple[str, ...]) -> None:
    """Write ``RUN_BY_MARKER`` into `directory` (atomically): OTLP files there are grouped into runs by `keys`."""
    target = Path(directory) / RUN_BY_MARKER
    tmp = target.with_name(f"{RUN_BY_MARKER}.{os.getpid()}.tmp")
    tmp.write_text(",".join(keys) + "\n")
    os.replace(tmp, target)


def trace_runs(otlp: OtlpFile, keys: tuple[str, ...]) -> dict[str, tuple[str, str] | None]:
    """For each trace id in the file: (run id, run name) from the first key of `keys` its spans carry,
    or None where the last resort is the file itself."""
    carried: dict[str, dict[str, str]] = {}
    roots: dict[str, str] = {}
    services: dict[str, str] = {}
    attr_keys = [k for k in keys if k not in (conv.RUN_BY_TRACE, conv.RUN_BY_FILE)]
    for resource in otlp.resources:
        for span in resource.spans:
            seen = carried.setdefault(span.trace_id, {})
            for key in attr_keys:
                if key not in seen:
                    value = span.attributes.get(key, resource.attributes.get(key))
                    if value not in (None, ""):
                        seen[key] = str(value)
            if span.parent_id is None:
                roots.setdefault(span.trace_id, span.name)
            services.setdefault(span.trace_id, resource.service_name or conv.UNKNOWN_SERVICE)
    out: dict[str, tuple[str, str] | None] = {}
    for trace_id, seen in carried.items():
        out[trace_id] = None
        for key in keys:
            if key == conv.RUN_BY_FILE:
                break
            if key == conv.RUN_BY_TRACE:
                out[trace_id] = (trace_id, f"{roots.get(trace_id) or services[trace_id]} {trace_id[:8]}")
                break
            if key in seen:
                digest = hashlib.sha256(f"{key}\0{seen[key]}".encode()).hexdigest()[:32]
                out[trace_id] = (digest, seen[key][:120])
                break
    return out


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


def split_runs(otlp: OtlpFile, keys: tuple[str, ...] | None = None) -> tuple[dict[str, OtlpRun], list[tuple[str, BadSpan]]]:
    """The file's spans by run id (see `run_identity` and `run_by`; `keys` defaults to ``run_by()``),
    each mapped by `SPAN_MAPPERS`, and the spans that could not be decoded with the run they belong
    to. Pure: reads and writes no store."""
    runs: dict[str, OtlpRun] = {}
    bad: list[tuple[str, BadSpan]] = []
    by_trace = trace_runs(otlp, keys or run_by())

    touched: set[tuple[str, int]] = set()

    def run_of(run_id: str, name: str, kind: str, resource: ResourceSpans) -> OtlpRun:
        run = runs.setdefault(run_id, OtlpRun(name, kind))
        if (run_id, id(resource)) in touched:
            return run
        touched.add((run_id, id(resource)))
        if resource.attributes and len(run.resources) < 16 and resource.attributes not in run.resources:
            run.resources.append(resource.attributes)
        pid = resource.attributes.get(conv.PROCESS_PID)
        if isinstance(pid, int) and run.pid is None:
            run.pid = pid
        return run

    for resource in otlp.resources:
        run_id, name, kind = run_identity(otlp, resource)
        explicit = resource.attributes.get(conv.RUN_ID)
        named = isinstance(explicit, str) and bool(explicit.strip())  # the resource names its run
        for span in resource.spans:
            found = None if named else by_trace.get(span.trace_id)
            run = run_of(*(found or (run_id, name)), kind, resource)
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
