"""Executing campaign runs: one run = one workload process group under a plan; a local pool or Ray fans them out.

Every run is a tracekit run of kind ``campaign``: its own spool directory (manifest written here),
capture switched on in every Python process of the workload (the autostart ``sitecustomize``), the
plan in ``TRACEKIT_INJECT``. The workload starts in a new session; when it exits or its timeout
expires, the whole process group is killed, so no server it started outlives the run. A crash
(non-zero exit) or a hang (timeout) is written to the run's ``faults`` stream as a consequence;
it never fails the campaign.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

from tracekit.capture.spool import Spool, write_run_manifest

AUTOSTART_DIR = Path(__file__).resolve().parent.parent / "capture" / "autostart"
MODULES_AUTOSTART_DIR = Path(__file__).resolve().parent / "autostart"  # capture's autostart + the module hook


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs to execute one campaign run (picklable, so Ray can ship it)."""

    run_id: str
    name: str
    spool_root: str
    workdir: str
    argv: tuple[str, ...]
    plan_json: str
    timeout_s: float
    workload: str
    attributes: dict[str, Any] = field(default_factory=dict)
    ship_files: bool = False
    modules: tuple[str, ...] = ()  # zero-code injection points: modules whose functions become points


@dataclass
class RunResult:
    run_id: str
    exit_code: int | None
    outcome: str  # ok | crash | hang | error
    duration_ns: int
    files: dict[str, bytes] = field(default_factory=dict)
    message: str = ""


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def execute_run(spec: RunSpec) -> RunResult:
    """Run one workload under one plan; never raises (a failure to start is outcome ``error``)."""
    run_dir = Path(spec.spool_root) / spec.run_id
    started = time.time_ns()
    manifest = {
        "run_id": spec.run_id, "name": spec.name, "kind": "campaign", "started_ns": started,
        "attributes": spec.attributes, "pid": os.getpid(), "argv": list(spec.argv),
    }
    write_run_manifest(run_dir, manifest)
    env = dict(os.environ)
    for key in ("TRACEKIT_INJECT", "TRACEKIT_DISABLED"):
        env.pop(key, None)
    env.update({
        "TRACEKIT_RECORD": "1", "TRACEKIT_RUN_ID": spec.run_id, "TRACEKIT_RUN_NAME": spec.name,
        "TRACEKIT_RUN_KIND": "campaign", "TRACEKIT_SPOOL_DIR": spec.spool_root,
        "TRACEKIT_INGEST_AT_EXIT": "0", "TRACEKIT_INJECT": spec.plan_json,
        "TRACEKIT_FLUSH_INTERVAL_MS": "50", "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(MODULES_AUTOSTART_DIR if spec.modules else AUTOSTART_DIR), spec.workdir,
                                       *filter(None, [env.get("PYTHONPATH")])]),
    })
    if spec.modules:
        import json

        from tracekit.inject.modules import MODULES_ENV

        env[MODULES_ENV] = json.dumps(list(spec.modules))
    else:
        env.pop("TRACEKIT_INJECT_MODULES", None)
    exit_code: int | None = None
    outcome, message = "ok", ""
    try:
        with open(run_dir / "output.log", "wb") as log:
            proc = subprocess.Popen(
                list(spec.argv), cwd=spec.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
            try:
                exit_code = proc.wait(timeout=spec.timeout_s)
                outcome = "ok" if exit_code == 0 else "crash"
            except subprocess.TimeoutExpired:
                outcome, message = "hang", f"no exit within {spec.timeout_s:g} s"
                _kill_group(proc.pid)
                exit_code = proc.wait()
            finally:
                _kill_group(proc.pid)  # every straggler of the workload's process group
    except OSError as exc:
        outcome, message = "error", f"cannot start {spec.argv[0]!r}: {exc.strerror or exc}"
    ended = time.time_ns()
    if outcome != "ok":
        spool = Spool(run_dir, spec.run_id, "campaign:runner")
        spool.stream("faults").write({
            "campaign": spec.attributes.get("campaign"), "test": spec.workload,
            "point": f"workload:{spec.workload}", "fault_type": outcome, "injected": False, "ts_ns": ended,
            "span_id": None, "detail": _json({"exit_code": exit_code, "message": message}),
        })
        spool.close()
    manifest.update(ended_ns=ended, exit_code=exit_code if exit_code is not None and exit_code >= 0 else 137)
    write_run_manifest(run_dir, manifest)
    files: dict[str, bytes] = {}
    if spec.ship_files:
        files = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
        shutil.rmtree(run_dir, ignore_errors=True)  # the driver keeps the only copy
    return RunResult(spec.run_id, exit_code, outcome, ended - started, files, message)


def _json(obj: dict[str, Any]) -> str:
    import json

    return json.dumps(obj, default=str)


class Executor(Protocol):
    """Runs RunSpecs: `submit` one (a future of its result), or `run_all` and take results as they finish."""

    name: str
    workers: int

    def submit(self, spec: RunSpec) -> Future[RunResult]: ...

    def run_all(self, specs: Iterable[RunSpec]) -> Iterator[RunResult]: ...

    def close(self) -> None: ...


def as_finished(futures: Iterable[Future[RunResult]]) -> Iterator[RunResult]:
    """The results of `futures` in the order they finish."""
    pending = set(futures)
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for fut in done:
            yield fut.result()


class LocalExecutor:
    """A local pool of `workers` slots; each slot supervises one workload process group at a time."""

    name = "local"

    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, workers)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="tracekit-campaign")

    def submit(self, spec: RunSpec) -> Future[RunResult]:
        return self._pool.submit(execute_run, spec)

    def run_all(self, specs: Iterable[RunSpec]) -> Iterator[RunResult]:
        return as_finished([self.submit(s) for s in specs])

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Runs each campaign run as a Ray task (a local Ray instance, or the cluster at `address`).

    Spool files travel back with the task result, so workers need no shared filesystem.
    """

    name = "ray"

    def __init__(self, workers: int = 2, address: str | None = None) -> None:
        import ray

        self._ray = ray
        self.workers = max(1, workers)
        self._started = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False)
            self._started = True
        self._task = ray.remote(num_cpus=1)(execute_run)

    def submit(self, spec: RunSpec) -> Future[RunResult]:
        return self._task.remote(_shipping(spec)).future()  # a concurrent.futures.Future of the task's result

    def run_all(self, specs: Iterable[RunSpec]) -> Iterator[RunResult]:
        return as_finished([self.submit(s) for s in specs])

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()


def _shipping(spec: RunSpec) -> RunSpec:
    from dataclasses import replace

    import tempfile

    return replace(spec, ship_files=True, spool_root=str(Path(tempfile.gettempdir()) / "tracekit-ray-spool"))


def make_executor(kind: str, workers: int, address: str | None = None) -> Executor:
    from tracekit.errors import ConfigError

    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(workers, address)
    raise ConfigError(f"executor {kind!r} is not local or ray")


def materialize(result: RunResult, spool_root: Path) -> Path:
    """Write a shipped run's files into the local spool (Ray results); returns the run directory."""
    run_dir = spool_root / result.run_id
    if result.files:
        run_dir.mkdir(parents=True, exist_ok=True)
        for name, data in result.files.items():
            (run_dir / name).write_bytes(data)
    return run_dir
