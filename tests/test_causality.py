"""Fault causality analysis, stitching, cycles and budget allocation on tiny hand-built inputs."""

from __future__ import annotations

import pytest

from tracekit.analysis.causality import CausalityParams, RunObservation, fca, report_findings, welch_greater
from tracekit.graph.propagation import (Consequence, Edge, FaultNode, build_graph, collapse_findings, consequence_node,
                                       find_chains, find_cycles, to_names)
from tracekit.inject.budget import ThreePhase, UniformRandom, Exhaustive, cluster_points, jaccard_distance
from tracekit.inject.campaign import Experiment, PointInfo, primary_fault


def obs(run: str, sigs: list[tuple[str, str, str | None]], counts: dict | None = None) -> RunObservation:
    return RunObservation(run, frozenset(sigs), dict(counts or {}))


BASE = [("a", "ok", None), ("b", "ok", "a")]


def test_e_edge_needs_every_injection_repeat_and_no_profile_repeat():
    profile = [obs("p1", BASE), obs("p2", BASE), obs("p3", BASE)]
    new = ("b", "error:TimeoutError", "a")
    injected = [obs("i1", BASE + [new]), obs("i2", BASE + [new])]
    assert [(c.kind, c.op, c.outcome, c.parent) for c in fca(profile, injected)] == [("E", "b", "error:TimeoutError", "a")]
    # seen in only one injection repeat: not an edge
    assert fca(profile, [obs("i1", BASE + [new]), obs("i2", BASE)]) == []


def test_profile_noise_never_makes_an_edge():
    noisy = ("b", "error:TimeoutError", "a")
    profile = [obs("p1", BASE), obs("p2", BASE + [noisy]), obs("p3", BASE, {("a", "b"): 9})]
    injected = [obs("i1", BASE + [noisy], {("a", "b"): 9}), obs("i2", BASE + [noisy], {("a", "b"): 9})]
    assert fca(profile, injected) == []


def test_s_plus_edge_uses_one_sided_welch_test():
    profile = [obs(f"p{i}", BASE, {("a", "b"): n}) for i, n in enumerate([3, 4, 3])]
    rising = [obs("i1", BASE, {("a", "b"): 9}), obs("i2", BASE, {("a", "b"): 11})]
    [c] = fca(profile, rising)
    assert c.kind == "S+" and c.p_value is not None and c.p_value < 0.1
    assert consequence_node(c) == FaultNode("b", "delay", "", "a")
    falling = [obs("i1", BASE, {("a", "b"): 1}), obs("i2", BASE, {("a", "b"): 2})]
    assert fca(profile, falling) == []
    # higher than every profile repeat but too noisy to be significant
    noisy = [obs("i1", BASE, {("a", "b"): 5}), obs("i2", BASE, {("a", "b"): 60})]
    assert welch_greater([5, 60], [3, 4, 3]) > 0.1
    assert fca(profile, noisy) == []


def test_a_rise_of_a_call_or_two_in_a_time_driven_loop_is_not_a_consequence():
    """129 writes in every profile run, 130 in both injected runs (the run lasted a few ms longer): above
    every profile repeat and 'significant' with no variance, but under the 5 % floor; 4 -> 5 calls of a
    job retried once is a consequence."""
    loop = [obs(f"p{i}", BASE, {("a", "b"): 129}) for i in range(3)]
    assert fca(loop, [obs(f"i{i}", BASE, {("a", "b"): 130}) for i in range(2)]) == []
    assert [c.kind for c in fca(loop, [obs(f"i{i}", BASE, {("a", "b"): 136}) for i in range(2)])] == ["S+"]
    jobs = [obs(f"p{i}", BASE, {("a", "b"): 4}) for i in range(3)]
    assert [c.kind for c in fca(jobs, [obs(f"i{i}", BASE, {("a", "b"): 5}) for i in range(2)])] == ["S+"]
    off = CausalityParams(min_rise=0.0)
    assert [c.kind for c in fca(loop, [obs(f"i{i}", BASE, {("a", "b"): 130}) for i in range(2)], params=off)] == ["S+"]


def test_fca_needs_two_repeats_each():
    assert fca([obs("p1", BASE)], [obs("i1", BASE + [("x", "ok", None)]), obs("i2", BASE + [("x", "ok", None)])]) == []


@pytest.mark.parametrize("outcome,expected", [
    ("error:TimeoutError", FaultNode("op", "raise", "TimeoutError", "p")),
    ("ret:False", FaultNode("op", "error_return", "false", "p")),
    ("fault:retry", FaultNode("op", "retry", "", "p")),
    ("ok", FaultNode("op", "call", "", "p")),
])
def test_consequences_are_named_as_the_fault_that_reproduces_them(outcome, expected):
    assert consequence_node(Consequence("E", "op", outcome, "p")) == expected


def edge(src: FaultNode, dst: FaultNode, run: str) -> Edge:
    return Edge(src, dst, "E", "c", "t", (run,), ("p",), Consequence("E", dst.point, "x", dst.context))


def test_cycle_found_only_when_contexts_are_compatible():
    delay = FaultNode("server.handle", "delay", "", None)
    timeout = FaultNode("client.call", "raise", "TimeoutError", "client.request")
    graph = build_graph([edge(delay, timeout, "r1"), edge(timeout, delay, "r2")])
    [cycle] = find_cycles(graph)
    assert cycle["faults"] == ["client.call:raise", "server.handle:delay"]
    assert {r for link in cycle["links"] for r in link["evidence_runs"]} == {"r1", "r2"}
    # the consequence happened under another caller than where the fault was injected: no stitching
    other_caller = FaultNode("client.call", "raise", "TimeoutError", "client.batch")
    graph = build_graph([edge(delay, other_caller, "r1"), edge(timeout, delay, "r2")])
    assert find_cycles(graph) == []
    # a different exception type is not the same fault either
    wrong_type = FaultNode("client.call", "raise", "RemoteError", "client.request")
    assert find_cycles(build_graph([edge(delay, wrong_type, "r1"), edge(timeout, delay, "r2")])) == []


def test_chains_stitch_across_tests_and_stop_at_cycles():
    a, b, c = (FaultNode(p, "raise", "E", None) for p in "abc")
    loop = FaultNode("l", "delay", "", None)
    graph = build_graph([edge(a, b, "r1"), edge(b, c, "r2"), edge(c, loop, "r3"), edge(loop, loop, "r4")])
    assert to_names(find_chains(graph)) == [["a:raise", "b:raise", "c:raise", "l:delay"]]
    assert to_names(find_cycles(graph)) == [["l:delay"]]


def test_a_timeout_raised_inside_the_delayed_call_is_a_consequence_at_the_injected_point():
    # RQ's job timeout: the injected delay is interrupted by the system's own exception in the same call
    profile = [obs(f"p{i}", [("job", "ok", None)], {(None, "job"): 3}) for i in range(2)]

    def injected(run: str, fault: str, outcome: str, count: int = 3) -> RunObservation:
        return RunObservation(run, frozenset({("job", "ok", None)}), {(None, "job"): count},
                              frozenset({("job", outcome, None, fault)}))

    timed_out = [injected("i1", "delay", "error:JobTimeoutException"), injected("i2", "delay", "error:JobTimeoutException")]
    assert [c.node() for c in fca(profile, timed_out)] == [FaultNode("job", "raise", "JobTimeoutException", None)]
    # ... but the injection's own doing is never its consequence: the raised fault, the flipped or dropped value
    assert fca(profile, [injected(f"i{i}", "raise", "error:JobTimeoutException") for i in (1, 2)]) == []
    assert fca(profile, [injected(f"i{i}", "error_return", "ret:false") for i in (1, 2)]) == []
    assert fca(profile, [injected(f"i{i}", "drop", "ret:false") for i in (1, 2)]) == []
    # a check that returns the other value after a delay is a consequence; so is an exception leaving a flipped body
    assert [c.node().name for c in fca(profile, [injected(f"i{i}", "delay", "ret:false") for i in (1, 2)])] \
        == ["job:error_return"]
    assert [c.node().name for c in fca(profile, [injected(f"i{i}", "error_return", "error:KeyError") for i in (1, 2)])] \
        == ["job:raise"]
    # stitched with the re-run the timeout causes (RQ's retry: one more job), it is the timeout -> redelivery loop
    delay, timeout = FaultNode("job", "delay", "", None), FaultNode("job", "raise", "JobTimeoutException", None)
    rerun = [injected(f"i{i}", "raise", "error:JobTimeoutException", count=4) for i in (1, 2)]
    edges = [Edge(src, c.node(), c.kind, "c", "t", ("r",), ("p",), c)
             for src, runs in ((delay, timed_out), (timeout, rerun)) for c in fca(profile, runs)]
    assert to_names(find_cycles(build_graph(edges))) == [["job:delay", "job:raise"]]


def test_a_chain_passes_through_a_fault_that_only_loops_on_itself_and_its_sources_are_one_finding():
    # RQ shop: a job dying after its hold (price raising or slow) -> every retry's reservation fails (and
    # keeps failing: a self-loop) -> RQ gives up and the producer's collect raises
    price_raise, price_delay = FaultNode("price", "raise", "E", "charge"), FaultNode("price", "delay", "", "charge")
    held = FaultNode("reserve", "error_return", "false", "charge")
    failed = FaultNode("collect", "raise", "JobFailed", None)
    graph = build_graph([edge(price_raise, held, "r1"), edge(price_delay, held, "r2"), edge(held, held, "r3"),
                         edge(held, failed, "r4")])
    chains = find_chains(graph)
    assert to_names(chains) == [["price:delay", "reserve:error_return", "collect:raise"],
                                ["price:raise", "reserve:error_return", "collect:raise"]]
    assert to_names(find_cycles(graph)) == [["reserve:error_return"]]
    findings = collapse_findings(graph, find_cycles(graph), chains)
    assert [(f["kind"], f["chains"]) for f in findings] == [("cycle", 0), ("chain", 2)]  # two ways into one cascade
    # a loop of two faults still ends a chain (the cycle is reported on its own)
    other = FaultNode("retry", "delay", "", None)
    looped = build_graph([edge(price_raise, held, "r1"), edge(held, other, "r2"), edge(other, held, "r3"),
                          edge(held, failed, "r4")])
    assert to_names(find_chains(looped)) == []


def test_jaccard_clusters():
    assert jaccard_distance(frozenset(), frozenset()) == 0.0
    clusters = cluster_points({"p": frozenset("xy"), "q": frozenset("xy"), "r": frozenset("z"), "s": frozenset()})
    assert ["p", "q"] in clusters and ["r"] in clusters


def test_point_kinds_pick_the_primary_fault():
    assert primary_fault(PointInfo("c", "traced", returns="bool")) == "error_return"
    assert primary_fault(PointInfo("l", "traced", loop=True)) == "delay"
    assert primary_fault(PointInfo("f", "traced", returns="int")) == "delay"
    assert primary_fault(PointInfo("p", "explicit", raises="ConnectionError")) == "raise"


def test_allocators_respect_slots_and_never_repeat():
    cands = [Experiment("w", p, f) for p in "abcd" for f in ("raise", "delay", "drop")]
    for alloc in (Exhaustive(cands), UniformRandom(cands, 1), ThreePhase(cands, {p: "delay" for p in "abcd"})):
        outcomes: dict = {}
        while batch := alloc.next_batch(outcomes, 3):
            assert len(batch) <= 3 and not set(batch) & set(outcomes)
            outcomes.update({e: frozenset({f"{e.point}x"}) if e.point == "a" else frozenset() for e in batch})
        assert set(outcomes) == set(cands)
    # the first batch is small (steering starts from the first results) and breadth comes first:
    # with nothing caused, every point's primary fault is run before any other fault
    steered = ThreePhase(cands, {p: "delay" for p in "abcd"})
    first = steered.next_batch({}, 10)
    assert len(first) == steered.steering.batch < 10
    seen: dict = {e: frozenset() for e in first}
    while len({e.point for e in seen}) < 4:
        seen.update({e: frozenset() for e in steered.next_batch(seen, 10)})
    assert sorted((e.point, e.fault) for e in seen) == [(p, "delay") for p in "abcd"]


# --- the parameter object (issue #15: every knob in one dataclass) -------------------------------


def _rise(n_injected: int) -> tuple[list[RunObservation], list[RunObservation]]:
    profile = [obs(f"p{i}", BASE, {("a", "b"): c}) for i, c in enumerate((1, 2, 1))]
    injected = [obs(f"i{i}", BASE, {("a", "b"): c}) for i, c in enumerate((4, 5, 4)[:n_injected])]
    return profile, injected


def test_alpha_and_min_repeats_come_from_the_params():
    profile, injected = _rise(3)
    assert [c.kind for c in fca(profile, injected)] == ["S+"]
    assert fca(profile, injected, params=CausalityParams(alpha=1e-9)) == []  # the rise is not that significant
    assert fca(profile, injected, params=CausalityParams(min_repeats=4)) == []  # too few repeats to compare


def _ring(n: int) -> list[Edge]:
    nodes = [FaultNode(f"p{i}", "raise", "E", None) for i in range(n)]
    c = Consequence("E", "x", "error:E", None)
    return [Edge(nodes[i], nodes[(i + 1) % n], "E", "c", "t", (f"r{i}",), ("p",), c) for i in range(n)]


def test_graph_search_bounds_are_keyword_arguments_unbounded_by_default():
    g = build_graph(_ring(4))
    assert len(find_cycles(g)) == 1
    assert find_cycles(g, length_bound=3) == []
    assert len(find_cycles(g, length_bound=CausalityParams().max_cycle_length)) == 1


def test_report_findings_rank_cycles_above_chains_with_the_params_scores():
    from tracekit.graph.propagation import collapse_findings

    c = Consequence("E", "x", "error:E", None)
    x, y, z = (FaultNode(p, "raise", "E", None) for p in "xyz")
    chain = [Edge(x, y, "E", "c", "t", ("r1",), ("p",), c), Edge(y, z, "E", "c", "t", ("r2",), ("p",), c)]
    g = build_graph(_ring(2) + chain)
    report = {"findings": collapse_findings(g, find_cycles(g), find_chains(g))}
    found = report_findings(report, CausalityParams(cycle_score=0.9, chain_score=0.1))
    assert [(f["kind"], f["score"]) for f in found] == [("cycle", 0.9), ("chain", 0.1)]
    assert found[1]["subject"] == "x:raise -> y:raise -> z:raise"


def test_the_graph_owns_the_propagation_types():
    import tracekit.analysis.causality as causality
    import tracekit.graph.propagation as propagation

    for name in ("FaultNode", "Consequence", "Edge", "consequence_node"):
        assert getattr(causality, name) is getattr(propagation, name)
        assert getattr(propagation, name).__module__ == "tracekit.graph.propagation"
