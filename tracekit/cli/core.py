"""Core commands: runs, spans, sql, ingest, export, record."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Optional

import typer

from tracekit.cli.root import app
from tracekit.cli.output import DB_OPTION, FORMAT_OPTION, Format, emit, emit_object, fmt_ns



@app.command()
def runs(
    kind: Optional[str] = typer.Option(None, help="Only runs of this kind (training, agents, service, campaign)."),
    limit: int = typer.Option(1000, help="At most this many runs, newest first."),
    db: Optional[Path] = DB_OPTION,
    fmt: Format = FORMAT_OPTION,
) -> None:
    """List runs: id, name, kind, start, duration, spans, errors, status, stored findings and the top one."""
    from tracekit.store.db import connect
    from tracekit.store.queries import list_runs

    with connect(db, read_only=True) as con:
        records = list_runs(con, kind=kind, limit=limit)
    view = [{**r, "start": fmt_ns(r["started_ns"]),
             "duration": f"{r['duration_ms'] / 1000:.2f}s" if r["duration_ms"] is not None else ""} for r in records]
    emit(records, fmt, title="runs", table_view=view if fmt is Format.table else None,
         columns=["run_id", "name", "kind", "start", "duration", "spans", "errors", "status", "findings", "top_finding"]
         if fmt is Format.table else None)


@app.command()
def spans(
    run: str = typer.Argument(..., help="Run id, id prefix, or name."),
    errors: bool = typer.Option(False, "--errors", help="Only spans with error status."),
    node: Optional[str] = typer.Option(None, help="Only spans of this node (e.g. rank:2)."),
    name: Optional[str] = typer.Option(None, help="Only spans with this name."),
    limit: int = typer.Option(100, help="At most this many spans, in start order."),
    db: Optional[Path] = DB_OPTION,
    fmt: Format = FORMAT_OPTION,
) -> None:
    """List a run's spans (name, node, status, duration, status message)."""
    from tracekit.store.db import connect
    from tracekit.store.queries import list_spans, resolve_run

    with connect(db, read_only=True) as con:
        run_id = resolve_run(con, run)
        records = list_spans(con, run_id, errors_only=errors, node=node, name=name, limit=limit)
    emit(records, fmt, title=f"spans of {run}",
         columns=["span_id", "name", "node", "status", "duration_ms", "status_message"] if fmt is Format.table else None)


@app.command()
def sql(
    query: str = typer.Argument(..., help="A read-only SQL query over runs, spans, events, links, collectives, steps, faults, findings."),
    limit: Optional[int] = typer.Option(None, help="At most this many rows."),
    db: Optional[Path] = DB_OPTION,
    fmt: Format = FORMAT_OPTION,
) -> None:
    """Run a read-only SQL query against the store (no access to other files)."""
    from tracekit.store.db import connect
    from tracekit.store.queries import run_sql

    with connect(db, read_only=True) as con:
        names, data = run_sql(con, query, limit=limit)
    emit([dict(zip(names, row)) for row in data], fmt, columns=names)


@app.command()
def ingest(
    paths: list[Path] = typer.Argument(..., help="Spool directories, spool files (.jsonl) or OTLP files (.otlp.json, .pb)."),
    db: Optional[Path] = DB_OPTION,
    fmt: Format = FORMAT_OPTION,
) -> None:
    """Load spool and OTLP files into the store (idempotent; bad records are quarantined)."""
    from tracekit.ingest import ingest_paths

    report = _with_progress(lambda progress: ingest_paths(paths, db, progress=progress), "ingesting")
    _print_ingest_report(report, fmt)
    if report.rejected:
        raise typer.Exit(2)


def _with_progress(work, label: str):  # type: ignore[no-untyped-def]
    """Run `work(progress)` under a rich progress bar on stderr (hidden when not a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(label, BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                  transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(label, total=None)

        def progress(done: int, total: int, _what: str) -> None:
            bar.update(task, completed=done, total=total)

        return work(progress)


def _print_ingest_report(report, fmt: Format) -> None:  # type: ignore[no-untyped-def]
    import sys

    if fmt is Format.json:
        emit_object(report.to_dict(), fmt)
    else:
        print(f"ingested {report.records} records from {report.files} file(s) into {len(report.runs)} run(s)"
              + (f"; {report.unchanged_files} file(s) had nothing new" if report.unchanged_files else ""))
    for q in report.quarantined[:20]:
        where = q.source if q.line is None else f"{q.source}:{q.line}"
        print(f"quarantined: {where} id={q.record_id}: {q.error}", file=sys.stderr)
    if len(report.quarantined) > 20:
        print(f"... and {len(report.quarantined) - 20} more quarantined (see the quarantine table)", file=sys.stderr)
    for source, nbytes in report.torn:
        print(f"torn last record skipped: {source} ({nbytes} bytes; the writer was killed mid-record)", file=sys.stderr)
    for source, error in report.rejected:
        print(f"error: rejected whole file: {error}", file=sys.stderr)


class ExportFormat(str, enum.Enum):
    chrome_trace = "chrome-trace"
    parquet = "parquet"
    otlp = "otlp"


@app.command()
def export(
    run: str = typer.Argument(..., help="Run id, id prefix, or name."),
    fmt: Optional[ExportFormat] = typer.Option(None, "--format", "-f", help="chrome-trace (a JSON file) or parquet (a directory)."),
    out: Optional[Path] = typer.Option(None, "-o", "--output", help="Output file (chrome-trace) or directory (parquet)."),
    to: Optional[tuple[str, str]] = typer.Option(
        None, "--to", metavar="phoenix URL",
        help="Post root-cause and symptom labels as span annotations to a Phoenix server (sends the spans if it lacks them)."),
    db: Optional[Path] = DB_OPTION,
) -> None:
    """Export a run as a Chrome trace (Perfetto, chrome://tracing), hive-partitioned Parquet or OTLP; or its findings to Phoenix."""
    from tracekit.store.db import connect
    from tracekit.store.export import write_chrome_trace, write_parquet
    from tracekit.store.queries import resolve_run

    from tracekit.errors import ConfigError

    if to is not None and to[0] != "phoenix":
        raise ConfigError(f"unknown destination {to[0]!r}: use --to phoenix URL")
    if to is None and (fmt is None or out is None):
        raise ConfigError("give --format and -o, or --to phoenix URL")
    with connect(db, read_only=True, sandbox=False) as con:
        run_id = resolve_run(con, run)
        if to is not None:
            from tracekit.serve.phoenix import post_run_to_phoenix

            n, sent = post_run_to_phoenix(con, run_id, to[1])
            print(f"posted {n} span annotation(s) to {to[1]}" + (" (after sending the run's spans)" if sent else ""))
        elif fmt is ExportFormat.otlp:  # a file (.pb, .json) or an OTLP/HTTP URL; findings become spans
            from tracekit.serve.otlp_out import export_run

            n, k = export_run(con, run_id, str(out))
            print(f"wrote {n} spans and {k} finding span(s) to {out}")
        elif fmt is ExportFormat.chrome_trace:
            n = write_chrome_trace(con, run_id, out)
            print(f"wrote {n} spans to {out} (open in https://ui.perfetto.dev or chrome://tracing)")
        else:
            counts = write_parquet(con, [run_id], out)
            print(f"wrote {out}/<table>/run_id={run_id}/: " + ", ".join(f"{t} {n}" for t, n in counts.items() if n))


@app.command(context_settings={"allow_interspersed_args": False})
def record(
    command: list[str] = typer.Argument(..., help="The command to run, after `--`.", metavar="-- CMD..."),
    run: Optional[str] = typer.Option(None, "--run", help="Run name [default: the command's name]."),
    kind: Optional[str] = typer.Option(None, help="Run kind: training, agents, service or campaign [default: guessed]."),
    spool_dir: Optional[Path] = typer.Option(None, envvar="TRACEKIT_SPOOL_DIR", help="Spool root [default: ./.tracekit/spool]."),
    db: Optional[Path] = DB_OPTION,
    run_id: Optional[str] = typer.Option(None, "--run-id", help="Join this run (any text; the same on every host) "
                                         "[default: from torchrun's --rdzv-id, else new]."),
) -> None:
    """Run a command with capture on in every Python process it starts; ingest; print the run id.

    Exits with the command's own exit code.
    """
    from tracekit.recorder import record_command

    result = record_command(command, run_name=run, kind=kind, spool_dir=spool_dir, db=db, run_id=run_id)
    print(result.run_id)
    raise typer.Exit(result.exit_code)


@app.command("version")
def version() -> None:
    """Print tracekit's version."""
    from tracekit import __version__

    print(__version__)


