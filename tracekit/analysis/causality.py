"""CSnake-style fault causality analysis (FCA): which faults one injected fault causes, compared with profile runs.

For each experiment (one fault at one point of one test, run at least twice) the injection repeats
are compared with the profile repeats of the same test (no injection):

* an **E edge** (new behaviour): a span signature — operation, outcome (``error:<Exception>``,
  ``ret:true|false`` of a boolean check, ``ok``, or a fault the program reported), parent
  operation — present in every injection repeat and in no profile repeat;
* an **S+ edge** (more of the same): the number of spans per (parent, operation) rises
  significantly — a one-sided Welch t-test with p < 0.1 — exceeds every profile repeat, and rises by
  at least 5 % of the profile mean (a run a little longer gives a time-driven loop a call or two more).

The injected span itself is compared too, minus what the injection put there (`own_effect`): a
delay that makes the system raise its own timeout inside the injected call (RQ's job timeout
interrupting the delayed job) is a consequence at the injected point — another fault there.

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

from tracekit.faults import resolve_exception
from tracekit.graph.propagation import Consequence, Edge, FaultNode, consequence_node

__all__ = [
    "CausalityParams", "RunObservation", "clears_floor", "own_effect", "FaultNode", "Consequence", "Edge", "consequence_node", "welch_greater",
    "fca", "injection_nodes", "ExperimentResult", "CampaignAnalysis", "observations", "analyze_experiments",
    "analyze_campaign", "report_findings", "analyze_run",
]


@dataclass(frozen=True)
class CausalityParams:
    """Every knob of fault causality analysis and causal stitching, with its meaning.

    The defaults are what the campaign benchmark (benchmarks/bench_campaign.py) was measured with.
    """

    alpha: float = 0.1            # an S+ edge needs a one-sided Welch p-value below this ...
    min_rise: float = 0.05        # ... and a mean rise of at least this fraction of the profile mean: a run a
                                  # little longer gives a time-driven loop (a writer, a poller) a call or two more
    min_repeats: int = 2          # FCA compares at least this many profile and this many fired injection repeats
    max_cycle_length: int = 8     # cycles of more faults than this are not searched for
    max_chain_length: int = 6     # chains are searched up to this many links
    max_chains: int = 500         # the chain search stops after this many distinct paths
    cycle_score: float = 1.0      # a stored cycle finding's score (a self-sustaining cascade) ...
    chain_score: float = 0.5      # ... ranks above a stored chain finding's


DEFAULTS = CausalityParams()


@dataclass(frozen=True)
class RunObservation:
    """What FCA needs from one run: its span signatures and its span counts per (parent, op).

    `signatures` leaves out the spans a fault was injected into; `injected` holds those spans'
    signatures with the injected fault type (op, outcome, parent, fault).
    """

    run_id: str
    signatures: frozenset[tuple[str, str, str | None]]
    counts: dict[tuple[str | None, str], int] = field(default_factory=dict)
    injected: frozenset[tuple[str, str, str | None, str]] = frozenset()

    def compared(self) -> frozenset[tuple[str, str, str | None]]:
        """The signatures FCA compares: every span's, the injected spans' only where the outcome is
        not the injection's own doing (`own_effect`)."""
        extra = {(op, outcome, parent) for op, outcome, parent, fault in self.injected
                 if not own_effect(fault, outcome)}
        return self.signatures | extra if extra else self.signatures


def own_effect(fault: str, outcome: str) -> bool:
    """Whether the outcome of a span a fault was injected into is the injection itself, not a consequence.

    A ``raise`` fault never runs the body: any exception leaving the span is the injected one. An
    ``error_return`` or ``drop`` fault puts the span's value there: a return (or a plain ``ok``) is
    its own; an exception leaving the body is not. A ``delay`` only waits before the body, which runs
    as usual: whatever the span ends with — the system's own timeout raised in the delayed call, a
    check that now returns the other value — is a consequence at the injected point.

    >>> own_effect("raise", "error:RuntimeError"), own_effect("delay", "error:JobTimeoutException")
    (True, False)
    >>> own_effect("error_return", "ret:false"), own_effect("drop", "ok"), own_effect("delay", "ret:false")
    (True, True, False)
    """
    kind = outcome.partition(":")[0]
    if fault == "raise":
        return kind == "error"
    if fault in ("error_return", "drop"):
        return kind != "error"
    return False


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


def clears_floor(count: float, profile: list[int], min_rise: float) -> bool:
    """Whether `count` rises at least `min_rise` of the profile repeats' mean above it (S+'s noise floor).

    >>> clears_floor(130, [129, 129, 129], 0.05), clears_floor(5, [4, 4, 4], 0.05)
    (False, True)
    """
    mean = sum(profile) / len(profile)
    return count - mean >= min_rise * mean


def fca(profile: list[RunObservation], injected: list[RunObservation], *,
        params: CausalityParams = DEFAULTS) -> list[Consequence]:
    """Consequences of one injection: E signatures and S+ count rises against the profile runs.

    Noise seen in any profile repeat never makes an edge: an E signature must be absent from every
    profile repeat, and an S+ count must exceed every profile repeat's count as well as pass the test.

    >>> prof = [RunObservation(f"p{i}", frozenset({("get", "ok", "h")}), {("h", "get"): 1}) for i in range(2)]
    >>> inj = [RunObservation(f"i{i}", frozenset({("get", "error:TimeoutError", "h")}), {("h", "get"): 3})
    ...        for i in range(2)]
    >>> [(c.kind, c.node().name) for c in fca(prof, inj)]
    [('E', 'get:raise'), ('S+', 'get:delay')]
    """
    if len(profile) < params.min_repeats or len(injected) < params.min_repeats:
        return []
    seen_in_profile = frozenset().union(*(r.compared() for r in profile))
    in_every_injection = frozenset.intersection(*(r.compared() for r in injected))
    out = [Consequence("E", op, outcome, parent)
           for op, outcome, parent in sorted(in_every_injection - seen_in_profile, key=str)]
    keys = set().union(*(r.counts for r in profile), *(r.counts for r in injected))
    for key in sorted(keys, key=str):
        prof = [r.counts.get(key, 0) for r in profile]
        inj = [r.counts.get(key, 0) for r in injected]
        if min(inj) <= max(prof):
            continue
        if not clears_floor(sum(inj) / len(inj), prof, params.min_rise):
            continue  # 130 calls where the profile runs made 129: the run's length, not a consequence
        p = welch_greater(inj, prof)
        if p < params.alpha:
            parent, op = key
            out.append(Consequence("S+", op, "count", parent, p, sum(prof) / len(prof), sum(inj) / len(inj)))
    return out


def injection_nodes(point: str, fault: str, injected_rows: list[dict[str, Any]]) -> list[FaultNode]:
    """The injected fault in each call context it fired in (rows of store.campaigns.injected_faults)."""
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
    injected: dict[str, set[tuple[str, str, str | None, str]]] = defaultdict(set)
    counts: dict[str, dict[tuple[str | None, str], int]] = defaultdict(dict)
    for r in run_signatures(con, run_ids):
        if r["injected"] is None:
            sigs[r["run_id"]].add((r["op"], r["outcome"], r["parent"]))
        else:
            injected[r["run_id"]].add((r["op"], r["outcome"], r["parent"], r["injected"]))
    for r in run_counts(con, run_ids):
        counts[r["run_id"]][(r["parent"], r["op"])] = int(r["n"])
    return {rid: RunObservation(rid, frozenset(sigs.get(rid, ())), counts.get(rid, {}), frozenset(injected.get(rid, ())))
            for rid in run_ids}


def analyze_experiments(con: Any, campaign_ids: list[str], *, params: CausalityParams = DEFAULTS) -> CampaignAnalysis:
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
        consequences = fca([obs[p] for p in prof_ids], [obs[f] for f in fired], params=params)
        sources = injection_nodes(a["point"], a["fault"], [row for f in fired for row in injected[f]])
        experiments.append(ExperimentResult(campaign, test, label, a["point"], a["fault"], run_ids, fired,
                                            sources, consequences))
        for src in sources:
            for c in consequences:
                edges.append(Edge(src, c.node(), c.kind, campaign, test, tuple(fired), tuple(prof_ids), c))
    return CampaignAnalysis(list(campaign_ids), experiments, edges, dict(profiles))


def analyze_campaign(con: Any, campaign_ids: list[str] | str, *, params: CausalityParams = DEFAULTS) -> dict[str, Any]:
    """The causality report of one or more campaigns: edges, stitched chains, cycles (with evidence).

    Edges of several campaigns (and of every test in them) are stitched together, so a consequence
    seen in one campaign joins an injection made in another.
    """
    from tracekit.graph.propagation import build_graph, collapse_findings, find_chains, find_cycles, to_names
    from tracekit.store.campaigns import campaign_ids_for

    ids = campaign_ids_for(con, [campaign_ids] if isinstance(campaign_ids, str) else list(campaign_ids))
    result = analyze_experiments(con, ids, params=params)
    graph = build_graph(result.edges)
    cycles = find_cycles(graph, length_bound=params.max_cycle_length)
    chains = find_chains(graph, cutoff=params.max_chain_length, limit=params.max_chains)
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
        "findings": collapse_findings(graph, cycles, chains),  # one per cascade (what a person reads)
    }


def report_findings(report: dict[str, Any], params: CausalityParams = DEFAULTS) -> list[dict[str, Any]]:
    """A causality report as findings rows: one per cascade (cycles of one component collapsed, ranked
    first), then one per group of chains sharing their first consequence."""
    return [{"subject": " -> ".join(f["representative"]),
             "score": params.cycle_score if f["kind"] == "cycle" else params.chain_score, **f}
            for f in report.get("findings", [])]


def analyze_run(con: Any, run_id: str, params: CausalityParams = DEFAULTS, *, store: bool = True) -> list[dict[str, Any]]:
    """The registered entry point: analyse the campaign of a campaign run (or a campaign id) and store
    its cycles and chains as findings of that campaign (a writable `con`)."""
    from tracekit.store.campaigns import campaign_ids_for
    from tracekit.store.findings import write_findings

    campaign_id = campaign_ids_for(con, [run_id])[0]
    found = report_findings(analyze_campaign(con, [campaign_id], params=params), params)
    if store:
        write_findings(con, campaign_id, "causality", found)
    return found
