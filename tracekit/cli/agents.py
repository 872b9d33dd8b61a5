"""Multi-agent commands: `import whowhen`, `attribute`, `eval whowhen`, `idg` (thin glue over the library)."""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Optional

import typer

from tracekit.cli.root import app
from tracekit.cli.output import DB_OPTION, FORMAT_OPTION, Format, emit, emit_object

import_app = typer.Typer(help="Import foreign traces and logs into the store.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate tracekit's analyses against labelled benchmarks.", no_args_is_help=True)
app.add_typer(import_app, name="import")
app.add_typer(eval_app, name="eval")


@import_app.command("whowhen")
def import_whowhen_cmd(
    directory: Path = typer.Argument(..., help="A Who&When directory (Hand-Crafted, Algorithm-Generated) or one log."),
    db: Optional[Path] = DB_OPTION,
    fmt: Format = FORMAT_OPTION,
) -> None:
    """Import Who&When logs: one run (kind agents) per log, one step span per history entry; idempotent."""
    from tracekit.ingest.whowhen import import_whowhen

    report = import_whowhen(directory, db)
    if fmt is Format.table:
        print(f"imported {len(report.runs)} run(s), {report.to_dict()['steps']} steps")
        for skipped in report.skipped:
            print(f"skipped {skipped['file']}: {skipped['error']}", file=sys.stderr)
    else:
        emit(report.runs, fmt)


@app.command()
def attribute(
    run: Optional[str] = typer.Argument(None, help="Run id, id prefix, or name."),
    all_runs: bool = typer.Option(False, "--all", help="Attribute every run of kind agents."),
    top: int = typer.Option(10, "--top", min=1, help="At most this many candidates per run."),
    judge: bool = typer.Option(False, "--judge", help="Ask an OpenAI-compatible model judge (TRACEKIT_JUDGE_BASE_URL, "
                               "TRACEKIT_JUDGE_MODEL, TRACEKIT_JUDGE_API_KEY or OPENAI_*) about the top candidates."),
    db: Optional[Path] = DB_OPTION,
    fmt: Format = FORMAT_OPTION,
) -> None:
    """Rank root-cause (agent, step) candidates of a failed multi-agent run; symptoms are marked."""
    from tracekit.analysis.attribution import attribute_runs
    from tracekit.analysis.attribution_judge import judge_from_env

    if (run is None) == (not all_runs):
        raise typer.BadParameter("give a RUN or --all (not both)")
    results = attribute_runs(db, None if all_runs else run, judge=judge_from_env() if judge else None, top=top)
    for r in results:  # on stderr: the JSON on stdout keeps its shape (--all json also carries it per run)
        if r["content_hint"]:
            print(f"warning: {r['name']}: {r['content_hint']}", file=sys.stderr)
    if fmt is Format.json:
        emit([{**r, "candidates": [c.to_dict() for c in r["candidates"]]} for r in results] if all_runs
             else [c.to_dict() for c in results[0]["candidates"]], fmt)
        return
    rows = [{"run": r["name"], **c.to_dict(), "evidence": "; ".join(c.evidence)[:160]}
            for r in results for c in r["candidates"][: 1 if all_runs else top]]
    emit(rows, fmt, columns=["run", "agent", "step", "score", "confidence", "role", "evidence"])
    if not rows:
        print("nothing to attribute: the run did not fail" if not all_runs else "no failed agent runs")


@eval_app.command("whowhen")
def eval_whowhen(
    directory: Path = typer.Argument(..., help="A directory of labelled Who&When logs."),
    no_ground_truth: bool = typer.Option(False, "--no-ground-truth", help="Do not use the logs' ground-truth answers."),
    details: bool = typer.Option(False, "--details", help="Include each log's prediction (json)."),
    folds: Optional[int] = typer.Option(None, "--folds", min=2, help="K-fold cross-validation: fit on K-1 folds, "
                                        "score the held-out one."),
    min_confidence: Optional[float] = typer.Option(None, "--min-confidence", min=0.0, max=1.0,
                                                   help="Also report accuracy on the logs answered at least this "
                                                        "confidently (default: the low-confidence threshold)."),
    fmt: Format = FORMAT_OPTION,
) -> None:
    """Agent- and step-level accuracy of attribution on Who&When logs, with trivial baselines (offline)."""
    from tracekit.analysis.whowhen_eval import evaluate_whowhen

    result = evaluate_whowhen(directory, use_ground_truth=not no_ground_truth, details=details, folds=folds,
                              min_confidence=min_confidence)
    if fmt is Format.json:
        emit_object(result, fmt)
        return
    figures = ("n", "agent_accuracy", "step_accuracy", "step_accuracy_substring")
    conf = result["at_confidence"]
    rows = [{"method": "tracekit", **{k: result[k] for k in figures}},
            {"method": f"tracekit, confidence >= {conf['min_confidence']}", **{k: conf[k] for k in figures}}]
    rows += [{"method": name, **{k: b[k] for k in figures}} for name, b in result["baselines"].items()]
    emit(rows, fmt, title=f"Who&When, {result['n']} logs: {result['evaluation']}; ground truth "
                          f"{'used' if result['ground_truth_used'] else 'not used'}; beats every baseline: "
                          f"{'yes' if result['beats_baselines'] else 'no'}")
    print(result["note"])


class IdgFormat(str, enum.Enum):
    dot = "dot"
    json = "json"


@app.command()
def idg(
    run: str = typer.Argument(..., help="Run id, id prefix, or name."),
    fmt: IdgFormat = typer.Option(IdgFormat.json, "--format", "-f", help="dot (Graphviz) or json."),
    min_confidence: float = typer.Option(0.0, "--min-confidence", help="Leave out edges below this confidence (dot)."),
    db: Optional[Path] = DB_OPTION,
) -> None:
    """Print a run's information-dependency graph: steps and edges with provenance and confidence."""
    from tracekit.analysis.attribution import load_idg
    from tracekit.graph.idg import to_dot, to_json
    from tracekit.store.db import connect

    with connect(db, read_only=True) as con:
        graph = load_idg(con, run)
    if fmt is IdgFormat.dot:
        sys.stdout.write(to_dot(graph, min_confidence=min_confidence))
    else:
        emit_object(to_json(graph), Format.json)
