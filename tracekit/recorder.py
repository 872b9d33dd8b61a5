"""`tracekit record -- CMD`: run a command with capture on in every Python process it starts, then ingest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tracekit.capture.multihost import host_name, launcher_run_id, run_id_from_text, write_host_manifest
from tracekit.capture.setup import new_id
from tracekit.capture.spool import write_run_manifest
from tracekit.config import RUN_KINDS, db_path, spool_root
from tracekit.errors import ConfigError, TracekitError

AUTOSTART_DIR = Path(__file__).parent / "capture" / "autostart"


@dataclass(frozen=True)
class RecordResult:
    run_id: str
    exit_code: int
    run_dir: Path
    records: int | None  # None: the ingest failed (the spool at run_dir is kept for a later `tracekit ingest`)


def guess_kind(command: list[str]) -> str:
    joined = " ".join(command)
    if "torchrun" in joined or "torch.distributed.run" in joined:
        return "training"
    return "service"


def record_command(
    command: list[str], *, run_name: str | None = None, kind: str | None = None,
    spool_dir: str | os.PathLike[str] | None = None, db: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
) -> RecordResult:
    if not command:
        raise TracekitError("no command given: use `tracekit record -- CMD ARGS...`")
    kind = kind or guess_kind(command)
    if kind not in RUN_KINDS:
        raise ConfigError(f"run kind {kind!r} is not one of {', '.join(RUN_KINDS)}")
    # every host of a multi-host torchrun job derives the same id from its rendezvous id
    run_id = run_id_from_text(run_id) if run_id else (launcher_run_id(command) or new_id())
    host = host_name()
    root = spool_root(spool_dir)
    run_dir = root / run_id
    store = db_path(db).absolute()
    name = run_name or Path(command[0]).name
    manifest = {
        "run_id": run_id, "name": name, "kind": kind, "started_ns": time.time_ns(),
        "attributes": {"command": command}, "pid": os.getpid(), "argv": command, "host": host,
    }
    try:
        write_run_manifest(run_dir, manifest)
        write_host_manifest(run_dir, manifest)
    except OSError as exc:
        raise TracekitError(f"cannot create the spool directory {run_dir}: {exc.strerror or exc}") from None
    env = dict(os.environ)
    env.update({
        "TRACEKIT_RECORD": "1",
        "TRACEKIT_RUN_ID": run_id,
        "TRACEKIT_RUN_NAME": name,
        "TRACEKIT_RUN_KIND": kind,
        "TRACEKIT_SPOOL_DIR": str(root),
        "TRACEKIT_DB": str(store),
        "TRACEKIT_INGEST_AT_EXIT": "0",
        "PYTHONPATH": os.pathsep.join(
            [str(AUTOSTART_DIR), *filter(None, [env.get("PYTHONPATH")])]
        ),
    })
    try:
        proc = subprocess.Popen(command, env=env)
    except FileNotFoundError:
        raise TracekitError(f"command not found: {command[0]!r}") from None
    except PermissionError:
        raise TracekitError(f"command is not executable: {command[0]!r}") from None

    def forward(signum: int, _frame: object) -> None:
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        exit_code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if exit_code < 0:  # killed by a signal: report it the way a shell does
        exit_code = 128 - exit_code
    manifest.update(ended_ns=time.time_ns(), exit_code=exit_code)
    write_run_manifest(run_dir, manifest)
    write_host_manifest(run_dir, manifest)
    records = _ingest(run_dir, store, f"run {name!r} ({run_id})", exit_code)
    return RecordResult(run_id, exit_code, run_dir, records)


def _ingest(run_dir: Path, store: Path, what: str, exit_code: int) -> int | None:
    """Ingest the finished run (waiting for another writer's lock, as every writer does); never raises:
    the command's exit code stands whatever happens here. Returns the records loaded (None: not ingested)."""
    from tracekit.ingest import ingest_paths

    try:
        report = ingest_paths([run_dir], store)
    except (Exception, KeyboardInterrupt) as exc:  # a failed ingest must not become the command's failure
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"tracekit: warning: {what} exit code {exit_code} was not ingested ({reason}); its spool is "
              f"kept, ingest it later with: tracekit ingest {run_dir} --db {store}", file=sys.stderr)
        return None
    print(f"tracekit: {what} exit code {exit_code}: {report.records} records -> {store}", file=sys.stderr)
    for source, nbytes in report.torn:
        print(f"tracekit: torn last record skipped in {source} ({nbytes} bytes)", file=sys.stderr)
    for source, error in report.rejected:
        print(f"tracekit: rejected {source}: {error}", file=sys.stderr)
    return report.records
