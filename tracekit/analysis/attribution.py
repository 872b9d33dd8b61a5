"""Root-cause attribution of a failed multi-agent run: rank its (agent, step) candidates, mark symptoms.

Method (GraphTracer's idea, offline, with fitted weights):

1. **Features** of every step (`attribution_features`): its position and role, the general step
   signals stored with it (an orchestrator's judgment, a verifier's verdict, a tool execution's exit
   status, the final answer), plain text cues (error reports, inability, hedging), what it
   introduced that the failing answer repeats, how many later steps used it, and the **back-trace**
   over the information-dependency graph from the failure to the earliest uncorrected step with
   error evidence (its erroneous descendants are symptoms). Without recorded edges the IDG's edges
   are inferred from content reuse, and the evidence says so.
2. **Score**: a weighted sum of the features (`attribution_model.AttributionParams`, fitted on
   labelled runs); a softmax over the candidate steps turns scores into each step's probability of
   being the root cause (the candidate's ``score``). With recorded dependencies a symptom never
   ranks above the step that explains it.
3. **Confidence** (0..1, calibrated on held-out predictions): how likely the named agent is right.
   Below ``params.low_confidence`` the run has no confident root cause, and the evidence says so.
4. An optional **judge** (`attribution_judge`) gives a model's verdict on the top candidates, sent
   only their graph-restricted context; its verdict shifts their scores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import networkx as nx

from tracekit.analysis.attribution_features import FEATURES, RunFeatures, run_features
from tracekit.analysis.attribution_model import (
    DEFAULT, AttributionParams, LabelledRun, agent_scores, confidence_of, evidence_strength, scores, softmax,
)
from tracekit.errors import TracekitError

__all__ = ["Candidate", "attribute", "attribute_run", "attribute_runs", "labelled_run", "load_idg"]


@dataclass
class Candidate:
    """One ranked root-cause candidate: ``score`` is its probability of being the root cause."""

    span_id: str
    agent: str
    step: int
    score: float
    role: str  # root_cause, symptom or candidate
    evidence: list[str] = field(default_factory=list)
    path: list[int] = field(default_factory=list)  # steps from this one to the failure
    explained_by: int | None = None  # the earlier erroneous step that explains a symptom
    confidence: float = 0.0  # calibrated probability that this candidate's agent is responsible

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rows(feats: RunFeatures) -> tuple[list[list[float]], list[list[float]]]:
    rows = [[feats.rows[i].get(f, 0.0) for f in FEATURES] for i in feats.candidates]
    status = FEATURES.index("error_status")
    masks = [list(r) for r in rows]
    for k, i in enumerate(feats.candidates):
        if i == feats.failure:
            masks[k][status] = 0.0  # the failure's own error is the observation, not evidence of a cause
    return rows, masks


def labelled_run(g: nx.DiGraph, feats: RunFeatures, true_step: int | None = None,
                 true_agent: str | None = None) -> LabelledRun:
    """The model's view of one run (its candidates' feature rows), with the labels when known."""
    rows, masks = _rows(feats)
    steps = [g.nodes[feats.order[i]]["step"] for i in feats.candidates]
    agents = [g.nodes[feats.order[i]]["agent"] for i in feats.candidates]
    index = steps.index(true_step) if true_step in steps else None
    return LabelledRun(rows, agents, index, true_agent, masks)


def attribute(
    g: nx.DiGraph, *, ground_truth: str | None = None, failure: str | None = None, judge: Any = None,
    context: dict[str, Any] | None = None, top: int = 10, failed: bool | None = None,
    params: AttributionParams | None = None,
) -> list[Candidate]:
    """Ranked root-cause candidates (best first) for the failure of the run whose IDG is `g`.

    ``failed=False`` (a run that ended well and has no step in error) returns no candidates.

    >>> from tracekit.graph.idg import Step, build_idg
    >>> steps = [Step("a", "Search", 0, "I could not find it; I assume the population is 9,999"),
    ...          Step("b", "Writer", 1, "Report: X has 9,999 people"),
    ...          Step("c", "Checker", 2, "", status="error", errors=("9,999 is wrong",))]
    >>> links = [{"src_span_id": "a", "dst_span_id": "b", "provenance": "observed", "confidence": 1.0},
    ...          {"src_span_id": "b", "dst_span_id": "c", "provenance": "observed", "confidence": 1.0}]
    >>> best = attribute(build_idg(steps, links))[0]
    >>> (best.agent, best.role)
    ('Search', 'root_cause')
    """
    if g.number_of_nodes() == 0:
        raise TracekitError("the run has no agent steps to attribute")
    params = params or DEFAULT
    if failed is False and failure is None and not any(d["status"] == "error" for _n, d in g.nodes(data=True)):
        return []
    context = context or {}
    feats = run_features(g, ground_truth=ground_truth, question=context.get("question"), failure=failure)
    if not feats.candidates:
        raise TracekitError("the run has no step that could be blamed (only the task statement)")
    rows, masks = _rows(feats)
    w = params.vector()
    probs = softmax(scores(rows, w))
    agents = [g.nodes[feats.order[i]]["agent"] for i in feats.candidates]
    by_agent = agent_scores(agents, probs, params.agent_from)
    found: list[Candidate] = []
    for k, i in enumerate(feats.candidates):
        d = g.nodes[feats.order[i]]
        reasons = [feats.reasons[i][f] for f in FEATURES if f in feats.reasons[i]]
        reasons.append(f"{feats.roles[i]} step, {round(100 * feats.rows[i].get('pos_rel', 0.0))} % into the run")
        symptom = i in feats.explained_by
        found.append(Candidate(
            span_id=feats.order[i], agent=d["agent"], step=d["step"], score=round(probs[k], 4),
            role="symptom" if symptom else "candidate", evidence=reasons, path=feats.path.get(i, [d["step"]]),
            explained_by=g.nodes[feats.order[feats.explained_by[i]]]["step"] if symptom else None,
            confidence=round(confidence_of(by_agent[d["agent"]] if params.agent_from == "sum" else probs[k],
                                           evidence_strength(masks[k], w), params.confidence), 4),
        ))
    if not feats.inferred:  # recorded dependencies: a symptom ranks below the step that explains it
        by_pos = {feats.order[i]: c for i, c in zip(feats.candidates, found)}
        for i, c in zip(feats.candidates, found):
            source = by_pos.get(feats.order[feats.explained_by[i]]) if i in feats.explained_by else None
            if source is not None and c.score >= source.score:
                c.score = round(source.score * 0.9, 4)
    found.sort(key=lambda c: (-c.score, c.step))
    if judge is not None:
        from tracekit.analysis.attribution_judge import apply_judge

        apply_judge(g, feats, found, judge, context, params.judge_weight)
        found.sort(key=lambda c: (-c.score, c.step))
    if params.agent_from == "sum" and found:  # the root cause is the best step of the most likely agent
        best_agent = max(by_agent, key=lambda a: by_agent[a])
        head = next(c for c in found if c.agent == best_agent)
        found.remove(head)
        found.insert(0, head)
    for c in found:
        if c.role != "symptom":
            c.role = "root_cause"
            if c.confidence < params.low_confidence:
                c.evidence.append(f"low confidence ({c.confidence:.2f} < {params.low_confidence}): "
                                  "no step shows strong evidence of causing the failure")
            break
    if feats.inferred and found:
        found[0].evidence.append("dependencies inferred from content reuse (the run recorded none)")
    shown = found[:top]
    failure = next((c for c in found[top:] if c.span_id == feats.order[feats.failure]), None)
    if failure is not None:  # where the failure surfaced is always shown, ranked where it is
        shown = [*shown[:-1], failure] if top > 1 else shown
    return shown


def load_idg(con: Any, run: str, *, infer: bool | str = "auto") -> nx.DiGraph:
    """The IDG of a stored run (id, prefix or name): its steps and links (recorded by capture, or
    derived from GenAI/OpenInference span attributes at ingest); edges are inferred when none were
    recorded. ``g.graph`` holds the run row."""
    from tracekit.graph.idg import build_idg, steps_from_spans
    from tracekit.importers.genai import content_capture_hint
    from tracekit.store.agents import run_links, run_spans
    from tracekit.store.queries import get_run, resolve_run

    run_row = get_run(con, resolve_run(con, run))
    spans = run_spans(con, run_row["run_id"])
    steps = steps_from_spans(spans)
    if not steps:
        raise TracekitError(f"run {run_row['name']!r} has no agent steps (record them with tracekit.agent_step, "
                            "tracekit.message, GenAI/OpenInference spans, or `tracekit import whowhen`)")
    g = build_idg(steps, run_links(con, run_row["run_id"]), infer=infer)  # type: ignore[arg-type]
    g.graph["run"] = run_row
    g.graph["content_hint"] = content_capture_hint(spans)  # steps without text: capture looks switched off
    return g


def attribute_run(con: Any, run_id: str, *, judge: Any = None, store: bool = True,
                  infer: bool | str = "auto", top: int = 10, params: AttributionParams | None = None,
                  hints: list[str] | None = None) -> list[Candidate]:
    """Attribute one stored run: build its IDG, rank candidates, store them as findings. When its
    steps carry no text (content capture off), the warning saying how to turn it on goes to `hints`."""
    from tracekit.store.findings import write_findings

    g = load_idg(con, run_id, infer=infer)
    if hints is not None and g.graph["content_hint"]:
        hints.append(g.graph["content_hint"])
    attrs = g.graph["run"]["attributes"]
    found = attribute(g, ground_truth=attrs.get("ground_truth") or None, judge=judge, context=attrs, top=top,
                      failed=g.graph["run"]["status"] in ("error", "aborted"), params=params)
    if store:
        write_findings(con, g.graph["run"]["run_id"], "attribution", [
            {"kind": c.role, "subject": f"agent:{c.agent}/step:{c.step}", "score": c.score,
             "first_step": c.step, **c.to_dict()} for c in found
        ])
    return found


def attribute_runs(db: Any, run: str | None, *, judge: Any = None, top: int = 10) -> list[dict[str, Any]]:
    """Attribute one run (`run`) or, with ``run=None``, every run of kind agents; findings are stored.
    Returns ``[{"run_id", "name", "candidates", "content_hint"}]`` (the hint: None, or how to turn on
    the content capture a run's steps look recorded without)."""
    from tracekit.store.agents import agent_run_ids
    from tracekit.store.db import connect
    from tracekit.store.queries import get_run, resolve_run

    with connect(db, create=False) as con:
        ids = [resolve_run(con, run)] if run is not None else agent_run_ids(con)
        out = []
        for run_id in ids:
            hints: list[str] = []
            out.append({"run_id": run_id, "name": get_run(con, run_id)["name"],
                        "candidates": attribute_run(con, run_id, judge=judge, top=top, hints=hints),
                        "content_hint": hints[0] if hints else None})
    return out
