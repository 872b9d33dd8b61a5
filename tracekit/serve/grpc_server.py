"""OTLP/gRPC front end: the opentelemetry-proto TraceService and LogsService Export methods on a grpcio server.

The services and methods are registered under the names the opentelemetry-proto descriptors
give, with the request left as bytes so the receiver validates it exactly as it validates an
OTLP/HTTP protobuf body (grpcio has already undone gRPC compression). Failures map to gRPC status
codes: INVALID_ARGUMENT (malformed), RESOURCE_EXHAUSTED (too large; grpcio itself refuses a message
over the limit), UNAUTHENTICATED (token), UNAVAILABLE (no room in the spool: retry later).
"""

from __future__ import annotations

from typing import Any

from tracekit.errors import ConfigError
from tracekit.serve.batches import Encoding, Rejected, Signal
from tracekit.serve.receiver import Receiver

__all__ = ["start_grpc", "grpc_target"]


def grpc_target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _services() -> dict[Signal, tuple[str, Any]]:
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as traces

    return {
        Signal.traces: (traces.DESCRIPTOR.services_by_name["TraceService"].full_name, traces.ExportTraceServiceResponse),
        Signal.logs: (logs.DESCRIPTOR.services_by_name["LogsService"].full_name, logs.ExportLogsServiceResponse),
    }


def _handler(receiver: Receiver, signal: Signal, response_type: Any) -> Any:
    import grpc

    from tracekit.serve.spool import SpoolFull

    def export(request: bytes, context: Any) -> Any:
        metadata = dict(context.invocation_metadata() or ())
        if not receiver.authorized(metadata.get("authorization")):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token in the authorization metadata")
        try:
            receiver.accept(signal, request, Encoding.protobuf)
        except Rejected as exc:
            context.abort(getattr(grpc.StatusCode, exc.grpc_code), exc.message)
        except SpoolFull as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{exc}; retry later")
        return response_type()

    return grpc.unary_unary_rpc_method_handler(
        export, request_deserializer=None, response_serializer=response_type.SerializeToString
    )


def start_grpc(receiver: Receiver, host: str, port: int, *, workers: int = 8) -> tuple[Any, int]:
    """Start the gRPC server on `host:port` (port 0: any free port); returns (server, bound port)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    server = grpc.server(
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tracekit-grpc"),
        options=[("grpc.max_receive_message_length", receiver.max_bytes), ("grpc.so_reuseport", 0)],
    )
    for signal, (service, response_type) in _services().items():
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            service, {"Export": _handler(receiver, signal, response_type)}),))
    try:
        bound = server.add_insecure_port(grpc_target(host, port))
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen for OTLP/gRPC on {grpc_target(host, port)}: {exc}") from None
    if not bound:
        raise ConfigError(f"cannot listen for OTLP/gRPC on {grpc_target(host, port)} (port in use?)")
    server.start()
    return server, bound
