"""One run across hosts: the run id every host of a torchrun job derives alike, this host's name, per-host manifests.

A multi-host job runs one ``torchrun`` per host. They share nothing tracekit could use except what
torchrun itself shares: the rendezvous id (``--rdzv-id``, which torchrun hands its workers as
``TORCHELASTIC_RUN_ID``). Every host hashes it the same way, so every rank of every host records
into one run with no extra flag. ``tracekit record --run-id TEXT`` does the same for any launcher.

Each host's ``tracekit record`` also writes ``host.<name>.json`` next to the run's ``run.json``:
its start, end and exit code. Ingest merges them (from any number of spool directories, in any
order), so a run is ``running`` while any host still runs and ``error`` when any host failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["host_name", "run_id_from_text", "torchrun_options", "launcher_run_id", "elastic_run_id",
           "write_host_manifest", "read_host_manifests", "HOST_MANIFEST_PREFIX"]

HOST_MANIFEST_PREFIX = "host."
_HEX_ID = re.compile(r"[0-9a-f]{32}")
_TORCHRUN = ("torchrun", "torch.distributed.run", "torch.distributed.launch")


def host_name() -> str:
    """This host's name, as every spool header records it."""
    return socket.gethostname()


def run_id_from_text(text: str) -> str:
    """A run id from any text: itself when it already is one, else 32 hex digits of its SHA-256.

    Examples
    --------
    >>> run_id_from_text("0123456789abcdef0123456789abcdef")
    '0123456789abcdef0123456789abcdef'
    >>> run_id_from_text("job-42") == run_id_from_text("job-42") != run_id_from_text("job-43")
    True
    """
    if _HEX_ID.fullmatch(text):
        return text
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _elastic_id(rdzv_id: str) -> str:
    return run_id_from_text(f"torchelastic:{rdzv_id}")


def torchrun_options(command: Sequence[str]) -> dict[str, str] | None:
    """torchrun's own options in a command line (``--rdzv-id X``, ``--rdzv_id=X``, ...), names with
    dashes; None when the command does not run torchrun.

    Examples
    --------
    >>> torchrun_options(["torchrun", "--nnodes", "2", "--rdzv_id=job7", "train.py", "--lr", "1"])
    {'nnodes': '2', 'rdzv-id': 'job7'}
    >>> torchrun_options(["python", "train.py"]) is None
    True
    """
    start = next((i for i, arg in enumerate(command) if Path(arg).name in _TORCHRUN or arg in _TORCHRUN), None)
    if start is None:
        return None
    options: dict[str, str] = {}
    i = start + 1
    while i < len(command):
        arg = command[i]
        if not arg.startswith("--") or arg == "--":
            break  # the training script: everything after it is the script's
        name, eq, value = arg[2:].partition("=")
        name = name.replace("_", "-")
        if not eq:
            if name in ("standalone", "no-python", "run-path", "module", "m") or i + 1 >= len(command):
                options[name] = "1"
                i += 1
                continue
            value = command[i + 1]
            i += 1
        options[name] = value
        i += 1
    return options


def launcher_run_id(command: Sequence[str]) -> str | None:
    """The run id a torchrun command line implies for every host alike: from its rendezvous id.

    None when the command is not torchrun, or its rendezvous id is torchrun's default ``none``
    (a single-host job: each launch is then a run of its own).

    >>> launcher_run_id(["torchrun", "--nnodes", "2", "--rdzv-id", "job7", "t.py"]) == elastic_run_id({"TORCHELASTIC_RUN_ID": "job7"})
    True
    """
    options = torchrun_options(command)
    if not options:
        return None
    rdzv_id = options.get("rdzv-id", "none")
    return None if rdzv_id in ("", "none") else _elastic_id(rdzv_id)


def elastic_run_id(env: Mapping[str, str]) -> str | None:
    """The same id, from inside a torchrun worker (``TORCHELASTIC_RUN_ID`` is the rendezvous id);
    None for torchrun's default id ``none``."""
    rdzv_id = env.get("TORCHELASTIC_RUN_ID", "none")
    return None if rdzv_id in ("", "none") else _elastic_id(rdzv_id)


def write_host_manifest(run_dir: Path, manifest: Mapping[str, Any]) -> None:
    """Atomically (re)write this host's ``host.<name>.json`` in the run directory; OSError is the caller's."""
    host = str(manifest["host"])
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", host)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{HOST_MANIFEST_PREFIX}{safe}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(dict(manifest), separators=(",", ":")))
    os.replace(tmp, run_dir / f"{HOST_MANIFEST_PREFIX}{safe}.json")


def read_host_manifests(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Every host manifest of a run directory, by host (unreadable ones are skipped)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(run_dir.glob(f"{HOST_MANIFEST_PREFIX}*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("host"), str):
            out[data["host"]] = data
    return out
