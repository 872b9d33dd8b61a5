"""The campaign runner: profile runs, point discovery, budgeted injection batches, ingest, and the final analysis.

The runner is the store's single writer for a campaign: workers (local pool or Ray) only execute
runs and leave spool files; the runner ingests each run as it finishes, runs fault causality
analysis after each batch so the allocator can steer, and stores the campaign row and its
findings (one per cycle and chain) at the end.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tracekit.capture.setup import new_id
from tracekit.config import db_path, spool_root
from tracekit.errors import ConfigError
from tracekit.inject.budget import Outcomes, make_allocator
from tracekit.inject.campaign import Campaign, Experiment, PointInfo, candidate_experiments, primary_fault
from tracekit.inject.execute import Executor, RunResult, RunSpec, make_executor, materialize
from tracekit.inject.runtime import Plan

Progress = Callable[[int, int, str], None]


@dataclass
class CampaignResult:
    campaign_id: str
    name: str
    strategy: str
    budget: int
    runs: int = 0
    profile_runs: int = 0
    experiments: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    report: dict[str, Any] = field(default_factory=dict)
    trajectory: list[dict[str, Any]] = field(default_factory=list)  # runs spent -> cycles found, per batch
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "campaign_id": self.campaign_id, "name": self.name, "strategy": self.strategy, "budget": self.budget,
            "runs": self.runs, "profile_runs": self.profile_runs, "experiments": self.experiments,
            "outcomes": dict(self.outcomes), "edges": len(self.report.get("edges", [])),
            "chains": self.report.get("chains", []), "cycles": self.report.get("cycles", []),
            "trajectory": self.trajectory, "seconds": round(self.seconds, 3),
        }


class _Session:
    def __init__(self, campaign: Campaign, campaign_id: str, executor: Executor, db: Path, root: Path,
                 progress: Progress | None, total: int) -> None:
        self.campaign, self.campaign_id, self.executor = campaign, campaign_id, executor
        self.db, self.root, self.progress, self.total = db, root, progress, total
        self.done = 0

    def spec(self, workload_name: str, plan: Plan, label: str, repeat: int) -> RunSpec:
        workload = next(w for w in self.campaign.workloads if w.name == workload_name)
        attributes = {
            "campaign": self.campaign_id, "campaign_name": self.campaign.name, "test": workload_name,
            "mode": plan.mode, "repeat": repeat, "experiment": label, "point": plan.point, "fault": plan.fault,
            "exception": plan.exception, "delay_ms": plan.delay_ms or None, "busy": plan.busy or None,
        }
        return RunSpec(
            run_id=new_id(), name=f"{self.campaign.name}/{label}#{repeat}", spool_root=str(self.root),
            workdir=str(self.campaign.root), argv=tuple(workload.argv(sys.executable)), plan_json=plan.to_json(),
            timeout_s=self.campaign.timeout_s, workload=workload_name,
            attributes={k: v for k, v in attributes.items() if v is not None},
        )

    def execute(self, specs: list[RunSpec], result: CampaignResult) -> None:
        from tracekit.store.ingest import ingest_paths

        for outcome in self.executor.run_all(specs):
            run_dir = materialize(outcome, self.root)
            ingest_paths([run_dir], self.db)
            result.runs += 1
            result.outcomes[outcome.outcome] += 1
            self.done += 1
            if self.progress:
                self.progress(self.done, self.total, _label(outcome))


def _label(outcome: RunResult) -> str:
    return f"{outcome.run_id[:8]} {outcome.outcome}"


def _points(con: Any, run_ids: list[str]) -> list[PointInfo]:
    from tracekit.store.campaigns import reached_points, run_counts

    calls: dict[tuple[str | None, str], int] = defaultdict(int)
    totals: dict[str, int] = defaultdict(int)
    for r in run_counts(con, run_ids):
        calls[(r["parent"], r["op"])] += int(r["n"])
        totals[r["op"]] += int(r["n"])
    loops = {op for (parent, op), n in calls.items() if parent is not None and n > totals.get(parent, 0)}
    return [
        PointInfo(r["point"], r["kind"], tuple(r["parents"] or ()), r["returns"], r["raises"], r["point"] in loops)
        for r in reached_points(con, run_ids)
    ]


def run_campaign(
    campaign: Campaign, *, budget: int | None = None, workers: int = 1, executor: str = "local",
    address: str | None = None, strategy: str | None = None, db: str | Path | None = None,
    spool_dir: str | Path | None = None, progress: Progress | None = None, seed: int | None = None,
) -> CampaignResult:
    """Run a campaign end to end and return its summary and report (also stored in the store)."""
    from tracekit.analysis.causality import analyze_campaign, analyze_experiments
    from tracekit.store.campaigns import campaign_runs, finish_campaign, insert_campaign
    from tracekit.store.db import connect
    from tracekit.store.findings import write_findings

    budget = campaign.budget if budget is None else budget
    strategy = strategy or campaign.strategy
    repeats = campaign.injection_repeats
    profile_cost = campaign.profile_repeats * len(campaign.workloads)
    if budget < profile_cost + repeats:
        raise ConfigError(
            f"budget {budget} runs is too small: the profile runs alone take {profile_cost} and one "
            f"experiment {repeats}; give --budget {profile_cost + repeats} or more"
        )
    store = db_path(db).absolute()
    root = spool_root(spool_dir)
    campaign_id = new_id()
    started = time.perf_counter()
    result = CampaignResult(campaign_id, campaign.name, strategy, budget)
    with connect(store) as con:
        insert_campaign(con, {
            "campaign_id": campaign_id, "name": campaign.name, "file": str(campaign.path), "strategy": strategy,
            "budget": budget, "executor": executor, "started_ns": time.time_ns(), "config": campaign.config(),
        })
    pool = make_executor(executor, workers, address)
    session = _Session(campaign, campaign_id, pool, store, root, progress, budget)
    status = "failed"
    try:
        session.execute([
            session.spec(w.name, Plan(campaign=campaign_id, test=w.name, mode="profile"), f"{w.name}/profile", i)
            for w in campaign.workloads for i in range(campaign.profile_repeats)
        ], result)
        result.profile_runs = result.runs
        candidates: list[Experiment] = []
        primary: dict[str, str] = {}
        with connect(store, read_only=True) as con:
            runs = campaign_runs(con, [campaign_id])
            for w in campaign.workloads:
                ids = [r["run_id"] for r in runs if r["attributes"].get("test") == w.name]
                infos = _points(con, ids)
                candidates.extend(candidate_experiments(campaign, w.name, infos))
                for info in infos:
                    primary.setdefault(info.point, primary_fault(info))
        allocator = make_allocator(strategy, candidates, primary, campaign.seed if seed is None else seed)
        outcomes: Outcomes = {}
        while True:
            slots = (budget - result.runs) // repeats
            batch = [e for e in allocator.next_batch(outcomes, slots) if e not in outcomes][:slots]
            if not batch:
                break
            session.execute([
                session.spec(e.workload, e.plan(campaign_id), e.label, k) for e in batch for k in range(repeats)
            ], result)
            result.experiments += len(batch)
            with connect(store, read_only=True) as con:
                analysis = analyze_experiments(con, [campaign_id])
                report = analyze_campaign(con, [campaign_id])
            by_label = {x.experiment: x.consequence_names() for x in analysis.experiments}
            for e in batch:
                outcomes[e] = by_label.get(e.label, frozenset())
            result.trajectory.append({"runs": result.runs, "experiments": result.experiments,
                                      "cycles": report["cycles"], "chains": report["chains"]})
        with connect(store, read_only=True) as con:
            result.report = analyze_campaign(con, [campaign_id])
        status = "done"
    finally:
        pool.close()
        result.seconds = time.perf_counter() - started
        with connect(store) as con:
            finish_campaign(con, campaign_id, status=status, ended_ns=time.time_ns(), summary=result.summary())
            if result.report:
                write_findings(con, campaign_id, "causality", _findings(result.report))
    return result


def _findings(report: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for cyc in report.get("cycle_evidence", []):
        out.append({"kind": "cycle", "subject": " -> ".join(cyc["faults"]), "score": 1.0, **cyc})
    for chain in report.get("chain_evidence", []):
        out.append({"kind": "chain", "subject": " -> ".join(chain["faults"]), "score": 0.5, **chain})
    return out
