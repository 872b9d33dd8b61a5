"""Who&When: import (one run per log, idempotent), attribute/idg CLI contracts, and the evaluation with baselines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from foundation_helpers import cli_here, query
from tracekit.importers.whowhen import agent_of, load_log, step_signals

HAND_CRAFTED = Path(__file__).resolve().parents[2] / "shared" / "data" / "whowhen" / "Hand-Crafted"
needs_data = pytest.mark.skipif(not HAND_CRAFTED.is_dir(), reason="the Who&When logs are not next to the repo")


@pytest.mark.parametrize("entry,agent", [
    ({"role": "Orchestrator (thought)"}, "Orchestrator"),
    ({"role": "Orchestrator (-> WebSurfer)"}, "Orchestrator"),
    ({"role": "WebSurfer"}, "WebSurfer"),
    ({"role": "assistant", "name": "Verification_Expert"}, "Verification_Expert"),
])
def test_the_agent_is_the_name_or_the_role_without_its_qualifier(entry, agent):
    assert agent_of(entry) == agent


def test_an_algorithm_generated_log_keeps_labels_question_and_ground_truth(tmp_path):
    log = {"question": "What is 6 x 7?", "ground_truth": "42", "mistake_agent": "Calc_Expert",
           "mistake_step": "1", "mistake_reason": "multiplied wrong",
           "history": [{"role": "user", "name": "Planner", "content": "compute 6 x 7"},
                       {"role": "assistant", "name": "Calc_Expert", "content": "6 x 7 = 48"},
                       {"role": "assistant", "name": "Planner", "content": "FINAL ANSWER: 48"}]}
    path = tmp_path / "Algorithm-Generated" / "7.json"
    path.parent.mkdir()
    path.write_text(json.dumps(log))
    run, spans = load_log(path)
    assert run["kind"] == "agents" and run["name"] == "whowhen-Algorithm-Generated-7"
    assert run["attributes"]["mistake_step"] == 1 and run["attributes"]["ground_truth"] == "42"
    assert run["attributes"]["question"] == "What is 6 x 7?"
    attrs = [json.loads(s["attributes"]) for s in spans]
    assert [a["tracekit.agent"] for a in attrs] == ["Planner", "Calc_Expert", "Planner"]
    assert [a["tracekit.agent.step"] for a in attrs] == [0, 1, 2]
    assert attrs[1]["tracekit.agent.content"] == "6 x 7 = 48"
    assert load_log(path)[1] == spans, "ids are deterministic"


def test_an_empty_closing_turn_is_not_blamed_the_step_that_stated_the_wrong_figure_is(tmp_path):
    from tracekit.analysis.whowhen_eval import evaluate_whowhen

    log = {"question": "What is 6 x 7?", "ground_truth": "42", "mistake_agent": "Calc_Expert", "mistake_step": "1",
           "history": [{"role": "user", "name": "Planner", "content": "What is 6 x 7?"},
                       {"role": "assistant", "name": "Calc_Expert", "content": "6 x 7 = 48"},
                       {"role": "assistant", "name": "Verifier", "content": "Checked: 48 is correct. TERMINATE"},
                       {"role": "assistant", "name": "Planner", "content": None}]}
    (tmp_path / "1.json").write_text(json.dumps(log))
    (tmp_path / "2.json").write_text(json.dumps({"history": [], "mistake_step": "x"}))
    result = evaluate_whowhen(tmp_path, details=True)
    assert result["n"] == 1 and result["skipped"] == [str(tmp_path / "2.json")]
    assert [{k: v for k, v in log.items() if k != "confidence"} for log in result["logs"]] == [
        {"file": "1.json", "true_agent": "Calc_Expert", "true_step": 1, "agent": "Calc_Expert", "step": 1}]
    assert 0.0 <= result["logs"][0]["confidence"] <= 1.0
    assert result["agent_accuracy"] == result["step_accuracy"] == 1.0


def test_a_file_that_is_not_a_log_is_a_clean_error(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"nothing": 1}')
    done = cli_here(tmp_path, "import", "whowhen", str(bad))
    assert done.code == 0 and "skipped" in done.err
    done = cli_here(tmp_path, "import", "whowhen", str(tmp_path / "missing"))
    assert done.code == 2 and done.err.startswith("error: ")


@needs_data
def test_import_attribute_and_idg_end_to_end(tmp_path):
    for _ in range(2):  # importing twice leaves the same rows
        done = cli_here(tmp_path, "import", "whowhen", str(HAND_CRAFTED / "1.json"))
        assert done.code == 0, done.err
    db = tmp_path / "store.duckdb"
    history = json.loads((HAND_CRAFTED / "1.json").read_text())["history"]
    assert query(db, "SELECT count(*) FROM runs")[0][0] == 1
    assert query(db, "SELECT count(*) FROM spans")[0][0] == len(history)
    kind, attrs = query(db, "SELECT kind, attributes FROM runs")[0]
    attrs = json.loads(attrs)
    assert kind == "agents" and attrs["mistake_agent"] == "WebSurfer" and attrs["ground_truth"]
    assert isinstance(attrs["mistake_step"], int) and attrs["question"].startswith("Where can I take")

    done = cli_here(tmp_path, "attribute", "whowhen-Hand-Crafted-1", "--format", "json")
    assert done.code == 0, done.err
    ranked = json.loads(done.out)
    assert isinstance(ranked, list) and ranked
    for c in ranked:
        assert {"agent", "step", "score", "role", "evidence", "path", "confidence"} <= set(c)
        assert 0.0 <= c["confidence"] <= 1.0
        assert c["role"] in ("root_cause", "symptom", "candidate") and c["evidence"]
    assert [c["score"] for c in ranked] == sorted((c["score"] for c in ranked), reverse=True)
    assert sum(c["role"] == "root_cause" for c in ranked) == 1
    assert query(db, "SELECT count(*) FROM findings WHERE analysis = 'attribution'")[0][0] == len(ranked)

    done = cli_here(tmp_path, "attribute", "--all", "--format", "json")
    assert done.code == 0 and json.loads(done.out)[0]["candidates"][0]["step"] == ranked[0]["step"]
    done = cli_here(tmp_path, "idg", "whowhen-Hand-Crafted-1", "--format", "dot")
    assert done.out.startswith("digraph idg {") and "dashed" in done.out
    graph = json.loads(cli_here(tmp_path, "idg", "whowhen-Hand-Crafted-1", "--format", "json").out)
    assert len(graph["nodes"]) == len(history)
    assert {e["provenance"] for e in graph["edges"]} == {"inferred"}
    assert all(0 < e["confidence"] <= 1 for e in graph["edges"])
    assert cli_here(tmp_path, "attribute", "nope").code == 2


@pytest.mark.parametrize("entry,index,expected", [
    ({"role": "human", "content": "What is 6 x 7?"}, 0, {"role": "task"}),
    ({"role": "assistant", "name": "Math_Expert", "content": "You are given a task: what is 6 x 7? Plan: ..."}, 0,
     {"role": "task"}),
    # an agent that restates the question and goes on with a plan of its own wrote a step that may be the mistake
    ({"role": "assistant", "name": "Math_Expert", "content": "You are given a task: what is 6 x 7? Plan: first look "
      "up the multiplication table for six, then read the seventh entry, then check it against a calculator and "
      "report the figure to the group with a short justification."}, 0, {"role": "worker"}),
    ({"role": "user", "content": "What is 6 x 7, please?"}, 0, {"role": "task"}),
    ({"role": "Orchestrator (thought)", "content": 'Updated Ledger: {"is_progress_being_made": {"reason": "no", '
      '"answer": false}, "is_request_satisfied": {"reason": "no", "answer": false}}'}, 4,
     {"role": "orchestrator", "judgment": "no_progress"}),
    ({"role": "Orchestrator (thought)", "content": "Request satisfied."}, 9, {"role": "orchestrator", "verdict": "pass"}),
    ({"role": "user", "name": "Computer_terminal", "content": "exitcode: 1 (execution failed)\nCode output: \n"
      "Traceback (most recent call last):\nKeyError: 'year'"}, 3,
     {"role": "tool", "exit_code": 1, "error": "KeyError: 'year'"}),
    ({"role": "user", "name": "Computer_terminal", "content": "exitcode: 0 (execution succeeded)\nCode output: 42"}, 3,
     {"role": "tool", "exit_code": 0}),
    ({"role": "assistant", "name": "Verifier", "content": "Checked. FINAL ANSWER: 48\nTERMINATE"}, 5,
     {"role": "worker", "final_answer": "48"}),
])
def test_format_conventions_become_general_step_signals(entry, index, expected):
    found = step_signals(entry, index, "What is 6 x 7?")
    assert {k.rsplit(".", 1)[1]: v for k, v in found.items()} == expected


@needs_data
def test_eval_whowhen_cross_validated_meets_the_quality_bar(tmp_path):
    done = cli_here(tmp_path, "eval", "whowhen", str(HAND_CRAFTED), "--folds", "5", "--format", "json")
    assert done.code == 0, done.err
    result = json.loads(done.out)
    assert result["n"] == 58 and result["folds"] == 5 and "cross-validation" in result["evaluation"]
    figures = ("agent_accuracy", "step_accuracy", "step_accuracy_substring")
    for name in figures:
        assert 0.0 <= result[name] <= 1.0
    assert set(result["baselines"]) == {"uniform_random", "most_frequent_agent", "last_agent", "first_step"}
    for baseline in result["baselines"].values():
        assert baseline["n"] == 58 and all(0.0 <= baseline[name] <= 1.0 for name in figures)
    assert result["step_accuracy_substring"] >= result["step_accuracy"]
    assert "substring" in result["note"] and isinstance(result["beats_baselines"], bool)
    conf = result["at_confidence"]
    assert conf["n"] == round(conf["coverage"] * 58) and 0.0 <= conf["agent_accuracy"] <= 1.0
    # the bars on the cross-validated figures (measured 0.655 / 0.259, n=58): a margin of
    # about two logs on each, so one log's flip does not fail the suite
    assert result["agent_accuracy"] >= 0.62
    assert result["step_accuracy"] >= 0.18
    assert result["agent_accuracy"] > result["baselines"]["last_agent"]["agent_accuracy"]
    assert result["step_accuracy"] > result["baselines"]["last_agent"]["step_accuracy"]


def test_eval_rejects_impossible_folds(tmp_path):
    log = {"question": "q?", "ground_truth": "1", "mistake_agent": "A", "mistake_step": "1",
           "history": [{"role": "user", "name": "T", "content": "q?"}, {"role": "assistant", "name": "A", "content": "2"}]}
    (tmp_path / "1.json").write_text(json.dumps(log))
    done = cli_here(tmp_path, "eval", "whowhen", str(tmp_path), "--folds", "3")
    assert done.code == 2 and "--folds" in done.err
