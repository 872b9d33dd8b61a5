"""The OTLP receiver behind `tracekit serve`: OTLP/HTTP and OTLP/gRPC into a durable spool that the ingest loop loads.

Never opens the store for writing itself: the ingest pipeline's entry point does, once per cycle.
"""

from tracekit.serve.server import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, ServeOptions, ServeSummary, serve

__all__ = ["serve", "ServeOptions", "ServeSummary", "DEFAULT_HTTP_PORT", "DEFAULT_GRPC_PORT"]
