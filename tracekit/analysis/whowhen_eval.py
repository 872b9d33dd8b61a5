"""Who&When evaluation: agent- and step-level accuracy of attribution against the labels, with trivial baselines.

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
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tracekit.errors import TracekitError

__all__ = ["evaluate_whowhen", "LogResult"]


@dataclass
class LogResult:
    file: str
    true_agent: str
    true_step: int
    agent: str
    step: int
    steps: int
    agents: list[str]
    first_steps: dict[str, int]
    last_agent: str
    first_after_task: tuple[str, int]


def _substring_hit(true_step: int, predicted: int) -> bool:
    return str(true_step) in str(predicted)


def _figures(pairs: list[tuple[str, int, str, int]]) -> dict[str, float]:
    n = max(len(pairs), 1)
    return {
        "agent_accuracy": round(sum(pa == ta for ta, _ts, pa, _ps in pairs) / n, 4),
        "step_accuracy": round(sum(ps == ts for _ta, ts, _pa, ps in pairs) / n, 4),
        "step_accuracy_substring": round(sum(_substring_hit(ts, ps) for _ta, ts, _pa, ps in pairs) / n, 4),
    }


def evaluate_whowhen(directory: str | os.PathLike[str], *, use_ground_truth: bool = True,
                     details: bool = False) -> dict[str, Any]:
    """Attribute every labelled log under `directory` (offline) and score it against the labels."""
    from tracekit.analysis.attribution import attribute
    from tracekit.graph.idg import build_idg, steps_from_spans
    from tracekit.importers.whowhen import load_log, log_files

    results: list[LogResult] = []
    skipped: list[str] = []
    for path in log_files(directory):
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
        context = {k: attrs.get(k) for k in ("question",)}
        top = attribute(graph, ground_truth=attrs.get("ground_truth") if use_ground_truth else None,
                        context=context, top=1)[0]
        first: dict[str, int] = {}
        for s in steps:
            first.setdefault(s.agent, s.index)
        after = steps[1] if len(steps) > 1 else steps[0]
        results.append(LogResult(
            file=path.name, true_agent=str(attrs["mistake_agent"]), true_step=attrs["mistake_step"],
            agent=top.agent, step=top.step, steps=len(steps), agents=sorted(first), first_steps=first,
            last_agent=steps[-1].agent, first_after_task=(after.agent, after.index),
        ))
    if not results:
        raise TracekitError(f"no labelled Who&When logs under {directory}")
    n = len(results)
    prior = Counter(r.true_agent for r in results).most_common(1)[0][0]
    uniform = {
        "agent_accuracy": round(sum((r.true_agent in r.agents) / len(r.agents) for r in results) / n, 4),
        "step_accuracy": round(sum((0 <= r.true_step < r.steps) / r.steps for r in results) / n, 4),
        "step_accuracy_substring": round(sum(
            sum(_substring_hit(r.true_step, i) for i in range(r.steps)) / r.steps for r in results) / n, 4),
    }
    out: dict[str, Any] = {
        "n": n,
        "ground_truth_used": use_ground_truth,
        **_figures([(r.true_agent, r.true_step, r.agent, r.step) for r in results]),
        "baselines": {
            "uniform_random": uniform,
            "most_frequent_agent": {"agent": prior, **_figures([
                (r.true_agent, r.true_step, prior, r.first_steps.get(prior, -1)) for r in results])},
            "last_agent": _figures([(r.true_agent, r.true_step, r.last_agent, r.steps - 1) for r in results]),
            "first_step": _figures([(r.true_agent, r.true_step, *r.first_after_task) for r in results]),
        },
        "note": "step_accuracy_substring follows the official Who&When script: a true step '1' counts as "
                "matched by a predicted '12'; step_accuracy is exact",
        "skipped": skipped,
    }
    if details:
        out["logs"] = [{"file": r.file, "true_agent": r.true_agent, "true_step": r.true_step,
                        "agent": r.agent, "step": r.step} for r in results]
    return out
