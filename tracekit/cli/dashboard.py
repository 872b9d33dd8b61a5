"""`tracekit dashboard`: serve the Streamlit dashboard (dashboard/app.py) on a local address."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer

from tracekit.cli import app
from tracekit.cli.output import DB_OPTION
from tracekit.errors import ConfigError

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"


def streamlit_command(port: int, host: str) -> list[str]:
    """The `streamlit run` command line for the dashboard: headless, no telemetry, no file watcher."""
    if not APP.exists():
        raise ConfigError(f"the dashboard app is missing ({APP}): install tracekit from its source tree "
                          "(pip install -e '.[dashboard]')")
    return [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
            "--server.address", host, "--server.port", str(port), "--server.fileWatcherType", "none",
            "--server.runOnSave", "false", "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "viewer", "--theme.base", "light"]


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@app.command()
def dashboard(
    port: int = typer.Option(8501, help="Port to serve on (0 picks a free one)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (keep it local: the store is not protected)."),
    db: Optional[Path] = DB_OPTION,
) -> None:
    """Serve the dashboard (runs, timelines, training ranks, agent graphs, campaigns, SQL); prints its URL."""
    from tracekit.config import db_path
    from tracekit.store.db import connect

    store = db_path(db).absolute()
    connect(store, read_only=True).close()  # a clear error now rather than inside the page
    port = port or free_port(host)
    print(f"tracekit dashboard: http://{host}:{port}/  (store {store}; Ctrl-C stops it)", flush=True)
    env = {**os.environ, "TRACEKIT_DB": str(store), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    raise typer.Exit(subprocess.call(streamlit_command(port, host), env=env))
