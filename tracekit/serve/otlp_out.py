"""Findings back out: a stored run as an OTLP trace export — its spans plus one span per finding, linked to the spans it blames.

Any OTLP backend (Jaeger, Phoenix, Tempo, a collector, `tracekit serve`) then shows "root cause:
agent X, step 12" beside the spans. `run_request` is pure (plain dicts in, a protobuf message out);
`export_run` reads the store, writes a file (``.pb`` protobuf, ``.json`` OTLP/JSON with hex ids)
or posts to an OTLP/HTTP URL.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tracekit import conventions as conv
from tracekit.errors import TracekitError

__all__ = ["run_request", "blamed_span_ids", "export_run", "post_otlp", "set_any_value", "FINDING_SPAN_PREFIX"]

FINDING_SPAN_PREFIX = "tracekit.finding"
_KINDS = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}
_STATUS = {"unset": 0, "ok": 1, "error": 2}


def set_any_value(target: Any, value: Any) -> None:
    """Fill an OTLP AnyValue from a plain Python value (lists as arrays; anything else as JSON text)."""
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int) and -(1 << 63) <= value < (1 << 63):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, (list, tuple)):
        for item in value:
            set_any_value(target.array_value.values.add(), item)
    else:
        target.string_value = json.dumps(value, default=str)


def _set_attributes(repeated: Any, attributes: dict[str, Any]) -> None:
    for key, value in attributes.items():
        if value is not None:
            set_any_value(repeated.add(key=key).value, value)


def blamed_span_ids(finding: dict[str, Any], spans: list[dict[str, Any]]) -> list[str]:
    """The spans a finding blames: its ``span_id`` / ``span_ids``, else the spans of the node it names.

    >>> blamed_span_ids({"subject": "service:db"}, [{"span_id": "a", "node": "service:db"}, {"span_id": "b", "node": "x"}])
    ['a']
    """
    ids = [finding["span_id"]] if isinstance(finding.get("span_id"), str) else []
    ids += [s for s in finding.get("span_ids") or [] if isinstance(s, str)]
    if ids:
        return ids
    subject = str(finding.get("subject") or "")
    return [s["span_id"] for s in spans if s.get("node") == subject][:32]


def _finding_span_id(run_id: str, rank: int, finding: dict[str, Any]) -> bytes:
    text = f"{run_id}/{rank}/{finding.get('analysis')}/{finding.get('subject')}"
    return hashlib.sha256(text.encode()).digest()[:8]


def run_request(run: dict[str, Any], spans: list[dict[str, Any]], findings: list[dict[str, Any]]) -> Any:
    """An ExportTraceServiceRequest: one resource per node with its spans, and a ``tracekit`` resource
    holding one span per finding (name ``tracekit.finding: <kind> <subject>``) with links to the spans
    it blames and its kind, subject, score and rank as ``tracekit.finding.*`` attributes."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    by_node: dict[str, Any] = {}
    trace_of = {s["span_id"]: s["trace_id"] for s in spans}
    for span in spans:
        scope = by_node.get(span["node"])
        if scope is None:
            rs = request.resource_spans.add()
            service = span["node"].split(":", 1)[1] if span["node"].startswith("service:") else span["node"]
            _set_attributes(rs.resource.attributes, {conv.SERVICE_NAME: service, conv.NODE: span["node"],
                                                     conv.RUN_ID: run["run_id"], conv.RUN_NAME: run.get("name")})
            scope = by_node[span["node"]] = rs.scope_spans.add()
            scope.scope.name = "tracekit"
        out = scope.spans.add(
            trace_id=bytes.fromhex(span["trace_id"]), span_id=bytes.fromhex(span["span_id"]),
            parent_span_id=bytes.fromhex(span["parent_id"]) if span.get("parent_id") else b"",
            name=span["name"], kind=_KINDS.get(span.get("kind") or "internal", 1),
            start_time_unix_nano=span["start_ns"], end_time_unix_nano=span["end_ns"],
        )
        out.status.code = _STATUS.get(span.get("status") or "unset", 0)
        out.status.message = span.get("status_message") or ""
        _set_attributes(out.attributes, span.get("attributes") or {})
        for event in span.get("events") or []:
            ev = out.events.add(time_unix_nano=event["ts_ns"], name=event["name"])
            _set_attributes(ev.attributes, event.get("attributes") or {})
    if findings:
        rs = request.resource_spans.add()
        _set_attributes(rs.resource.attributes, {conv.SERVICE_NAME: "tracekit", conv.RUN_ID: run["run_id"],
                                                 conv.RUN_NAME: run.get("name")})
        scope = rs.scope_spans.add()
        scope.scope.name = "tracekit.findings"
        end = max((s["end_ns"] for s in spans), default=run.get("ended_ns") or 1)
        for rank, finding in enumerate(findings):
            blamed = [b for b in blamed_span_ids(finding, spans) if b in trace_of]
            trace = trace_of[blamed[0]] if blamed else hashlib.sha256(run["run_id"].encode()).hexdigest()[:32]
            out = scope.spans.add(
                trace_id=bytes.fromhex(trace), span_id=_finding_span_id(run["run_id"], rank, finding),
                name=f"{FINDING_SPAN_PREFIX}: {finding.get('kind') or 'finding'} {finding.get('subject') or ''}".strip(),
                kind=1, start_time_unix_nano=end, end_time_unix_nano=end,
            )
            _set_attributes(out.attributes, {
                f"{FINDING_SPAN_PREFIX}.kind": finding.get("kind"), f"{FINDING_SPAN_PREFIX}.subject": finding.get("subject"),
                f"{FINDING_SPAN_PREFIX}.analysis": finding.get("analysis"), f"{FINDING_SPAN_PREFIX}.score": finding.get("score"),
                f"{FINDING_SPAN_PREFIX}.rank": rank + 1, f"{FINDING_SPAN_PREFIX}.blamed_span_ids": blamed,
            })
            for span_id in blamed:
                link = out.links.add(trace_id=bytes.fromhex(trace_of[span_id]), span_id=bytes.fromhex(span_id))
                _set_attributes(link.attributes, {f"{FINDING_SPAN_PREFIX}.blames": True})
    return request


def _hex_ids(obj: Any) -> Any:
    """protobuf's JSON mapping writes ids in base64; OTLP/JSON wants lowercase hex."""
    import base64

    if isinstance(obj, dict):
        return {k: (base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str)
                    else _hex_ids(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_hex_ids(v) for v in obj]
    return obj


def export_run(con: Any, run_id: str, out: str) -> tuple[int, int]:
    """Write (or, for an http(s) URL, post as OTLP/HTTP protobuf) the run with its findings; (spans, findings)."""
    from tracekit.store.export import run_spans_with_events
    from tracekit.store.findings import read_findings
    from tracekit.store.queries import get_run

    if out.startswith(("http:/", "https:/")) and "://" not in out:  # a URL that went through pathlib
        out = out.replace(":/", "://", 1)
    run = get_run(con, run_id)
    spans = run_spans_with_events(con, run_id)
    findings = read_findings(con, run_id)
    request = run_request(run, spans, findings)
    if out.startswith(("http://", "https://")):
        post_otlp(request.SerializeToString(), out if out.rstrip("/").endswith("/v1/traces") else out.rstrip("/") + "/v1/traces")
    elif out.endswith(".json"):
        from google.protobuf.json_format import MessageToDict

        Path(out).write_text(json.dumps(_hex_ids(MessageToDict(request))))
    else:
        Path(out).write_bytes(request.SerializeToString())
    return len(spans), len(findings)


def post_otlp(body: bytes, url: str, *, token: str | None = None) -> None:
    """POST an OTLP/HTTP protobuf export request to `url`, with `token` (default ``TRACEKIT_SERVE_TOKEN``)
    as bearer token; TracekitError (one line) when it is refused or unreachable."""
    import os
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/x-protobuf"})
    token = token or os.environ.get("TRACEKIT_SERVE_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise TracekitError(f"{url} refused the export: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise TracekitError(f"cannot post the export to {url}: {getattr(exc, 'reason', exc)}") from None
