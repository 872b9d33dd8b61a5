"""The launcher's view: under `tracekit record` torchrun's launcher records each worker's exit, and an early
crash (the others die before their first flush) is the top finding with high confidence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from tracekit.analysis.launcher import MIN_LEAD_NS

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "fixtures" / "ddp_job.py"

pytestmark = pytest.mark.slow


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEKIT_")}
    env.update(TRACEKIT_SPOOL_DIR=str(tmp / "spool"), TRACEKIT_DB=str(tmp / "t.duckdb"), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return env


@pytest.mark.parametrize("world, rank, step", [(4, 1, 1), (4, 3, 0), (8, 5, 0), (8, 1, 1)])
def test_an_early_crash_is_the_top_finding(tmp_path: Path, world: int, rank: int, step: int) -> None:
    cmd = [sys.executable, "-m", "tracekit", "record", "--run", "early", "--", "torchrun", "--nproc-per-node",
           str(world), "--master-port", str(29500 + 37 * world + rank), str(JOB), "--steps", "6", "--fault", "crash",
           "--fault-rank", str(rank), "--fault-step", str(step), "--probe-every", "0", "--pg-timeout", "5"]
    done = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=400)
    assert done.returncode != 0
    with duckdb.connect(str(tmp_path / "t.duckdb"), read_only=True) as con:
        exits = con.execute("SELECT rank, exit_code, signal, ts_ns FROM worker_exits ORDER BY ts_ns, rank").fetchall()
    assert sorted(r for r, _c, _s, _t in exits) == list(range(world))  # every worker's exit, as torchrun saw it
    assert (rank, 13, None) in [e[:3] for e in exits]
    if exits[1][3] - exits[0][3] >= MIN_LEAD_NS:  # the launcher saw one exit first (not two in one wake-up)
        assert exits[0][:3] == (rank, 13, None)
    out = subprocess.run([sys.executable, "-m", "tracekit", "anomalies", "early", "--format", "json"], cwd=tmp_path,
                         env=_env(tmp_path), capture_output=True, text=True, check=True)
    found = json.loads(out.stdout)
    assert (found[0]["kind"], found[0]["subject"]) == ("crash", f"rank:{rank}"), found
    assert found[0]["confidence"] >= 0.9
    assert [f["subject"] for f in found if f["kind"] == "crash"] == [f"rank:{rank}"]


def test_the_exit_waiter_wakes_at_a_worker_exit_not_at_its_timeout() -> None:
    from tracekit.capture.torch.launcher import _ExitWaiter

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    waiter = _ExitWaiter()
    assert waiter.poller is not None  # Linux: pidfds
    t0 = time.monotonic()
    waiter.wait([(1, child.pid)], timeout=60.0)
    assert time.monotonic() - t0 < 30  # woke by the exit (a broken waiter sleeps the whole minute)
    assert child.poll() == 0
    waiter.wait([], timeout=0.01)  # the recorded worker's pidfd is closed
    assert waiter.fds == {}


def test_the_handler_is_patched_the_moment_torchrun_imports_it(tmp_path: Path) -> None:
    program = (
        "import sys\n"
        "from tracekit.capture.torch import launcher\n"
        "sys.meta_path.insert(0, launcher.AfterImport(launcher._HANDLER_MODULE, launcher._patch_quietly))\n"
        "import torch.distributed.elastic.multiprocessing.subprocess_handler.subprocess_handler\n"
        "cls = sys.modules[launcher._HANDLER_MODULE].SubprocessHandler\n"
        "print(hasattr(cls.__init__, '__tracekit_original__'))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, env=_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_two_odd_failures_in_one_wake_up_are_told_apart_by_the_records() -> None:
    """The crash and one victim found in the same wake-up, each failing its own way, the rest stopped by
    the launcher: the exits alone cannot order them, the victim's record of its failed collective can."""
    import polars as pl

    from tracekit.analysis.collectives import RunFrames, Thresholds, detect_first_exit

    t0 = 1_000_000_000
    exits = pl.DataFrame({"rank": [5, 4, 0, 1, 2, 3], "exit_code": [13, 1, 143, 143, 143, 143],
                          "signal": [None] * 6, "ts_ns": [t0, t0, t0 + 30_000_000, t0 + 31_000_000,
                                                           t0 + 31_000_000, t0 + 40_000_000],
                          "host": ["h"] * 6}, schema_overrides={"signal": pl.Int64})
    coll = pl.DataFrame({"rank": [0, 1, 2, 3, 4, 5, 4], "op": ["barrier"] * 6 + ["all_reduce"], "step": [0] * 7,
                         "error": [None] * 6 + ["Connection reset by peer"]})
    blind = detect_first_exit(RunFrames(collectives=coll.with_columns(error=pl.lit(None, pl.String)),
                                        worker_exits=exits), Thresholds())
    assert blind == []  # 13 and 1 both odd, nothing recorded: no guess
    found = detect_first_exit(RunFrames(collectives=coll, worker_exits=exits), Thresholds())
    assert [(f.kind, f.subject) for f in found] == [("crash", "rank:5")]
    assert found[0].evidence["same_wake_up"] == [4]
