"""CSnake-style fault causality analysis (FCA): which faults one injected fault causes, compared with profile runs.

For each experiment (one fault at one point of one test, run at least twice) the injection repeats
are compared with the profile repeats of the same test (no injection):

* an **E edge** (new behaviour): a span signature — operation, outcome (``error:<Exception>``,
  ``ret:true|false`` of a boolean check, ``ok``, or a fault the program reported), parent
  operation — present in every injection repeat and in no profile repeat;
* an **S+ edge** (more of the same): the number of spans per (parent, operation) rises
  significantly — a one-sided Welch t-test with p < 0.1 — and exceeds every profile repeat.

Each consequence is named as the fault that would reproduce it, so consequences of one injection
can be stitched to injections elsewhere (tracekit.graph.propagation): an exception at a point is
``point:raise``, a negated check ``point:error_return``, more calls of a loop body ``point:delay``.
A new call that no fault can reproduce is ``point:call``; a crash or hang of the workload
``workload:<test>:crash|hang``.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

ALPHA = 0.1


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
class RunObservation:
    """What FCA needs from one run: its span signatures and its span counts per (parent, op)."""

    run_id: str
    signatures: frozenset[tuple[str, str, str | None]]
    counts: dict[tuple[str | None, str], int] = field(default_factory=dict)


@dataclass(frozen=True)
class Consequence:
    kind: str  # E | S+
    op: str
    outcome: str
    parent: str | None
    p_value: float | None = None
    profile_mean: float | None = None
    injection_mean: float | None = None

    def node(self) -> FaultNode:
        return consequence_node(self)


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


def welch_greater(injected: list[int], profile: list[int]) -> float:
    """One-sided Welch t-test p-value that `injected` counts exceed `profile` counts.

    With no variance on either side the t statistic is undefined: the p-value is 0 when every
    injected count is above every profile count, else 1.

    >>> welch_greater([5, 5], [3, 3, 3])
    0.0
    >>> welch_greater([3, 4], [3, 4, 3]) > 0.1
    True
    """
    from scipy import stats

    if sum(injected) / len(injected) <= sum(profile) / len(profile):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical samples: handled below
        result = stats.ttest_ind(injected, profile, equal_var=False, alternative="greater")
    p = float(result.pvalue)
    if math.isnan(p):
        return 0.0 if min(injected) > max(profile) else 1.0
    return p


def fca(profile: list[RunObservation], injected: list[RunObservation], *, alpha: float = ALPHA) -> list[Consequence]:
    """Consequences of one injection: E signatures and S+ count rises against the profile runs.

    Noise seen in any profile repeat never makes an edge: an E signature must be absent from every
    profile repeat, and an S+ count must exceed every profile repeat's count as well as pass the test.
    """
    if len(profile) < 2 or len(injected) < 2:
        return []
    seen_in_profile = frozenset().union(*(r.signatures for r in profile))
    in_every_injection = frozenset.intersection(*(r.signatures for r in injected))
    out = [Consequence("E", op, outcome, parent)
           for op, outcome, parent in sorted(in_every_injection - seen_in_profile, key=str)]
    keys = set().union(*(r.counts for r in profile), *(r.counts for r in injected))
    for key in sorted(keys, key=str):
        prof = [r.counts.get(key, 0) for r in profile]
        inj = [r.counts.get(key, 0) for r in injected]
        if min(inj) <= max(prof):
            continue
        p = welch_greater(inj, prof)
        if p < alpha:
            parent, op = key
            out.append(Consequence("S+", op, "count", parent, p, sum(prof) / len(prof), sum(inj) / len(inj)))
    return out


def consequence_node(c: Consequence) -> FaultNode:
    """The fault that a consequence amounts to (the stitching key)."""
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


def injection_nodes(point: str, fault: str, injected_rows: list[dict[str, Any]]) -> list[FaultNode]:
    """The injected fault in each call context it fired in (rows of store.campaigns.injected_faults)."""
    from tracekit.inject.runtime import resolve_exception

    nodes = set()
    for row in injected_rows:
        if fault == "raise":
            variant = resolve_exception(row.get("exception")).__name__ if row.get("exception") else "InjectedFault"
        elif fault == "error_return":
            variant = str(row.get("returned") or "").lower()
        else:
            variant = ""
        nodes.add(FaultNode(point, fault, variant, row.get("parent")))
    return sorted(nodes)


# ---------------------------------------------------------------------------------------------
# whole campaigns (the registered analysis)


@dataclass
class ExperimentResult:
    campaign: str
    test: str
    experiment: str
    point: str
    fault: str
    runs: list[str]
    fired_runs: list[str]
    sources: list[FaultNode]
    consequences: list[Consequence]

    def consequence_names(self) -> frozenset[str]:
        return frozenset(c.node().name for c in self.consequences)


@dataclass
class CampaignAnalysis:
    campaigns: list[str]
    experiments: list[ExperimentResult]
    edges: list[Edge]
    profile_runs: dict[tuple[str, str], list[str]]


def observations(con: Any, run_ids: list[str]) -> dict[str, RunObservation]:
    from tracekit.store.campaigns import run_counts, run_signatures

    sigs: dict[str, set[tuple[str, str, str | None]]] = defaultdict(set)
    counts: dict[str, dict[tuple[str | None, str], int]] = defaultdict(dict)
    for r in run_signatures(con, run_ids):
        sigs[r["run_id"]].add((r["op"], r["outcome"], r["parent"]))
    for r in run_counts(con, run_ids):
        counts[r["run_id"]][(r["parent"], r["op"])] = int(r["n"])
    return {rid: RunObservation(rid, frozenset(sigs.get(rid, ())), counts.get(rid, {})) for rid in run_ids}


def analyze_experiments(con: Any, campaign_ids: list[str], *, alpha: float = ALPHA) -> CampaignAnalysis:
    """FCA over every experiment of the campaigns (reads the store through `con`, never opens it)."""
    from tracekit.store.campaigns import campaign_runs, injected_faults

    runs = campaign_runs(con, campaign_ids)
    obs = observations(con, [r["run_id"] for r in runs])
    injected = defaultdict(list)
    for row in injected_faults(con, [r["run_id"] for r in runs if r["attributes"].get("mode") == "inject"]):
        injected[row["run_id"]].append(row)
    profiles: dict[tuple[str, str], list[str]] = defaultdict(list)
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        a = r["attributes"]
        if a.get("mode") == "profile":
            profiles[(a["campaign"], a["test"])].append(r["run_id"])
        elif a.get("mode") == "inject":
            groups[(a["campaign"], a["test"], a["experiment"])].append(r)
    experiments: list[ExperimentResult] = []
    edges: list[Edge] = []
    for (campaign, test, label), members in sorted(groups.items()):
        a = members[0]["attributes"]
        run_ids = [m["run_id"] for m in members]
        fired = [rid for rid in run_ids if injected.get(rid)]
        prof_ids = profiles.get((campaign, test), [])
        consequences = fca([obs[p] for p in prof_ids], [obs[f] for f in fired], alpha=alpha) if len(fired) >= 2 else []
        sources = injection_nodes(a["point"], a["fault"], [row for f in fired for row in injected[f]])
        experiments.append(ExperimentResult(campaign, test, label, a["point"], a["fault"], run_ids, fired,
                                            sources, consequences))
        for src in sources:
            for c in consequences:
                edges.append(Edge(src, c.node(), c.kind, campaign, test, tuple(fired), tuple(prof_ids), c))
    return CampaignAnalysis(list(campaign_ids), experiments, edges, dict(profiles))


def analyze_campaign(con: Any, campaign_ids: list[str] | str, *, alpha: float = ALPHA) -> dict[str, Any]:
    """The causality report of one or more campaigns: edges, stitched chains, cycles (with evidence).

    Edges of several campaigns (and of every test in them) are stitched together, so a consequence
    seen in one campaign joins an injection made in another.
    """
    from tracekit.graph.propagation import build_graph, find_chains, find_cycles, to_names

    from tracekit.store.campaigns import campaign_ids_for

    ids = campaign_ids_for(con, [campaign_ids] if isinstance(campaign_ids, str) else list(campaign_ids))
    result = analyze_experiments(con, ids, alpha=alpha)
    graph = build_graph(result.edges)
    cycles = find_cycles(graph)
    chains = find_chains(graph)
    return {
        "campaigns": ids,
        "experiments": [
            {"test": e.test, "experiment": e.experiment, "fault": f"{e.point}:{e.fault}", "runs": e.runs,
             "fired_runs": e.fired_runs, "consequences": sorted(e.consequence_names())}
            for e in result.experiments
        ],
        "edges": [e.to_dict() for e in result.edges],
        "chains": to_names(chains),
        "cycles": to_names(cycles),
        "chain_evidence": chains,
        "cycle_evidence": cycles,
    }
