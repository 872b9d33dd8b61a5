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
    assert table.returncode == 0 and "findings (one per cascade)" in table.stdout
    assert f"{len(data['edges'])} edges" in table.stdout  # the table says how many edges its findings collapse


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


RETRY_STORM = ROOT / "fixtures" / "campaigns" / "retry_storm.toml"


@pytest.mark.slow
def test_seeded_retry_storm_cycle_found_at_one_third_budget_and_cli_ux(env):
    """Guards issue 19: three-phase at one third of the exhaustive budget (20 experiments: 43 runs ->
    15) finds the seeded retry-storm cycle; --fail-on-cycle exits 1; a name two campaigns share is refused."""
    run = cli("campaign", "run", str(RETRY_STORM), "--budget", "15", "--workers", "2", "--name", "storm-ci",
              "--fail-on-cycle", "--format", "json", env=env)
    assert run.returncode == 1, run.stderr  # a cycle was found
    summary = json.loads(run.stdout)
    assert summary["runs"] <= 15 and summary["exhaustive_budget"] == 43
    assert "storm.await_reply:raise -> storm.handle:delay" in summary["cycles"]
    report = json.loads(cli("campaign", "report", "storm-ci", "--format", "json", env=env).stdout)
    seeded = [f for f in report["findings"] if f["kind"] == "cycle"
              and {"storm.await_reply:raise", "storm.handle:delay"} <= set(f["faults"])]
    assert len(seeded) == 1  # every cycle through the loop's component is one finding
    assert len([f for f in report["findings"] if f["kind"] == "cycle"]) <= len(report["cycles"])
    for cycle in report["cycles"]:  # any cycle touching the loop is inside that one finding
        assert not set(cycle) & set(seeded[0]["faults"]) or set(cycle) <= set(seeded[0]["faults"])
    dry = cli("campaign", "run", str(RETRY_STORM), "--dry-run", "--name", "storm-ci", "--format", "json", env=env)
    plan = json.loads(dry.stdout)
    assert plan["experiments"] == 20 and {p["point"] for p in plan["points"]} >= {"storm.handle", "storm.await_reply"}
    points = {p["point"]: p for p in plan["points"]}  # parse runs in the handler, which the client's wait contains
    assert points["storm.parse"]["callers"] == ["storm.handle"]
    assert points["storm.parse"]["depth"] == points["storm.handle"]["depth"] + 1 >= 2
    ambiguous = cli("campaign", "report", "storm-ci", env=env)
    assert ambiguous.returncode == 2 and "2 campaigns are named 'storm-ci'" in ambiguous.stderr


@pytest.mark.slow
def test_timeout_raised_inside_the_delayed_call_closes_the_redelivery_loop(tmp_path):
    """A real process with a job runner's deadline (SIGALRM) and retry: the injected delay is interrupted
    by the runner's own TimeoutError in the same call. That timeout is a consequence at the injected
    point (only the injected fault itself is left out), so the timeout -> re-run loop is a cycle."""
    toml = tmp_path / "deadline.toml"
    toml.write_text(f"""
[campaign]
name = "deadline"
root = "{ROOT}"
budget = 6
profile_repeats = 2
injection_repeats = 2
timeout_s = 20
strategy = "exhaustive"
[[workload]]
name = "jobs"
target = "fixtures.tiny_retry.app:deadline"
[faults]
types = ["raise", "delay"]
delays_ms = [600]
exception = "TimeoutError"
[points]
include = ["tiny.job"]
""")
    result = run_campaign(load_campaign(toml), workers=2, db=tmp_path / "s.duckdb", spool_dir=tmp_path / "spool")
    assert result.runs == 6
    edges = {(e["src"], e["dst"], e["dst_variant"]) for e in result.report["edges"]}
    assert ("tiny.job:delay", "tiny.job:raise", "TimeoutError") in edges  # the timeout in the delayed call itself
    assert ("tiny.job:raise", "tiny.job:delay", "") in edges  # a failed job runs again
    assert ("tiny.job:raise", "tiny.job:raise", "TimeoutError") not in edges  # the injected exception is no consequence
    assert ["tiny.job:delay", "tiny.job:raise"] in result.report["cycles"]


def test_breadth_order_does_not_depend_on_names():
    from tracekit.inject.budget import ThreePhase
    from tracekit.inject.campaign import Experiment, PointInfo
    from tracekit.inject.profile import priorities

    def first_batch(prefix_hot: str, prefix_cold: str) -> list[str]:
        infos = [PointInfo(f"{prefix_hot}.run", "traced", calls=30.0, loop=True, below=2),
                 PointInfo(f"{prefix_cold}.start", "traced", calls=1.0),
                 PointInfo(f"{prefix_cold}.stop", "traced", calls=1.0)]
        cands = [Experiment("w", i.point, "delay", delay_ms=300) for i in infos]
        alloc = ThreePhase(cands, {i.point: "delay" for i in infos}, priorities(infos))
        return [e.point.split(".")[1] for e in alloc.next_batch({}, 1)]

    assert first_batch("zzz", "aaa") == first_batch("aaa", "zzz") == ["run"]  # the hot loop, whatever its name


def test_partial_consequence_gets_a_confirmation_run():
    from tracekit.inject.budget import Observed, ThreePhase
    from tracekit.inject.campaign import Experiment

    a, b = Experiment("w", "a", "delay", delay_ms=300), Experiment("w", "b", "raise")
    alloc = ThreePhase([a, b], {"a": "delay", "b": "delay"}, {"a": 1.0, "b": 0.0})
    outcomes = {a: Observed(frozenset(), frozenset({"b:raise"}))}  # seen in one repeat of two
    batch = alloc.next_batch(outcomes, 2)
    assert b in batch and any(e.base == a and e.attempt == 1 for e in batch)


def test_zero_code_points_from_source(tmp_path, monkeypatch):
    pkg = tmp_path / "zc_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "svc.py").write_text(
        "import socket\n"
        "class Busy(Exception):\n    pass\n"
        "def check(x):\n    return x > 0\n"
        "def fetch(x):\n    if x < 0:\n        raise Busy('no')\n    return x\n"
        "def caller(x):\n    try:\n        return fetch(x)\n    except (Busy, socket.timeout):\n        return None\n"
        "class Pool:\n    def get(self):\n        return 1\n    @staticmethod\n    def make():\n        return Pool()\n")
    from tracekit.inject.modules import install, instrument_module, static_points

    points = static_points(["zc_pkg.*"], [tmp_path])
    assert points["zc_pkg.svc.check"].boolean and not points["zc_pkg.svc.fetch"].boolean
    assert points["zc_pkg.svc.fetch"].exception == "zc_pkg.svc.Busy"  # raised in it and caught around its call
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("zc_pkg.svc")
    assert instrument_module(module) == 5  # check, fetch, caller, Pool.get, Pool.make
    assert module.caller(-1) is None and module.Pool.make().get() == 1  # behaviour unchanged
    install(["zc_pkg.*"])  # idempotent; later imports go through the hook
    import sys

    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "ModuleFinder"]


def test_chain_grows_backwards_to_where_a_linked_exception_comes_from():
    """Once an exception at `client.call` is linked (it caused something), the next experiment raises at the
    point that runs within it in another process (`server.parse`), before more breadth or more delays."""
    from tracekit.inject.budget import Observed, make_allocator
    from tracekit.inject.campaign import Experiment, PointInfo
    from tracekit.inject.profile import nested_points

    spans = [{"name": "client.call", "start_ns": 0, "end_ns": 100}, {"name": "server.parse", "start_ns": 10, "end_ns": 20},
             {"name": "client.idle", "start_ns": 200, "end_ns": 300}, {"name": "server.tick", "start_ns": 150, "end_ns": 160}]
    inside = nested_points([spans])
    assert inside == {"client.call": {"server.parse"}}
    infos = [PointInfo(p, "traced", calls=c, inside=tuple(sorted(inside.get(p, ()))))
             for p, c in (("client.call", 9.0), ("server.parse", 1.0), ("client.idle", 5.0), ("server.tick", 4.0))]
    cands = [Experiment("w", i.point, f) for i in infos for f in ("delay", "raise")]
    alloc = make_allocator("three-phase", cands, {i.point: "delay" for i in infos}, points=infos)
    first = alloc.next_batch({}, 2)
    outcomes = {e: Observed() for e in first}
    outcomes[Experiment("w", "client.call", "raise")] = Observed(frozenset({"client.retry:raise"}))
    nxt = alloc.next_batch(outcomes, 2)
    assert nxt[0] == Experiment("w", "server.parse", "raise")


def test_one_fault_in_two_call_contexts_is_one_cascade():
    """A self-loop of `x:delay` under one caller and the loop x:delay <-> y:raise under another are one finding."""
    from tracekit.graph.propagation import Consequence, Edge, FaultNode, build_graph, collapse_findings, find_cycles

    x1, x2, a = FaultNode("x", "delay", "", "p1"), FaultNode("x", "delay", "", "p2"), FaultNode("a", "raise", "E", None)
    c = Consequence("E", "a", "error:E", None)
    edges = [Edge(x1, a, "E", "c", "t", ("r1",), ("p",), c), Edge(a, x1, "S+", "c", "t", ("r2",), ("p",), c),
             Edge(x2, x2, "S+", "c", "t", ("r3",), ("p",), c)]
    for order in (edges, edges[::-1]):  # whichever component the graph lists first
        g = build_graph(order)
        cycles = find_cycles(g)
        findings = collapse_findings(g, cycles, [])
        assert len(cycles) == 2
        assert [(f["kind"], f["faults"], f["cycles"]) for f in findings] == [("cycle", ["a:raise", "x:delay"], 2)]
