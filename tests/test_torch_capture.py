"""Capture of torch.distributed on real gloo ranks: every op, async handles, DDP buckets, steps; import hook."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from foundation_helpers import spool_streams
from tracekit.conventions import STREAMS

ROOT = Path(__file__).resolve().parents[1]
ALL_OPS = ROOT / "tests" / "data" / "torch_ops" / "all_ops.py"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEKIT_")}
    env.update(TRACEKIT_SPOOL_DIR=str(tmp_path / "spool"), TRACEKIT_DB=str(tmp_path / "t.duckdb"), **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _sql(tmp_path: Path, query: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "tracekit", "sql", query, "-f", "json"], cwd=tmp_path,
                         env=_env(tmp_path), capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.slow
def test_instrument_records_every_op_on_every_rank(tmp_path: Path) -> None:
    """One line in the script (`tracekit.torch.instrument()`), plain torchrun: all ranks join one run."""
    proc = subprocess.run(
        ["torchrun", "--nproc-per-node", "2", "--master-port", "29811", str(ALL_OPS), "--instrument"],
        cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = _sql(tmp_path, "SELECT run_id, kind FROM runs")
    assert len(runs) == 1 and runs[0]["kind"] == "training"
    rows = _sql(tmp_path, "SELECT rank, op, seq, bytes, dtype, peer, async_op, source, ok, enter_ns, exit_ns, step "
                          "FROM collectives ORDER BY rank, enter_ns")
    for rank in (0, 1):
        mine = [r for r in rows if r["rank"] == rank]
        calls = [r for r in mine if r["source"] == "call"]
        point_to_point = ("send", "recv", "isend", "irecv")
        ops = [r["op"] for r in calls if r["op"] not in point_to_point]
        assert ops == ["all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter",
                       "reduce_scatter_tensor", "all_to_all", "all_to_all_single", "barrier", "all_reduce"]
        assert [r["seq"] for r in calls if r["op"] not in point_to_point] == list(range(10))  # one per group
        p2p = [(r["op"], r["peer"], r["seq"]) for r in calls if r["op"] in point_to_point]
        sends = ("send", "recv") if rank == 0 else ("recv", "send")
        # sequences per peer and direction; a receive from any source (peer null) has its own
        last = ("send", 1, 2) if rank == 0 else ("recv", None, 0)
        assert p2p == [(sends[0], 1 - rank, 0), (sends[1], 1 - rank, 0), ("isend", 1 - rank, 1), ("irecv", 1 - rank, 1),
                       last]
        by_op = {r["op"]: r for r in reversed(calls)}  # the first call of each op
        assert by_op["all_reduce"]["bytes"] == 16 and by_op["all_reduce"]["dtype"] == "float32"
        assert by_op["reduce_scatter_tensor"]["bytes"] == 32
        assert by_op["barrier"]["bytes"] == 0
        first_send = next(r for r in calls if r["op"] == "send")
        assert first_send["dtype"] == ("int64" if rank == 0 else "float64")
        assert all(r["ok"] and r["exit_ns"] >= r["enter_ns"] for r in mine)
        asyncs = [r for r in calls if r["async_op"]]
        assert {r["op"] for r in asyncs} == {"isend", "irecv", "all_reduce"}
        assert next(r for r in asyncs if r["op"] == "all_reduce")["bytes"] == 4000
        ddp = [r for r in mine if r["source"] == "ddp"]
        assert len(ddp) == 3 and [r["step"] for r in ddp] == [0, 1, 2]
        assert all(r["async_op"] and r["op"] == "all_reduce" for r in ddp)
    assert [r["seq"] for r in rows if r["source"] == "ddp" and r["rank"] == 0] == \
           [r["seq"] for r in rows if r["source"] == "ddp" and r["rank"] == 1]
    steps = _sql(tmp_path, "SELECT rank, step, loss, grad_norm, nonfinite FROM steps ORDER BY rank, step")
    assert [(s["rank"], s["step"]) for s in steps] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert all(s["loss"] is not None and s["grad_norm"] > 0 and s["nonfinite"] is False for s in steps)
    nodes = _sql(tmp_path, "SELECT DISTINCT node FROM spool_files WHERE stream = 'collectives' ORDER BY node")
    assert [n["node"] for n in nodes] == ["rank:0", "rank:1"]


def test_cli_and_plain_processes_never_import_torch(tmp_path: Path) -> None:
    code = "import sys, tracekit, tracekit.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    rec = subprocess.run(
        [sys.executable, "-m", "tracekit", "record", "--run", "plain", "--", sys.executable, "-c",
         "import sys; print('torch' in sys.modules)"],
        cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, check=True)
    assert rec.stdout.splitlines()[0] == "False"


def test_import_hook_wraps_torch_distributed_only_when_imported(tmp_path: Path) -> None:
    code = ("import sys; from tracekit.capture.torch import install_import_hook; install_import_hook(); "
            "assert 'torch' not in sys.modules; import torch.distributed as d; "
            "print(hasattr(d.all_reduce, '__tracekit_original__'), hasattr(d.init_process_group, '__tracekit_original__'))")
    out = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True True"
    off = subprocess.run([sys.executable, "-c", code.replace("True True", "")], env=_env(tmp_path, TRACEKIT_TORCH="0"),
                         capture_output=True, text=True, check=True)
    assert off.stdout.strip() == "False False"


def test_explicit_steps_and_one_rank_group(tmp_path: Path) -> None:
    """`tracekit.torch.step(...)` marks steps itself; collectives carry the step they belong to."""
    code = """
import os, torch, torch.distributed as dist, tracekit
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29870 + os.getpid() % 100), RANK="0", WORLD_SIZE="1")
dist.init_process_group("gloo")
assert tracekit.torch.instrument()
t = torch.ones(3)
for i in range(3):
    dist.all_reduce(t)
    work = dist.broadcast(t, 0, async_op=True)
    work.wait()
    tracekit.torch.step(loss=torch.tensor(0.5 * i), grad_norm=1.5)
dist.destroy_process_group()
"""
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(tmp_path), check=True, timeout=120)
    rows = {}
    for stream, lines in spool_streams(tmp_path / "spool").items():
        rows[stream] = lines[1:-1]
        assert "tracekit_end" in lines[-1]  # clean exit: footer written
    steps = rows["steps"]
    assert [(s["step"], s["loss"], s["grad_norm"]) for s in steps] == [(0, 0.0, 1.5), (1, 0.5, 1.5), (2, 1.0, 1.5)]
    coll = rows["collectives"]
    assert [(c["op"], c["seq"], c["step"], c["async_op"]) for c in coll] == [
        ("all_reduce", 0, 0, False), ("broadcast", 1, 0, True), ("all_reduce", 2, 1, False),
        ("broadcast", 3, 1, True), ("all_reduce", 4, 2, False), ("broadcast", 5, 2, True)]
    assert all(c["rank"] == 0 and c["world_size"] == 1 and c["exit_ns"] >= c["enter_ns"] for c in coll)


def _ddp_hooks_job(tmp_path: Path, port: int, nproc: int = 2, **env: str) -> tuple[dict[int, dict], str]:
    tmp_path.mkdir()
    proc = subprocess.run(
        ["torchrun", "--nproc-per-node", str(nproc), "--master-port", str(port), str(ALL_OPS.with_name("ddp_hooks.py"))],
        cwd=tmp_path, env=_env(tmp_path, **env), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {rank: json.loads((tmp_path / f"ddp_hooks.{rank}.json").read_text()) for rank in range(nproc)}, proc.stderr


@pytest.mark.slow
def test_native_hook_averages_bit_identically_to_plain_ddp_at_three_ranks(tmp_path: Path) -> None:
    """With a group size that is not a power of two, x / 3 and x * float(1 / 3) differ in the last bit:
    the native hook scales as DDP does without a comm hook, so training is unchanged bit for bit."""
    plain, _ = _ddp_hooks_job(tmp_path / "plain", 29845, nproc=3, TRACEKIT_DISABLED="1")
    captured, stderr = _ddp_hooks_job(tmp_path / "cap", 29846, nproc=3)
    for rank in range(3):
        assert captured[rank]["native"] is True, stderr[-2000:]
        assert captured[rank]["checksum"] == plain[rank]["checksum"]


@pytest.mark.slow
@pytest.mark.parametrize("hook", ["native", "python", "native-late-callback"])
def test_ddp_bucket_hook_records_without_changing_gradients(tmp_path: Path, hook: str) -> None:
    """The native (C++) and the fallback Python DDP hook: same averaged gradients as plain DDP, one
    sequence with the script's own collectives, exit after enter, and the non-finite flag only on the
    rank whose *local* gradients held the NaN (checked before the reduction spreads it).

    ``native-late-callback``: gloo's thread runs each bucket's exit callback 300 ms after DDP woke (as
    under load, where CI once lost the last step's last bucket: the script reached exit first); the
    exit-time settle still writes every bucket."""
    plain, _ = _ddp_hooks_job(tmp_path / "plain", 29843, TRACEKIT_DISABLED="1")
    extra = {"python": {"TRACEKIT_NATIVE": "0"},
             "native-late-callback": {"TRACEKIT_NATIVE_CALLBACK_DELAY_MS": "300"}}.get(hook, {})
    captured, stderr = _ddp_hooks_job(tmp_path / "cap", 29844, **extra)
    for rank in (0, 1):
        assert captured[rank]["native"] is (hook != "python"), stderr[-2000:]
        assert captured[rank]["checksum"] == plain[rank]["checksum"]  # bit-identical parameters
    assert ("native DDP hook unavailable: TRACEKIT_NATIVE=0" in stderr) is (hook == "python")
    rows = _sql(tmp_path / "cap", "SELECT rank, seq, step, op, source, dtype, bytes, ok, nonfinite, enter_ns, exit_ns "
                                  "FROM collectives WHERE process_group = 'default' ORDER BY rank, seq")
    for rank in (0, 1):
        mine = [r for r in rows if r["rank"] == rank]
        assert [r["seq"] for r in mine] == list(range(len(mine)))  # buckets and calls share one sequence
        buckets = [r for r in mine if r["source"] == "ddp"]
        per_step = [sum(r["step"] == step for r in buckets) for step in range(5)]
        assert min(per_step) >= 1 and len(set(per_step[1:])) == 1 and per_step[1] >= 2  # rebuilt after step 0
        assert len(mine) == len(buckets) + 5  # + the script's one loss all_reduce per step
        assert all(r["op"] == "all_reduce" and r["dtype"] == "float32" and r["bytes"] > 0 and r["ok"]
                   and r["exit_ns"] >= r["enter_ns"] for r in buckets)
        assert any(r["nonfinite"] for r in buckets if r["step"] == 4) is (rank == 1)
        assert not any(r["nonfinite"] for r in buckets if r["step"] < 4)
    steps = _sql(tmp_path / "cap", "SELECT rank, step, nonfinite, grad_norm FROM steps ORDER BY rank, step")
    assert [(s["rank"], s["step"], s["nonfinite"]) for s in steps] == [
        (rank, step, rank == 1 and step == 4) for rank in (0, 1) for step in range(5)]
    # Every record either writer put in the spool files (the native one: C++, formatted in the layout the
    # build generated from conventions.STREAMS) has exactly the stream's fields, in the schema's order
    records = _spool_records(tmp_path / "cap")
    for stream in ("collectives", "steps", "heartbeats"):
        fields = list(STREAMS[stream].field_names())
        written = records[stream]
        assert {r["rank"] for r in written} == {0, 1}, stream
        wrong = [list(r) for r in written if set(r) != set(fields) or (hook != "python" and list(r) != fields)]
        assert not wrong, (stream, fields, wrong[:3])
    for s in steps:  # the recorded norm is the rank's local one, summed over its buckets before reduction
        if s["step"] < 4:
            assert s["grad_norm"] == pytest.approx(captured[s["rank"]]["norms"][s["step"]], rel=1e-5)


WRITER_JOB = """
import json, os, threading, time, torch, torch.distributed as dist, tracekit
from tracekit.capture.torch import state
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29600 + os.getpid() % 100), RANK="0", WORLD_SIZE="1")
dist.init_process_group("gloo")
assert tracekit.torch.instrument()
cap = state.current
if os.environ.get("FULL_DISK"):  # the writer's files are on a full disk from now on
    cap.count_native(cap.native.stop_writer())
    full = os.open("/dev/full", os.O_WRONLY)
    cap.native.start_writer(full, full, full, tick_s=0.05, beat_s=0.1, flush_s=0.05)
model = DDP(nn.Linear(8, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(20):
    opt.zero_grad()
    loss = model(torch.randn(4, 8)).square().mean()
    loss.backward()
    opt.step()
    time.sleep(0.03)
time.sleep(0.5)  # more than a flush interval
# the native writer writes JSON lines (beside a binary stream's .tkb file): count its lines on disk
on_disk = {s: sum(p.read_text().count("\\n") - 1 for p in getattr(cap, s).path.parent.glob(f"{s}.*.jsonl"))
           for s in ("collectives", "steps")}
print(json.dumps({"writer": cap.writer, "on_disk": on_disk, "threads": sorted(t.name for t in threading.enumerate())}))
dist.destroy_process_group()
"""


def _spool_records(tmp_path: Path) -> dict[str, list[dict]]:
    """Every record of every spool file under ``tmp_path``, by stream (headers and footers left out)."""
    return {stream: [r for r in lines[1:] if "tracekit_end" not in r]
            for stream, lines in spool_streams(tmp_path / "spool").items()}  # type: ignore[misc]


def _spool_files(tmp_path: Path) -> dict[str, list[dict]]:
    return spool_streams(tmp_path / "spool")  # type: ignore[return-value]


@pytest.mark.slow
def test_native_writer_beats_and_writes_while_no_python_thread_wakes(tmp_path: Path) -> None:
    """With the native module, its writer thread samples scheduling lag, beats and writes the calls,
    buckets and steps to the spool files while training runs; the spool's Python flusher never starts."""
    proc = subprocess.run([sys.executable, "-c", WRITER_JOB], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["writer"] and "tracekit-spool" not in seen["threads"], seen
    assert seen["on_disk"]["steps"] == 20 and seen["on_disk"]["collectives"] >= 20  # written mid-run
    files = _spool_files(tmp_path)
    for stream in ("collectives", "steps", "heartbeats"):
        lines = files[stream]
        assert lines[-1]["records"] == len(lines) - 2 and lines[-1]["dropped"] == 0, stream  # the footer's tally
    beats = files["heartbeats"][1:-1]
    assert len(beats) >= 2 and all(b["state"] == "alive" and b["rank"] == 0 for b in beats)
    assert all(isinstance(b["sched_lag_ns"], int) and b["sched_lag_ns"] >= 0 for b in beats)
    assert all(b["lag_step"] is not None and 0 <= b["lag_step"] <= b["step"] for b in beats[1:])
    assert [s["step"] for s in files["steps"][1:-1]] == list(range(20))
    assert all(s["grad_norm"] > 0 and s["nonfinite"] is False for s in files["steps"][1:-1])


@pytest.mark.slow
def test_native_writer_on_a_full_disk_counts_and_warns_and_training_goes_on(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", WRITER_JOB], cwd=tmp_path, env=_env(tmp_path, FULL_DISK="1"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "No space left on device" in proc.stderr and "the program itself was not affected" in proc.stderr
    files = _spool_files(tmp_path)
    assert files["steps"][-1]["records"] == 0 and files["steps"][-1]["dropped"] == 20
    assert files["collectives"][-1]["dropped"] >= 20 and len(files["collectives"]) == 2  # header and footer


FORK_JOB = """
import os, sys, time, torch, torch.distributed as dist, tracekit
from tracekit.capture.torch import state
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29700 + os.getpid() % 100), RANK="0", WORLD_SIZE="1")
dist.init_process_group("gloo")
assert tracekit.torch.instrument()
native = state.current.native
state.current.count_native(native.stop_writer())  # restart the writer flushing every millisecond: it holds
devnull = os.open(os.devnull, os.O_WRONLY)  # its locks much of the time, as a fork may catch it
native.start_writer(devnull, devnull, devnull, tick_s=0.001, beat_s=0.001, flush_s=0.001)
t = torch.ones(1)
hung = failed = 0
for i in range(40):
    for _ in range(20):
        dist.all_reduce(t)
    pid = os.fork()
    if pid == 0:  # what a forked worker does at exit: stop a writer (it has none) and flush
        native.finish_call(native.begin_call("barrier", "default", None, False, "call"), True)
        counts = native.stop_writer()
        # no writer, no file: its one record is dropped; the parent's, inherited, are not written again
        os._exit(0 if not native.writer_running() and counts[0][:2] == (0, 1) else 3)
    deadline = time.monotonic() + 10
    while (status := os.waitpid(pid, os.WNOHANG)) == (0, 0):
        if time.monotonic() > deadline:
            hung += 1
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            break
        time.sleep(0.005)
    else:
        failed += status[1] != 0
print("hung", hung, "failed", failed, "parent writer", native.writer_running())
state.current.count_native(native.stop_writer())
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_a_child_forked_while_the_native_writer_runs_has_no_writer_and_never_hangs(tmp_path: Path) -> None:
    """fork() keeps only the calling thread: the child must not join the parent's writer thread, write
    to its files, re-emit its records, or inherit a lock held by it. It records, stops and exits; the
    parent's writer runs on."""
    proc = subprocess.run([sys.executable, "-c", FORK_JOB], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "hung 0 failed 0 parent writer True"


FORKED_WORKER_JOB = """
import atexit, os, signal, sys, time, torch, torch.distributed as dist, tracekit
from tracekit.capture.torch import state
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 100), RANK="0", WORLD_SIZE="1")
dist.init_process_group("gloo")
assert tracekit.torch.instrument()
dist.all_reduce(torch.ones(1))
native = state.current.native
pid = os.fork()
if pid == 0:  # a worker that records one call and exits normally (its exit handlers close its spool)
    native.finish_call(native.begin_call("barrier", "default", None, False, "call"), True)
    atexit._run_exitfuncs()
    os._exit(0)
os.waitpid(pid, 0)
sleeper = os.fork()
if sleeper == 0:  # a worker the parent stops with SIGTERM, as DataLoader's shutdown does
    time.sleep(30)
    os._exit(0)
time.sleep(0.5)
os.kill(sleeper, signal.SIGTERM)
_, status = os.waitpid(sleeper, 0)
time.sleep(1.0)  # the parent's SIGTERM watcher would have ended it by now
ended = os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status)
print("child", pid, "sleeper", ended, "parent alive")
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_a_forked_worker_writes_its_own_spool_files_and_dies_of_sigterm_alone(tmp_path: Path) -> None:
    """A forked child (a DataLoader worker) resolves its streams in its own spool: its record lands in
    its own file (through the parent's inherited stream objects it was lost). SIGTERM to the child
    kills the child (it had inherited the parent's no-op handler and wakeup pipe: the parent's watcher
    read the child's signal and ended the parent with exit code 143)."""
    proc = subprocess.run([sys.executable, "-c", FORKED_WORKER_JOB], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    words = proc.stdout.split()
    child, sleeper_signal = int(words[1]), int(words[3])
    assert sleeper_signal == 15 and words[-2:] == ["parent", "alive"], proc.stdout
    by_pid = spool_streams(tmp_path / "spool", "collectives.*", key="pid")
    mine = by_pid[child]
    assert [r["op"] for r in mine[1:-1]] == ["barrier"] and mine[-1]["records"] == 1
    parent = next(lines for pid, lines in by_pid.items() if pid != child)
    assert [r["op"] for r in parent[1:-1]] == ["all_reduce"] and parent[-1]["records"] == 1


def test_native_layout_is_generated_from_the_stream_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    """The native writer's record layouts come from conventions.STREAMS: a field added there is in the
    generated header (so in the native output after the next build) and moves the build's cache key."""
    from tracekit import conventions
    from tracekit.capture import native

    def layout(header: str, stream: str) -> tuple[list[str], list[str]]:
        """The enum of a stream's fields and the JSON keys of its field table, as the header declares them."""
        block = header.split(f"namespace {stream} {{")[1].split("}  // namespace")[0]
        enum = re.search(r"enum : int \{ (.*), kCount \};", block).group(1).split(", ")
        return enum, re.findall(r'\{"\\"(\w+)\\":", Type::k\w+\}', block)

    for stream in native.LAYOUT_STREAMS:
        fields = list(STREAMS[stream].field_names())
        assert layout(native.layout_header(), stream) == (fields, fields)
    before = native.build_dir()
    steps = STREAMS["steps"]
    grown = dataclasses.replace(steps, fields=(*steps.fields, ("lr", "float64")))
    monkeypatch.setattr(conventions, "STREAMS", {**STREAMS, "steps": grown})
    assert layout(native.layout_header(), "steps")[1][-1] == "lr"
    assert '{"\\"lr\\":", Type::kFloat}' in native.layout_header()
    assert native.build_dir() != before
    monkeypatch.setattr(conventions, "STREAMS", {**STREAMS, "probes": dataclasses.replace(
        STREAMS["probes"], fields=(("a b", "int64"),))})
    assert native.build_dir() == before  # a stream the C++ does not write is no part of the key
    bad = dataclasses.replace(steps, fields=(("class", "int64"),))
    with pytest.raises(ValueError, match="'class'"):
        native.layout_header({**STREAMS, "steps": bad})


def test_native_hook_is_built_and_loads(tmp_path: Path) -> None:
    """install.sh builds the native DDP hook for this torch and Python; a job only loads it (never compiles)."""
    out = subprocess.run([sys.executable, "-m", "tracekit.capture.native", "--format", "json"], cwd=tmp_path,
                         env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    status = json.loads(out.stdout)
    assert out.returncode == 0 and status["loads"] and status["built"] and not status["built_now"], out.stderr
    assert "torch" in Path(status["library"]).parent.name and status["error"] is None
    off = subprocess.run([sys.executable, "-m", "tracekit.capture.native", "--format", "json"], cwd=tmp_path,
                         env=_env(tmp_path, TRACEKIT_NATIVE="0"), capture_output=True, text=True, timeout=120)
    assert off.returncode == 1 and json.loads(off.stdout)["error"] == "TRACEKIT_NATIVE=0"


def test_settle_waits_for_completed_calls_only() -> None:
    """At exit, capture waits for the exit callback of an async call whose future is done (the backend's
    thread runs it after waking the waiter) and not for one still running (a hung call)."""
    import threading
    import time

    import torch

    from tracekit.capture.torch import patching, state

    class Work:
        def __init__(self) -> None:
            self.future = torch.futures.Future()

        def get_future(self) -> torch.futures.Future:
            return self.future

    finished: list[tuple[int, bool]] = []
    running = Work()
    patching.on_completion(lambda token, ok, error=None: finished.append((token, ok)), 1, running)
    start = time.monotonic()
    state.settle_callbacks(2.0)  # pending, not done: nothing to wait for
    assert time.monotonic() - start < 1.0
    running.future.set_result(None)  # the callback runs: recorded, no longer awaited
    assert finished == [(1, True)] and not state.awaiting

    late = torch.futures.Future()
    late.set_result(None)
    state.awaiting[-1] = late  # done, its callback not yet run: as a descheduled backend thread leaves it
    timer = threading.Timer(0.3, state.awaiting.pop, args=(-1, None))
    timer.start()
    start = time.monotonic()
    state.settle_callbacks(5.0)
    waited = time.monotonic() - start
    timer.join()
    assert 0.25 <= waited < 4.0, waited
