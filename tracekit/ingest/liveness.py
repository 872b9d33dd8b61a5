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


def refresh_run(con: duckdb.DuckDBPyConnection, run_id: str, manifest: dict[str, Any] | None,
                hosts: dict[str, dict[str, Any]] | None = None) -> None:
    """(Re)compute the run row from its manifest, its hosts' manifests and what was ingested.

    A multi-host run is ingested from several spool directories, in any order: the host manifests
    (``host.<name>.json``, see ``tracekit.capture.multihost``) accumulate in ``attributes.hosts``,
    and what the run row says (times, exit code, status) is computed over all of them.
    """
    manifest = manifest or {}
    existing = run_header(con, run_id)
    known = dict(existing[2]) if existing else {}
    all_hosts: dict[str, dict[str, Any]] = {**(known.get("hosts") or {})}
    for host, data in (hosts or {}).items():
        all_hosts[host] = {k: data.get(k) for k in ("started_ns", "ended_ns", "exit_code", "pid") if k in data}
    files = run_processes(con, run_id)
    first_span, last_span, root_errors = span_bounds(con, run_id)
    here = socket.gethostname()

    def running(host: str | None, pid: int | None) -> bool:
        if host == here:
            return pid_alive(pid)
        # another host's process: running while that host's `tracekit record` has not ended
        return host in all_hosts and all_hosts[host].get("ended_ns") is None

    abrupt = [pid for host, pid, _s, _e, clean in files if not clean and not running(host, pid)]
    still_running = [pid for host, pid, _s, _e, clean in files if not clean and running(host, pid)]
    starts = [s for _h, _p, s, _e, _c in files if s] + ([first_span] if first_span else [])
    ends = [e for _h, _p, _s, e, _c in files if e] + ([last_span] if last_span else [])
    exit_code = manifest.get("exit_code")
    host_running = False
    if all_hosts:
        codes = [h.get("exit_code") for h in all_hosts.values()]
        failed = [c for c in codes if isinstance(c, int) and c != 0]
        exit_code = failed[0] if failed else (0 if all(c == 0 for c in codes) else None)
        starts += [h["started_ns"] for h in all_hosts.values() if h.get("started_ns")]
        hosts_ended = [h.get("ended_ns") for h in all_hosts.values()]
        host_running = any(e is None for e in hosts_ended)  # a host still runs its command
        manifest = {**manifest, "ended_ns": max(hosts_ended)} if all(hosts_ended) else \
            {k: v for k, v in manifest.items() if k != "ended_ns"}
    if abrupt:
        status = "aborted"
    elif isinstance(exit_code, int) and exit_code != 0:
        status = "error"
    elif still_running or host_running or (manifest and "ended_ns" not in manifest and pid_alive(manifest.get("pid"))):
        status = "running"
    elif exit_code is None and root_errors:
        status = "error"
    else:
        status = "ok"
    attributes = {k: v for k, v in known.items() if k not in ("abrupt_pids", "exit_code")}
    attributes.update(manifest.get("attributes") or {})
    if all_hosts:
        attributes["hosts"] = all_hosts
    if abrupt:
        attributes["abrupt_pids"] = sorted(abrupt)
    if exit_code is not None:
        attributes["exit_code"] = exit_code
    if manifest.get("argv"):
        attributes.setdefault("argv", manifest["argv"])
    if existing and not manifest:
        kind, name = existing[0], existing[1]
    else:
        kind, name = manifest.get("kind") or "service", manifest.get("name") or run_id[:12]
    if all_hosts:
        started = min(([manifest["started_ns"]] if manifest.get("started_ns") else []) + starts, default=None)
    else:
        started = manifest.get("started_ns") or (min(starts) if starts else None)
    upsert_run(
        con, run_id, kind=kind, name=name, started_ns=started,
        ended_ns=manifest.get("ended_ns") or (max(ends) if ends else None),
        status=status, attributes=attributes,
    )
