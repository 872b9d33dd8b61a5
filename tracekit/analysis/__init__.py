"""Analyses: one module per question (attribution, collectives, fault causality), listed in one registry.

An analysis is registered with the name the CLI and the dashboard show, a one-line description, the
run kinds it applies to, and the dotted path of its entry point (imported only when it runs).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AnalysisInfo:
    name: str
    description: str
    run_kinds: tuple[str, ...]
    entry_point: str  # "module:function"


REGISTRY: dict[str, AnalysisInfo] = {}


def register(info: AnalysisInfo) -> AnalysisInfo:
    REGISTRY[info.name] = info
    return info


register(AnalysisInfo("collectives", "C4-style collective anomalies: straggler, throttle, hang, crash, nonfinite, slow link",
                      ("training",), "tracekit.analysis.collectives:detect_run"))
register(AnalysisInfo("attribution", "GraphTracer-style root-cause attribution over the information-dependency graph",
                      ("agents",), "tracekit.analysis.attribution:attribute_run"))
register(AnalysisInfo("causality", "CSnake-style fault causality analysis, causal stitching and cascade cycles",
                      ("campaign",), "tracekit.analysis.causality:analyze_campaign"))
