"""The attribution scoring model: one parameter object, step scores, agent choice, confidence, and the fit.

A step's score is a weighted sum of its features (`attribution_features.FEATURES`); within a run the
scores become probabilities by a softmax over the candidate steps. The agent is either the top
step's agent or the agent holding the most probability (``agent_from``, chosen by the fit). The
confidence is a calibrated logistic function of the top agent's probability and of the strength of
the top step's own evidence, so a run where nothing but position points anywhere says so.

**Fitting** (`fit`): listwise logistic ranking — maximise the log-probability of the labelled step
among the candidates of its run — with an L2 penalty pulling every weight towards its prior
(`PRIOR`): a feature the training logs never show keeps its prior, one they show often moves where
the data says. Newton's method on the (small, convex) problem; numpy is imported only when fitting. `DEFAULT` holds the weights fitted on all 58 Who&When
Hand-Crafted logs; `tracekit eval whowhen DIR --folds K` reports the cross-validated figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tracekit.analysis.attribution_features import FEATURES
from tracekit.errors import TracekitError

__all__ = ["AttributionParams", "DEFAULT", "PRIOR", "LabelledRun", "fit", "softmax", "agent_scores",
           "confidence_of", "evidence_strength", "POSITION_FEATURES"]

POSITION_FEATURES = frozenset({"pos_rel", "first_worker", "worker_rank", "agent_first", "role_orchestrator", "role_tool",
                               "role_verifier", "dependents", "final_answer"})

# Prior weights: the sign and rough size expected before seeing data (evidence of an error raises
# a step's score, corrected errors and symptoms lower it, stating the truth argues against it).
PRIOR: dict[str, float] = {
        "pos_rel": 0.0, "first_worker": 0.0, "worker_rank": 0.0, "agent_first": 0.0,
        "role_orchestrator": 0.0, "role_tool": -0.5, "role_verifier": 0.0,
        "error_status": 2.0, "error_text": 1.0, "inability": 1.0, "hedging": 0.5, "empty": 1.5,
        "authored_failed_exec": 1.0, "judged_negative": 1.0, "judged_progress": 0.0, "accepts": 0.5,
        "final_answer": 0.0, "answer_origin": 1.5, "states_truth": -1.0, "dependents": 0.0,
        "corrected": -2.0, "dropped": 1.5, "backtrace_root": 2.5, "backtrace_symptom": -1.5, "off_path": -2.0,
    "inferred_root": 0.5, "inferred_symptom": -0.5, "inferred_off_path": -0.5,
}


@dataclass
class AttributionParams:
    """Every weight of the attribution method, with its meaning.

    weights: one per feature (`attribution_features.FEATURES`), added to a step's score when the
        feature is on (times its value).
    agent_from: ``"step"`` (the top step's agent) or ``"sum"`` (the agent with the most probability
        summed over its steps).
    confidence: (bias, slope on the logit of the chosen agent's probability, slope on the top step's
        evidence strength) of the logistic calibration.
    low_confidence: below this confidence the answer is reported as "no confident root cause".
    l2: the strength of the pull towards `PRIOR` when fitting.
    judge_weight: how far a model judge's verdict moves a candidate's score (``exp(±weight × its
        confidence)``); set, not fitted (no labelled judge answers to fit it on).
    """

    weights: dict[str, float] = field(default_factory=lambda: dict(PRIOR))
    agent_from: str = "step"
    confidence: tuple[float, float, float] = (-1.0, 0.7, 0.8)
    low_confidence: float = 0.5
    l2: float = 0.03
    judge_weight: float = 1.0

    def vector(self) -> list[float]:
        return [self.weights.get(f, 0.0) for f in FEATURES]

    def to_dict(self) -> dict[str, Any]:
        return {"weights": {f: round(self.weights.get(f, 0.0), 4) for f in FEATURES}, "agent_from": self.agent_from,
                "confidence": [round(c, 4) for c in self.confidence], "low_confidence": self.low_confidence,
                "l2": self.l2, "judge_weight": self.judge_weight}


# fitted on the 58 Who&When Hand-Crafted logs (python -m tracekit.analysis.whowhen_eval DIR prints them)
DEFAULT = AttributionParams(
    weights={
        "pos_rel": -0.2317,
        "first_worker": 0.072,
        "worker_rank": 0.6195,
        "agent_first": 0.2275,
        "role_orchestrator": -0.7871,
        "role_tool": -0.544,
        "role_verifier": 0.0,
        "error_status": 2.0,
        "error_text": 1.2713,
        "inability": 0.7865,
        "hedging": 0.4104,
        "empty": 1.5,
        "authored_failed_exec": 1.0,
        "judged_negative": 0.8515,
        "judged_progress": 0.3449,
        "accepts": 0.7495,
        "final_answer": 0.3995,
        "answer_origin": 1.45,
        "states_truth": -0.6895,
        "dependents": -0.223,
        "corrected": -2.0,
        "dropped": 1.5,
        "backtrace_root": 2.5,
        "backtrace_symptom": -1.5,
        "off_path": -2.0,
        "inferred_root": 0.2412,
        "inferred_symptom": -0.2456,
        "inferred_off_path": -0.1498,
    },
    agent_from="step", confidence=(-0.8444, 0.1937, 0.8292), l2=0.1,
)


@dataclass
class LabelledRun:
    """One run's candidate feature rows, their agents, and (for fitting) the labelled step and agent."""

    rows: list[list[float]]  # candidate steps x FEATURES
    agents: list[str]
    true_index: int | None  # position of the labelled step among the candidates (None: not a candidate)
    true_agent: str | None
    strength_mask: list[list[float]] = field(default_factory=list)  # rows with the failure's own status zeroed


def scores(rows: Sequence[Sequence[float]], weights: Sequence[float]) -> list[float]:
    return [sum(w * x for w, x in zip(weights, row) if x) for row in rows]


def softmax(values: Sequence[float]) -> list[float]:
    """Probabilities from scores (numerically stable).

    >>> [round(p, 3) for p in softmax([0.0, 0.0, math.log(2)])]
    [0.25, 0.25, 0.5]
    """
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def agent_scores(agents: Sequence[str], probs: Sequence[float], agent_from: str) -> dict[str, float]:
    """Each agent's probability of being responsible: its top step's, or its steps' summed."""
    out: dict[str, float] = {}
    for a, p in zip(agents, probs):
        out[a] = out.get(a, 0.0) + p if agent_from == "sum" else max(out.get(a, 0.0), p)
    return out


def evidence_strength(row: Sequence[float], weights: Sequence[float]) -> float:
    """How much a step's own evidence (not its position or role) adds to its score."""
    return sum(max(0.0, w * x) for f, w, x in zip(FEATURES, weights, row) if x and f not in POSITION_FEATURES)


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def confidence_of(agent_probability: float, strength: float, calibration: Sequence[float]) -> float:
    """The calibrated confidence (0..1) that the named agent is responsible."""
    bias, slope, ev = calibration
    z = bias + slope * _logit(agent_probability) + ev * strength
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


def predict(run: LabelledRun, params: AttributionParams) -> tuple[int, str, float, float]:
    """(top candidate index, agent, agent probability, evidence strength of the top step)."""
    w = params.vector()
    probs = softmax(scores(run.rows, w))
    by_agent = agent_scores(run.agents, probs, params.agent_from)
    if params.agent_from == "sum":  # the best step of the most likely agent
        agent = max(by_agent, key=lambda a: by_agent[a])
        top = max((i for i in range(len(probs)) if run.agents[i] == agent), key=lambda i: (probs[i], -i))
    else:
        top = max(range(len(probs)), key=lambda i: (probs[i], -i))
        agent = run.agents[top]
    mask = run.strength_mask[top] if run.strength_mask else run.rows[top]
    return top, agent, by_agent[agent] if params.agent_from == "sum" else probs[top], evidence_strength(mask, w)


def _numpy() -> Any:
    import numpy as np  # a core dependency, imported here so attributing with fixed weights never loads it

    return np


def fit_weights(runs: Sequence[LabelledRun], *, l2: float, prior: dict[str, float] | None = None) -> dict[str, float]:
    """Listwise logistic ranking with an L2 pull towards `prior` (Newton's method)."""
    np = _numpy()
    mu = np.array([(prior or PRIOR).get(f, 0.0) for f in FEATURES])
    data = [(np.asarray(r.rows, dtype=float), r.true_index) for r in runs if r.true_index is not None and r.rows]
    if not data:
        raise TracekitError("no labelled run has its labelled step among the candidates: nothing to fit")
    w = mu.copy()
    n = len(data)
    for _ in range(50):
        grad = l2 * (w - mu)
        hess = l2 * np.eye(len(w))
        for x, t in data:
            s = x @ w
            p = np.exp(s - s.max())
            p /= p.sum()
            mean = p @ x
            grad += (mean - x[t]) / n
            hess += ((x * p[:, None]).T @ x - np.outer(mean, mean)) / n
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-7:
            break
    return {f: float(v) for f, v in zip(FEATURES, w)}


def fit_calibration(points: Sequence[tuple[float, float, bool]], prior: Sequence[float] = (-1.0, 0.7, 0.8),
                    l2: float = 0.5) -> tuple[float, float, float]:
    """Logistic calibration of (agent probability, evidence strength) -> correct, pulled towards `prior`."""
    np = _numpy()
    if not points:
        return tuple(prior)  # type: ignore[return-value]
    x = np.array([[1.0, _logit(p), s] for p, s, _ok in points])
    y = np.array([1.0 if ok else 0.0 for _p, _s, ok in points])
    mu = np.asarray(prior, dtype=float)
    w = mu.copy()
    for _ in range(50):
        q = 1 / (1 + np.exp(-np.clip(x @ w, -30, 30)))
        grad = x.T @ (q - y) / len(y) + l2 * (w - mu)
        hess = (x * (q * (1 - q))[:, None]).T @ x / len(y) + l2 * np.eye(3)
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return (float(w[0]), float(w[1]), float(w[2]))


def fit(runs: Sequence[LabelledRun], *, l2: float | None = None, folds: int = 4) -> AttributionParams:
    """Fit every parameter on labelled runs: the L2 strength and the agent rule (by inner
    cross-validation, preferring the simpler choice — more regularisation, the top step's agent —
    unless another wins by more than 2 % of the runs), the weights, and the confidence calibration
    (on the inner out-of-fold predictions)."""
    grid = [l2] if l2 is not None else [0.3, 0.1, 0.03]
    parts = [[r for i, r in enumerate(runs) if i % folds == k] for k in range(folds)] \
        if len(runs) >= 2 * folds else [list(runs)]
    margin = 0.02 * len(runs)
    best: tuple[float, float, str] = (-1.0, grid[0], "step")
    oof: dict[tuple[float, str], list[tuple[float, float, bool]]] = {}
    for mode in ("step", "sum"):
        for lam in grid:
            hits, points = 0.0, []
            for k, held in enumerate(parts):
                train = [r for j, p in enumerate(parts) if j != k or len(parts) == 1 for r in p]
                params = AttributionParams(weights=fit_weights(train, l2=lam), agent_from=mode, l2=lam)
                for r in held:
                    top, agent, prob, strength = predict(r, params)
                    ok = agent == r.true_agent
                    hits += ok + (top == r.true_index)
                    points.append((prob, strength, ok))
            oof[(lam, mode)] = points
            if hits > best[0] + (margin if best[0] >= 0 else 0.0):
                best = (hits, lam, mode)
    _hits, lam, mode = best
    params = AttributionParams(weights=fit_weights(runs, l2=lam), agent_from=mode, l2=lam)
    return replace(params, confidence=fit_calibration(oof[(lam, mode)]))
