"""Live detection: `tracekit anomalies RUN --follow` on real torchrun jobs recorded while they run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foundation_helpers import assert_one_line_error, cli

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "fixtures" / "ddp_job.py"


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEKIT_")}
    env.update(TRACEKIT_SPOOL_DIR=str(tmp / "spool"), TRACEKIT_DB=str(tmp / "t.duckdb"), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return env


def start_job(tmp: Path, name: str, port: int, *job: str, nproc: int = 4) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tracekit", "record", "--run", name, "--kind", "training", "--",
           "torchrun", "--nproc-per-node", str(nproc), "--master-port", str(port), str(JOB), "--probe-every", "0", *job]
    return subprocess.Popen(cmd, cwd=tmp, env=_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_follow(tmp: Path, name: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tracekit", "anomalies", name, "--follow", "--format", "json",
                             *extra], cwd=tmp, env=_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


pytestmark = pytest.mark.slow


def test_a_hang_is_printed_while_the_job_still_runs_and_exit_on_finding_stops(tmp_path: Path) -> None:
    job = start_job(tmp_path, "hang", 29871, "--steps", "30", "--fault", "hang", "--fault-rank", "2",
                    "--fault-step", "6", "--pg-timeout", "60")
    follower = start_follow(tmp_path, "hang", "--exit-on-finding", "--exec", "echo $TRACEKIT_FINDING_SUBJECT > hit.txt")
    try:
        out, err = follower.communicate(timeout=240)
        assert follower.returncode == 1, err[-2000:]
        assert job.poll() is None, "the finding must come while the job is still running (hung, 60 s timeout)"
    finally:
        job.send_signal(signal.SIGTERM)
        job.communicate(timeout=120)
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    finding = json.loads(lines[0])
    assert (finding["kind"], finding["subject"]) == ("hang", "rank:2")
    assert {"kind", "subject", "first_step", "confidence", "evidence", "summary", "score"} <= set(finding)
    assert (tmp_path / "hit.txt").read_text().strip() == "rank:2"  # --exec ran with the finding


def test_a_healthy_job_followed_to_its_end_prints_nothing_and_stops(tmp_path: Path) -> None:
    job = start_job(tmp_path, "ok", 29872, "--steps", "20")
    follower = start_follow(tmp_path, "ok")
    out, err = follower.communicate(timeout=240)
    job.communicate(timeout=120)
    assert job.returncode == 0
    assert follower.returncode == 0, err[-2000:]
    assert out.strip() == ""


def test_sigterm_stops_the_follower(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir()
    follower = start_follow(tmp_path, "not-started-yet")
    time.sleep(3)
    assert follower.poll() is None  # waiting for the run to appear
    follower.send_signal(signal.SIGTERM)
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0 and out == "" and "Traceback" not in err


def test_a_missing_spool_path_is_one_clear_line(tmp_path: Path) -> None:
    assert_one_line_error(cli(tmp_path, "anomalies", "x", "--follow", "--spool", str(tmp_path / "nope")))


def test_a_run_that_never_appears_is_given_up_after_wait(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir()
    started = time.monotonic()
    follower = start_follow(tmp_path, "never-written", "--wait", "1", "--interval", "0.2")
    out, err = follower.communicate(timeout=60)
    assert follower.returncode == 2 and out == "" and "Traceback" not in err
    assert "waiting up to 1 s for run 'never-written'" in err
    assert "no run 'never-written'" in err and "--wait" in err.splitlines()[-1]
    assert time.monotonic() - started < 30  # gave up instead of waiting forever
