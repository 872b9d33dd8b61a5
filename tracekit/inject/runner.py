"""The campaign runner: profile runs, point discovery, budgeted injection batches, ingest, and the final analysis.

The runner is the store's single writer for a campaign: workers (local pool or Ray) only execute
runs and leave spool files. Injection runs are pipelined (`_Session.steer`): every worker is kept
busy; when all repeats of an experiment are back, a background thread ingests them and runs fault
causality analysis while the workers go on, and the allocator is asked for more with the outcomes
known so far. The runner stores the campaign row and its findings (one per cascade) at the end.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict, deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tracekit.capture.setup import new_id
from tracekit.config import db_path, spool_root
from tracekit.errors import ConfigError
from tracekit.inject.budget import Allocator, Observed, Outcomes, make_allocator
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
    trajectory: list[dict[str, Any]] = field(default_factory=list)  # runs spent -> cycles found, per analysis
    plan: dict[str, Any] = field(default_factory=dict)  # points found by the profile runs, experiments, budgets
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "campaign_id": self.campaign_id, "name": self.name, "strategy": self.strategy, "budget": self.budget,
            "runs": self.runs, "profile_runs": self.profile_runs, "experiments": self.experiments,
            "outcomes": dict(self.outcomes), "edges": len(self.report.get("edges", [])),
            "chains": self.report.get("chains", []), "cycles": self.report.get("cycles", []),
            "trajectory": self.trajectory, "seconds": round(self.seconds, 3),
            "experiments_possible": self.plan.get("experiments"), "exhaustive_budget": self.plan.get("exhaustive_budget"),
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
            timeout_s=self.campaign.timeout_s, workload=workload_name, modules=self.campaign.modules,
            attributes={k: v for k, v in attributes.items() if v is not None},
        )

    def execute(self, specs: list[RunSpec], result: CampaignResult) -> None:
        """Run `specs` and ingest their spool files in one pass when all ended: one store connection per
        batch, not per run (the runner is the serial part of a campaign; see bench_campaign --breakdown)."""
        from tracekit.ingest import ingest_paths

        run_dirs: list[Path] = []
        for outcome in self.executor.run_all(specs):
            self.count(outcome, run_dirs, result)
        if run_dirs:
            ingest_paths(run_dirs, self.db)

    def steer(self, allocator: Allocator, budget: int, result: CampaignResult) -> None:
        """Injection runs, pipelined: every worker busy while earlier experiments are ingested and analysed.

        Runs of allocated experiments go to free workers in allocation order. When every repeat of an
        experiment is back, the analyst thread (the store's only writer meanwhile) ingests its runs and,
        unless allocated runs are still waiting for a worker (the allocator will not be asked before they
        start: exhaustive, breadth and random hand out everything at once), recomputes what each
        experiment caused. When a worker is free and no allocated run waits, the
        allocator is asked again with the outcomes known so far (a steered one for only as many
        experiments as the free workers start now: `_startable`); experiments still pending (allocated,
        outcome not known) are never handed out twice. Only when no run is executing does the runner
        wait for the analysis in progress before asking — so with one worker the allocator always sees
        every earlier outcome and a seeded campaign is reproducible; with several, what it sees depends
        on which runs finished first. Budget: runs allocated never exceed `budget`.
        """
        repeats = self.campaign.injection_repeats
        workers = getattr(self.executor, "workers", 1)
        outcomes: Outcomes = {}
        pending: dict[Experiment, _Pending] = {}  # allocated, outcome not known yet
        queue: deque[tuple[Experiment, RunSpec]] = deque()  # allocated runs no worker has yet
        running: dict[Future[RunResult], Experiment] = {}
        ready: list[Experiment] = []  # every run back, not handed to the analyst yet
        unanalysed: list[Experiment] = []  # ingested, outcome not computed yet
        analysing: Future[tuple[list[Experiment], dict[str, Observed] | None, list[str]]] | None = None
        committed = result.runs  # runs done or allocated
        spent = False  # the budget (or the allocator) has nothing more
        asked_at: tuple[int, int] | None = None  # (outcomes, pending) of the last answer with nothing new
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracekit-analyst") as analyst:
            while True:
                while queue and len(running) < workers:
                    exp, spec = queue.popleft()
                    running[self.executor.submit(spec)] = exp
                if analysing is None and (ready or (unanalysed and not running)):
                    analysing = analyst.submit(self._observe, [pending[e] for e in ready], not queue or not running)
                    ready = []
                if (not spent and not queue and len(running) < workers and (running or analysing is None)
                        and asked_at != (len(outcomes), len(pending))):
                    new = _allocate(allocator, outcomes, pending, (budget - committed) // repeats,
                                    start=_startable(allocator, workers - len(running), repeats))
                    if new is None:
                        spent = True
                    elif not new:
                        asked_at = (len(outcomes), len(pending))
                    for e in new or ():
                        pending[e] = _Pending(e, repeats)
                        queue.extend((e, self.spec(e.workload, e.plan(self.campaign_id), e.label, k))
                                     for k in range(repeats))
                        committed += repeats
                    if new:
                        continue
                if not running and analysing is None and not ready and not queue and not unanalysed:
                    return
                done, _ = wait([*running, *([analysing] if analysing else [])], return_when=FIRST_COMPLETED)
                if analysing in done:
                    exps, seen, cycles = analysing.result()
                    analysing = None
                    unanalysed += exps
                    if seen is not None:
                        for e in unanalysed:
                            outcomes[e] = seen.get(e.label, Observed())
                            del pending[e]
                        result.experiments += len(unanalysed)
                        result.trajectory.append({"runs": result.runs, "experiments": result.experiments,
                                                  "cycles": cycles, "batch": [e.label for e in unanalysed]})
                        unanalysed = []
                for fut in [f for f in running if f in done]:  # in submission order
                    exp = running.pop(fut)
                    self.count(fut.result(), pending[exp].run_dirs, result)
                    pending[exp].left -= 1
                    if not pending[exp].left:
                        ready.append(exp)

    def count(self, outcome: RunResult, run_dirs: list[Path], result: CampaignResult) -> None:
        run_dirs.append(materialize(outcome, self.root))
        result.runs += 1
        result.outcomes[outcome.outcome] += 1
        self.done += 1
        if self.progress:
            self.progress(self.done, self.total, _label(outcome))

    def _observe(self, done: list[_Pending],
                 analyse: bool) -> tuple[list[Experiment], dict[str, Observed] | None, list[str]]:
        """(analyst thread) Ingest the runs of `done` experiments in one pass; with `analyse`, what every
        experiment caused and the cycles known (else None and [])."""
        from tracekit.analysis.causality import analyze_experiments
        from tracekit.graph.propagation import build_graph, find_cycles, to_names
        from tracekit.ingest import ingest_paths
        from tracekit.store.db import connect

        if done:
            ingest_paths([d for p in done for d in p.run_dirs], self.db)
        if not analyse:
            return [p.experiment for p in done], None, []
        with connect(self.db, read_only=True) as con:
            analysis = analyze_experiments(con, [self.campaign_id])
            seen = observed(con, analysis)
        return [p.experiment for p in done], seen, to_names(find_cycles(build_graph(analysis.edges)))


@dataclass
class _Pending:
    """An allocated experiment: its runs not back yet, and the run directories of those that are."""

    experiment: Experiment
    left: int
    run_dirs: list[Path] = field(default_factory=list)


def _runner_rule(allocator: Allocator, rule: str) -> bool:
    """Whether `allocator` is steered (three-phase) with the runner's `Steering` rule `rule` switched on."""
    steering = getattr(allocator, "steering", None)
    return steering is not None and bool(getattr(steering, rule))


def _informed_last(allocator: Allocator, slots: int, pending: dict[Experiment, Any]) -> bool:
    """Whether a steered allocator's next choices are among the budget's last: no more slots than
    experiments whose outcome is pending. Those choices wait for the outcomes instead of being made blind.

    Early on, a blind choice is the next breadth point, which the allocator would pick anyway; the last
    ones are final, and an outcome still pending is the one most likely to redirect them: a cascade in
    progress makes its runs the slowest (a snapshot storm's runs took 10 s against 1.4 s for the others).
    Costs a worker's idle time at most once per pending experiment, at the end of a tight budget."""
    return bool(_runner_rule(allocator, "informed_last") and pending and slots <= len(pending))


def _startable(allocator: Allocator, free: int, repeats: int) -> int | None:
    """How many experiments a steered allocator hands out when `free` workers are idle: as many as those
    workers start now (an experiment has `repeats` runs). A choice made earlier would wait in the queue
    for a worker, blind to the outcomes that arrive meanwhile (replica: a breadth pick queued beside a
    steered one ran 2 s later, after the outcome that named the storm's next step had come in).
    None (no limit) for strategies nothing steers: they hand out everything at once."""
    return max(1, -(-free // max(1, repeats))) if _runner_rule(allocator, "start_late") else None


def _allocate(allocator: Allocator, outcomes: Outcomes, pending: dict[Experiment, _Pending],
              slots: int, start: int | None = None) -> list[Experiment] | None:
    """Up to `slots` experiments neither run nor pending (at most `start` of them, when given: see
    `_startable`); None when nothing is left to run at all.

    The allocator is first asked with the outcomes known so far and its pending choices are dropped;
    when it offers only pending ones, it is asked again with each pending experiment marked as run
    with no outcome yet (`Observed()`), so a free worker gets the next choice instead of waiting --
    unless these are a steered allocator's last choices (`_informed_last`): then nothing while any
    outcome is pending.
    """
    if slots <= 0:
        return None
    if _informed_last(allocator, slots, pending):
        return []
    take = slots if start is None else min(slots, start)
    offered = allocator.next_batch(outcomes, slots + len(pending))
    new = [e for e in dict.fromkeys(offered) if e not in outcomes and e not in pending][:take]
    if new or not pending:
        return new or None
    if offered:
        again = allocator.next_batch({**outcomes, **{e: Observed() for e in pending}}, slots)
        new = [e for e in dict.fromkeys(again) if e not in outcomes and e not in pending][:take]
    return new  # [] with experiments pending: their outcomes may call for more (a confirmation)


def _label(outcome: RunResult) -> str:
    return f"{outcome.run_id[:8]} {outcome.outcome}"


def _points(con: Any, run_ids: list[str], campaign: Campaign | None = None) -> list[PointInfo]:
    """The points the profile runs `run_ids` reached, with their profile signals (and, for points of
    `[points] modules`, the exception and boolean-ness read from the source)."""
    from dataclasses import replace

    from tracekit.inject.profile import point_infos
    from tracekit.store.campaigns import reached_points, run_counts
    from tracekit.store.queries import list_spans

    spans = [list_spans(con, run_id, limit=200_000) for run_id in run_ids]
    infos = point_infos(reached_points(con, run_ids), run_counts(con, run_ids), len(run_ids), spans)
    if campaign is None or not campaign.modules:
        return infos
    from tracekit.inject.modules import static_points

    static = static_points(campaign.modules, [campaign.root])
    out = []
    for info in infos:
        known = static.get(info.point)
        if known is not None:
            info = replace(info, raises=info.raises or known.exception,
                           returns=info.returns or ("bool" if known.boolean else None))
        out.append(info)
    return out


@dataclass
class Discovery:
    """What profile runs found: candidate experiments, each point's primary fault and breadth priority."""

    points: list[PointInfo]
    candidates: list[Experiment]
    primary: dict[str, str]
    priority: dict[str, float]


def plan_experiments(con: Any, campaign: Campaign, campaign_id: str, seed: int) -> Discovery:
    from tracekit.inject.profile import priorities
    from tracekit.store.campaigns import campaign_runs

    runs = campaign_runs(con, [campaign_id])
    infos_all: list[PointInfo] = []
    candidates: list[Experiment] = []
    primary: dict[str, str] = {}
    for w in campaign.workloads:
        ids = [r["run_id"] for r in runs
               if r["attributes"].get("test") == w.name and r["attributes"].get("mode") == "profile"]
        infos = _points(con, ids, campaign)
        infos_all.extend(infos)
        candidates.extend(candidate_experiments(campaign, w.name, infos))
        for info in infos:
            primary.setdefault(info.point, primary_fault(info))
    wanted = [i for i in infos_all if campaign.wants(i.point)]
    return Discovery(wanted, candidates, primary, priorities(wanted, seed=seed))


def rose_in_some(profile: list[int], fired: list[int], min_rise: float) -> bool:
    """Whether some injection repeat's count is above every profile repeat's and at least `min_rise`
    above their mean (a partial S+ consequence: worth a confirmation run).

    >>> rose_in_some([129, 129, 129], [130, 129], 0.05), rose_in_some([4, 4, 4], [5, 4], 0.05)
    (False, True)
    """
    from tracekit.analysis.causality import clears_floor

    return any(n > max(profile) and clears_floor(n, profile, min_rise) for n in fired)


def observed(con: Any, analysis: Any) -> dict[str, Observed]:
    """Per experiment label: consequences in every repeat (FCA) and those in some repeats only.

    A partial consequence is a signature absent from every profile repeat and present in at least
    one but not all injection repeats, or a count above every profile repeat's in some repeats only
    (by at least FCA's `min_rise` of the profile mean: the noise floor an S+ edge needs too).
    """
    from tracekit.analysis.causality import DEFAULTS, Consequence, consequence_node, observations

    run_ids = sorted({r for x in analysis.experiments for r in x.fired_runs}
                     | {r for ids in analysis.profile_runs.values() for r in ids})
    obs = observations(con, run_ids)
    out: dict[str, Observed] = {}
    for x in analysis.experiments:
        caused = x.consequence_names()
        prof = [obs[r] for r in analysis.profile_runs.get((x.campaign, x.test), []) if r in obs]
        fired = [obs[r] for r in x.fired_runs if r in obs]
        partial: set[str] = set()
        if prof and fired:
            base = frozenset().union(*(r.signatures for r in prof))
            for sig in frozenset().union(*(r.signatures for r in fired)) - base:
                op, outcome, parent = sig
                partial.add(consequence_node(Consequence("E", op, outcome, parent)).name)
            for key in set().union(*(r.counts for r in fired)):
                if rose_in_some([r.counts.get(key, 0) for r in prof], [r.counts.get(key, 0) for r in fired],
                                DEFAULTS.min_rise):
                    partial.add(consequence_node(Consequence("S+", key[1], "count", key[0])).name)
        out[x.experiment] = Observed(caused, frozenset(partial - caused))
    return out


def resolve_unambiguous(con: Any, ref: str) -> str:
    """A campaign id from an id, a unique id prefix or a name that only one campaign has.

    Several campaigns of one name are refused with the candidates listed (newest first), instead of
    silently taking the newest.
    """
    from tracekit.errors import NotFoundError
    from tracekit.store.campaigns import list_campaigns, resolve_campaign

    named = [c for c in list_campaigns(con, 1_000_000) if c["name"] == ref and c["campaign_id"] != ref]
    if len(named) > 1:
        listed = ", ".join(f"{c['campaign_id'][:12]} ({c['strategy']}, {c['status']})" for c in named[:10])
        raise NotFoundError(f"{len(named)} campaigns are named {ref!r}: give an id or id prefix: {listed}")
    return resolve_campaign(con, ref)


def run_campaign(
    campaign: Campaign, *, budget: int | None = None, workers: int = 1, executor: str = "local",
    address: str | None = None, strategy: str | None = None, db: str | Path | None = None,
    spool_dir: str | Path | None = None, progress: Progress | None = None, seed: int | None = None,
    dry_run: bool = False,
) -> CampaignResult:
    """Run a campaign end to end and return its summary and report (also stored in the store).

    With `dry_run`, only the profile runs execute: the result's `plan` lists the points they found
    (with their breadth priority), the number of experiments and the exhaustive budget.
    """
    from tracekit.analysis.causality import analyze_campaign, report_findings
    from tracekit.store.campaigns import finish_campaign, insert_campaign
    from tracekit.store.db import connect
    from tracekit.store.findings import write_findings

    budget = campaign.budget if budget is None else budget
    strategy = strategy or campaign.strategy
    seed = campaign.seed if seed is None else seed
    repeats = campaign.injection_repeats
    profile_cost = campaign.profile_repeats * len(campaign.workloads)
    if not dry_run and budget < profile_cost + repeats:
        raise ConfigError(
            f"budget {budget} runs is too small: the profile runs alone take {profile_cost} and one "
            f"experiment {repeats}; give --budget {profile_cost + repeats} or more"
        )
    store = db_path(db).absolute()
    root = spool_root(spool_dir)
    campaign_id = new_id()
    started = time.perf_counter()
    result = CampaignResult(campaign_id, campaign.name, "dry-run" if dry_run else strategy, budget)
    with connect(store) as con:
        insert_campaign(con, {
            "campaign_id": campaign_id, "name": campaign.name, "file": str(campaign.path),
            "strategy": result.strategy, "budget": budget, "executor": executor, "started_ns": time.time_ns(),
            "config": campaign.config(),
        })
    pool = make_executor(executor, workers, address)
    session = _Session(campaign, campaign_id, pool, store, root, progress, profile_cost if dry_run else budget)
    status = "failed"
    try:
        session.execute([
            session.spec(w.name, Plan(campaign=campaign_id, test=w.name, mode="profile"), f"{w.name}/profile", i)
            for w in campaign.workloads for i in range(campaign.profile_repeats)
        ], result)
        result.profile_runs = result.runs
        with connect(store, read_only=True) as con:
            found = plan_experiments(con, campaign, campaign_id, seed)
        result.plan = _plan_summary(found, campaign, profile_cost)
        if dry_run:
            status = "dry-run"
            return result
        allocator = make_allocator(strategy, found.candidates, found.primary, seed, found.priority, batch=workers,
                                   points=found.points)
        session.steer(allocator, budget, result)
        with connect(store, read_only=True) as con:
            result.report = analyze_campaign(con, [campaign_id])
        status = "done"
    finally:
        pool.close()
        result.seconds = time.perf_counter() - started
        with connect(store) as con:
            finish_campaign(con, campaign_id, status=status, ended_ns=time.time_ns(), summary=result.summary())
            if result.report:
                write_findings(con, campaign_id, "causality", report_findings(result.report))
    return result


def _plan_summary(found: Discovery, campaign: Campaign, profile_cost: int) -> dict[str, Any]:
    from tracekit.inject.profile import point_depth, tie_break

    order = sorted(found.points, key=lambda i: (-found.priority.get(i.point, 0.0), tie_break(i.point)))
    depth = point_depth(found.points)  # where three-phase probes for chains: the deepest first
    return {
        "points": [{"point": i.point, "kind": i.kind, "priority": round(found.priority.get(i.point, 0.0), 3),
                    "primary": found.primary.get(i.point), "calls_per_run": round(i.calls, 2), "loop": i.loop,
                    "returns": i.returns, "raises": i.raises, "points_below": i.below, "spread": i.spread,
                    "depth": depth.get(i.point, 0), "callers": [p for p in i.parents if p is not None],
                    "spans_within": list(i.inside)}
                   for i in order],
        "experiments": len(found.candidates),
        "exhaustive_budget": profile_cost + len(found.candidates) * campaign.injection_repeats,
        "one_third_budget": profile_cost + (len(found.candidates) // 3) * campaign.injection_repeats,
    }
