"""Campaigns end to end with real processes: CLI run + report contract, crash/hang as consequences, Ray = local."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracekit.inject.campaign import load_campaign
from tracekit.inject.runner import run_campaign
from tracekit.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "fixtures" / "campaigns" / "tiny.toml"


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tracekit", *args], env=env, capture_output=True, text=True,
                          timeout=240, cwd=ROOT)


@pytest.fixture
def env(tmp_path):
    out = {k: v for k, v in os.environ.items() if not k.startswith("TRACEKIT_")}
    out.update(TRACEKIT_DB=str(tmp_path / "store.duckdb"), TRACEKIT_SPOOL_DIR=str(tmp_path / "spool"))
    return out


@pytest.mark.slow
def test_cli_run_and_report_contract(env):
    run = cli("campaign", "run", str(TINY), "--budget", "10", "--workers", "2", "--format", "json", env=env)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["runs"] == 10 and summary["profile_runs"] == 2 and summary["outcomes"].get("ok", 0) >= 2
    report = cli("campaign", "report", summary["campaign_id"][:10], "--format", "json", env=env)
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert {"edges", "chains", "cycles"} <= set(data)
    for e in data["edges"]:
        assert e["kind"] in ("E", "S+") and ":" in e["src"] and ":" in e["dst"] and len(e["evidence_runs"]) >= 2
    edges = {(e["src"], e["dst"], e["kind"]) for e in data["edges"]}
    # a raise at fetch is retried by request: more fetch calls under request (S+), a retry (E)
    assert ("tiny.fetch:raise", "tiny.fetch:delay", "S+") in edges
    assert ("tiny.fetch:raise", "tiny.request:retry", "E") in edges
    assert data["cycles"] == []  # this target has no cascade
    # every evidence run is a campaign run of this campaign in the store
    runs = cli("runs", "--kind", "campaign", "--format", "json", env=env)
    ids = {r["run_id"] for r in json.loads(runs.stdout)}
    assert {r for e in data["edges"] for r in e["evidence_runs"] + e["profile_runs"]} <= ids
    listing = cli("campaign", "list", "--format", "json", env=env)
    assert [c["name"] for c in json.loads(listing.stdout)] == ["tiny"]
    table = cli("campaign", "report", "tiny", env=env)
    assert table.returncode == 0 and "fault-propagation edges" in table.stdout


def test_bad_campaign_file_is_a_clean_error(env, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[campaign]\nname = "x"\n[[workload]]\nname = "w"\ntarget = "nocolon"\n')
    result = cli("campaign", "run", str(bad), env=env)
    assert result.returncode == 2 and "error:" in result.stderr and "module:function" in result.stderr
    with pytest.raises(ConfigError, match="budget"):
        run_campaign(load_campaign(TINY), budget=3, db=tmp_path / "x.duckdb", spool_dir=tmp_path / "s")


@pytest.mark.slow
def test_crash_and_hang_of_the_target_are_consequences(tmp_path, monkeypatch):
    pid_file = tmp_path / "helpers.txt"
    monkeypatch.setenv("TINY_PID_FILE", str(pid_file))
    toml = tmp_path / "crashy.toml"
    toml.write_text(f"""
[campaign]
name = "crashy"
root = "{ROOT}"
budget = 8
profile_repeats = 2
injection_repeats = 2
timeout_s = 8
[[workload]]
name = "crash"
target = "fixtures.tiny_retry.app:crash"
[[workload]]
name = "hang"
target = "fixtures.tiny_retry.app:hang"
[faults]
types = ["raise"]
[points]
include = ["tiny.fetch"]
""")
    result = run_campaign(load_campaign(toml), workers=2, db=tmp_path / "s.duckdb", spool_dir=tmp_path / "spool")
    assert result.runs == 8 and result.outcomes["crash"] == 2 and result.outcomes["hang"] == 2
    edges = {(e["test"], e["src"], e["dst"]) for e in result.report["edges"]}
    assert ("crash", "tiny.fetch:raise", "workload:crash:crash") in edges
    assert ("hang", "tiny.fetch:raise", "workload:hang:hang") in edges
    # the registered analysis accepts a campaign run as well as the campaign itself
    from tracekit.analysis.causality import analyze_campaign
    from tracekit.store.db import connect

    with connect(tmp_path / "s.duckdb", read_only=True) as con:
        via_run = analyze_campaign(con, result.report["edges"][0]["evidence_runs"][0])
    assert via_run["edges"] == result.report["edges"]
    helpers = [int(p) for p in pid_file.read_text().split()]
    assert len(helpers) == 4  # the hang workload ran twice in profile and twice with the fault
    time.sleep(0.2)
    for pid in helpers:  # every child of a run is gone, including those of the hung runs
        try:
            os.kill(pid, 0)
            alive = Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0
        except ProcessLookupError:
            alive = False
        assert not alive, f"helper process {pid} outlived its campaign run"


@pytest.mark.slow
def test_ray_executor_gives_the_same_edges_as_local(tmp_path):
    campaign = load_campaign(TINY)
    local = run_campaign(campaign, budget=10, workers=2, db=tmp_path / "l.duckdb", spool_dir=tmp_path / "ls")
    ray_run = run_campaign(campaign, budget=10, workers=2, executor="ray", db=tmp_path / "r.duckdb",
                           spool_dir=tmp_path / "rs")

    def shape(result):
        return sorted((e["src"], e["dst"], e["kind"], e["src_context"], e["dst_context"]) for e in result.report["edges"])

    assert local.runs == ray_run.runs == 10
    assert shape(local) == shape(ray_run) and shape(local)
    assert local.report["chains"] == ray_run.report["chains"]
    assert local.report["cycles"] == ray_run.report["cycles"]
