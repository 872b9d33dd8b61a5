"""End to end: real 4-rank DDP jobs on gloo under `tracekit record`, one per fault kind, then `tracekit anomalies`."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "fixtures" / "ddp_job.py"
LAUNCH = ROOT / "fixtures" / "netns_launch.py"
STEPS, ONSET = "16", 5

pytestmark = pytest.mark.slow


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEKIT_")}
    env.update(TRACEKIT_SPOOL_DIR=str(tmp_path / "spool"), TRACEKIT_DB=str(tmp_path / "t.duckdb"))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def record(tmp_path: Path, name: str, launcher: list[str], *job_args: str) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "tracekit", "record", "--run", name, "--kind", "training", "--", *launcher,
           str(JOB), "--steps", STEPS, "--fault-step", str(ONSET), "--pg-timeout", "4", *job_args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=400)
    return proc.returncode, proc.stderr


def anomalies(tmp_path: Path, name: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "tracekit", "anomalies", name, "--format", "json"], cwd=tmp_path,
                         env=_env(tmp_path), capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def torchrun(port: int) -> list[str]:
    return ["torchrun", "--nproc-per-node", "4", "--master-port", str(port)]


def test_healthy_run_has_no_findings(tmp_path: Path) -> None:
    code, err = record(tmp_path, "healthy", torchrun(29821))
    assert code == 0, err[-2000:]
    assert anomalies(tmp_path, "healthy") == []
    table = subprocess.run([sys.executable, "-m", "tracekit", "anomalies", "healthy"], cwd=tmp_path,
                           env=_env(tmp_path), capture_output=True, text=True, check=True)
    assert "(no rows)" in table.stdout


@pytest.mark.parametrize("fault, rank, kind", [
    ("slow_rank", 2, "straggler"),
    ("throttle", 1, "throttle"),
    ("hang", 3, "hang"),
    ("crash", 1, "crash"),
    ("nan", 2, "nonfinite"),
])
def test_fault_is_named(tmp_path: Path, fault: str, rank: int, kind: str) -> None:
    code, err = record(tmp_path, fault, torchrun(29830 + rank), "--fault", fault, "--fault-rank", str(rank))
    assert (code != 0) == (fault in ("hang", "crash")), err[-2000:]
    found = anomalies(tmp_path, fault)
    assert found, f"no finding for {fault}"
    top = found[0]
    assert (top["kind"], top["subject"]) == (kind, f"rank:{rank}"), found
    assert ONSET <= top["first_step"] <= ONSET + 3
    assert 0 < top["confidence"] <= 1 and top["evidence"]
    assert all(f["confidence"] <= top["confidence"] for f in found)
    if fault == "hang":  # the hung rank's records before it stopped survived, and it was alive after
        assert top["evidence"]["alive_after_others_entered_ms"] > 1000
    if fault == "crash":
        assert top["evidence"]["clean_exit"] is False
    stored = subprocess.run([sys.executable, "-m", "tracekit", "sql", "-f", "json",
                             "SELECT kind, subject FROM findings WHERE analysis = 'collectives' ORDER BY rank_order"],
                            cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, check=True)
    assert json.loads(stored.stdout)[0] == {"kind": kind, "subject": f"rank:{rank}"}


def _netns_unsupported() -> str | None:
    spec = importlib.util.spec_from_file_location("netns_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.can_use_netns()


@pytest.mark.netns
def test_slow_link_named_by_the_probe(tmp_path: Path) -> None:
    reason = _netns_unsupported()
    if reason:
        pytest.skip(f"slow_link needs a network namespace per rank: {reason}")
    code, err = record(tmp_path, "link", [sys.executable, str(LAUNCH), "--nproc", "4", "--port", "29851", "--"],
                       "--fault", "slow_link", "--fault-rank", "1", "--fault-peer", "3")
    assert code == 0, err[-2000:]
    found = anomalies(tmp_path, "link")
    assert (found[0]["kind"], found[0]["subject"]) == ("slow_link", "link:1-3"), found
    assert ONSET <= found[0]["first_step"] <= ONSET + 3
    assert found[0]["evidence"]["ratio"] >= 4
