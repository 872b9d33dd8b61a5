"""The fault-propagation graph: its node and edge types, FCA edges stitched across tests and campaigns, its cycles and chains.

Nodes are faults in a call context (`FaultNode`: point, fault type, variant, parent operation), so
an edge ``a → b`` joins an edge ``b → c`` only when the consequence ``b`` observed in one run is the
same fault — same point, same fault kind and variant, same calling operation — as the ``b`` that
was injected in another run (the local compatibility check). A cycle is a self-sustaining
cascading-failure candidate; a chain is a path of two or more stitched links.

This module owns the graph's types (`FaultNode`, `Consequence`, `Edge`); the causality analysis
(tracekit.analysis.causality) produces them and imports them from here, never the other way round.
Search bounds are plain keyword arguments (``None``: unbounded, as in networkx); the analysis passes
its own from `CausalityParams`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import networkx as nx


@dataclass(frozen=True, order=True)
class FaultNode:
    """A fault at a point in a call context: what an injection does, or what a consequence amounts to."""

    point: str
    fault: str
    variant: str = ""  # exception type for raise, injected/observed return for error_return
    context: str | None = None  # the parent operation (local compatibility check)

    @property
    def name(self) -> str:
        return f"{self.point}:{self.fault}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "point": self.point, "fault": self.fault, "variant": self.variant,
                "context": self.context}


@dataclass(frozen=True)
class Consequence:
    """What one injection caused: a new span signature (``E``) or a significant rise in a count (``S+``)."""

    kind: str  # E | S+
    op: str
    outcome: str
    parent: str | None
    p_value: float | None = None
    profile_mean: float | None = None
    injection_mean: float | None = None

    def node(self) -> FaultNode:
        return consequence_node(self)


def consequence_node(c: Consequence) -> FaultNode:
    """The fault that a consequence amounts to (the stitching key).

    >>> consequence_node(Consequence("E", "db.get", "error:TimeoutError", "handler")).name
    'db.get:raise'
    >>> consequence_node(Consequence("S+", "retry", "count", "handler")).name
    'retry:delay'
    """
    if c.kind == "S+":
        return FaultNode(c.op, "delay", "", c.parent)
    kind, _, detail = c.outcome.partition(":")
    if kind == "error":
        return FaultNode(c.op, "raise", detail, c.parent)
    if kind == "ret":
        return FaultNode(c.op, "error_return", detail.lower(), c.parent)
    if kind == "fault":
        return FaultNode(c.op, detail, "", c.parent)
    return FaultNode(c.op, "call", "", c.parent)


@dataclass(frozen=True)
class Edge:
    """One fault-propagation edge with the runs that prove it."""

    src: FaultNode
    dst: FaultNode
    kind: str
    campaign: str
    test: str
    evidence_runs: tuple[str, ...]
    profile_runs: tuple[str, ...]
    consequence: Consequence

    def to_dict(self) -> dict[str, Any]:
        c = self.consequence
        return {
            "src": self.src.name, "dst": self.dst.name, "kind": self.kind,
            "evidence_runs": list(self.evidence_runs), "profile_runs": list(self.profile_runs),
            "campaign": self.campaign, "test": self.test,
            "src_context": self.src.context, "dst_context": self.dst.context,
            "src_variant": self.src.variant, "dst_variant": self.dst.variant,
            "signature": {"op": c.op, "outcome": c.outcome, "parent": c.parent},
            "p_value": c.p_value, "profile_mean": c.profile_mean, "injection_mean": c.injection_mean,
        }


def build_graph(edges: Iterable[Edge]) -> nx.DiGraph:
    """A DiGraph over FaultNodes; each edge keeps every Edge that proves it in ``evidence``."""
    graph = nx.DiGraph()
    for edge in edges:
        if graph.has_edge(edge.src, edge.dst):
            graph[edge.src][edge.dst]["evidence"].append(edge)
        else:
            graph.add_edge(edge.src, edge.dst, evidence=[edge])
    return graph


def _canonical(names: list[str]) -> tuple[str, ...]:
    """The rotation of a cycle that starts at its smallest name (so rotations compare equal)."""
    i = min(range(len(names)), key=lambda k: names[k])
    return tuple(names[i:] + names[:i])


def _links(graph: nx.DiGraph, path: list[FaultNode]) -> list[dict[str, Any]]:
    out = []
    for a, b in zip(path, path[1:]):
        proofs = graph[a][b]["evidence"]
        out.append({
            "src": a.name, "dst": b.name, "context": b.context, "variant": b.variant,
            "kinds": sorted({e.kind for e in proofs}),
            "tests": sorted({e.test for e in proofs}),
            "evidence_runs": sorted({r for e in proofs for r in e.evidence_runs}),
            "profile_runs": sorted({r for e in proofs for r in e.profile_runs}),
        })
    return out


def find_cycles(graph: nx.DiGraph, *, length_bound: int | None = None) -> list[dict[str, Any]]:
    """Every elementary cycle of at most `length_bound` faults, as fault names (rotation-deduplicated)
    with the evidence of each link.

    >>> a, b = FaultNode("x", "delay", "", None), FaultNode("y", "raise", "TimeoutError", None)
    >>> c = Consequence("E", "y", "error:TimeoutError", None)
    >>> g = build_graph([Edge(a, b, "E", "c1", "t", ("r1",), ("p1",), c), Edge(b, a, "S+", "c1", "t", ("r2",), ("p1",), c)])
    >>> [cyc["faults"] for cyc in find_cycles(g)]
    [['x:delay', 'y:raise']]
    """
    found: dict[tuple[str, ...], dict[str, Any]] = {}
    for cycle in nx.simple_cycles(graph, length_bound=length_bound):
        names = [n.name for n in cycle]
        key = _canonical(names)
        if key in found:
            continue
        start = names.index(key[0])
        ordered = cycle[start:] + cycle[:start]
        found[key] = {"faults": list(key), "links": _links(graph, ordered + [ordered[0]])}
    return sorted(found.values(), key=lambda c: (len(c["faults"]), c["faults"]))


def find_chains(graph: nx.DiGraph, *, cutoff: int | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Maximal stitched paths of two or more links (and at most `cutoff`) from a fault nothing else causes.

    A chain ends where nothing follows, or where it enters a loop of two or more faults (the cycle is
    reported on its own). A fault whose only loop is itself (more of the same: a stale hold makes every
    retry's reservation fail again) does not end a chain: the chain passes through it once (its
    self-loop is reported as a cycle). The search stops after `limit` distinct paths.

    >>> x, y, z = (FaultNode(p, "raise", "E", None) for p in "xyz")
    >>> c = Consequence("E", "y", "error:E", None)
    >>> g = build_graph([Edge(x, y, "E", "c1", "t", ("r1",), ("p1",), c), Edge(y, z, "E", "c1", "t", ("r2",), ("p1",), c)])
    >>> [chain["faults"] for chain in find_chains(g)]
    [['x:raise', 'y:raise', 'z:raise']]
    """
    cyclic = {n for scc in nx.strongly_connected_components(graph) if len(scc) > 1 for n in scc}
    walk = graph.copy()
    walk.remove_edges_from([(a, b) for a, b in graph.edges if a in cyclic or a == b])  # a chain stops where it enters a loop
    sources = [n for n in walk if walk.in_degree(n) == 0 and n not in cyclic]
    targets = [n for n in walk if walk.out_degree(n) == 0]
    found: dict[tuple[str, ...], dict[str, Any]] = {}
    for src in sorted(sources, key=lambda n: (n.name, n.variant, n.context or "")):  # context may be None
        for path in nx.all_simple_paths(walk, src, targets, cutoff=cutoff):
            if len(path) < 3:
                continue
            names = tuple(n.name for n in path)
            if names not in found:
                found[names] = {"faults": list(names), "links": _links(graph, path)}
            if limit is not None and len(found) >= limit:
                break
    # keep maximal chains: drop one that is a contiguous part of a longer one
    keys = sorted(found, key=len, reverse=True)
    kept: list[tuple[str, ...]] = []
    for k in keys:
        if not any(_contains(longer, k) for longer in kept):
            kept.append(k)
    return [found[k] for k in sorted(kept)]


def _contains(longer: tuple[str, ...], part: tuple[str, ...]) -> bool:
    n = len(part)
    return any(longer[i:i + n] == part for i in range(len(longer) - n + 1))


def to_names(items: list[dict[str, Any]]) -> list[list[str]]:
    """The fault names of each cycle or chain."""
    return [list(i["faults"]) for i in items]


def without_duplicate_calls(graph: nx.DiGraph) -> nx.DiGraph:
    """The graph without ``X:call`` nodes whose consequence is also named ``X:delay`` in the same context.

    A point that profile runs never reached shows up twice when an injection makes it run: as a new
    call (E, ``X:call``) and as more calls (S+, ``X:delay``). Reports keep only the injectable name.
    """
    out = graph.copy()
    delays = {(n.point, n.context) for n in graph if n.fault == "delay"}
    out.remove_nodes_from([n for n in graph if n.fault == "call" and (n.point, n.context) in delays])
    return out


def collapse_findings(graph: nx.DiGraph, cycles: list[dict[str, Any]], chains: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One finding per cascade: every cycle of one strongly connected component (rotations, sub-loops)
    becomes one ``cycle`` finding with its member faults and its strongest cycle (the one whose weakest
    link has the most evidence runs, then the shortest); chains that enter it are listed as its
    entries; the remaining chains are grouped by their first consequence into one ``chain`` finding
    each (chains sharing a prefix, and chains that differ only in the fault that starts them: one
    cascade with several ways in), represented by the longest.

    >>> a, b = FaultNode("x", "delay", "", None), FaultNode("y", "raise", "E", None)
    >>> c = Consequence("E", "y", "error:E", None)
    >>> g = build_graph([Edge(a, b, "E", "c", "t", ("r1",), ("p",), c), Edge(b, a, "S+", "c", "t", ("r2",), ("p",), c),
    ...                  Edge(a, a, "S+", "c", "t", ("r3",), ("p",), c)])
    >>> [(f["kind"], f["faults"], f["cycles"]) for f in collapse_findings(g, find_cycles(g), [])]
    [('cycle', ['x:delay', 'y:raise'], 2)]
    """
    graph = without_duplicate_calls(graph)
    names = {n.name for n in graph}
    # components by fault name: one fault in two call contexts (a self-loop under one caller, a
    # longer loop under another) is one cascade, not two
    by_name = nx.DiGraph()
    by_name.add_nodes_from(names)
    by_name.add_edges_from((a.name, b.name) for a, b in graph.edges)
    component: dict[str, int] = {}
    for k, scc in enumerate(nx.strongly_connected_components(by_name)):
        for name in scc:
            component[name] = k
    grouped: dict[int, list[dict[str, Any]]] = {}
    for cyc in cycles:
        if all(f in names for f in cyc["faults"]):
            grouped.setdefault(component[cyc["faults"][0]], []).append(cyc)

    def strength(item: dict[str, Any]) -> tuple[int, int]:
        return (min((len(link["evidence_runs"]) for link in item["links"]), default=0), -len(item["faults"]))

    out: list[dict[str, Any]] = []
    for k, members in grouped.items():
        best = max(members, key=strength)
        faults = sorted({f for cyc in members for f in cyc["faults"]})
        out.append({"kind": "cycle", "faults": faults, "representative": best["faults"], "links": best["links"],
                    "cycles": len(members), "entries": [], "chains": 0, "_component": k})
    by_component = {f["_component"]: f for f in out}
    groups: dict[str, list[dict[str, Any]]] = {}
    for chain in chains:
        if not all(f in names for f in chain["faults"]):
            continue
        into = by_component.get(component.get(chain["faults"][-1], -1))
        if into is not None and len(chain["faults"]) >= 2:
            into["entries"] = sorted(set(into["entries"]) | {" -> ".join(chain["faults"])})
            continue
        groups.setdefault(chain["faults"][1], []).append(chain)
    for members in groups.values():
        best = max(members, key=lambda c: (len(c["faults"]), strength(c)))
        out.append({"kind": "chain", "faults": sorted({f for c in members for f in c["faults"]}),
                    "representative": best["faults"], "links": best["links"], "cycles": 0,
                    "entries": [], "chains": len(members)})
    for f in out:
        f.pop("_component", None)
    return sorted(out, key=lambda f: (f["kind"] != "cycle", -len(f["faults"]), f["representative"]))
