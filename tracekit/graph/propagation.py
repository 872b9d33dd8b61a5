"""The fault-propagation graph: FCA edges stitched across tests and campaigns; its cycles and chains.

Nodes are faults in a call context (`FaultNode`: point, fault type, variant, parent operation), so
an edge ``a → b`` joins an edge ``b → c`` only when the consequence ``b`` observed in one run is the
same fault — same point, same fault kind and variant, same calling operation — as the ``b`` that
was injected in another run (the local compatibility check). A cycle is a self-sustaining
cascading-failure candidate; a chain is a path of two or more stitched links.
"""

from __future__ import annotations

from typing import Any, Iterable

import networkx as nx

from tracekit.analysis.causality import Edge, FaultNode

MAX_CYCLE_LENGTH = 8
MAX_CHAIN_LENGTH = 6
MAX_CHAINS = 500


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


def find_cycles(graph: nx.DiGraph, *, length_bound: int = MAX_CYCLE_LENGTH) -> list[dict[str, Any]]:
    """Every elementary cycle, as fault names (rotation-deduplicated) with the evidence of each link.

    >>> from tracekit.analysis.causality import Consequence
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


def find_chains(graph: nx.DiGraph, *, cutoff: int = MAX_CHAIN_LENGTH) -> list[dict[str, Any]]:
    """Maximal stitched paths of two or more links from a fault nothing else causes.

    A chain ends where nothing follows, or where it enters a cycle (the cycle is reported on its own).
    """
    cyclic = {n for scc in nx.strongly_connected_components(graph) if len(scc) > 1 for n in scc}
    cyclic |= {n for n in graph if graph.has_edge(n, n)}
    walk = graph.copy()
    walk.remove_edges_from([(a, b) for a, b in graph.edges if a in cyclic])  # a chain stops where it enters a cycle
    sources = [n for n in walk if walk.in_degree(n) == 0 and n not in cyclic]
    targets = [n for n in walk if walk.out_degree(n) == 0]
    found: dict[tuple[str, ...], dict[str, Any]] = {}
    for src in sorted(sources):
        for path in nx.all_simple_paths(walk, src, targets, cutoff=cutoff):
            if len(path) < 3:
                continue
            names = tuple(n.name for n in path)
            if names not in found:
                found[names] = {"faults": list(names), "links": _links(graph, path)}
            if len(found) >= MAX_CHAINS:
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
    return [list(i["faults"]) for i in items]
