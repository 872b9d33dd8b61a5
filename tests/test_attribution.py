"""Attribution: root cause vs symptom on tiny IDGs, the offline evidence, the judge over a local fake server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tracekit.analysis.attribution import HttpJudge, attribute, judge_from_env, step_evidence
from tracekit.errors import ConfigError, TracekitError
from tracekit.graph.idg import Step, build_idg
from tracekit.importers.genai import agent_step_of, derive_links, select_steps


def _chain(*steps: Step, provenance: str = "observed"):
    links = [{"src_span_id": a.span_id, "dst_span_id": b.span_id, "provenance": provenance, "confidence": 1.0,
              "relation": "consumes"} for a, b in zip(steps, steps[1:])]
    return build_idg(list(steps), links)


@pytest.mark.parametrize("provenance", ["observed", "declared"])
def test_an_error_explained_by_an_erroneous_ancestor_is_a_symptom(provenance):
    g = _chain(Step("a", "Search", 0, "I was unable to open the source; the figure is probably 512"),
               Step("b", "Writer", 1, "Traceback (most recent call last): ValueError: bad figure"),
               Step("c", "Checker", 2, "", status="error", errors=("check failed: 512 is wrong",)),
               provenance=provenance)
    ranked = attribute(g)
    assert (ranked[0].agent, ranked[0].role) == ("Search", "root_cause")
    by_agent = {c.agent: c for c in ranked}
    assert by_agent["Writer"].role == "symptom" and by_agent["Writer"].explained_by == 0
    assert by_agent["Checker"].role == "symptom"
    assert ranked[0].path == [0, 1, 2]


def test_without_the_edge_the_later_error_is_not_explained():
    steps = [Step("a", "Search", 0, "I was unable to open the source"),
             Step("b", "Writer", 1, "Traceback (most recent call last): ValueError: bad figure", status="error",
                  errors=("ValueError: bad figure",))]
    ranked = attribute(build_idg(steps, [{"src_span_id": "x", "dst_span_id": "b", "provenance": "declared"}]))
    assert ranked[0].agent == "Writer" and ranked[0].role == "root_cause"


def test_the_step_that_first_stated_the_wrong_answer_is_the_root_cause():
    g = _chain(Step("t", "tool:lookup", 0, "The population is 7,654,321."),
               Step("r", "Researcher", 1, "Report: population 7,654,321"),
               Step("w", "Writer", 2, "FINAL ANSWER: 7,654,321 people"),
               Step("c", "Checker", 3, "", status="error", errors=("check failed: population 7,654,321 is wrong",)))
    ranked = attribute(g, ground_truth="1,234,567")
    assert ranked[0].agent == "tool:lookup" and ranked[0].role == "root_cause"
    assert any("first stated" in e for e in ranked[0].evidence)
    assert all(c.role != "symptom" or c.score < ranked[0].score for c in ranked)


def test_a_failed_call_retried_with_the_same_input_is_not_blamed():
    steps = [Step("f", "tool:area", 0, "error: service timed out", input="Avalon", kind="tool_result"),
             Step("ok", "tool:area", 1, "The area is 312 km2", input="Avalon", kind="tool_result"),
             Step("w", "Writer", 2, "I cannot say: the figure 9,999 looks off"),
             Step("c", "Checker", 3, "", status="error", errors=("check failed",))]
    g = build_idg(steps, [{"src_span_id": a, "dst_span_id": b, "provenance": "observed", "confidence": 1.0}
                          for a, b in (("f", "ok"), ("ok", "w"), ("w", "c"))])
    ranked = attribute(g)
    assert ranked[0].agent == "Writer"
    recovered = next(c for c in ranked if c.span_id == "f") if any(c.span_id == "f" for c in ranked) else None
    assert recovered is None or any("recovered" in e for e in recovered.evidence)


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
    assert {c.agent: c.role for c in ranked}["Analyst"] == "symptom"
    assert not g.has_edge("r", "a"), "attribution must not change the caller's graph"


def test_a_run_that_did_not_fail_has_nothing_to_attribute():
    g = _chain(Step("a", "A", 0, "fine"), Step("b", "B", 1, "done"))
    assert attribute(g, failed=False) == []
    with pytest.raises(TracekitError):
        attribute(build_idg([]))


@pytest.mark.parametrize("text,expected", [
    ("Traceback (most recent call last):\n KeyError: 'x'", "error report"),
    ("I'm sorry, I cannot access that page.", "inability or refusal"),
    ("", "produced no output"),
])
def test_own_evidence_kinds(text, expected):
    _w, reasons = step_evidence({"content": text, "status": "ok", "errors": [], "kind": "step"})
    assert any(r.startswith(expected) for r in reasons), reasons


def test_a_structured_self_assessment_is_read_as_a_judgment_of_the_previous_step():
    steps = [Step("q", "human", 0, "task: find the dojo"),
             Step("w", "WebSurfer", 1, "I clicked an advert for microscopes"),
             Step("o", "Orchestrator", 2, '{"is_in_loop": {"reason": "we keep clicking adverts", "answer": true},'
                                          ' "is_progress_being_made": {"reason": "no", "answer": false}}'),
             Step("f", "Orchestrator", 3, "FINAL ANSWER: unknown")]
    ranked = attribute(build_idg(steps), context={"question": "task: find the dojo"})
    assert ranked[0].agent == "WebSurfer"
    assert any("later contradicted by step 2" in e for e in ranked[0].evidence)
    assert all(c.step != 0 for c in ranked), "the task statement is a given, not a candidate"


class _FakeOpenAI(BaseHTTPRequestHandler):
    replies: list[dict] = []
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeOpenAI.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        prompt = body["messages"][0]["content"]
        verdict = {"erroneous": "Step 0" in prompt, "confidence": 0.9, "reason": "the figure is invented"}
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": json.dumps(verdict)}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture()
def fake_judge_url():
    server = HTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeOpenAI.seen.clear()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def test_the_http_judge_adds_evidence_and_reorders(fake_judge_url, monkeypatch):
    monkeypatch.setenv("TRACEKIT_JUDGE_URL", fake_judge_url)
    monkeypatch.setenv("TRACEKIT_JUDGE_MODEL", "fake-model")
    monkeypatch.setenv("TRACEKIT_JUDGE_API_KEY", "sk-test")
    judge = judge_from_env()
    assert isinstance(judge, HttpJudge)
    g = _chain(Step("a", "Search", 0, "I could not check it; population 4,242,000"),
               Step("b", "Writer", 1, "I apologize, I cannot confirm; population 4,242,000"),
               Step("c", "Checker", 2, "", status="error", errors=("check failed: population 4,242,000",)))
    offline = attribute(g)
    judged = attribute(g, judge=judge, context={"question": "how many people?"})
    assert _FakeOpenAI.seen and _FakeOpenAI.seen[0]["path"] == "/v1/chat/completions"
    assert _FakeOpenAI.seen[0]["auth"] == "Bearer sk-test"
    assert _FakeOpenAI.seen[0]["body"]["model"] == "fake-model"
    top = judged[0]
    assert top.step == 0 and any(e.startswith("judge: erroneous (0.90)") for e in top.evidence)
    assert top.score > next(c for c in offline if c.step == 0).score


def test_the_judge_is_off_by_default_and_fails_loudly_when_unreachable(monkeypatch):
    monkeypatch.delenv("TRACEKIT_JUDGE_URL", raising=False)
    assert judge_from_env() is None
    monkeypatch.setenv("TRACEKIT_JUDGE_URL", "http://127.0.0.1:9/v1")
    with pytest.raises(ConfigError):
        judge_from_env()  # no model named
    monkeypatch.setenv("TRACEKIT_JUDGE_MODEL", "m")
    monkeypatch.setenv("TRACEKIT_JUDGE_TIMEOUT", "2")
    g = _chain(Step("a", "A", 0, "unable to"), Step("b", "B", 1, "", status="error", errors=("x",)))
    with pytest.raises(TracekitError, match="unreachable"):
        attribute(g, judge=judge_from_env())


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
