"""Who&When evaluation: agent- and step-level accuracy of attribution against the labels, with trivial baselines.

With ``folds=K`` the figures are **cross-validated**: the logs are split into K folds (round-robin in
file order), the weights are fitted on K−1 folds and the held-out fold is scored, so no log is scored
by weights fitted on it. Without ``folds`` the shipped weights are used (in-sample on the logs they
were fitted on). Every figure comes with the number of logs behind it (``n``).

Step accuracy is reported two ways. ``step_accuracy`` is exact (predicted index == labelled index).
``step_accuracy_substring`` reproduces the benchmark's official script, which counts a prediction as
right when the labelled step's text occurs in the predicted one — so a true step ``1`` is "matched"
by a predicted ``12`` or ``21``. It is reported for comparison with published numbers only.

Baselines, computed on the same logs:

* ``uniform_random`` — the expected value of picking an agent uniformly among the log's agents and a
  step uniformly among its steps;
* ``most_frequent_agent`` — the agent most often labelled responsible across the evaluated logs (a
  label prior, so it is optimistic), at that agent's first step;
* ``last_agent`` — the agent of the last step, at the last step;
* ``first_step`` — the first step after the task statement, and its agent.

``beats_baselines`` is true when both the agent and the exact step accuracy exceed every baseline's.
At ``min_confidence`` the report adds how many logs get an answer that confident and how accurate
those answers are.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tracekit.errors import TracekitError

__all__ = ["evaluate_whowhen", "load_labelled", "LogResult", "Labelled"]


@dataclass
class Labelled:
    """One labelled log, ready to score: its model view and what the baselines need."""

    file: str
    run: Any  # attribution_model.LabelledRun
    steps_of: list[int]  # the candidates' step indices
    true_agent: str
    true_step: int
    steps: int
    agents: list[str]
    first_steps: dict[str, int]
    last_agent: str
    first_after_task: tuple[str, int]


@dataclass
class LogResult:
    file: str
    true_agent: str
    true_step: int
    agent: str
    step: int
    confidence: float


def _substring_hit(true_step: int, predicted: int) -> bool:
    return str(true_step) in str(predicted)


def _figures(pairs: list[tuple[str, int, str, int]]) -> dict[str, Any]:
    n = max(len(pairs), 1)
    return {
        "n": len(pairs),
        "agent_accuracy": round(sum(pa == ta for ta, _ts, pa, _ps in pairs) / n, 4),
        "step_accuracy": round(sum(ps == ts for _ta, ts, _pa, ps in pairs) / n, 4),
        "step_accuracy_substring": round(sum(_substring_hit(ts, ps) for _ta, ts, _pa, ps in pairs) / n, 4),
    }


def load_labelled(directory: str | os.PathLike[str], *, use_ground_truth: bool = True,
                  progress: Any = None) -> tuple[list[Labelled], list[str]]:
    """Every labelled Who&When log under `directory` as model input: (logs, skipped files)."""
    from tracekit.analysis.attribution import labelled_run
    from tracekit.analysis.attribution_features import run_features
    from tracekit.graph.idg import build_idg, steps_from_spans
    from tracekit.importers.whowhen import load_log, log_files

    logs: list[Labelled] = []
    skipped: list[str] = []
    for path in log_files(directory):
        if progress is not None:
            progress(path)
        try:
            run, spans = load_log(path)
        except TracekitError:
            skipped.append(str(path))
            continue
        attrs = run["attributes"]
        if not isinstance(attrs.get("mistake_step"), int) or not attrs.get("mistake_agent") or not spans:
            skipped.append(str(path))
            continue
        for span in spans:
            span["attributes"] = json.loads(span["attributes"])
        steps = steps_from_spans(spans)
        graph = build_idg(steps)
        feats = run_features(graph, ground_truth=attrs.get("ground_truth") if use_ground_truth else None,
                             question=attrs.get("question"))
        if not feats.candidates:
            skipped.append(str(path))
            continue
        true_agent, true_step = str(attrs["mistake_agent"]), attrs["mistake_step"]
        first: dict[str, int] = {}
        for s in steps:
            first.setdefault(s.agent, s.index)
        after = steps[1] if len(steps) > 1 else steps[0]
        logs.append(Labelled(
            file=path.name, run=labelled_run(graph, feats, true_step, true_agent),
            steps_of=[graph.nodes[feats.order[i]]["step"] for i in feats.candidates],
            true_agent=true_agent, true_step=true_step, steps=len(steps), agents=sorted(first), first_steps=first,
            last_agent=steps[-1].agent, first_after_task=(after.agent, after.index),
        ))
    return logs, skipped


def _predict(logs: list[Labelled], params: Any) -> list[LogResult]:
    from tracekit.analysis.attribution_model import confidence_of, predict

    out = []
    for log in logs:
        top, agent, prob, strength = predict(log.run, params)
        out.append(LogResult(log.file, log.true_agent, log.true_step, agent, log.steps_of[top],
                             round(confidence_of(prob, strength, params.confidence), 4)))
    return out


def cross_validate(logs: list[Labelled], folds: int) -> list[LogResult]:
    """Out-of-fold predictions: fit on K−1 folds (round-robin split), predict the held-out one."""
    from tracekit.analysis.attribution_model import fit

    if folds < 2 or folds > len(logs):
        raise TracekitError(f"--folds must be between 2 and the number of logs ({len(logs)}), not {folds}")
    by_file: dict[str, LogResult] = {}
    for k in range(folds):
        train = [log.run for i, log in enumerate(logs) if i % folds != k]
        held = [log for i, log in enumerate(logs) if i % folds == k]
        for r in _predict(held, fit(train)):
            by_file[r.file] = r
    return [by_file[log.file] for log in logs]


def evaluate_whowhen(directory: str | os.PathLike[str], *, use_ground_truth: bool = True, details: bool = False,
                     folds: int | None = None, min_confidence: float | None = None,
                     params: Any = None, progress: Any = None) -> dict[str, Any]:
    """Attribute every labelled log under `directory` (offline) and score it against the labels."""
    from tracekit.analysis.attribution_model import DEFAULT

    logs, skipped = load_labelled(directory, use_ground_truth=use_ground_truth, progress=progress)
    if not logs:
        raise TracekitError(f"no labelled Who&When logs under {directory}")
    params = params or DEFAULT
    results = cross_validate(logs, folds) if folds else _predict(logs, params)
    n = len(logs)
    prior = Counter(log.true_agent for log in logs).most_common(1)[0][0]
    uniform = {
        "n": n,
        "agent_accuracy": round(sum((g.true_agent in g.agents) / len(g.agents) for g in logs) / n, 4),
        "step_accuracy": round(sum((0 <= g.true_step < g.steps) / g.steps for g in logs) / n, 4),
        "step_accuracy_substring": round(sum(
            sum(_substring_hit(g.true_step, i) for i in range(g.steps)) / g.steps for g in logs) / n, 4),
    }
    baselines = {
        "uniform_random": uniform,
        "most_frequent_agent": {"agent": prior, **_figures([
            (g.true_agent, g.true_step, prior, g.first_steps.get(prior, -1)) for g in logs])},
        "last_agent": _figures([(g.true_agent, g.true_step, g.last_agent, g.steps - 1) for g in logs]),
        "first_step": _figures([(g.true_agent, g.true_step, *g.first_after_task) for g in logs]),
    }
    figures = _figures([(r.true_agent, r.true_step, r.agent, r.step) for r in results])
    threshold = params.low_confidence if min_confidence is None else min_confidence
    confident = [r for r in results if r.confidence >= threshold]
    out: dict[str, Any] = {
        **figures,
        "ground_truth_used": use_ground_truth,
        "folds": folds,
        "evaluation": f"{folds}-fold cross-validation (weights fitted on the other folds)" if folds
        else "shipped weights (in-sample on the logs they were fitted on)",
        "baselines": baselines,
        "beats_baselines": all(figures[k] > b[k] for b in baselines.values()
                               for k in ("agent_accuracy", "step_accuracy")),
        "at_confidence": {"min_confidence": threshold, **_figures(
            [(r.true_agent, r.true_step, r.agent, r.step) for r in confident]),
            "coverage": round(len(confident) / n, 4)},
        "note": "step_accuracy_substring follows the official Who&When script: a true step '1' counts as "
                "matched by a predicted '12'; step_accuracy is exact",
        "skipped": skipped,
    }
    if details:
        out["logs"] = [{"file": r.file, "true_agent": r.true_agent, "true_step": r.true_step,
                        "agent": r.agent, "step": r.step, "confidence": r.confidence} for r in results]
    return out


def fit_whowhen(directory: str | os.PathLike[str]) -> Any:
    """Fit every attribution parameter on all labelled logs under `directory` (the shipped `DEFAULT`)."""
    from tracekit.analysis.attribution_model import fit

    logs, _skipped = load_labelled(directory)
    if not logs:
        raise TracekitError(f"no labelled Who&When logs under {directory}")
    return fit([log.run for log in logs])


if __name__ == "__main__":  # python -m tracekit.analysis.whowhen_eval DIR: the fitted parameters, as JSON
    import sys

    print(json.dumps(fit_whowhen(sys.argv[1]).to_dict(), indent=1))
