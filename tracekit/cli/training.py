"""Training commands: `tracekit anomalies RUN` (C4-style collective-anomaly detection), live with `--follow`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tracekit.cli.root import app
from tracekit.cli.output import DB_OPTION, FORMAT_OPTION, Format, emit


@app.command()
def anomalies(
    run: str = typer.Argument(..., help="Run id, id prefix, or name."),
    db: Optional[Path] = DB_OPTION,
    fmt: Format = FORMAT_OPTION,
    follow: bool = typer.Option(False, "--follow", help="Follow the run live: ingest new spool records every "
                                "--interval seconds and print each new finding as it appears, until the run ends."),
    spool: list[Path] = typer.Option([], "--spool", help="--follow: a spool root or run directory to ingest from "
                                     "(repeat for several hosts) [default: TRACEKIT_SPOOL_DIR or ./.tracekit/spool]."),
    interval: float = typer.Option(1.0, "--interval", min=0.05, help="--follow: seconds between polls."),
    exec_cmd: Optional[str] = typer.Option(None, "--exec", help="--follow: run this shell command on each new "
                                           "finding (TRACEKIT_FINDING holds it as JSON)."),
    exit_on_finding: bool = typer.Option(False, "--exit-on-finding", help="--follow: stop at the first finding, "
                                         "exit code 1."),
    wait: float = typer.Option(300.0, "--wait", min=0.0, help="--follow: how long to wait for a run that has not "
                               "written anything yet before giving up (exit 2); 0 gives up at once."),
) -> None:
    """Name the straggler, throttled, hung, crashed or non-finite rank and the slow link of a training run.

    Findings are stored in the findings table (analysis `collectives`) and printed most certain first;
    `--format json` prints one JSON array (empty for a healthy run). With `--follow`, each new finding
    is printed as soon as it is found (`--format json`: one JSON object per line), and the command
    stops when the run has ended (or on Ctrl-C / SIGTERM).
    """
    if follow:
        _follow(run, db, fmt, spool, interval, exec_cmd, exit_on_finding, wait)
        return
    from tracekit.analysis.collectives import detect_run
    from tracekit.store.db import connect
    from tracekit.store.queries import resolve_run

    with connect(db, create=False) as con:
        found = detect_run(con, resolve_run(con, run))
    view = [{**f, "evidence": f["summary"]} for f in found]
    emit(found, fmt, title=f"anomalies of {run}", table_view=view if fmt is Format.table else None,
         columns=["kind", "subject", "first_step", "confidence", "evidence"] if fmt is Format.table else None)


def _follow(run: str, db: Optional[Path], fmt: Format, spool: list[Path], interval: float,
            exec_cmd: Optional[str], exit_on_finding: bool, wait: float) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys
    import threading

    from tracekit.follow import FollowOptions, default_spools, follow

    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    children: list[subprocess.Popen[bytes]] = []

    def on_finding(f: dict) -> bool:
        line = json.dumps(f, default=str) if fmt is Format.json else (
            f"{f['kind']:<10} {f['subject']:<10} step {f['first_step']}  confidence {f['confidence']:.2f}  {f['summary']}")
        print(line, flush=True)
        if exec_cmd:
            env = dict(os.environ, TRACEKIT_FINDING=json.dumps(f, default=str), TRACEKIT_FINDING_KIND=f["kind"],
                       TRACEKIT_FINDING_SUBJECT=f["subject"])
            children.append(subprocess.Popen(exec_cmd, shell=True, env=env))
        return not exit_on_finding

    try:
        found = follow(run, db=db, spools=default_spools(spool), on_finding=on_finding, stop=stop,
                       options=FollowOptions(interval_s=interval, wait_s=wait),
                       on_wait=lambda: print(f"waiting up to {wait:g} s for run {run!r} to write (--wait)",
                                             file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        found = []
    finally:
        signal.signal(signal.SIGTERM, previous)
        for child in children:
            child.wait()
    if exit_on_finding and found:
        raise typer.Exit(1)


def _register_import() -> None:
    from tracekit.cli.agents import import_app

    @import_app.command("flight-recorder")
    def flight_recorder(
        files: list[Path] = typer.Argument(..., help="Dump files, one per rank (<prefix><rank>, pickle or JSON), "
                                           "or directories of them."),
        name: Optional[str] = typer.Option(None, "--name", help="Run name [default: flight-recorder-<directory>]."),
        db: Optional[Path] = DB_OPTION,
        fmt: Format = FORMAT_OPTION,
    ) -> None:
        """Import PyTorch Flight Recorder dumps as a training run's collectives; print the run id.

        Then `tracekit anomalies RUN` names a hung or crashed rank and the process group and sequence
        number where it stopped. Importing the same files again replaces the run.
        """
        from tracekit.cli.output import emit_object
        from tracekit.ingest.flight_recorder import import_flight_recorder

        result = import_flight_recorder(files, db, name=name)
        if fmt is Format.json:
            emit_object(result.to_dict(), fmt)
        else:
            print(result.run_id)


_register_import()
