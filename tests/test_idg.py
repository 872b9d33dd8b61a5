"""The information-dependency graph: recorded edges keep their provenance; inference finds what a step reuses."""

from __future__ import annotations

import json

import pytest

from tracekit.graph.idg import PROVENANCE_RANK, Step, build_idg, infer_edges, to_dot, to_json


def _edges(steps):
    """Inferred edges as the IDG keeps them: one per pair, the most confident reason."""
    best: dict = {}
    for s, d, rel, conf in infer_edges(steps):
        if (s, d) not in best or conf > best[(s, d)][1]:
            best[(s, d)] = (rel, conf)
    return best


@pytest.mark.parametrize("shared", [
    "https://example.org/data/table-7",
    "quarterly_report_2023.pdf",
    "1,234,567",
    '"the blue lagoon protocol"',
])
def test_a_reused_url_file_number_or_quote_becomes_an_inferred_edge(shared):
    steps = [Step("a", "Searcher", 0, f"found it: {shared} in the archive"),
             Step("b", "Planner", 1, "next we should look elsewhere entirely"),
             Step("c", "Writer", 2, f"according to {shared} the claim holds")]
    edges = _edges(steps)
    assert edges[("a", "c")][0] == "reuses"
    assert 0.3 <= edges[("a", "c")][1] <= 0.95
    assert ("a", "b") not in edges or edges[("a", "b")][0] == "context"


def test_reuse_is_credited_to_the_latest_earlier_step_holding_the_token():
    steps = [Step("a", "A", 0, "value 98765 appears"), Step("b", "B", 1, "copy: 98765 again"),
             Step("c", "C", 2, "final 98765")]
    steps += [Step(f"f{i}", "F", 3 + i, f"filler number {i}") for i in range(9)]
    edges = _edges(steps)
    assert ("b", "c") in edges and edges[("b", "c")][0] == "reuses"
    assert ("a", "c") not in edges


def test_an_agent_addressed_by_name_consumes_the_addressing_step():
    steps = [Step("o", "Orchestrator", 0, "Critic, please review the draft"),
             Step("w", "Writer", 1, "draft text"),
             Step("c", "Critic", 2, "looks fine")]
    assert _edges(steps)[("o", "c")] == ("addressed", 0.8)


def test_inference_only_for_runs_without_recorded_edges_and_only_forward():
    steps = [Step("a", "A", 0, "id 424242"), Step("b", "B", 1, "uses 424242")]
    recorded = build_idg(steps, [{"src_span_id": "a", "dst_span_id": "b", "provenance": "observed",
                                  "confidence": 1.0, "relation": "consumes"}])
    assert recorded.graph["inferred"] is False
    assert recorded.edges["a", "b"]["provenance"] == "observed"
    inferred = build_idg(steps)
    assert inferred.graph["inferred"] is True
    assert inferred.edges["a", "b"]["provenance"] == "inferred"
    assert not inferred.has_edge("b", "a")


@pytest.mark.parametrize("first,second", [("observed", "declared"), ("declared", "observed"),
                                          ("inferred", "observed"), ("observed", "inferred")])
def test_the_strongest_provenance_and_highest_confidence_win(first, second):
    steps = [Step("a", "A", 0, "x"), Step("b", "B", 1, "y")]
    links = [{"src_span_id": "a", "dst_span_id": "b", "provenance": first, "confidence": 0.4},
             {"src_span_id": "a", "dst_span_id": "b", "provenance": second, "confidence": 0.7}]
    edge = build_idg(steps, links).edges["a", "b"]
    assert edge["provenance"] == max(first, second, key=PROVENANCE_RANK.__getitem__)
    assert edge["confidence"] == 0.7


def test_links_to_spans_that_are_not_steps_are_ignored():
    g = build_idg([Step("a", "A", 0, "x")], [{"src_span_id": "zz", "dst_span_id": "a", "provenance": "declared"}])
    assert g.number_of_edges() == 0


def test_json_and_dot_exports_carry_every_edge_with_provenance():
    steps = [Step("a", "A", 0, 'say "hi"'), Step("b", "B", 1, "ok", status="error")]
    g = build_idg(steps, [{"src_span_id": "a", "dst_span_id": "b", "provenance": "declared", "confidence": 1.0,
                           "relation": "consumes"}])
    data = json.loads(json.dumps(to_json(g)))
    assert [n["step"] for n in data["nodes"]] == [0, 1]
    assert data["edges"] == [{"src": "a", "dst": "b", "src_step": 0, "dst_step": 1, "relation": "consumes",
                              "provenance": "declared", "confidence": 1.0}]
    dot = to_dot(g)
    assert dot.startswith("digraph idg {") and dot.rstrip().endswith("}")
    assert '"a" -> "b" [style=bold' in dot and "color=red" in dot
