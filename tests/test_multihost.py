"""One run across hosts: the run id every host derives alike, host manifests, and ingest of several spool directories."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foundation_helpers import clean_env, cli, query
from tracekit.capture.multihost import elastic_run_id, launcher_run_id, run_id_from_text, torchrun_options


def test_every_host_derives_the_same_run_id_from_the_rendezvous_id() -> None:
    host0 = ["torchrun", "--nnodes", "2", "--node-rank", "0", "--rdzv-backend", "c10d",
             "--rdzv-endpoint", "10.0.0.1:29400", "--rdzv-id", "job7", "train.py", "--rdzv-id", "x"]
    host1 = ["python", "-m", "torch.distributed.run", "--nnodes=2", "--node_rank=1", "--rdzv_backend=c10d",
             "--rdzv_endpoint=10.0.0.1:29400", "--rdzv_id=job7", "train.py"]
    assert launcher_run_id(host0) == launcher_run_id(host1) == elastic_run_id({"TORCHELASTIC_RUN_ID": "job7"})
    assert launcher_run_id(host0) != launcher_run_id([*host0[:8], "job8", "train.py"])
    # the script's own arguments are not torchrun's
    assert torchrun_options(host0)["rdzv-id"] == "job7"
    # torchrun's default rendezvous id is shared by unrelated single-host jobs: no derived id
    assert launcher_run_id(["torchrun", "--nproc-per-node", "4", "train.py"]) is None
    assert elastic_run_id({"TORCHELASTIC_RUN_ID": "none"}) is None
    assert launcher_run_id(["python", "train.py"]) is None
    assert run_id_from_text("job-1") == run_id_from_text("job-1") and len(run_id_from_text("job-1")) == 32


HOST_JOB = """
import os, sys, time
import tracekit  # under `tracekit record`: capture is on

@tracekit.trace
def work(i):
    time.sleep(float(os.environ.get("WORK_S", "0")))
    return i

for i in range(3):
    work(i)
sys.exit(int(os.environ.get("EXIT", "0")))
"""


def _can_unshare() -> str | None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "a host of its own (a UTS namespace) needs root and unshare"
    done = subprocess.run(["unshare", "--uts", "true"], capture_output=True, text=True)
    return None if done.returncode == 0 else f"unshare --uts failed: {done.stderr.strip()}"


def _as_host(host: str, tmp: Path, spool: Path, *args: str, extra: dict[str, str] | None = None) -> subprocess.Popen:
    """`tracekit ARGS` as if on another host: its own hostname (a UTS namespace) and spool directory."""
    env = clean_env(tmp, TRACEKIT_SPOOL_DIR=str(spool), **(extra or {}))
    script = f'hostname {host} && exec "$0" -m tracekit "$@"'
    return subprocess.Popen(["unshare", "--uts", "sh", "-c", script, sys.executable, *args], cwd=tmp, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.skipif(_can_unshare() is not None, reason=str(_can_unshare()))
@pytest.mark.parametrize("order", ["host0 first", "host1 first"])
def test_two_hosts_recorded_apart_ingest_into_one_run_in_any_order(tmp_path: Path, order: str) -> None:
    (tmp_path / "job.py").write_text(HOST_JOB)
    spools = {h: tmp_path / h / "spool" for h in ("tkhost0", "tkhost1")}
    procs = {h: _as_host(h, tmp_path, spools[h], "record", "--run-id", "job-42", "--run", "mh", "--kind", "training",
                         "--db", str(tmp_path / f"{h}.duckdb"), "--", sys.executable, "job.py",
                         extra={"EXIT": "3" if h == "tkhost1" else "0"})
             for h in spools}
    outs = {h: p.communicate(timeout=120) for h, p in procs.items()}
    assert procs["tkhost0"].returncode == 0, outs["tkhost0"][1]
    assert procs["tkhost1"].returncode == 3, outs["tkhost1"][1]
    ids = {outs[h][0].strip().splitlines()[-1] for h in spools}
    assert ids == {run_id_from_text("job-42")}
    run_id = ids.pop()
    paths = [str(spools[h]) for h in (sorted(spools) if order == "host0 first" else sorted(spools, reverse=True))]
    db = tmp_path / "all.duckdb"
    for path in paths:  # one directory at a time, then both again: nothing is added twice
        assert cli(tmp_path, "ingest", path, "--db", str(db)).code == 0
    before = query(db, "SELECT count(*) FROM spans")
    assert cli(tmp_path, "ingest", *paths, "--db", str(db)).code == 0
    assert query(db, "SELECT count(*) FROM spans") == before == [(6,)]
    rows = query(db, "SELECT run_id, kind, status, attributes FROM runs")
    assert [(r[0], r[1], r[2]) for r in rows] == [(run_id, "training", "error")]
    attributes = json.loads(rows[0][3])
    assert set(attributes["hosts"]) == {"tkhost0", "tkhost1"}
    assert attributes["exit_code"] == 3  # the failed host's code, whichever was ingested last
    assert {h for (h,) in query(db, "SELECT DISTINCT host FROM spool_files")} == {"tkhost0", "tkhost1"}


@pytest.mark.skipif(_can_unshare() is not None, reason=str(_can_unshare()))
def test_a_host_still_writing_keeps_the_run_running(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text(HOST_JOB)
    spools = {h: tmp_path / h / "spool" for h in ("tkhostA", "tkhostB")}
    fast = _as_host("tkhostA", tmp_path, spools["tkhostA"], "record", "--run-id", "job-43", "--kind", "training",
                    "--db", str(tmp_path / "a.duckdb"), "--", sys.executable, "job.py")
    slow = _as_host("tkhostB", tmp_path, spools["tkhostB"], "record", "--run-id", "job-43", "--kind", "training",
                    "--db", str(tmp_path / "b.duckdb"), "--", sys.executable, "job.py",
                    extra={"WORK_S": "5"})  # still writing while a loaded machine starts the ingest CLI
    fast.communicate(timeout=120)
    db = tmp_path / "all.duckdb"
    deadline = time.monotonic() + 60
    while not list(spools["tkhostB"].glob("*/spans.*")) and time.monotonic() < deadline:  # .tkb or .jsonl
        time.sleep(0.1)
    assert cli(tmp_path, "ingest", str(spools["tkhostA"]), str(spools["tkhostB"]), "--db", str(db)).code == 0
    assert query(db, "SELECT status FROM runs") == [("running",)]
    slow.communicate(timeout=120)
    assert cli(tmp_path, "ingest", str(spools["tkhostB"]), "--db", str(db)).code == 0
    assert query(db, "SELECT status FROM runs") == [("ok",)]
    assert query(db, "SELECT count(*) FROM spans") == [(6,)]


# ---------------------------------------------------------------------------------------------
# clock offsets: estimated from the collectives, applied before detection


def _frames(shift_ns: int, *, late_rank: int = 3):
    """A 4-rank, 2-host run (ranks 2, 3 on host b, whose clock reads `shift_ns` ahead): two all-reduces a
    step; from step 10 on `late_rank` enters 30 ms after the others; every rank leaves together."""
    import numpy as np
    import polars as pl

    from tracekit.analysis.collectives import RunFrames

    rng = np.random.default_rng(7)
    rows = []
    seq = 0
    for step in range(30):
        for _ in range(2):
            t = 1_000_000_000 + seq * 100_000_000
            enters = t + rng.integers(0, 2_000_000, 4)
            if step >= 10:
                enters[late_rank] += 30_000_000
            leave = int(enters.max()) + 1_000_000
            for rank in range(4):
                skew = shift_ns if rank >= 2 else 0
                rows.append({"rank": rank, "world_size": 4, "process_group": "0", "seq": seq, "op": "all_reduce",
                             "bytes": 1024, "enter_ns": int(enters[rank]) + skew,
                             "exit_ns": leave + int(rng.integers(0, 200_000)) + skew, "step": step, "ok": True,
                             "peer": None, "source": "ddp", "nonfinite": False, "error": None})
            seq += 1
    exits = pl.DataFrame({"rank": [0, 1, 2, 3], "clean_exit": [True] * 4, "ended_ns": [None] * 4,
                          "started_ns": [None] * 4, "host": ["a", "a", "b", "b"]},
                         schema={"rank": pl.Int32, "clean_exit": pl.Boolean, "ended_ns": pl.Int64,
                                 "started_ns": pl.Int64, "host": pl.Utf8})
    return RunFrames(collectives=pl.DataFrame(rows), rank_exits=exits)


@pytest.mark.parametrize("shift_ms", [0, 50, -50])
@pytest.mark.parametrize("late_rank", [1, 3])
def test_same_findings_whatever_one_host_clock_says(shift_ms: int, late_rank: int) -> None:
    from tracekit.analysis.collectives import detect

    found = detect(_frames(shift_ms * 1_000_000, late_rank=late_rank))
    assert [(f.kind, f.subject, f.first_step) for f in found] == [("straggler", f"rank:{late_rank}", 10)]
    offsets = found[0].evidence["clock_offsets_ms"]
    assert offsets["a"] == 0 and abs(offsets["b"] - shift_ms) < 0.5, offsets
    assert found[0].evidence["host"] == ("a" if late_rank == 1 else "b")


def test_without_the_correction_a_shifted_clock_misleads() -> None:
    """Guards the correction itself: the same frames, taken as already on one clock, blame the wrong ranks."""
    import dataclasses

    from tracekit.analysis.collectives import detect

    found = detect(dataclasses.replace(_frames(50_000_000, late_rank=1), clock_offsets={}))
    assert [(f.kind, f.subject) for f in found] != [("straggler", "rank:1")]
