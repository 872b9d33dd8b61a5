"""The agent capture API in a real process: steps as spans, observed and declared edges, then IDG and attribution."""

from __future__ import annotations

import json

from foundation_helpers import cli, query, run_py

PROGRAM = """
import tracekit

tracekit.init("capture-demo", kind="agents")

@tracekit.agent_step(agent="Planner")
def plan(task):
    return f"Plan for {task}: look up the census table 2020-B and report the total."

@tracekit.agent_step(agent="Researcher")
def research(plan_text):
    return "I was unable to open census table 2020-B; using my guess of 123,456,789 instead."

@tracekit.agent_step(agent="Writer")
def write(notes):
    return f"Report: the total is 123,456,789 ({len(notes)} chars of notes)."

@tracekit.agent_step(agent="Checker")
def check(report):
    raise AssertionError("check failed: 123,456,789 is not the census total")

@tracekit.agent_step(agent="Summarizer")
async def summarize(text):
    return "summary: " + text[:20]

p = plan("the census question")
notes = research(p)
report = write(notes)
import asyncio
asyncio.run(summarize(f"Context follows. {notes} -- end of context"))  # contains notes: observed by text
critic = tracekit.message(agent="Critic", content="The report relies on a guess.", consumes=[])
reply = tracekit.message(agent="Editor", content="Noted, flagging it.", consumes=[critic])
call = tracekit.tool_call(agent="Editor", tool="spellcheck", arguments={"text": "Noted"})
tracekit.tool_result(agent="tool:spellcheck", call_id=call, content="no spelling errors")
try:
    check(report)
except AssertionError:
    pass
print(critic, reply)
"""


def test_steps_edges_idg_and_attribution_from_a_real_process(tmp_path):
    done = run_py(tmp_path, PROGRAM)
    assert done.code == 0, done.err
    critic_id, reply_id = done.out.split()
    db = tmp_path / "store.duckdb"
    spans = {row[0]: row for row in query(db, "SELECT json_extract_string(attributes, '$.\"tracekit.agent\"'), "
                                               "span_id, status, node, attributes FROM spans")}
    assert {"Planner", "Researcher", "Writer", "Checker", "Critic", "Editor", "tool:spellcheck",
            "Summarizer"} <= set(spans)
    assert spans["Checker"][2] == "error" and spans["Writer"][3] == "agent:Writer"
    attrs = json.loads(spans["Researcher"][4])
    assert "unable to open" in attrs["tracekit.agent.content"] and isinstance(attrs["tracekit.agent.step"], int)
    links = {(s, d): (rel, prov) for s, d, rel, prov in query(
        db, "SELECT src_span_id, dst_span_id, relation, provenance FROM links")}
    sid = {agent: row[1] for agent, row in spans.items()}
    assert links[(sid["Planner"], sid["Researcher"])] == ("consumes", "observed")  # the return value flowed
    assert links[(sid["Researcher"], sid["Writer"])] == ("consumes", "observed")
    assert links[(sid["Writer"], sid["Checker"])] == ("consumes", "observed")
    assert links[(sid["Researcher"], sid["Summarizer"])] == ("consumes", "observed")  # a text containing it
    confidence = dict(((s, d), c) for s, d, c in query(db, "SELECT src_span_id, dst_span_id, confidence FROM links"))
    assert confidence[(sid["Researcher"], sid["Summarizer"])] == 0.9
    assert confidence[(sid["Researcher"], sid["Writer"])] == 1.0
    assert (sid["Planner"], sid["Summarizer"]) not in links
    assert links[(critic_id, reply_id)] == ("consumes", "declared")
    assert links[(sid["Editor"], sid["tool:spellcheck"])] == ("tool_result", "declared")

    done = cli(tmp_path, "attribute", "capture-demo", "--format", "json")
    assert done.code == 0, done.err
    ranked = json.loads(done.out)
    assert (ranked[0]["agent"], ranked[0]["role"]) == ("Researcher", "root_cause")
    roles = {c["agent"]: c["role"] for c in ranked}
    assert roles.get("Checker") == "symptom"
    graph = json.loads(cli(tmp_path, "idg", "capture-demo", "--format", "json").out)
    assert {e["provenance"] for e in graph["edges"]} == {"observed", "declared"}


def test_capture_without_a_run_never_raises_and_returns_values_unchanged():
    import tracekit

    @tracekit.agent_step(agent="Solo")
    def step(x):
        return x * 2

    assert step(21) == 42
    assert isinstance(tracekit.message(agent="Solo", content=object(), consumes=["nope"]), str)
    call = tracekit.tool_call(agent="Solo", tool="t", arguments={"a": 1})
    assert call and isinstance(tracekit.tool_result(agent="tool:t", call_id=call, content=None), str)
