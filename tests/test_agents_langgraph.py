"""End to end on a real framework: a LangGraph supervisor workflow on fake chat models, instrumented by
OpenInference into tracekit, turned into an IDG and attributed — for each injected fault."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from foundation_helpers import REPO, clean_env, cli

pytest.importorskip("langgraph")
pytest.importorskip("openinference.instrumentation.langchain")
sys.path.insert(0, str(REPO / "fixtures"))


def test_a_recorded_langgraph_run_with_a_wrong_tool_result_is_attributed_to_the_tool(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "fixtures" / "agents_workflow.py"), "--fault", "wrong_tool",
                           "--seed", "1", "--run", "lg-wrong-tool"], cwd=tmp_path, env=clean_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ok"] is False and "population" in result["error"]
    graph = json.loads(cli(tmp_path, "idg", "lg-wrong-tool", "--format", "json").out)
    agents = {n["agent"] for n in graph["nodes"]}
    assert {"supervisor", "researcher", "analyst", "checker", "tool:lookup_population", "tool:calculator"} <= agents
    relations = {(e["relation"], e["provenance"]) for e in graph["edges"]}
    assert ("tool_result", "declared") in relations and ("consumes", "observed") in relations
    assert graph["nodes"][-1]["agent"] == "checker" and graph["nodes"][-1]["status"] == "error"
    ranked = json.loads(cli(tmp_path, "attribute", "lg-wrong-tool", "--format", "json").out)
    assert (ranked[0]["agent"], ranked[0]["role"]) == ("tool:lookup_population", "root_cause")
    assert {c["agent"]: c["role"] for c in ranked}["checker"] == "symptom"


@pytest.mark.parametrize("fault,root", [("fabricated", "researcher"), ("dropped", "researcher"),
                                        ("wrong_tool", "tool:lookup_population")])
def test_each_injected_fault_is_found_at_its_agent_and_step(tmp_path, fault, root):
    from agents_workflow import record_workflow

    from tracekit.analysis.attribution import attribute, load_idg
    from tracekit.store.db import connect
    from tracekit.ingest import ingest_paths

    seed = {"fabricated": 3, "dropped": 5, "wrong_tool": 2}[fault]  # seeds with the flaky-tool distractor
    record = record_workflow(fault, seed, str(tmp_path / "spool"))
    assert record["ok"] is False
    ingest_paths([tmp_path / "spool"], tmp_path / "store.duckdb")
    with connect(tmp_path / "store.duckdb", read_only=True) as con:
        g = load_idg(con, record["run_id"])
    attrs = g.graph["run"]["attributes"]
    assert attrs["fault"] == fault and attrs["ground_truth"]
    ranked = attribute(g, ground_truth=attrs["ground_truth"], context=attrs)
    top = ranked[0]
    assert (top.agent, top.role) == (root, "root_cause")
    if fault == "fabricated":
        assert f"{int(attrs['injected_value']):,}" in g.nodes[top.span_id]["content"]
    if fault == "dropped":
        assert g.nodes[top.span_id]["content"].startswith("Research report")
        assert g.out_degree(top.span_id) == 0, "the dropped report reached no one"
    timeouts = [c for c in ranked if "timed out" in g.nodes[c.span_id]["content"]]
    assert all(c.role != "root_cause" for c in timeouts), "a retried tool error is not the root cause"


def test_a_run_without_a_fault_passes_its_check_and_has_nothing_to_attribute(tmp_path):
    from agents_workflow import record_workflow

    from tracekit.ingest import ingest_paths

    record = record_workflow("none", 4, str(tmp_path / "spool"), name="lg-ok")
    assert record["ok"] is True
    ingest_paths([tmp_path / "spool"], tmp_path / "store.duckdb")
    done = cli(tmp_path, "attribute", "lg-ok", "--format", "json")
    assert done.code == 0 and json.loads(done.out) == []
