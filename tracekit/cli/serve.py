"""`tracekit serve`: the OTLP receiver (thin glue over tracekit.serve)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tracekit.cli.root import app
from tracekit.cli.output import DB_OPTION, FORMAT_OPTION, Format, emit_object


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback needs --token."),
    http_port: int = typer.Option(4318, "--http-port", help="OTLP/HTTP port (/v1/traces, /v1/logs); -1 turns it off."),
    grpc_port: int = typer.Option(4317, "--grpc-port", help="OTLP/gRPC port; -1 turns it off."),
    spool: Optional[Path] = typer.Option(
        None, "--spool", help="Where accepted batches are kept until ingested [default: $TRACEKIT_SPOOL_DIR/otlp]."),
    token: Optional[str] = typer.Option(
        None, envvar="TRACEKIT_SERVE_TOKEN",
        help="Required in the Authorization header ('Bearer <token>'); needed to bind a non-loopback address."),
    max_mb: float = typer.Option(64.0, "--max-mb", help="Largest request body accepted (MB, before and after gzip)."),
    max_spool_mb: Optional[float] = typer.Option(
        None, "--max-spool-mb", help="Past this much un-ingested spool, senders are told to retry later."),
    no_ingest: bool = typer.Option(False, "--no-ingest", help="Only spool; load later with `tracekit ingest SPOOL/traces`."),
    interval: float = typer.Option(1.0, help="Seconds between ingest cycles."),
    idle: float = typer.Option(30.0, help="A run with no new spans for this many seconds is no longer 'running'."),
    run_by: Optional[str] = typer.Option(
        None, "--run-by", envvar="TRACEKIT_RUN_BY",
        help="Span attributes that make a run, in order, then 'trace' [default: session.id,gen_ai.conversation.id,trace]."),
    db: Optional[Path] = DB_OPTION,
    fmt: Format = FORMAT_OPTION,
) -> None:
    """Receive OTLP traces and logs (HTTP 4318, gRPC 4317) and ingest them into the store until stopped."""
    from tracekit.config import spool_root
    from tracekit.serve import ServeOptions
    from tracekit.serve import serve as run_server

    options = ServeOptions(
        host=host, http_port=None if http_port < 0 else http_port, grpc_port=None if grpc_port < 0 else grpc_port,
        spool_dir=spool or spool_root() / "otlp", db=str(db) if db else None, token=token,
        max_bytes=int(max_mb * (1 << 20)),
        max_pending_bytes=int(max_spool_mb * (1 << 20)) if max_spool_mb is not None else None,
        ingest=not no_ingest, interval_s=interval, run_by=run_by, idle_s=idle,
    )
    summary = run_server(options)
    if fmt is Format.json:
        emit_object(summary.to_dict(), fmt)
    else:
        print(f"received {summary.spans} spans in {summary.batches} batches; ingested {summary.ingested_spans} spans "
              f"into {len(summary.runs)} run(s); {summary.refused} request(s) refused; "
              f"{summary.pending_batches} batch(es) left in the spool")
