"""Run liveness: a run's row (status, times, attributes) from its manifest and the processes its spool saw.

A process whose spool files have no footer was killed, unless it still runs on this host; a run
whose command exited non-zero is an error; a run still being written is ``running``.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import duckdb

from tracekit.store.load import run_header, run_processes, span_bounds, upsert_run


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """A spool run directory's run.json, or None when it is missing or unreadable."""
    try:
        manifest = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def refresh_run(con: duckdb.DuckDBPyConnection, run_id: str, manifest: dict[str, Any] | None) -> None:
    """(Re)compute the run row from its manifest and what was ingested."""
    manifest = manifest or {}
    files = run_processes(con, run_id)
    first_span, last_span, root_errors = span_bounds(con, run_id)
    here = socket.gethostname()
    abrupt = [pid for host, pid, _s, _e, clean in files if not clean and not (host == here and pid_alive(pid))]
    still_running = [pid for host, pid, _s, _e, clean in files if not clean and host == here and pid_alive(pid)]
    starts = [s for _h, _p, s, _e, _c in files if s] + ([first_span] if first_span else [])
    ends = [e for _h, _p, _s, e, _c in files if e] + ([last_span] if last_span else [])
    exit_code = manifest.get("exit_code")
    if abrupt:
        status = "aborted"
    elif isinstance(exit_code, int) and exit_code != 0:
        status = "error"
    elif still_running or (manifest and "ended_ns" not in manifest and pid_alive(manifest.get("pid"))):
        status = "running"
    elif exit_code is None and root_errors:
        status = "error"
    else:
        status = "ok"
    attributes = dict(manifest.get("attributes") or {})
    if abrupt:
        attributes["abrupt_pids"] = sorted(abrupt)
    if exit_code is not None:
        attributes["exit_code"] = exit_code
    if manifest.get("argv"):
        attributes.setdefault("argv", manifest["argv"])
    existing = run_header(con, run_id)
    if existing and not manifest:
        kind, name = existing[0], existing[1]
        attributes = {**existing[2], **attributes}
    else:
        kind, name = manifest.get("kind") or "service", manifest.get("name") or run_id[:12]
    upsert_run(
        con, run_id, kind=kind, name=name,
        started_ns=manifest.get("started_ns") or (min(starts) if starts else None),
        ended_ns=manifest.get("ended_ns") or (max(ends) if ends else None),
        status=status, attributes=attributes,
    )
