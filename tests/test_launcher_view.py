"""The launcher's view: under `tracekit record` torchrun's launcher records each worker's exit, and an early
crash (the others die before their first flush) is the top finding with high confidence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

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
        exits = con.execute("SELECT rank, exit_code, signal FROM worker_exits ORDER BY ts_ns").fetchall()
    assert sorted(r for r, _c, _s in exits) == list(range(world))  # every worker's exit, as torchrun saw it
    assert exits[0] == (rank, 13, None)
    out = subprocess.run([sys.executable, "-m", "tracekit", "anomalies", "early", "--format", "json"], cwd=tmp_path,
                         env=_env(tmp_path), capture_output=True, text=True, check=True)
    found = json.loads(out.stdout)
    assert (found[0]["kind"], found[0]["subject"]) == ("crash", f"rank:{rank}"), found
    assert found[0]["confidence"] >= 0.9
    assert [f["subject"] for f in found if f["kind"] == "crash"] == [f"rank:{rank}"]
