"""Analyses: one module per question (attribution, collectives, fault causality), listed in one registry.

The registry is the one list of analyses: ``tracekit analyze`` runs every entry that applies to a run's
kind and stores its findings, and the dashboard names the analyses from it. An entry says

* which run kinds it applies to,
* its parameter dataclass (every tunable weight and threshold, with its meaning), and
* the function that runs it on one stored run and stores its findings:
  ``fn(con, run_id, params) -> list[dict]`` (the findings rows it stored, in rank order).

Entry points and parameter classes are dotted paths imported only when the analysis runs, so importing
this package stays cheap (no polars, numpy or scipy). Adding an analysis is one `register` call.

>>> sorted(a.name for a in applicable("training"))
['collectives']
>>> REGISTRY["causality"].per
'campaign'
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tracekit.errors import TracekitError

__all__ = ["Analysis", "AnalysisResult", "REGISTRY", "register", "applicable", "analyze_run", "analyze_all"]

Runner = Callable[[Any, str, Any], list[dict[str, Any]]]


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Analysis:
    """One registered analysis."""

    name: str
    description: str
    run_kinds: tuple[str, ...]
    entry_point: str  # "module:function", called as fn(con, run_id, params); stores and returns its findings
    params: str | None = None  # "module:Class" of its parameter dataclass (None: it has no knobs yet)
    per: str = "run"  # what its findings are stored under: the run, or the run's campaign ("campaign")

    def runner(self) -> Runner:
        return _load(self.entry_point)  # type: ignore[no-any-return]

    def default_params(self) -> Any:
        """An instance of the parameter dataclass with its defaults (None when there is none)."""
        return _load(self.params)() if self.params else None

    def subject_of(self, run: Mapping[str, Any]) -> str:
        """The id this analysis stores a run's findings under."""
        if self.per == "campaign":
            return str((run.get("attributes") or {}).get("campaign") or run["run_id"])
        return str(run["run_id"])


REGISTRY: dict[str, Analysis] = {}


def register(analysis: Analysis) -> Analysis:
    if analysis.per not in ("run", "campaign"):
        raise ValueError(f"analysis {analysis.name!r}: per must be 'run' or 'campaign', not {analysis.per!r}")
    REGISTRY[analysis.name] = analysis
    return analysis


def applicable(kind: str | None) -> list[Analysis]:
    """The registered analyses that apply to runs of this kind, in registration order."""
    return [a for a in REGISTRY.values() if kind in a.run_kinds]


def run_attribution(con: Any, run_id: str, params: Any = None) -> list[dict[str, Any]]:
    """The attribution analysis as a registry entry: rank and store candidates (attribute_run writes them
    with write_findings), and return the stored rows."""
    from tracekit.analysis.attribution import attribute_run
    from tracekit.store.findings import read_findings

    attribute_run(con, run_id)
    return read_findings(con, run_id, "attribution")


register(Analysis("collectives", "C4-style collective anomalies: straggler, throttle, hang, crash, nonfinite, slow link",
                  ("training",), "tracekit.analysis.collectives:detect_run", "tracekit.analysis.collectives:Thresholds"))
register(Analysis("attribution", "GraphTracer-style root-cause attribution over the information-dependency graph",
                  ("agents",), "tracekit.analysis:run_attribution"))
register(Analysis("causality", "CSnake-style fault causality analysis, causal stitching and cascade cycles",
                  ("campaign",), "tracekit.analysis.causality:analyze_run", "tracekit.analysis.causality:CausalityParams",
                  per="campaign"))


@dataclass(frozen=True)
class AnalysisResult:
    """What one analysis found on one run (stored under `subject`), or the one-line reason it could not run."""

    run_id: str
    run_name: str
    kind: str
    analysis: str
    subject: str
    findings: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "run": self.run_name, "kind": self.kind, "analysis": self.analysis,
                "stored_under": self.subject, "findings": self.findings, "error": self.error}


def _run_one(con: Any, run: Mapping[str, Any], analysis: Analysis, params: Mapping[str, Any]) -> AnalysisResult:
    subject = analysis.subject_of(run)
    chosen = params.get(analysis.name)
    try:
        found = analysis.runner()(con, run["run_id"], chosen if chosen is not None else analysis.default_params())
    except TracekitError as exc:
        return AnalysisResult(run["run_id"], run["name"], run["kind"], analysis.name, subject, [], str(exc))
    return AnalysisResult(run["run_id"], run["name"], run["kind"], analysis.name, subject, list(found))


def analyze_run(con: Any, run_id: str, *, only: Sequence[str] | None = None,
                params: Mapping[str, Any] | None = None) -> list[AnalysisResult]:
    """Run every registered analysis that applies to the run's kind (or those named in `only`) on a
    writable connection; each stores its findings. `params` maps an analysis name to its parameters."""
    from tracekit.store.queries import get_run

    run = get_run(con, run_id)
    chosen = _select(run["kind"], only)
    return [_run_one(con, run, a, params or {}) for a in chosen]


def analyze_all(con: Any, *, only: Sequence[str] | None = None, params: Mapping[str, Any] | None = None,
                progress: Callable[[int, int, str], None] | None = None) -> list[AnalysisResult]:
    """Every applicable analysis (of those named in `only`) on every run of the store; an analysis stored
    per campaign runs once per campaign."""
    from tracekit.store.queries import get_run, list_runs

    if only:
        _select(None, only)  # an unknown name fails before any work
    wanted = [a for a in REGISTRY.values() if not only or a.name in only]
    runs = [get_run(con, r["run_id"]) for r in list_runs(con, limit=2**62)
            if any(r["kind"] in a.run_kinds for a in wanted)]
    done: set[tuple[str, str]] = set()
    out: list[AnalysisResult] = []
    for i, run in enumerate(runs):
        for a in (a for a in wanted if run["kind"] in a.run_kinds):
            key = (a.name, a.subject_of(run))
            if key not in done:
                done.add(key)
                out.append(_run_one(con, run, a, params or {}))
        if progress is not None:
            progress(i + 1, len(runs), run["name"])
    return out


def _select(kind: str | None, only: Sequence[str] | None) -> list[Analysis]:
    if only:
        unknown = [n for n in only if n not in REGISTRY]
        if unknown:
            raise TracekitError(f"no analysis named {unknown[0]!r}: the registered ones are {', '.join(REGISTRY)}")
        return [REGISTRY[n] for n in only]
    chosen = applicable(kind)
    if not chosen:
        kinds = sorted({k for a in REGISTRY.values() for k in a.run_kinds})
        raise TracekitError(f"no registered analysis applies to runs of kind {kind!r} (analyses exist for "
                            f"{', '.join(kinds)} runs)")
    return chosen
