"""Pipelined campaign runner (issue 19): workers never wait for a batch's slowest run, budget stays exact,
no experiment runs twice, and one worker stays reproducible. Real workload processes and a real store."""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import pytest

from tracekit.inject.budget import Observed, make_allocator
from tracekit.inject.campaign import Experiment, load_campaign
from tracekit.inject.runner import _allocate, _Pending, run_campaign
from tracekit.store.campaigns import campaign_runs
from tracekit.store.db import connect

# a worker loop with a back-off: when `w.fetch` fails, the first repeat of a run backs off 4.5 s once (a
# run whose repeats differ in duration, as timing-dependent targets do); every other run takes well under 1 s
WORKLOAD = '''
"""A worker loop with a back-off after a failed fetch (slow in repeat #0 only)."""

import os
import time

import tracekit


@tracekit.trace(name="w.fetch")
def fetch(i: int) -> int:
    try:
        return parse(i)
    except RuntimeError:
        return -1


@tracekit.trace(name="w.parse")
def parse(i: int) -> int:
    return i


@tracekit.trace(name="w.store")
def store(i: int) -> int:
    return i


@tracekit.trace(name="w.audit")
def audit(i: int) -> int:
    return i


@tracekit.trace(name="w.notify")
def notify(i: int) -> int:
    return i


def main() -> int:
    slow = os.environ.get("TRACEKIT_RUN_NAME", "").endswith("#0")
    for i in range(3):
        try:
            value = fetch(i)
        except RuntimeError:
            if slow:
                time.sleep(4.5)
                slow = False
            continue
        try:
            store(value)
        except RuntimeError:
            pass
    for step in (audit, notify):
        try:
            step(0)
        except RuntimeError:
            pass
    return 0
'''


def backoff_campaign(tmp_path: Path, budget: int = 100) -> Path:
    (tmp_path / "backoff_target.py").write_text(WORKLOAD)
    path = tmp_path / "backoff.toml"
    path.write_text(textwrap.dedent(f"""
        [campaign]
        name = "backoff"
        root = "."
        budget = {budget}
        profile_repeats = 2
        injection_repeats = 2
        timeout_s = 30

        [[workload]]
        name = "loop"
        target = "backoff_target:main"

        [faults]
        types = ["raise"]
        exception = "RuntimeError"
    """))
    return path


def stored_runs(db: Path, campaign_id: str) -> list[dict]:
    with connect(db, read_only=True) as con:
        return campaign_runs(con, [campaign_id])


@pytest.mark.slow
def test_a_free_worker_runs_on_while_a_slow_repeat_runs(tmp_path):
    """While w.fetch's slow repeat (4.5 s) runs, the other worker finishes its fast repeat and goes on with
    the next experiments. Lock-step batches (2 experiments = 4 runs, then wait for the slowest) fit at most 3
    runs inside one run's lifetime; the pipelined runner fits at least 4."""
    campaign = load_campaign(backoff_campaign(tmp_path))
    db = tmp_path / "store.duckdb"
    result = run_campaign(campaign, workers=2, strategy="three-phase", db=db, spool_dir=tmp_path / "spool", seed=0)
    runs = [r for r in stored_runs(db, result.campaign_id) if r["attributes"]["mode"] == "inject"]
    assert len(runs) == result.runs - result.profile_runs == 10  # 5 points x 1 fault x 2 repeats
    slow = [r for r in runs if r["attributes"]["point"] == "w.fetch" and r["attributes"]["repeat"] == 0]
    assert len(slow) == 1 and slow[0]["ended_ns"] - slow[0]["started_ns"] > 4.0e9
    inside = [r for r in runs if r is not slow[0]
              and slow[0]["started_ns"] <= r["started_ns"] and r["ended_ns"] <= slow[0]["ended_ns"]]
    assert len(inside) >= 4, [(r["name"], r["started_ns"], r["ended_ns"]) for r in runs]
    assert len({r["attributes"]["experiment"] for r in inside}) >= 3  # experiments allocated after w.fetch's
    assert len(result.trajectory) >= 2 and sum(len(t["batch"]) for t in result.trajectory) == result.experiments == 5


@pytest.mark.slow
def test_two_workers_never_exceed_the_budget_nor_run_an_experiment_twice(tmp_path):
    campaign = load_campaign(backoff_campaign(tmp_path))
    for budget in (7, 9):  # profile 2 runs; 5 and 7 runs left: 2 and 3 experiments of 2 repeats
        db = tmp_path / f"b{budget}.duckdb"
        result = run_campaign(campaign, budget=budget, workers=2, db=db, spool_dir=tmp_path / "spool", seed=1)
        runs = stored_runs(db, result.campaign_id)
        assert result.runs == len(runs) == 2 + 2 * ((budget - 2) // 2) <= budget
        per_experiment = Counter(r["attributes"]["experiment"] for r in runs if r["attributes"]["mode"] == "inject")
        assert set(per_experiment.values()) == {2}, per_experiment  # each experiment exactly its 2 repeats
        assert result.experiments == len(per_experiment) == (budget - 2) // 2


@pytest.mark.slow
def test_one_worker_is_reproducible(tmp_path):
    campaign = load_campaign(backoff_campaign(tmp_path))
    orders = []
    for k in range(2):
        db = tmp_path / f"r{k}.duckdb"
        result = run_campaign(campaign, budget=8, workers=1, db=db, spool_dir=tmp_path / "spool", seed=3)
        orders.append([r["name"].split("/", 1)[1] for r in stored_runs(db, result.campaign_id)])
        analysed = [label for t in result.trajectory for label in t["batch"]]
        assert analysed == list(dict.fromkeys(n.rsplit("#", 1)[0] for n in orders[-1][2:]))  # in run order
    assert orders[0] == orders[1] and len(orders[0]) == 8


def test_pending_experiments_are_never_handed_out_again():
    """The allocator's best choices are pending (allocated, outcome unknown): the free worker gets the next one."""
    exps = [Experiment("w", f"p{i}", "raise", "RuntimeError") for i in range(5)]
    primary = {e.point: "raise" for e in exps}
    priority = {e.point: 1.0 - i / 10 for i, e in enumerate(exps)}
    alloc = make_allocator("three-phase", exps, primary, 0, priority, batch=2)
    first = _allocate(alloc, {}, {}, slots=10)
    assert first == exps[:2]  # the steered batch: the two highest priorities
    pending = {e: _Pending(e, 2) for e in first}
    nxt = _allocate(alloc, {}, pending, slots=10)
    assert nxt and not set(nxt) & set(first) and nxt[0] == exps[2]
    done = {e: Observed() for e in exps[:4]}
    assert _allocate(alloc, done, {exps[4]: _Pending(exps[4], 2)}, slots=10) == []  # only a pending one is left
    assert _allocate(alloc, {**done, exps[4]: Observed()}, {}, slots=10) is None  # nothing left at all
    assert _allocate(alloc, {}, {}, slots=0) is None  # budget spent


def test_the_budgets_last_choices_wait_for_pending_outcomes():
    """With no more slots than pending experiments, a steered allocator's next choice would be final and
    blind: the runner waits for the outcomes instead. Earlier, and for unsteered strategies, it does not."""
    from tracekit.inject.budget import Steering
    from tracekit.inject.runner import _informed_last

    exps = [Experiment("w", f"p{i}", "raise", "RuntimeError") for i in range(6)]
    primary = {e.point: "raise" for e in exps}
    priority = {e.point: 1.0 - i / 10 for i, e in enumerate(exps)}
    steered = make_allocator("three-phase", exps, primary, 0, priority, batch=2)
    pending = {exps[0]: _Pending(exps[0], 2)}
    assert _informed_last(steered, 1, pending) and _allocate(steered, {}, pending, slots=1) == []
    assert not _informed_last(steered, 2, pending)  # a choice left after this one: not held
    two_more = _allocate(steered, {}, pending, slots=2)
    assert two_more and exps[0] not in two_more
    assert not _informed_last(steered, 1, {})  # nothing pending: nothing to wait for
    for strategy in ("breadth", "random", "exhaustive"):  # nothing steers them: waiting buys nothing
        assert not _informed_last(make_allocator(strategy, exps, primary, 0, priority), 1, pending)
    ablated = make_allocator("three-phase", exps, primary, 0, priority, steering=Steering(informed_last=False))
    assert not _informed_last(ablated, 1, pending)
    assert _allocate(ablated, {}, pending, slots=1) == [exps[1]]  # ablated: the free worker takes the next point


def test_a_steered_allocator_hands_out_only_what_the_free_workers_start_now():
    """One free worker and two repeats per experiment: one experiment now, though the steered batch holds
    two -- the second would wait in the queue for a worker, chosen before outcomes that arrive meanwhile.
    Unsteered strategies (and the rule switched off) still hand out the whole batch."""
    from tracekit.inject.budget import Steering
    from tracekit.inject.runner import _startable

    exps = [Experiment("w", f"p{i}", "raise", "RuntimeError") for i in range(6)]
    primary = {e.point: "raise" for e in exps}
    priority = {e.point: 1.0 - i / 10 for i, e in enumerate(exps)}
    steered = make_allocator("three-phase", exps, primary, 0, priority, batch=2)
    assert _startable(steered, free=1, repeats=2) == 1 and _startable(steered, free=4, repeats=2) == 2
    assert _startable(steered, free=3, repeats=1) == 3
    assert _allocate(steered, {}, {}, slots=10, start=_startable(steered, 1, 2)) == exps[:1]
    assert _allocate(steered, {}, {}, slots=10, start=None) == exps[:2]
    off = make_allocator("three-phase", exps, primary, 0, priority, steering=Steering(start_late=False))
    assert _startable(off, 1, 2) is None
    for strategy in ("breadth", "random", "exhaustive"):
        assert _startable(make_allocator(strategy, exps, primary, 0, priority), 1, 2) is None
