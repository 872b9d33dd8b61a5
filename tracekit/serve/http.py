"""OTLP/HTTP front end (Starlette app, served by uvicorn): POST /v1/traces and /v1/logs, protobuf or JSON, gzip.

Responses follow the OTLP/HTTP specification: 200 with an empty Export*ServiceResponse on
success; on failure a ``google.rpc.Status`` body in the request's encoding with 400 (malformed),
401 (token), 413 (too large), 415 (content type or encoding) or 503 with ``Retry-After`` (the
spool has no room: retry later). The body is validated and made durable on a worker thread before
the response is sent, so the event loop never waits on a disk.
"""

from __future__ import annotations

import json
from typing import Any

from tracekit.serve.batches import Encoding, Rejected, Signal, encoding_of
from tracekit.serve.receiver import Receiver

__all__ = ["build_app", "status_body", "GRPC_CODES"]

# google.rpc.Code numbers of the statuses the receiver answers with
GRPC_CODES = {"INVALID_ARGUMENT": 3, "RESOURCE_EXHAUSTED": 8, "UNAUTHENTICATED": 16, "UNAVAILABLE": 14, "INTERNAL": 13}
_DRAIN_BYTES = 256 << 20  # an oversized body is read and dropped up to this (so the client reads the 413), then cut
RETRY_AFTER_S = 2


def status_body(code: str, message: str, encoding: Encoding) -> tuple[bytes, str]:
    """A google.rpc.Status body (and its media type) in the request's encoding."""
    if encoding is Encoding.json:
        return json.dumps({"code": GRPC_CODES[code], "message": message}).encode(), "application/json"
    from google.rpc.status_pb2 import Status

    return Status(code=GRPC_CODES[code], message=message).SerializeToString(), "application/x-protobuf"


def _success(signal: Signal, encoding: Encoding) -> tuple[bytes, str]:
    if encoding is Encoding.json:
        return b"{}", "application/json"
    if signal is Signal.traces:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse as Response
    else:
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse as Response
    return Response().SerializeToString(), "application/x-protobuf"


async def _read_body(request: Any, limit: int) -> bytes | None:
    """The request body, or None when it is over `limit` (the rest is drained, up to a bound)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            if size > max(limit * 4, _DRAIN_BYTES):
                return None
            continue  # keep draining so the client can read our 413 instead of a reset
        chunks.append(chunk)
    return b"".join(chunks) if size <= limit else None


def build_app(receiver: Receiver) -> Any:
    """The Starlette application answering OTLP/HTTP exports into `receiver`."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from tracekit.serve.spool import SpoolFull

    def failure(status: int, code: str, message: str, encoding: Encoding, **headers: str) -> Response:
        body, media = status_body(code, message, encoding)
        return Response(body, status_code=status, media_type=media, headers=headers or None)

    def endpoint(signal: Signal):  # type: ignore[no-untyped-def]
        async def export(request: Request) -> Response:
            try:
                encoding = encoding_of(request.headers.get("content-type"))
            except Rejected as exc:
                receiver.count_failure(exc.message, retry=False)
                return failure(exc.http_status, exc.grpc_code, exc.message, Encoding.protobuf)
            if not receiver.authorized(request.headers.get("authorization")):
                return failure(401, "UNAUTHENTICATED", "missing or wrong token in the Authorization header", encoding)
            limit = receiver.max_bytes
            body = await _read_body(request, limit)
            if body is None:
                receiver.count_failure("request too large", retry=False)
                return failure(413, "RESOURCE_EXHAUSTED", f"the body is over the limit of {limit} bytes", encoding,
                               connection="close")
            try:
                await run_in_threadpool(receiver.accept, signal, body, encoding,
                                        request.headers.get("content-encoding"))
            except Rejected as exc:
                return failure(exc.http_status, exc.grpc_code, exc.message, encoding)
            except SpoolFull as exc:
                return failure(503, "UNAVAILABLE", f"{exc}; retry later", encoding, **{"retry-after": str(RETRY_AFTER_S)})
            body, media = _success(signal, encoding)
            return Response(body, media_type=media)

        return export

    return Starlette(routes=[
        Route("/v1/traces", endpoint(Signal.traces), methods=["POST"]),
        Route("/v1/logs", endpoint(Signal.logs), methods=["POST"]),
    ])
