"""`tracekit dashboard`: serve the Streamlit dashboard (dashboard/app.py, shipped as tracekit/dashboard) locally.

The command replaces itself with the Streamlit server (exec), so `kill <pid>` and Ctrl-C reach the
server itself and no orphan can keep the port.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Optional

import typer

from tracekit.cli.root import app
from tracekit.cli.output import DB_OPTION
from tracekit.errors import ConfigError

_PACKAGE = Path(__file__).resolve().parents[1]  # tracekit/
# an installed wheel ships the app as tracekit/dashboard; a source checkout keeps it at the top level
APP_CANDIDATES = (_PACKAGE / "dashboard" / "app.py", _PACKAGE.parent / "dashboard" / "app.py")


def app_path() -> Path:
    """Where the dashboard's Streamlit entry point is, installed or in a source checkout."""
    for candidate in APP_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"the dashboard app is missing (looked for {APP_CANDIDATES[0]}): reinstall tracekit "
                      "(pip install 'tracekit[dashboard]')")


def streamlit_command(port: int, host: str) -> list[str]:
    """The `streamlit run` command line for the dashboard: headless, no telemetry, no file watcher."""
    return [sys.executable, "-m", "streamlit", "run", str(app_path()), "--server.headless", "true",
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
    from tracekit.cli.extras import require
    from tracekit.config import db_path
    from tracekit.store.db import connect

    require("dashboard")
    store = db_path(db).absolute()
    connect(store, read_only=True).close()  # a clear error now rather than inside the page
    port = port or free_port(host)
    print(f"tracekit dashboard: http://{host}:{port}/  (store {store}; Ctrl-C stops it)", flush=True)
    command = streamlit_command(port, host)
    env = {**os.environ, "TRACEKIT_DB": str(store), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, env)  # the server takes this process's pid: signals go straight to it
