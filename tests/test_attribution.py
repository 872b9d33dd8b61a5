"""Attribution: back-trace root cause vs symptoms on tiny IDGs, signals, confidence, fitting, and the judge e2e."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tracekit.analysis.attribution import attribute
from tracekit.analysis.attribution_features import FEATURES, run_features
from tracekit.analysis.attribution_judge import judge_from_env, parse_verdicts
from tracekit.analysis.attribution_model import DEFAULT, PRIOR, AttributionParams, LabelledRun, fit, fit_weights
from tracekit.errors import ConfigError, TracekitError
from tracekit.graph.idg import Step, build_idg
from tracekit.importers.genai import agent_step_of, derive_links, select_steps


def _chain(*steps: Step, provenance: str = "observed"):
    links = [{"src_span_id": a.span_id, "dst_span_id": b.span_id, "provenance": provenance, "confidence": 1.0,
              "relation": "consumes"} for a, b in zip(steps, steps[1:])]
    return build_idg(list(steps), links)


def test_every_feature_has_a_prior_and_a_default_weight():
    assert set(PRIOR) == set(FEATURES) == set(DEFAULT.weights)


@pytest.mark.parametrize("provenance", ["observed", "declared"])
def test_an_error_explained_by_an_erroneous_ancestor_is_a_symptom(provenance):
    g = _chain(Step("a", "Search", 0, "I was unable to open the source; I assume the figure is 512"),
               Step("b", "Writer", 1, "Traceback (most recent call last): ValueError: bad figure"),
               Step("c", "Checker", 2, "", status="error", errors=("check failed: 512 is wrong",)),
               provenance=provenance)
    ranked = attribute(g)
    assert (ranked[0].agent, ranked[0].role) == ("Search", "root_cause")
    by_agent = {c.agent: c for c in ranked}
    assert by_agent["Writer"].role == "symptom" and by_agent["Writer"].explained_by == 0
    assert by_agent["Writer"].score < ranked[0].score
    assert ranked[0].path == [0, 1, 2]
    assert any("back-trace" in e and "recorded dependency edges" in e for e in ranked[0].evidence)


def test_without_the_edge_the_later_error_is_not_explained():
    steps = [Step("a", "Search", 0, "I was unable to open the source"),
             Step("b", "Writer", 1, "Traceback (most recent call last): ValueError: bad figure", status="error",
                  errors=("ValueError: bad figure",))]
    ranked = attribute(build_idg(steps, [{"src_span_id": "x", "dst_span_id": "b", "provenance": "declared"}]))
    assert all(c.role != "symptom" for c in ranked)


def test_a_failed_execution_blames_the_step_that_wrote_the_code_not_the_terminal():
    steps = [Step("t", "user", 0, "How many rows?", signals=(("role", "task"),)),
             Step("p", "Data_Expert", 1, "```python\nprint(len(rows))\n```", signals=(("role", "worker"),)),
             Step("x", "Computer_terminal", 2, "exitcode: 1 (execution failed)\nNameError: rows",
                  signals=(("role", "tool"), ("exit_code", 1), ("error", "NameError: rows"))),
             Step("v", "Checker_Expert", 3, "FINAL ANSWER: 0", signals=(("role", "worker"), ("final_answer", "0")))]
    ranked = attribute(build_idg(steps), context={"question": "How many rows?"})
    assert ranked[0].agent == "Data_Expert"
    assert any("execution of its output failed at step 2" in e for e in ranked[0].evidence)
    assert any("inferred from content reuse" in e for e in ranked[0].evidence)
    assert all(c.step != 0 for c in ranked), "the task statement is a given, not a candidate"


def test_a_failed_call_retried_with_the_same_input_is_corrected_and_not_blamed():
    steps = [Step("f", "tool:area", 0, "error: service timed out", input="Avalon", kind="tool_result"),
             Step("ok", "tool:area", 1, "The area is 312 km2", input="Avalon", kind="tool_result"),
             Step("w", "Writer", 2, "I cannot say: I assume 9,999 people"),
             Step("c", "Checker", 3, "", status="error", errors=("check failed",))]
    g = build_idg(steps, [{"src_span_id": a, "dst_span_id": b, "provenance": "observed", "confidence": 1.0}
                          for a, b in (("f", "ok"), ("ok", "w"), ("w", "c"))])
    ranked = attribute(g)
    assert ranked[0].agent == "Writer"
    retried = next(c for c in ranked if c.span_id == "f")
    assert any(e.startswith("recovered") for e in retried.evidence)


def test_a_message_that_reached_no_one_is_the_dropped_root_cause():
    steps = [Step("s", "Supervisor", 0, "route to researcher"),
             Step("r", "Researcher", 1, "Research report: population 812,000 and area 90 km2"),
             Step("a", "Analyst", 2, "I cannot compute the density: the population was not provided"),
             Step("c", "Checker", 3, "", status="error", errors=("check failed: no density",))]
    links = [{"src_span_id": "s", "dst_span_id": "r", "provenance": "observed", "confidence": 1.0},
             {"src_span_id": "s", "dst_span_id": "a", "provenance": "observed", "confidence": 1.0},
             {"src_span_id": "a", "dst_span_id": "c", "provenance": "observed", "confidence": 1.0}]
    g = build_idg(steps, links)
    ranked = attribute(g)
    assert (ranked[0].agent, ranked[0].role) == ("Researcher", "root_cause")
    assert not g.has_edge("r", "a"), "attribution must not change the caller's graph"


def test_an_orchestrator_judgment_blames_the_step_it_judged():
    steps = [Step("q", "human", 0, "task: find the dojo", signals=(("role", "task"),)),
             Step("w", "WebSurfer", 1, "I clicked an advert for microscopes", signals=(("role", "worker"),)),
             Step("o", "Orchestrator", 2, "ledger", signals=(("role", "orchestrator"), ("judgment", "loop"))),
             Step("f", "Orchestrator", 3, "FINAL ANSWER: unknown",
                  signals=(("role", "orchestrator"), ("final_answer", "unknown")))]
    ranked = attribute(build_idg(steps), context={"question": "task: find the dojo"})
    assert ranked[0].agent == "WebSurfer"
    assert any("later judged by step 2" in e and "looping" in e for e in ranked[0].evidence)


def test_a_run_that_did_not_fail_has_nothing_to_attribute():
    g = _chain(Step("a", "A", 0, "fine"), Step("b", "B", 1, "done"))
    assert attribute(g, failed=False) == []
    with pytest.raises(TracekitError):
        attribute(build_idg([]))


def test_a_failed_run_without_evidence_reports_low_confidence():
    steps = [Step(f"s{i}", f"agent{i % 3}", i, f"result {i}: value {100 + i}") for i in range(8)]
    steps.append(Step("c", "Checker", 8, "", status="error", errors=("check failed",)))
    evident = [*steps[:3], Step("s3", "agent0", 3, "Traceback (most recent call last): KeyError: 'x'"), *steps[4:]]
    quiet = attribute(_chain(*steps))[0]
    loud = attribute(_chain(*evident))[0]
    assert quiet.confidence < DEFAULT.low_confidence and any("low confidence" in e for e in quiet.evidence)
    assert loud.step == 3 and loud.confidence > quiet.confidence


def test_fitting_recovers_a_planted_signal_and_keeps_unseen_features_at_their_prior():
    hedge, dropped = FEATURES.index("hedging"), FEATURES.index("dropped")
    runs = []
    for k in range(40):
        rows = [[0.0] * len(FEATURES) for _ in range(6)]
        t = k % 6
        rows[t][hedge] = 1.0
        rows[(t + 3) % 6][hedge] = 1.0 if k % 4 == 0 else 0.0
        runs.append(LabelledRun(rows, [f"a{i}" for i in range(6)], t, f"a{t}"))
    weights = fit_weights(runs, l2=0.03)
    assert weights["hedging"] > PRIOR["hedging"] + 1.0
    assert weights["dropped"] == pytest.approx(PRIOR["dropped"])
    params = fit(runs)
    assert isinstance(params, AttributionParams) and params.agent_from in ("step", "sum")
    assert params.weights["hedging"] > 1.0
    assert dropped >= 0


def test_features_name_only_general_signals():
    steps = [Step("a", "X", 0, "I apologize, I cannot reach the site"), Step("b", "Y", 1, "FINAL ANSWER: 3")]
    feats = run_features(build_idg(steps))
    assert feats.failure == 1 and feats.rows[0]["inability"] == 1.0
    assert set(feats.rows[0]) <= set(FEATURES)


# --- the judge, end to end against a local chat-completions server ---------------------------------


class _FakeOpenAI(BaseHTTPRequestHandler):
    script: list[tuple[int, str]] = []  # (status, assistant content) replies, in order; the last repeats
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeOpenAI.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        status, content = _FakeOpenAI.script[min(len(_FakeOpenAI.seen), len(_FakeOpenAI.script)) - 1]
        if status == 0:
            time.sleep(3)  # longer than the client's timeout
            status = 200
        payload = {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": content}}]}
        if status != 200:
            payload = {"error": {"message": "slow down", "type": "rate_limit"}}
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 429:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client gave up (time-out)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture()
def fake_judge(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeOpenAI.seen.clear()
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL", "TRACEKIT_JUDGE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRACEKIT_JUDGE_BASE_URL", f"http://127.0.0.1:{server.server_port}/v1")
    monkeypatch.setenv("TRACEKIT_JUDGE_MODEL", "fake-model")
    monkeypatch.setenv("TRACEKIT_JUDGE_API_KEY", "sk-test")
    monkeypatch.setenv("TRACEKIT_JUDGE_TIMEOUT", "1")
    yield _FakeOpenAI
    server.shutdown()
    server.server_close()


def _judged_graph():
    return _chain(Step("a", "Search", 0, "I could not check it; population 4,242,000"),
                  Step("b", "Writer", 1, "I apologize, I cannot confirm; population 4,242,000"),
                  Step("c", "Checker", 2, "", status="error", errors=("check failed: population 4,242,000",)))


def _verdict(step: int, erroneous: bool) -> str:
    return json.dumps({"verdicts": [{"step": step, "erroneous": erroneous, "confidence": 0.9,
                                     "reason": "the figure is invented"}]})


def test_the_judge_sees_only_graph_context_and_its_verdict_moves_the_ranking(fake_judge):
    g = _chain(Step("a", "Search", 0, "searched the archive"), Step("b", "Writer", 1, "wrote the summary"),
               Step("c", "Checker", 2, "", status="error", errors=("check failed",)))  # nothing points anywhere
    offline = attribute(g)
    loser = next(c for c in offline if c.step != offline[0].step)
    fake_judge.script = [(200, "Sure: " + _verdict(loser.step, True)[:-2] + ", {\"step\": %d, \"erroneous\": false, "
                          "\"confidence\": 0.9, \"reason\": \"fine\"}]}" % offline[0].step)]
    judged = attribute(g, judge=judge_from_env(), context={"question": "how many people?"})
    sent = fake_judge.seen[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer sk-test"
    assert sent["body"]["model"] == "fake-model"
    shown = json.loads(sent["body"]["messages"][-1]["content"])
    assert shown["task"] == "how many people?" and shown["failure"]["step"] == 2
    assert {c["step"] for c in shown["candidates"]} <= {0, 1, 2}
    assert judged[0].step == loser.step
    assert any(e.startswith("judge: erroneous (0.90)") for e in judged[0].evidence)
    assert judged[0].score == pytest.approx(loser.score * math.exp(0.9), abs=1e-3)


def test_a_malformed_answer_is_asked_again_then_ignored(fake_judge):
    g = _judged_graph()
    fake_judge.script = [(200, "I think step 0 is wrong."), (200, _verdict(0, True))]
    judged = attribute(g, judge=judge_from_env())
    assert len(fake_judge.seen) == 2 and any(e.startswith("judge: erroneous") for c in judged for e in c.evidence)
    fake_judge.seen.clear()
    fake_judge.script = [(200, "no json here")]
    judged = attribute(g, judge=judge_from_env())
    assert len(fake_judge.seen) == 2
    assert [c.step for c in judged] == [c.step for c in attribute(g)]
    assert any("no readable verdict" in e for e in judged[0].evidence)


def test_a_rate_limit_is_retried_and_a_time_out_is_one_clear_error(fake_judge):
    fake_judge.script = [(429, ""), (200, _verdict(0, True))]
    attribute(_judged_graph(), judge=judge_from_env())
    assert len(fake_judge.seen) == 2
    fake_judge.seen.clear()
    fake_judge.script = [(0, _verdict(0, True))]
    judge = judge_from_env()
    judge.client = judge.client.with_options(max_retries=0)
    with pytest.raises(TracekitError, match="timed out"):
        attribute(_judged_graph(), judge=judge)


def test_the_judge_needs_configuration(monkeypatch):
    for name in ("TRACEKIT_JUDGE_BASE_URL", "TRACEKIT_JUDGE_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY",
                 "TRACEKIT_JUDGE_API_KEY", "TRACEKIT_JUDGE_MODEL", "OPENAI_MODEL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="no judge configured"):
        judge_from_env()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    with pytest.raises(ConfigError, match="TRACEKIT_JUDGE_MODEL"):
        judge_from_env()
    monkeypatch.setenv("OPENAI_MODEL", "m")
    assert judge_from_env().model == "m"
    with pytest.raises(ValueError):
        parse_verdicts('{"verdicts": [{"step": "one"}]}')


def test_genai_and_openinference_spans_become_steps_and_edges():
    spans = [
        {"span_id": "a1", "parent_id": None, "name": "invoke_agent Planner", "start_ns": 1, "end_ns": 2,
         "attributes": {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "Planner",
                        "gen_ai.completion": "The plan: fetch record 7731 from the archive"}},
        {"span_id": "t1", "parent_id": None, "name": "execute_tool fetch", "start_ns": 3, "end_ns": 4,
         "attributes": {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "fetch",
                        "gen_ai.tool.call.id": "call_1", "gen_ai.prompt": "The plan: fetch record 7731 from the archive"}},
        {"span_id": "n1", "parent_id": None, "name": "critic", "start_ns": 5, "end_ns": 6,
         "attributes": {"openinference.span.kind": "AGENT", "agent.name": "Critic", "graph.node.id": "critic",
                        "graph.node.parent_id": "planner-node", "output.value": "fine"}},
        {"span_id": "n0", "parent_id": None, "name": "planner", "start_ns": 0, "end_ns": 7,
         "attributes": {"openinference.span.kind": "CHAIN", "graph.node.id": "planner-node"}},
        {"span_id": "h1", "parent_id": None, "name": "GET /", "start_ns": 0, "end_ns": 1,
         "attributes": {"http.method": "GET"}},
    ]
    steps = {span["span_id"]: info for span, info in select_steps(spans)}
    assert steps["a1"]["agent"] == "Planner" and steps["t1"]["agent"] == "tool:fetch"
    assert steps["n1"]["agent"] == "Critic" and "h1" not in steps and "n0" not in steps
    assert agent_step_of(spans[1])["tool_call_id"] == "call_1"
    links = {(l["src_span_id"], l["dst_span_id"]): l["provenance"] for l in derive_links(spans)}
    assert links[("a1", "t1")] == "observed"  # the plan's text flowed into the tool's input
