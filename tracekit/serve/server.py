"""Run `tracekit serve`: OTLP/HTTP (uvicorn) and OTLP/gRPC (grpcio) into one spool, the ingest loop beside them.

`serve` blocks until SIGTERM or SIGINT, then stops taking requests, lets in-flight ones finish,
runs a last ingest cycle and returns a `ServeSummary`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tracekit import conventions as conv
from tracekit.errors import ConfigError
from tracekit.serve.batches import DEFAULT_MAX_BYTES, Signal
from tracekit.serve.receiver import Receiver, check_bind

__all__ = ["ServeOptions", "ServeSummary", "serve", "DEFAULT_HTTP_PORT", "DEFAULT_GRPC_PORT"]

DEFAULT_HTTP_PORT = 4318
DEFAULT_GRPC_PORT = 4317


@dataclass(frozen=True)
class ServeOptions:
    """Everything `tracekit serve` is told; a port of 0 picks a free one, None turns that transport off."""

    host: str = "127.0.0.1"
    http_port: int | None = DEFAULT_HTTP_PORT
    grpc_port: int | None = DEFAULT_GRPC_PORT
    spool_dir: Path = Path(".tracekit/spool/otlp")
    db: str | None = None
    token: str | None = None
    max_bytes: int = DEFAULT_MAX_BYTES  # largest request body, compressed or not
    max_pending_bytes: int | None = None  # spool limit: past it, senders are told to retry later
    ingest: bool = True  # False: leave the spool to `tracekit ingest SPOOL/traces`
    run_by: str | None = None  # run keys (see importers/otlp_runs.run_by); default TRACEKIT_RUN_BY, else
    # session.id,gen_ai.conversation.id,trace
    interval_s: float = 1.0
    progress_s: float = 2.0
    idle_s: float = 30.0  # a run with no new spans for this long is no longer `running`


@dataclass
class ServeSummary:
    http_port: int | None = None
    grpc_port: int | None = None
    batches: int = 0
    spans: int = 0
    log_records: int = 0
    refused: int = 0
    ingested_spans: int = 0
    runs: list[str] = field(default_factory=list)
    pending_batches: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen for OTLP/HTTP on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(256)
    sock.setblocking(False)
    return sock


@contextlib.contextmanager
def _on_signals(handler: Callable[[], None]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: handler()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def serve(options: ServeOptions, *, out: TextIO | None = sys.stderr, stop: threading.Event | None = None) -> ServeSummary:
    """Receive OTLP until SIGTERM/SIGINT (or `stop` is set); returns what was received and ingested."""
    import uvicorn

    from tracekit.serve.grpc_server import grpc_target, start_grpc
    from tracekit.serve.http import build_app
    from tracekit.serve.loop import IngestLoop
    from tracekit.serve.spool import BatchSpool

    check_bind(options.host, options.token)
    # the ingest loop runs in this process: spans without a session become one run per trace
    os.environ["TRACEKIT_RUN_BY"] = options.run_by or os.environ.get("TRACEKIT_RUN_BY") or ",".join(conv.RUN_BY_ENDPOINT)
    if options.http_port is None and options.grpc_port is None:
        raise ConfigError("both transports are off: give an HTTP port, a gRPC port or both")
    from tracekit.importers.otlp_runs import run_by

    spool = BatchSpool(options.spool_dir, max_pending_bytes=options.max_pending_bytes,
                       run_by=run_by(os.environ["TRACEKIT_RUN_BY"]))
    receiver = Receiver(spool, token=options.token, max_bytes=options.max_bytes)
    summary = ServeSummary()
    http_sock = _listen(options.host, options.http_port) if options.http_port is not None else None

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # serve() owns the signals (uvicorn re-raises them)
            yield

    config = uvicorn.Config(
        build_app(receiver), log_level="warning", http="h11", lifespan="off", access_log=False,
        timeout_keep_alive=30, timeout_graceful_shutdown=10,
    )
    http_server = _Server(config)
    stopping = stop or threading.Event()

    def request_stop() -> None:
        stopping.set()
        http_server.should_exit = True

    grpc_server = None
    loop = IngestLoop(receiver, options.db, ingest=options.ingest, interval_s=options.interval_s,
                      progress_s=options.progress_s, out=out, idle_s=options.idle_s)
    try:
        if options.grpc_port is not None:
            grpc_server, summary.grpc_port = start_grpc(receiver, options.host, options.grpc_port)
        if http_sock is not None:
            summary.http_port = http_sock.getsockname()[1]
        loop.start()
        # the handlers are in place before the ready line: a SIGTERM right after it still stops cleanly
        # (one last ingest cycle), never by the default action
        with _on_signals(request_stop):
            if out is not None:
                where = []
                if summary.http_port is not None:
                    where.append(f"OTLP/HTTP on http://{grpc_target(options.host, summary.http_port)}")
                if summary.grpc_port is not None:
                    where.append(f"OTLP/gRPC on {grpc_target(options.host, summary.grpc_port)}")
                mode = f"ingesting into {options.db or 'the store'}" if options.ingest else "not ingesting (--no-ingest)"
                print(f"serve: {' and '.join(where)}; spool {spool.root}; {mode}; stop with Ctrl-C", file=out,
                      flush=True)
            if stop is not None:  # a caller's event also stops the HTTP server
                threading.Thread(target=lambda: (stopping.wait(), request_stop()), daemon=True).start()
            if http_sock is not None:
                http_server.run(sockets=[http_sock])
            else:
                stopping.wait()
    finally:
        if grpc_server is not None:
            grpc_server.stop(grace=5).wait()
        if http_sock is not None:
            http_sock.close()
        loop.stop()
    stats = receiver.stats
    summary.batches, summary.spans, summary.log_records = stats.batches, stats.spans, stats.log_records
    summary.refused = stats.rejected + stats.unauthorized + stats.retry_later
    summary.ingested_spans, summary.runs = loop.ingested_spans, sorted(loop.runs)
    summary.pending_batches = len(spool.pending(Signal.traces))
    return summary
