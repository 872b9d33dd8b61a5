"""OTLP trace files (JSON encoding of ExportTraceServiceRequest, JSON lines, or protobuf) parsed into span records by run.

A pure parser: it reads files and bytes and touches no store. Reading (`read_otlp`, `parse_otlp`)
turns a file into plain, frozen records — `ResourceSpans` holding `OtlpSpan`s with hex ids, int
nanoseconds and decoded attribute values — so other importers (GenAI / OpenInference mapping) can
reuse it; ``tracekit.importers.otlp_runs`` turns them into tracekit's span records by run. A span
that cannot be decoded (bad id, missing time) is kept as a `BadSpan` for quarantine; a file that is
neither OTLP JSON nor OTLP protobuf raises SpoolError (rejected whole).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracekit import conventions as conv
from tracekit.errors import SpoolError

__all__ = [
    "OtlpEvent", "OtlpLink", "OtlpSpan", "BadSpan", "ResourceSpans", "OtlpFile",
    "read_otlp", "parse_otlp", "LogEvent", "parse_otlp_logs",
]

_KINDS = {0: "internal", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
_KIND_NAMES = {
    "SPAN_KIND_UNSPECIFIED": 0, "SPAN_KIND_INTERNAL": 1, "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3, "SPAN_KIND_PRODUCER": 4, "SPAN_KIND_CONSUMER": 5,
}
_STATUSES = {0: "unset", 1: "ok", 2: "error"}
_STATUS_NAMES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
OTLP_SUFFIXES = (".otlp.json", ".otlp.jsonl", ".otlp.pb", ".otlp.binpb", ".json", ".jsonl", ".pb", ".binpb", ".otlp")


# ---------------------------------------------------------------------------------------------
# the records a reader produces


@dataclass(frozen=True)
class OtlpEvent:
    ts_ns: int
    name: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class OtlpLink:
    trace_id: str
    span_id: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class OtlpSpan:
    """One OTLP span, decoded: lowercase hex ids, int nanoseconds, attribute values as Python values."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str  # internal, server, client, producer, consumer
    start_ns: int
    end_ns: int
    status: str  # unset, ok, error
    status_message: str | None
    attributes: dict[str, Any]
    events: tuple[OtlpEvent, ...] = ()
    links: tuple[OtlpLink, ...] = ()
    scope_name: str | None = None
    scope_version: str | None = None


@dataclass(frozen=True)
class BadSpan:
    """A span that could not be decoded; quarantined with its id (when it had a readable one)."""

    index: int  # position of the span in the file (0-based, over all resources and scopes)
    span_id: str | None
    error: str
    raw: str | None = None  # the span as it was written (JSON text, or protobuf text format), cut at 2000 chars


@dataclass(frozen=True)
class ResourceSpans:
    """The spans one resource (one process / service) exported, with the resource's attributes."""

    attributes: dict[str, Any]
    spans: tuple[OtlpSpan, ...]
    bad: tuple[BadSpan, ...] = ()

    @property
    def service_name(self) -> str | None:
        value = self.attributes.get(conv.SERVICE_NAME)
        return str(value) if value not in (None, "") else None


@dataclass(frozen=True)
class OtlpFile:
    """A whole OTLP file: its resources, how it was encoded, and its content hash."""

    source: str
    encoding: str  # json, jsonl or protobuf
    sha256: str
    size: int
    resources: tuple[ResourceSpans, ...]
    torn_bytes: int = 0  # JSON lines: an unfinished last line, skipped

    @property
    def span_count(self) -> int:
        return sum(len(r.spans) for r in self.resources)


# ---------------------------------------------------------------------------------------------
# decoding helpers (shared by the JSON and protobuf readers)


class _BadValue(ValueError):
    pass


def _hex_id(raw: Any, nbytes: int, what: str, *, optional: bool = False) -> str | None:
    """An id as lowercase hex. OTLP/JSON uses hex; protobuf's own JSON mapping uses base64: accept both."""
    if type(raw) is bytes and len(raw) == nbytes and raw.strip(b"\0"):  # protobuf's common case, checked at once
        return raw.hex()
    if raw is None or raw == "" or raw == b"":
        if optional:
            return None
        raise _BadValue(f"{what} is missing")
    if isinstance(raw, (bytes, bytearray)):
        value = bytes(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        try:
            value = bytes.fromhex(text) if len(text) == 2 * nbytes else base64.b64decode(text, validate=True)
        except ValueError:  # binascii.Error is a ValueError
            try:
                value = base64.b64decode(text, validate=True)
            except ValueError:
                raise _BadValue(f"{what} {raw!r} is neither hex nor base64") from None
    else:
        raise _BadValue(f"{what} has the wrong type ({type(raw).__name__})")
    if len(value) != nbytes:
        raise _BadValue(f"{what} has {len(value)} bytes, expected {nbytes}")
    if not any(value):
        if optional:
            return None
        raise _BadValue(f"{what} is all zeros (invalid)")
    return value.hex()


def _nanos(raw: Any, what: str) -> int:
    """int64 nanoseconds: a JSON number or (proto3 JSON) a decimal string."""
    if isinstance(raw, bool):
        raise _BadValue(f"{what} is a boolean")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        value = int(raw)
    elif isinstance(raw, float) and raw.is_integer():
        value = int(raw)
    else:
        raise _BadValue(f"{what} is missing or not an integer ({raw!r})")
    if not 0 < value < 1 << 63:
        raise _BadValue(f"{what} is {value}, not a time in int64 nanoseconds")
    return value


def _enum(raw: Any, names: dict[str, int], default: int) -> int:
    if raw is None:
        return default
    if isinstance(raw, bool):
        raise _BadValue(f"enum value {raw!r} is a boolean")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        if raw in names:
            return names[raw]
        if raw.isdigit():
            return int(raw)
    raise _BadValue(f"unknown enum value {raw!r}")


def _get(obj: dict[str, Any], camel: str, snake: str, default: Any = None) -> Any:
    """proto3 JSON parsers accept both the lowerCamelCase and the original field name."""
    if camel in obj:
        return obj[camel]
    return obj.get(snake, default)


def _list(obj: dict[str, Any], camel: str, snake: str) -> list[Any]:
    value = _get(obj, camel, snake)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _BadValue(f"{camel} is not a list")
    return value


# ---------------------------------------------------------------------------------------------
# JSON (proto3 JSON mapping of ExportTraceServiceRequest, as OTLP/HTTP JSON and the collector's file exporter write)


def _json_any(value: Any) -> Any:
    if not isinstance(value, dict) or not value:
        return None
    if "stringValue" in value or "string_value" in value:
        return str(_get(value, "stringValue", "string_value"))
    if "boolValue" in value or "bool_value" in value:
        return bool(_get(value, "boolValue", "bool_value"))
    if "intValue" in value or "int_value" in value:
        raw = _get(value, "intValue", "int_value")
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise _BadValue(f"intValue {raw!r} is not an integer") from None
    if "doubleValue" in value or "double_value" in value:
        raw = _get(value, "doubleValue", "double_value")
        try:
            number = float(raw)
        except (TypeError, ValueError):
            raise _BadValue(f"doubleValue {raw!r} is not a number") from None
        return number if math.isfinite(number) else str(number)
    if "arrayValue" in value or "array_value" in value:
        array = _get(value, "arrayValue", "array_value") or {}
        return [_json_any(v) for v in (array.get("values") or [])]
    if "kvlistValue" in value or "kvlist_value" in value:
        return _json_attrs((_get(value, "kvlistValue", "kvlist_value") or {}).get("values") or [])
    if "bytesValue" in value or "bytes_value" in value:
        raw = _get(value, "bytesValue", "bytes_value")
        try:
            return base64.b64decode(raw).hex()
        except (binascii.Error, TypeError, ValueError):
            raise _BadValue("bytesValue is not base64") from None
    return None


def _json_attrs(items: Any) -> dict[str, Any]:
    if not items:
        return {}
    if not isinstance(items, list):
        raise _BadValue("attributes is not a list of {key, value}")
    out: dict[str, Any] = {}
    for kv in items:
        if not isinstance(kv, dict) or not isinstance(kv.get("key"), str):
            raise _BadValue(f"attribute {kv!r} has no string key")
        out[kv["key"]] = _json_any(kv.get("value"))
    return out


def _json_span(obj: Any, scope: tuple[str | None, str | None]) -> OtlpSpan:
    if not isinstance(obj, dict):
        raise _BadValue(f"a span is a {type(obj).__name__}, not an object")
    status = _get(obj, "status", "status", None) or {}
    if not isinstance(status, dict):
        raise _BadValue("status is not an object")
    name = obj.get("name")
    if not isinstance(name, str):
        raise _BadValue("name is missing")
    events = tuple(
        OtlpEvent(
            _nanos(_get(e, "timeUnixNano", "time_unix_nano"), "event time"),
            str(e.get("name") or ""),
            _json_attrs(e.get("attributes")),
        )
        for e in _list(obj, "events", "events")
    )
    links = tuple(
        OtlpLink(
            _hex_id(_get(lk, "traceId", "trace_id"), 16, "link traceId") or "",
            _hex_id(_get(lk, "spanId", "span_id"), 8, "link spanId") or "",
            _json_attrs(lk.get("attributes")),
        )
        for lk in _list(obj, "links", "links")
    )
    message = status.get("message")
    return OtlpSpan(
        trace_id=_hex_id(_get(obj, "traceId", "trace_id"), 16, "traceId") or "",
        span_id=_hex_id(_get(obj, "spanId", "span_id"), 8, "spanId") or "",
        parent_id=_hex_id(_get(obj, "parentSpanId", "parent_span_id"), 8, "parentSpanId", optional=True),
        name=name,
        kind=_KINDS.get(_enum(obj.get("kind"), _KIND_NAMES, 0), "internal"),
        start_ns=_nanos(_get(obj, "startTimeUnixNano", "start_time_unix_nano"), "startTimeUnixNano"),
        end_ns=_nanos(_get(obj, "endTimeUnixNano", "end_time_unix_nano"), "endTimeUnixNano"),
        status=_STATUSES.get(_enum(status.get("code"), _STATUS_NAMES, 0), "unset"),
        status_message=str(message) if message else None,
        attributes=_json_attrs(obj.get("attributes")),
        events=events,
        links=links,
        scope_name=scope[0],
        scope_version=scope[1],
    )


def _raw_span_id(obj: Any) -> str | None:
    if isinstance(obj, dict):
        raw = _get(obj, "spanId", "span_id")
        return str(raw)[:64] if raw not in (None, "") else None
    return None


def _json_resources(requests: list[dict[str, Any]]) -> list[ResourceSpans]:
    resources: list[ResourceSpans] = []
    index = 0
    for request in requests:
        for rs in _list(request, "resourceSpans", "resource_spans"):
            if not isinstance(rs, dict):
                raise _BadValue("a resourceSpans entry is not an object")
            resource = rs.get("resource") or {}
            attrs = _json_attrs(resource.get("attributes") if isinstance(resource, dict) else None)
            spans: list[OtlpSpan] = []
            bad: list[BadSpan] = []
            scopes = _list(rs, "scopeSpans", "scope_spans") or _list(
                rs, "instrumentationLibrarySpans", "instrumentation_library_spans")
            for ss in scopes:
                if not isinstance(ss, dict):
                    raise _BadValue("a scopeSpans entry is not an object")
                scope = ss.get("scope") or ss.get("instrumentationLibrary") or {}
                scope_key = (scope.get("name") or None, scope.get("version") or None) if isinstance(scope, dict) else (None, None)
                for raw in _list(ss, "spans", "spans"):
                    try:
                        spans.append(_json_span(raw, scope_key))
                    except _BadValue as exc:
                        bad.append(BadSpan(index, _raw_span_id(raw), str(exc), json.dumps(raw, default=str)[:2000]))
                    index += 1
            resources.append(ResourceSpans(attrs, tuple(spans), tuple(bad)))
    return resources


def _is_request(obj: Any) -> bool:
    return isinstance(obj, dict) and ("resourceSpans" in obj or "resource_spans" in obj)


def _parse_json(data: bytes, source: str) -> tuple[str, list[dict[str, Any]], int]:
    """(encoding, requests, torn bytes); raises SpoolError when the text is not OTLP JSON."""
    try:
        doc = json.loads(data)
    except UnicodeDecodeError:
        raise SpoolError(f"{source}: neither OTLP JSON (not UTF-8 text) nor OTLP protobuf; nothing was loaded") from None
    except ValueError as whole_error:
        return _parse_json_lines(data, source, whole_error)
    requests = doc if isinstance(doc, list) else [doc]
    if not requests or not all(_is_request(r) for r in requests):
        raise SpoolError(
            f"{source}: JSON, but not an OTLP trace export (expected an object with 'resourceSpans'); "
            "nothing was loaded"
        )
    return "json", requests, 0


def _parse_json_lines(data: bytes, source: str, whole_error: ValueError) -> tuple[str, list[dict[str, Any]], int]:
    lines = data.split(b"\n")
    torn = 0
    if not data.endswith(b"\n") and len(lines) > 1:
        try:
            json.loads(lines[-1])
        except ValueError:
            torn = len(lines[-1])  # the writer was stopped mid-line: skip it, report it
            lines = lines[:-1]
    requests: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            if len([ln for ln in lines if ln.strip()]) <= 1:
                raise SpoolError(f"{source}: not valid OTLP JSON ({whole_error}); nothing was loaded") from None
            raise SpoolError(f"{source}: line {number} is not valid JSON; nothing was loaded from this file") from None
        if not _is_request(obj):
            raise SpoolError(f"{source}: line {number} is not an OTLP trace export (no 'resourceSpans'); nothing was loaded")
        requests.append(obj)
    if not requests:
        raise SpoolError(f"{source}: not valid OTLP JSON ({whole_error}); nothing was loaded")
    return "jsonl", requests, torn


# ---------------------------------------------------------------------------------------------
# protobuf (opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest, or TracesData: same wire format)


def _pb_any(value: Any) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_pb_any(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _pb_attrs(value.kvlist_value.values)
    if which == "bytes_value":
        return value.bytes_value.hex()
    if which == "double_value":
        number = value.double_value
        return number if math.isfinite(number) else str(number)
    return getattr(value, which)


def _pb_attrs(items: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: _pb_any(kv.value) for kv in items}


def _pb_span(sp: Any, scope: tuple[str | None, str | None]) -> OtlpSpan:
    return OtlpSpan(
        trace_id=_hex_id(sp.trace_id, 16, "trace_id") or "",
        span_id=_hex_id(sp.span_id, 8, "span_id") or "",
        parent_id=_hex_id(sp.parent_span_id, 8, "parent_span_id", optional=True),
        name=sp.name,
        kind=_KINDS.get(int(sp.kind), "internal"),
        start_ns=_nanos(int(sp.start_time_unix_nano), "start_time_unix_nano"),
        end_ns=_nanos(int(sp.end_time_unix_nano), "end_time_unix_nano"),
        status=_STATUSES.get(int(sp.status.code), "unset"),
        status_message=sp.status.message or None,
        attributes=_pb_attrs(sp.attributes),
        events=tuple(OtlpEvent(_nanos(int(e.time_unix_nano), "event time"), e.name, _pb_attrs(e.attributes))
                     for e in sp.events),
        links=tuple(OtlpLink(_hex_id(lk.trace_id, 16, "link trace_id") or "",
                             _hex_id(lk.span_id, 8, "link span_id") or "", _pb_attrs(lk.attributes))
                    for lk in sp.links),
        scope_name=scope[0],
        scope_version=scope[1],
    )


def _parse_protobuf(data: bytes, source: str) -> list[ResourceSpans]:
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise SpoolError(
            f"{source}: neither OTLP JSON nor OTLP protobuf: protobuf decoding failed ({exc}); "
            "the file is truncated or of another format, nothing was loaded"
        ) from None
    if not any(ss.spans for rs in request.resource_spans for ss in rs.scope_spans):
        # random bytes often decode as a message with unknown fields or empty entries, never as spans
        raise SpoolError(
            f"{source}: neither OTLP JSON nor OTLP protobuf: it decodes to no spans; nothing was loaded"
        )
    resources: list[ResourceSpans] = []
    index = 0
    for rs in request.resource_spans:
        spans: list[OtlpSpan] = []
        bad: list[BadSpan] = []
        for ss in rs.scope_spans:
            scope_key = (ss.scope.name or None, ss.scope.version or None)
            for sp in ss.spans:
                try:
                    spans.append(_pb_span(sp, scope_key))
                except _BadValue as exc:
                    bad.append(BadSpan(index, sp.span_id.hex() or None, str(exc), str(sp)[:2000]))
                index += 1
        resources.append(ResourceSpans(_pb_attrs(rs.resource.attributes), tuple(spans), tuple(bad)))
    return resources


# ---------------------------------------------------------------------------------------------
# reading


def parse_otlp(data: bytes, source: str = "<bytes>") -> OtlpFile:
    """Decode OTLP trace bytes (JSON, JSON lines or protobuf; gzipped or not). SpoolError for input to reject whole."""
    digest = hashlib.sha256(data).hexdigest()
    if data[:2] == b"\x1f\x8b":  # gzip, as collectors and exporters often write
        import gzip
        import zlib

        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise SpoolError(f"{source}: a damaged gzip file ({exc}); nothing was loaded") from None
    if not data.strip():
        raise SpoolError(f"{source}: the file is empty; nothing was loaded")
    if data.lstrip()[:1] in (b"{", b"["):
        encoding, requests, torn = _parse_json(data, source)
        try:
            resources = _json_resources(requests)
        except _BadValue as exc:
            raise SpoolError(f"{source}: malformed OTLP JSON ({exc}); nothing was loaded") from None
        return OtlpFile(source, encoding, digest, len(data), tuple(resources), torn)
    return OtlpFile(source, "protobuf", digest, len(data), tuple(_parse_protobuf(data, source)))


def read_otlp(path: str | Path) -> OtlpFile:
    """Read one OTLP trace file into `ResourceSpans` records (``.resources``); SpoolError if unreadable.

    >>> import json, pathlib, tempfile
    >>> doc = {"resourceSpans": [{"resource": {"attributes": [
    ...     {"key": "service.name", "value": {"stringValue": "orders"}}]},
    ...   "scopeSpans": [{"spans": [{"traceId": "0af7651916cd43dd8448eb211c80319c",
    ...     "spanId": "b7ad6b7169203331", "name": "GET /orders", "kind": 2,
    ...     "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000500000000",
    ...     "status": {"code": 2, "message": "boom"}}]}]}]}
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "orders.otlp.json"
    >>> _ = path.write_text(json.dumps(doc))
    >>> f = read_otlp(path)
    >>> f.resources[0].service_name, f.resources[0].spans[0].kind, f.resources[0].spans[0].status
    ('orders', 'server', 'error')
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpoolError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return parse_otlp(data, str(path))


# ---------------------------------------------------------------------------------------------
# OTLP log records (ExportLogsServiceRequest): GenAI events sent as logs, as events of their spans


@dataclass(frozen=True)
class LogEvent:
    """One OTLP log record as an event of the span it names (ids hex; None when it names no valid span):
    name = its event name (or ``event.name``), attributes = its attributes plus its body's fields."""

    trace_id: str | None
    span_id: str | None
    name: str
    ts_ns: int
    attributes: dict[str, Any]


def _log_event(trace_id: Any, span_id: Any, event_name: str, attributes: dict[str, Any], body: Any,
               ts: int) -> LogEvent:
    try:
        tid, sid = _hex_id(trace_id, 16, "trace_id", optional=True), _hex_id(span_id, 8, "span_id", optional=True)
    except _BadValue:
        tid = sid = None
    name = event_name or str(attributes.pop("event.name", "") or "log")
    if isinstance(body, dict):
        for key, value in body.items():
            attributes.setdefault(key, value if isinstance(value, (str, int, float, bool)) else json.dumps(value))
    elif body not in (None, ""):
        attributes.setdefault("body", body if isinstance(body, str) else json.dumps(body))
    return LogEvent(tid, sid, name, ts, attributes)


def parse_otlp_logs(data: bytes, *, json_encoded: bool) -> list[LogEvent]:
    """The log records of an OTLP logs request (protobuf, or OTLP/JSON with hex or base64 ids);
    SpoolError when the body is not one. Records whose values cannot be decoded name no span."""
    events: list[LogEvent] = []
    if not json_encoded:
        from google.protobuf.message import DecodeError
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

        request = ExportLogsServiceRequest()
        try:
            request.ParseFromString(data)
        except DecodeError as exc:
            raise SpoolError(f"not an OTLP logs request ({exc})") from None
        for rl in request.resource_logs:
            for sl in rl.scope_logs:
                for r in sl.log_records:
                    events.append(_log_event(r.trace_id, r.span_id, r.event_name, _pb_attrs(r.attributes),
                                             _pb_any(r.body), r.time_unix_nano or r.observed_time_unix_nano))
        return events
    try:
        doc = json.loads(data)
        for rl in _list(doc, "resourceLogs", "resource_logs"):
            for sl in _list(rl, "scopeLogs", "scope_logs"):
                for r in _list(sl, "logRecords", "log_records"):
                    try:
                        attributes, body = _json_attrs(r.get("attributes")), _json_any(r.get("body"))
                        ts = int(_get(r, "timeUnixNano", "time_unix_nano", 0) or 0) \
                            or int(_get(r, "observedTimeUnixNano", "observed_time_unix_nano", 0) or 0)
                    except (_BadValue, TypeError, ValueError):
                        continue
                    events.append(_log_event(_get(r, "traceId", "trace_id"), _get(r, "spanId", "span_id"),
                                             str(_get(r, "eventName", "event_name", "") or ""), attributes, body, ts))
    except (ValueError, AttributeError, _BadValue) as exc:
        raise SpoolError(f"not an OTLP/JSON logs request ({exc})") from None
    return events
