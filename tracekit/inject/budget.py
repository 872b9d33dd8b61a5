"""Budget allocation over candidate experiments: steered three-phase, breadth-only, uniform random, exhaustive.

An allocator hands out batches of experiments; after each batch the runner tells it what each
experiment caused (`Observed`: consequences seen in every repeat, and those seen in some repeats
only), so later batches spend where new chains are likely. Budgets count runs: an experiment costs
``injection_repeats`` runs.

**three-phase** (CSnake's breadth, uniqueness, diversity — steered from the first results on):

1. *breadth* — every point once with its primary fault, in the order of the profile priority
   (tracekit.inject.profile: hot path, loop feeders, call-graph position — points beneath, depth —,
   timing slack; ties by a seeded hash, never by name), in small batches so fault causality analysis
   steers from the first results on. Beside the first of it, one exception where chains start: at
   the most deeply nested point (`profile.point_depth`: traced callers, on top of the spans around the
   topmost of them in any process; of equally deep points, the one more of whose depth is recorded
   callers), when an exception there can leave two frames or more (a chain has two links). A probe
   whose exception left no frame showed the depth wrong there: the next deepest is probed;
2. *uniqueness* — before more breadth, faults some experiment caused and nobody injected yet, as the
   fault type that was observed: first the next frame of each exception path (of the exceptions one
   experiment caused, the innermost: the outer ones follow from injecting it), then new behaviour (a
   flipped check, an exception the system raised itself under a delay or a flip), then "more calls"
   (delays); within each, one that may close a loop or extend a longer known path first. An
   exception at a point nothing runs around can only end the process: it waits for breadth. An
   injectable consequence seen in some but not all repeats "needs more repeats": its experiment is
   run once more (`Experiment.attempt`) instead of being dropped;
3. *diversity* — then the rest of the caused faults, exceptions at the other nested points (deepest
   first), the other fault types and variants of points that caused something (points whose
   consequences nobody else has first), then of the rest, by priority.

Every choice is recomputed from the outcomes given (no record of what was handed out), so a
pipelined runner may ask while experiments are pending; a batch that no outcome steers (only
breadth or diversity is left to choose) holds just enough experiments to keep the workers busy,
so outcomes arriving meanwhile steer the next choice. `Steering` switches each rule off for
ablation (benchmarks/bench_campaign.py --ablate).

**breadth** is phase 1 alone, in priority order, then the rest by priority: no steering. It is the
baseline that shows what steering buys.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from tracekit.inject.campaign import Experiment, PointInfo
from tracekit.inject.profile import call_depth, point_depth, tie_break


@dataclass(frozen=True)
class Observed:
    """What one experiment (one attempt) caused: in every repeat, and in some repeats only."""

    caused: frozenset[str] = frozenset()
    partial: frozenset[str] = frozenset()


Outcomes = dict[Experiment, Observed]


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
    points = sorted(effects, key=tie_break)
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
    return sorted(sorted(g) for g in groups.values())


@dataclass(frozen=True)
class Steering:
    """How the steered allocator sizes its batches, re-checks partial edges, and grows chains.

    The chain switches exist to ablate each rule (bench_campaign replays them on every target)."""

    batch: int = 2  # experiments per steered batch (one per worker keeps the pool busy)
    confirmations: int = 1  # extra attempts for an experiment whose injectable consequence was partial
    head: bool = True  # after the first results, an exception at the most deeply nested point
    next_frame: bool = True  # of the exceptions one experiment caused, only the innermost is stitched at once
    outermost_last: bool = True  # an exception at a point nothing runs around is stitched after breadth
    hold_blind: bool = True  # a batch no outcome steers is only as large as keeps the workers busy
    between: bool = True  # of equally deep chain starts, a point between its caller's other calls first
    retried: bool = True  # an outermost exception the system survived and ran its point again is not held back
    reprobe: bool = True  # a chain-start probe whose exception left no frame is followed by the next deepest
    informed_last: bool = True  # the budget's last experiments wait for pending outcomes, never chosen blind
    start_late: bool = True  # the runner hands out only what the free workers start now (no queued choices)


class _Ordered:
    """Shared ordering: a candidate's point priority, then a seeded hash (never the alphabet)."""

    def __init__(self, candidates: list[Experiment], primary: dict[str, str], priority: dict[str, float],
                 seed: int) -> None:
        self.candidates = list(dict.fromkeys(candidates))
        self.primary = primary
        self.priority = priority
        self.seed = seed

    def key(self, exp: Experiment) -> tuple[float, int, int, int]:
        primary = exp.fault == self.primary.get(exp.point, exp.fault)
        return (-self.priority.get(exp.point, 0.0), 0 if primary else 1, -exp.delay_ms,
                tie_break(exp.label, self.seed))

    def breadth(self, done: set[Experiment]) -> list[Experiment]:
        """Every point once: its primary fault (or its first allowed one), in priority order."""
        chosen: dict[str, Experiment] = {}
        for exp in sorted(self.candidates, key=self.key):
            chosen.setdefault(exp.point, exp)
        injected = {e.point for e in done}
        return [e for e in chosen.values() if e.point not in injected]


class Breadth(_Ordered):
    """Breadth-only: every point's primary fault in priority order, then everything else by priority."""

    name = "breadth"

    def next_batch(self, outcomes: Outcomes, slots: int) -> list[Experiment]:
        done = set(outcomes)
        first = self.breadth(done)
        rest = [e for e in sorted(self.candidates, key=self.key) if e not in done and e not in first]
        return (first + rest)[:slots]


class ThreePhase(_Ordered):
    """Breadth by profile priority in small batches, each later batch steered by what earlier ones caused.

    Stateless between calls apart from the batch count: every choice is recomputed from `outcomes`, so a
    pipelined runner may ask with some experiments still pending and drop the ones it already runs.
    """

    name = "three-phase"

    def __init__(self, candidates: list[Experiment], primary: dict[str, str], priority: dict[str, float] | None = None,
                 *, seed: int = 0, steering: Steering = Steering(), depth: dict[str, int] | None = None,
                 inside: dict[str, tuple[str, ...]] | None = None, between: frozenset[str] = frozenset(),
                 called: dict[str, int] | None = None) -> None:
        super().__init__(candidates, primary, priority or {}, seed)
        self.steering = steering
        self.depth = depth or {}  # points standing above each point: traced callers on what waits on the topmost
        self.inside = inside or {}  # points whose spans ran within each point's spans (any process)
        # traced callers above each point: recorded structure, so of equally deep points the one whose depth
        # more of it shows is probed first (time containment can be coincidence on a busy service)
        self.called = called or {}
        self.between = between if steering.between else frozenset()  # points run between their caller's other calls
        self.by_fault: dict[str, list[Experiment]] = defaultdict(list)
        for exp in sorted(self.candidates, key=self.key):
            self.by_fault[exp.fault_name].append(exp)
        self.first = steering.batch
        self.batches = 0

    def _caused(self, outcomes: Outcomes) -> tuple[dict[Experiment, frozenset[str]], dict[Experiment, frozenset[str]]]:
        caused: dict[Experiment, set[str]] = defaultdict(set)
        partial: dict[Experiment, set[str]] = defaultdict(set)
        for exp, seen in outcomes.items():
            if not isinstance(seen, Observed):  # a bare set of names: what every repeat caused
                seen = Observed(frozenset(seen))
            caused[exp.base] |= seen.caused
            partial[exp.base] |= seen.partial
        return ({e: frozenset(v) for e, v in caused.items()},
                {e: frozenset(partial[e] - caused.get(e, set())) for e in partial})

    def _stitch(self, caused: dict[Experiment, frozenset[str]], done: set[Experiment],
                reach: dict[str, int]) -> list[Experiment]:
        """Faults caused somewhere and not injected yet, those more experiments caused first."""
        votes: dict[str, int] = defaultdict(int)
        for names in caused.values():
            for name in names:
                votes[name] += 1
        injected = {e.fault_name for e in done}
        out = []
        for name in sorted(votes, key=lambda n: (-votes[n], tie_break(n, self.seed))):
            if name in injected:
                continue
            options = [e for e in self.by_fault.get(name, []) if e not in done]
            if options:
                out.append(options[0])
        # which points caused each fault: a fault at a point whose own execution runs its cause again
        # (the cause is within it) is the likeliest to close a loop
        causes: dict[str, set[str]] = defaultdict(set)
        for exp, names in caused.items():
            for name in names:
                causes[name].add(exp.point)

        def closes(e: Experiment) -> bool:
            return any(c in self.inside.get(e.point, ()) or c == e.point for c in causes[e.fault_name])

        # new behaviour (an exception, a flipped check) before "more of the same" (more calls: delay);
        # then one that may close a loop, one that extends a longer known path (a chain); of exceptions,
        # the one raised in the innermost frame first (where the others came from)
        out.sort(key=lambda e: (e.fault == "delay", not closes(e), -reach.get(e.fault_name, 0), -votes[e.fault_name],
                                -self.depth.get(e.point, 0) if e.fault == "raise" else 0, self.key(e)))
        return out

    def _next_frames(self, caused: dict[Experiment, frozenset[str]], new: list[Experiment]) -> list[Experiment]:
        """Per experiment, the innermost exception it caused that nobody injected yet: the next frame its
        exception path reached (the outer frames it left follow from that one's own injection)."""
        out: set[Experiment] = set()
        for names in caused.values():
            raised = [e for e in new if e.fault == "raise" and e.fault_name in names]
            if raised:
                out.add(max(raised, key=lambda e: (self.depth.get(e.point, 0), -new.index(e))))
        return [e for e in new if e in out]

    def _chain_starts(self, done: set[Experiment]) -> list[Experiment]:
        """An exception at each point that something runs around, the most deeply nested first: where
        chains start (an exception there can leave every frame around it, one link per frame)."""
        raised = {e.point for e in done if e.fault == "raise"}
        out = [e for e in self.by_fault_kind("raise") if e not in done and e.point not in raised
               and self.depth.get(e.point, 0) > 0]
        return sorted(out, key=lambda e: (-self.depth.get(e.point, 0), -self.called.get(e.point, 0),
                                          e.point not in self.between, self.key(e)))

    def by_fault_kind(self, kind: str) -> list[Experiment]:
        return [e for e in self.candidates if e.fault == kind]

    def _confirm(self, outcomes: Outcomes, partial: dict[Experiment, frozenset[str]]) -> list[Experiment]:
        """Experiments whose injectable consequence showed in some repeats only: one more attempt."""
        attempts: dict[Experiment, int] = defaultdict(int)
        for exp in outcomes:
            attempts[exp.base] = max(attempts[exp.base], exp.attempt)
        out = []
        for exp, names in partial.items():
            useful = [n for n in names if n in self.by_fault]
            if useful and attempts[exp] < self.steering.confirmations:
                again = replace(exp, attempt=attempts[exp] + 1)
                if again not in outcomes:
                    out.append(again)
        return sorted(out, key=self.key)

    def _diversity(self, caused: dict[Experiment, frozenset[str]], done: set[Experiment]) -> list[Experiment]:
        effects: dict[str, frozenset[str]] = defaultdict(frozenset)
        for exp, names in caused.items():
            effects[exp.point] |= names
        # uniqueness: a point in a small cluster of look-alikes has consequences few others have
        share = {p: len(c) for c in cluster_points({p: v for p, v in effects.items() if v}) for p in c}
        tried = {e.fault_name for e in done}
        rest = [e for e in self.candidates if e not in done]
        return sorted(rest, key=lambda e: (e.point not in share, share.get(e.point, 0), e.fault_name in tried,
                                           *self.key(e)))

    def next_batch(self, outcomes: Outcomes, slots: int) -> list[Experiment]:
        if slots <= 0:
            return []
        steer = self.steering
        done = {e.base for e in outcomes}
        size = self.first if self.batches == 0 else steer.batch
        caused, partial = self._caused(outcomes)
        by_name: dict[str, frozenset[str]] = defaultdict(frozenset)
        for exp, names in caused.items():
            by_name[exp.fault_name] |= names
        reach = _path_lengths(by_name)
        stitch = self._stitch(caused, done, reach)
        new = [e for e in stitch if e.fault != "delay"]
        frames = self._next_frames(caused, new) if steer.next_frame else [e for e in new if e.fault == "raise"]
        # a raise the system itself answered a delay or a flipped check with (a timeout) is loop material
        by_other = {n for e, names in caused.items() if e.fault != "raise" for n in names}
        flips = [e for e in new if e.fault != "raise" or e.fault_name in by_other]
        if steer.outermost_last:  # an exception nothing runs around can only end the process ...
            # ... unless the process survived it: the experiment that caused it also ran its point more
            # (a retry of what raised, the loop of a redelivery)
            survived = {n for names in caused.values() for n in names
                        if n.endswith(":raise") and f"{n.rsplit(':', 1)[0]}:delay" in names} if steer.retried else set()

            def held(e: Experiment) -> bool:
                return e.fault == "raise" and self.depth.get(e.point, 0) == 0 and e.fault_name not in survived

            frames = [e for e in frames if not held(e)]
            flips = [e for e in flips if not held(e)]
        heads = self._chain_starts(done)
        # a probe found where chains start once its exception left a frame (caused an exception at another
        # point); one that left none shows the depth signal wrong there (spans around it by coincidence):
        # the next deepest point is probed
        probed = any(e.fault == "raise" and self.depth.get(e.point, 0) > 0
                     and (not steer.reprobe or any(n.endswith(":raise") and n != e.fault_name
                                                   for n in caused.get(e, ())))
                     for e in done)
        # the next frame of an exception path, new behaviour, one probe where chains start, more of the
        # same (delays), then partial edges, breadth, the rest of the stitches, other chain starts, diversity
        head = heads[:1] if steer.head and not probed else []
        if not done:
            # the first batch: one probe where chains start, when its exception can leave two frames or
            # more (a chain of two links), and the top of breadth
            order = [e for e in head if self.depth.get(e.point, 0) >= 2]
        else:
            order = frames + head + flips
        order += [e for e in stitch if e.fault == "delay"] + self._confirm(outcomes, partial)
        if done and steer.hold_blind and not any(e not in outcomes for e in order):
            # nothing here follows from an outcome: hand out only what keeps the workers busy (an
            # experiment has at least two repeats), so the next choice can use outcomes still to come
            size = max(1, steer.batch // 2)
        order += self.breadth(done) + new + heads + self._diversity(caused, done)
        batch = list(dict.fromkeys(e for e in order if e not in outcomes))[:min(size, slots)]
        self.batches += 1
        return batch


def simulate(allocator: Allocator, slots: int, answer: Callable[[Experiment], Observed]) -> list[Experiment]:
    """The experiments `allocator` would hand out within `slots`, each answered at once by `answer` (what
    that experiment is known to cause): a campaign replayed offline, without runs."""
    outcomes: Outcomes = {}
    order: list[Experiment] = []
    while len(order) < slots:
        batch = [e for e in allocator.next_batch(outcomes, slots - len(order)) if e not in outcomes]
        if not batch:
            break
        for e in batch:
            outcomes[e] = answer(e)
            order.append(e)
    return order


def _path_lengths(caused: dict[str, frozenset[str]], bound: int = 6) -> dict[str, int]:
    """For each fault some experiment caused: the links of the longest known path ending at it (bounded).

    >>> _path_lengths({"a": frozenset({"b"}), "b": frozenset({"c"})})
    {'b': 1, 'c': 2}
    """
    best: dict[str, int] = {}
    frontier = {name: 1 for names in caused.values() for name in names}
    for _ in range(bound):
        grown = False
        for name, n in frontier.items():
            if n > best.get(name, 0):
                best[name] = n
                grown = True
        if not grown:
            break
        frontier = {}
        for src, n in best.items():
            for dst in caused.get(src, ()):
                if dst != src:
                    frontier[dst] = max(frontier.get(dst, 0), n + 1)
    return dict(sorted(best.items()))


def make_allocator(strategy: str, candidates: list[Experiment], primary: dict[str, str], seed: int = 0,
                   priority: dict[str, float] | None = None, batch: int = 2,
                   points: list[PointInfo] | None = None, steering: Steering | None = None) -> Allocator:
    """The allocator of `strategy`; `points` (from the profile runs) give the call graph three-phase steers by."""
    if strategy == "exhaustive":
        return Exhaustive(candidates)
    if strategy == "random":
        return UniformRandom(candidates, seed)
    if strategy == "breadth":
        return Breadth(candidates, primary, priority or {}, seed)
    steering = replace(steering or Steering(), batch=max(2, batch))
    return ThreePhase(candidates, primary, priority, seed=seed, steering=steering, depth=point_depth(points or []),
                      inside={i.point: i.inside for i in points or ()},
                      between=frozenset(i.point for i in points or () if i.between), called=call_depth(points or []))
