"""Rendering for `tracekit campaign`: the rich progress bar and the human-readable report."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from tracekit.cli.output import Format, emit


@contextmanager
def progress_bar(name: str, *, quiet: bool = False) -> Iterator[Callable[[int, int, str], None]]:
    """A rich progress bar over the campaign's budget (runs); on stderr, so --format json stays clean."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if quiet:
        yield lambda done, total, label: None
        return
    with Progress(TextColumn(f"campaign {name}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=Console(file=sys.stderr)) as bar:
        task = bar.add_task("", total=None)

        def advance(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=label)

        yield advance


def summary_rows(summary: dict[str, Any]) -> dict[str, Any]:
    out = dict(summary)
    out.pop("trajectory", None)
    out["cycles"] = [" -> ".join(c) for c in summary.get("cycles", [])]
    out["chains"] = [" -> ".join(c) for c in summary.get("chains", [])]
    return out


def print_report(report: dict[str, Any], fmt: Format) -> None:
    """One row per cascade (cycles of one component and chains sharing a first link collapsed); the
    full graph — every edge, cycle and chain — is in ``--format json``."""
    rows = []
    for f in report.get("findings", []):
        weakest = min((len(link["evidence_runs"]) for link in f["links"]), default=0)
        rows.append({"kind": f["kind"], "cascade": " -> ".join(f["representative"]),
                     "member faults": len(f["faults"]), "cycles": f["cycles"], "chains": f["chains"],
                     "entries": len(f["entries"]), "runs (weakest link)": weakest,
                     "evidence runs": " ".join(r[:8] for link in f["links"] for r in link["evidence_runs"][:2])})
    emit(rows, fmt, title="findings (one per cascade)",
         columns=["kind", "cascade", "member faults", "cycles", "chains", "entries", "runs (weakest link)",
                  "evidence runs"])
    print(f"{len(report['edges'])} edges, {len(report['cycles'])} cycles, {len(report['chains'])} chains "
          f"collapsed into {len(rows)} findings (every edge: --format json)")


def plan_rows(plan: dict[str, Any], fmt: Format) -> None:
    """`campaign run --dry-run`: the points profile runs found (highest breadth priority first) and the budgets."""
    from tracekit.cli.output import emit_object

    if fmt is not Format.table:
        emit_object(plan, fmt)
        return
    emit(plan["points"], fmt, title="injection points found by the profile runs (breadth order)",
         columns=["point", "priority", "primary", "calls_per_run", "loop", "returns", "raises", "points_below", "depth"])
    print(f"experiments: {plan['experiments']}   exhaustive budget: {plan['exhaustive_budget']} runs   "
          f"one third: {plan['one_third_budget']} runs")
