"""Budget allocation over candidate experiments: CSnake's three phases, uniform random, and exhaustive.

An allocator hands out batches of experiments; after each batch the runner tells it what each
experiment caused (the names of its consequences), so later phases can spend where new chains are
likely. Budgets count runs: an experiment costs ``injection_repeats`` runs.

* **breadth** — every point once, with its primary fault (negate a check, delay a loop, else raise);
* **uniqueness** — cluster points by the Jaccard distance of what they caused and give every cluster
  the same share, so a point with consequences nobody else has is not drowned by many look-alikes;
  clusters and faults that were observed as a consequence somewhere but not injected yet come
  first (injecting them is what lets causal stitching extend a chain), then fault types not yet
  tried at a point before more variants (durations) of one already tried;
* **diversity** — points whose consequences changed with the workload, or that caused something and
  were reached by another workload, get their remaining faults there.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Protocol

from tracekit.inject.campaign import Experiment

Outcomes = dict[Experiment, frozenset[str]]


class Allocator(Protocol):
    name: str

    def next_batch(self, outcomes: Outcomes, slots: int) -> list[Experiment]:
        """Up to `slots` experiments not yet run; [] when there is nothing left worth running."""
        ...


class Exhaustive:
    name = "exhaustive"

    def __init__(self, candidates: list[Experiment]) -> None:
        self.candidates = list(dict.fromkeys(candidates))

    def next_batch(self, outcomes: Outcomes, slots: int) -> list[Experiment]:
        return [e for e in self.candidates if e not in outcomes][:slots]


class UniformRandom:
    name = "random"

    def __init__(self, candidates: list[Experiment], seed: int = 0) -> None:
        self.order = list(dict.fromkeys(candidates))
        random.Random(seed).shuffle(self.order)

    def next_batch(self, outcomes: Outcomes, slots: int) -> list[Experiment]:
        return [e for e in self.order if e not in outcomes][:slots]


def jaccard_distance(a: frozenset[str], b: frozenset[str]) -> float:
    """1 - |a ∩ b| / |a ∪ b|; two empty sets are identical (distance 0).

    >>> jaccard_distance(frozenset("ab"), frozenset("bc"))
    0.6666666666666667
    """
    union = a | b
    return 0.0 if not union else 1.0 - len(a & b) / len(union)


def cluster_points(effects: dict[str, frozenset[str]], threshold: float = 0.5) -> list[list[str]]:
    """Average-linkage clusters of points whose consequence sets are within `threshold` Jaccard distance."""
    points = sorted(effects)
    if len(points) <= 1:
        return [points] if points else []
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    n = len(points)
    dist = [[jaccard_distance(effects[points[i]], effects[points[j]]) for j in range(n)] for i in range(n)]
    labels = fcluster(linkage(squareform(dist, checks=False), method="average"), t=threshold, criterion="distance")
    groups: dict[int, list[str]] = defaultdict(list)
    for point, label in zip(points, labels):
        groups[int(label)].append(point)
    return sorted(groups.values())


class ThreePhase:
    """Breadth, then uniqueness (Jaccard clusters share the budget), then diversity across workloads."""

    name = "three-phase"

    def __init__(self, candidates: list[Experiment], primary: dict[str, str], *, threshold: float = 0.5) -> None:
        self.candidates = list(dict.fromkeys(candidates))
        self.primary = primary  # point -> its primary fault type
        self.threshold = threshold
        self.phase = 0

    def _effects(self, outcomes: Outcomes) -> dict[str, frozenset[str]]:
        effects: dict[str, set[str]] = defaultdict(set)
        for exp, names in outcomes.items():
            effects[exp.point] |= names
        return {p: frozenset(v) for p, v in effects.items()}

    def _breadth(self, outcomes: Outcomes) -> list[Experiment]:
        chosen: dict[str, Experiment] = {}
        for exp in self.candidates:
            if exp.point not in chosen and exp.fault == self.primary.get(exp.point, exp.fault):
                chosen[exp.point] = exp
        for exp in self.candidates:  # a point whose primary fault the campaign does not allow
            chosen.setdefault(exp.point, exp)
        return [e for e in chosen.values() if e not in outcomes]

    def _uniqueness(self, outcomes: Outcomes, slots: int) -> list[Experiment]:
        effects = self._effects(outcomes)
        # faults observed as a consequence that no experiment has injected yet (under any variant)
        tried = {e.fault_name for e in outcomes}  # a fault type already injected at a point (any variant)
        seen = (frozenset().union(*outcomes.values()) if outcomes else frozenset()) - tried
        clusters = cluster_points(effects, self.threshold)
        if not clusters:
            return []
        share = max(1, slots // len(clusters))
        batch: list[Experiment] = []
        def stitchable(cluster: list[str]) -> bool:
            return any(e.point in cluster and e.fault_name in seen and e not in outcomes for e in self.candidates)

        # clusters holding a fault already seen as a consequence first, then the most consequential
        order = sorted(clusters, key=lambda c: (not stitchable(c), -max(len(effects[p]) for p in c), c))
        for members in order:
            members = sorted(members, key=lambda p: (-len(effects[p]), p))
            queues = [sorted((e for e in self.candidates if e.point == p and e.workload == self._home(p, outcomes)
                              and e not in outcomes),
                             key=lambda e: (e.fault_name not in seen, e.fault_name in tried)) for p in members]
            picked: list[Experiment] = []
            while len(picked) < share and any(queues):
                for q in queues:
                    if q and len(picked) < share:
                        picked.append(q.pop(0))
            batch.extend(picked)
        return batch[:slots]

    def _home(self, point: str, outcomes: Outcomes) -> str:
        for exp in outcomes:
            if exp.point == point:
                return exp.workload
        return next(e.workload for e in self.candidates if e.point == point)

    def _diversity(self, outcomes: Outcomes, slots: int) -> list[Experiment]:
        by_point_workload: dict[tuple[str, str], set[str]] = defaultdict(set)
        for exp, names in outcomes.items():
            by_point_workload[(exp.point, exp.workload)] |= names
        workloads_of: dict[str, set[str]] = defaultdict(set)
        for exp in self.candidates:
            workloads_of[exp.point].add(exp.workload)
        score: dict[str, int] = {}
        for point, wls in workloads_of.items():
            seen = [frozenset(by_point_workload[(point, w)]) for w in wls if (point, w) in by_point_workload]
            distinct = len(set(seen))
            caused = len(frozenset().union(*seen)) if seen else 0
            untried = len([w for w in wls if (point, w) not in by_point_workload])
            score[point] = (distinct * 2 + (1 if caused else 0)) * (1 if untried or distinct > 1 else 0) + caused
        tried = {e.fault_name for e in outcomes}
        ranked = sorted((e for e in self.candidates if e not in outcomes),
                        key=lambda e: (e.fault_name in tried, -score.get(e.point, 0),
                                       (e.point, e.workload) in by_point_workload))
        return ranked[:slots]

    def next_batch(self, outcomes: Outcomes, slots: int) -> list[Experiment]:
        if slots <= 0:
            return []
        if self.phase == 0:
            self.phase = 1
            batch = self._breadth(outcomes)[:slots]
            if batch:
                return batch
        if self.phase == 1:
            self.phase = 2
            batch = self._uniqueness(outcomes, max(1, (slots * 2) // 3))
            if batch:
                return batch
        self.phase = 3
        return self._diversity(outcomes, slots)


def make_allocator(strategy: str, candidates: list[Experiment], primary: dict[str, str], seed: int = 0) -> Allocator:
    if strategy == "exhaustive":
        return Exhaustive(candidates)
    if strategy == "random":
        return UniformRandom(candidates, seed)
    return ThreePhase(candidates, primary)
