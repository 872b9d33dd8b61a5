"""Validate one OTLP export request body (traces or logs; protobuf or JSON; gzip) into a `Batch` to spool, or a `Rejected` error.

Pure functions, no I/O: the HTTP and gRPC front ends both call `decode_request`, so a body is
judged the same way whichever transport carried it. A body is accepted whole or not at all:
garbage, truncated protobuf, JSON that is not an export request, or a body over the size limit
(before or after decompression) is rejected with the OTLP error it deserves, and nothing is
spooled. Records that decode but carry bad values (an all-zero id, a missing time) are kept: the
ingest step quarantines them one by one with their ids, as it does for files.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass
from enum import Enum

__all__ = ["Signal", "Encoding", "Batch", "Rejected", "decode_request", "encoding_of", "DEFAULT_MAX_BYTES"]

DEFAULT_MAX_BYTES = 64 << 20  # the largest request body accepted, before and after decompression


class Signal(str, Enum):
    traces = "traces"
    logs = "logs"


class Encoding(str, Enum):
    protobuf = "protobuf"
    json = "json"


class Rejected(Exception):
    """A request the receiver refuses: the HTTP status, the gRPC status name and a one-line reason."""

    def __init__(self, http_status: int, grpc_code: str, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.grpc_code = grpc_code  # a grpc.StatusCode member name (INVALID_ARGUMENT, ...)
        self.message = message


@dataclass(frozen=True)
class Batch:
    """One accepted export request: what it carries and its body as it will be spooled (uncompressed)."""

    signal: Signal
    encoding: Encoding
    body: bytes
    records: int  # spans (traces) or log records (logs)


def encoding_of(content_type: str | None) -> Encoding:
    """The encoding an HTTP Content-Type names; Rejected (415) for any other type."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in ("application/x-protobuf", "application/protobuf", "application/vnd.google.protobuf"):
        return Encoding.protobuf
    if media == "application/json":
        return Encoding.json
    raise Rejected(
        415, "INVALID_ARGUMENT",
        f"unsupported Content-Type {content_type or '(none)'!r}: send application/x-protobuf or application/json",
    )


def _gunzip(body: bytes, max_bytes: int) -> bytes:
    """Decompress a gzip body, refusing one that inflates past `max_bytes` (a gzip bomb)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise Rejected(400, "INVALID_ARGUMENT", f"the gzip body is damaged ({exc})") from None
    if len(out) > max_bytes:
        raise Rejected(413, "RESOURCE_EXHAUSTED", f"the body inflates to more than {max_bytes} bytes")
    if not inflater.eof:
        raise Rejected(400, "INVALID_ARGUMENT", "the gzip body is truncated")
    return out


def decompress(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """The body without its Content-Encoding (identity or gzip); Rejected for anything else."""
    coding = (content_encoding or "identity").strip().lower()
    if coding in ("", "identity"):
        return body
    if coding in ("gzip", "x-gzip"):
        return _gunzip(body, max_bytes)
    raise Rejected(415, "INVALID_ARGUMENT", f"unsupported Content-Encoding {content_encoding!r}: use gzip or none")


def _message(signal: Signal):  # type: ignore[no-untyped-def]
    if signal is Signal.traces:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        return ExportTraceServiceRequest()
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    return ExportLogsServiceRequest()


def _decode_protobuf(signal: Signal, body: bytes) -> int:
    from google.protobuf.message import DecodeError

    request = _message(signal)
    try:
        request.ParseFromString(body)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise Rejected(400, "INVALID_ARGUMENT", f"not an OTLP {signal.value} protobuf message ({exc})") from None
    if signal is Signal.traces:
        items = [sp for rs in request.resource_spans for ss in rs.scope_spans for sp in ss.spans]
    else:
        items = [lr for rl in request.resource_logs for sl in rl.scope_logs for lr in sl.log_records]
    if not items and body:
        request.DiscardUnknownFields()
        if request.ByteSize() == 0:  # random bytes can parse as nothing but unknown fields
            raise Rejected(400, "INVALID_ARGUMENT", f"not an OTLP {signal.value} protobuf message (only unknown fields)")
    return len(items)


def _json_list(obj: object, camel: str, snake: str) -> list[object]:
    if not isinstance(obj, dict):
        raise Rejected(400, "INVALID_ARGUMENT", f"malformed OTLP JSON: expected an object holding {camel!r}")
    value = obj.get(camel, obj.get(snake))
    if value is None:
        return []
    if not isinstance(value, list):
        raise Rejected(400, "INVALID_ARGUMENT", f"malformed OTLP JSON: {camel!r} is not a list")
    return value


_JSON_PATHS = {
    Signal.traces: (("resourceSpans", "resource_spans"), ("scopeSpans", "scope_spans"), ("spans", "spans")),
    Signal.logs: (("resourceLogs", "resource_logs"), ("scopeLogs", "scope_logs"), ("logRecords", "log_records")),
}


def _decode_json(signal: Signal, body: bytes) -> int:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Rejected(400, "INVALID_ARGUMENT", f"not valid JSON ({exc})") from None
    outer, middle, inner = _JSON_PATHS[signal]
    if not isinstance(doc, dict) or (doc and outer[0] not in doc and outer[1] not in doc):
        raise Rejected(400, "INVALID_ARGUMENT", f"JSON, but not an OTLP {signal.value} export (no {outer[0]!r})")
    items = [it for r in _json_list(doc, *outer) for s in _json_list(r, *middle) for it in _json_list(s, *inner)]
    if not all(isinstance(it, dict) for it in items):
        raise Rejected(400, "INVALID_ARGUMENT", f"malformed OTLP JSON: an entry of {inner[0]!r} is not an object")
    if signal is Signal.traces and items:
        _check_spans_json(body)
    return len(items)


def _check_spans_json(body: bytes) -> None:
    """Whole-request checks the importer makes (attribute shapes); its per-span errors are left to ingest."""
    from tracekit.errors import SpoolError
    from tracekit.importers.otlp import parse_otlp

    try:
        parse_otlp(body, "request")
    except SpoolError as exc:
        raise Rejected(400, "INVALID_ARGUMENT", str(exc).removeprefix("request: ")) from None


def decode_request(
    signal: Signal, body: bytes, encoding: Encoding, *, content_encoding: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Batch:
    """Validate one export request body; returns the `Batch` to spool or raises `Rejected`.

    >>> from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    >>> req = ExportTraceServiceRequest()
    >>> span = req.resource_spans.add().scope_spans.add().spans.add(name="GET /", trace_id=b"\\x01" * 16, span_id=b"\\x02" * 8)
    >>> batch = decode_request(Signal.traces, req.SerializeToString(), Encoding.protobuf)
    >>> batch.records, batch.encoding.value
    (1, 'protobuf')
    >>> try:
    ...     decode_request(Signal.traces, b"\\xff\\xff garbage", Encoding.protobuf)
    ... except Rejected as exc:
    ...     print(exc.http_status, exc.grpc_code)
    400 INVALID_ARGUMENT
    """
    if len(body) > max_bytes:
        raise Rejected(413, "RESOURCE_EXHAUSTED", f"the body has {len(body)} bytes, over the limit of {max_bytes}")
    body = decompress(body, content_encoding, max_bytes)
    if encoding is Encoding.protobuf:
        records = _decode_protobuf(signal, body)
    else:
        records = _decode_json(signal, body)
    return Batch(signal, encoding, body, records)


def gzip_bytes(data: bytes) -> bytes:
    """gzip `data` (tests and the benchmark build compressed requests with it)."""
    return gzip.compress(data, compresslevel=1)
