"""What profile runs say about each injection point: call counts, loops, call-graph position; the breadth priority.

A campaign must not depend on how points are named. The allocator orders and sizes its first
phase from what the profile runs (no injection) showed about each point:

* **hot path** — calls per run: a point called on every request is where a fault meets the workload;
* **loop feeder** — called more than once per call of its parent (a loop, a retry, a queue drain):
  faults there are repeated by the program itself, the raw material of a self-sustaining cascade;
* **call-graph position** — how many other points run beneath it (a delay there delays them all), how
  many stand above it (traced callers, or spans around it in any process: a server handler is as deep
  as the client call waiting on it; an exception there can leave every frame around it, one link of a
  chain each) and whether it is a boolean check (negating a check changes a branch: CSnake's most
  productive kind);
* **timing slack** — calls per run that vary across profile repeats: the workload's own timing
  decides how often it runs, so a delay elsewhere changes it (a timeout, a retry, a poll).

Each signal is turned into a rank (no hand-set weights); a point's priority is the mean of its
ranks. Ties are broken by a seeded hash of the name, never by the alphabet.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from tracekit.inject.campaign import PointInfo


def tie_break(name: str, seed: int = 0) -> int:
    """A stable pseudo-random order for names that score alike (independent of spelling order).

    >>> tie_break("a.x") != tie_break("a.y")
    True
    """
    return int.from_bytes(hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest(), "big")


def point_infos(reached: Iterable[dict[str, Any]], counts: Iterable[dict[str, Any]], runs: int,
                spans: Iterable[list[dict[str, Any]]] = ()) -> list[PointInfo]:
    """PointInfos from the store's `reached_points` rows and per-run `run_counts` rows of profile runs
    (and, for `inside`, each profile run's spans with their start and end)."""
    per_run: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    edge_calls: dict[tuple[str | None, str], int] = defaultdict(int)
    totals: dict[str, int] = defaultdict(int)
    children: dict[str, set[str]] = defaultdict(set)
    for r in counts:
        n = int(r["n"])
        per_run[r["op"]][r["run_id"]] += n
        edge_calls[(r["parent"], r["op"])] += n
        totals[r["op"]] += n
        if r["parent"] is not None:
            children[r["parent"]].add(r["op"])
    loops = {op for (parent, op), n in edge_calls.items() if parent is not None and n > totals.get(parent, 0)}
    spans = [list(run) for run in spans]
    inside = nested_points(spans)
    middle = between_points(spans)
    runs = max(1, runs)
    out = []
    for r in reached:
        point = r["point"]
        series = list(per_run.get(point, {}).values()) + [0] * max(0, runs - len(per_run.get(point, {})))
        below = _descendants(point, children)
        parents = tuple(r["parents"] or ())
        out.append(PointInfo(
            point, r["kind"], parents, r["returns"], r["raises"], point in loops,
            calls=totals.get(point, 0) / runs, spread=(max(series) - min(series)) if series else 0,
            below=len(below), inside=tuple(sorted(inside.get(point, ()))), between=point in middle,
        ))
    return out


def between_points(runs: Iterable[list[dict[str, Any]]], share: float = 0.5) -> set[str]:
    """The span names that run between other calls of the same caller: after one of its other calls
    started and before another one starts, in at least `share` of their spans (a caller's spans
    `parent_id`). An exception there leaves the caller's work half done -- what the calls before it
    set up (a hold, a lease, a reservation) without what the calls after it would have done (release,
    acknowledge, commit) -- the classic start of a cascade; an exception at the first call leaves
    nothing behind, one at the last leaves everything done.

    >>> between_points([[{"span_id": "c", "parent_id": None, "name": "charge", "start_ns": 0, "end_ns": 9},
    ...                  {"span_id": "1", "parent_id": "c", "name": "reserve", "start_ns": 1, "end_ns": 2},
    ...                  {"span_id": "2", "parent_id": "c", "name": "price", "start_ns": 3, "end_ns": 5},
    ...                  {"span_id": "3", "parent_id": "c", "name": "release", "start_ns": 6, "end_ns": 7}]])
    {'price'}
    """
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # name -> [spans between others, spans]
    for spans in runs:
        children: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for s in spans:
            if s.get("parent_id") is not None and s.get("start_ns") is not None and s.get("end_ns") is not None:
                children[s["parent_id"]].append(s)
        for siblings in children.values():
            # the earliest and the latest start of another name, in one pass (a caller may have thousands
            # of calls): the two extreme starts of distinct names suffice
            first = _extremes(siblings, lambda o: o["start_ns"])
            last = _extremes(siblings, lambda o: -o["start_ns"])
            for s in siblings:
                earliest = next((t for name, t in first if name != s["name"]), None)
                latest = next((-t for name, t in last if name != s["name"]), None)
                tally = counts[s["name"]]
                tally[0] += earliest is not None and earliest < s["start_ns"] and latest >= s["end_ns"]
                tally[1] += 1
    return {name for name, (mid, n) in counts.items() if n and mid >= share * n}


def _extremes(spans: list[dict[str, Any]], key: Callable[[dict[str, Any]], int]) -> list[tuple[str, int]]:
    """The smallest `key` of the spans and the smallest of another name: [(name, key), ...], at most two."""
    best: list[tuple[str, int]] = []
    for s in spans:
        k = key(s)
        if not best or k < best[0][1]:
            best = [(s["name"], k)] + [b for b in best if b[0] != s["name"]][:1]
        elif s["name"] != best[0][0] and (len(best) < 2 or k < best[1][1]):
            best = [best[0], (s["name"], k)]
    return best


def nested_points(runs: Iterable[list[dict[str, Any]]], per_point: int = 40, window: int = 4000,
                  share: float = 0.5, sample: int = 200) -> dict[str, set[str]]:
    """For each span name: the other names whose spans run within its spans, in any process of the same
    run (a server handling the request a client waits on).

    A name counts as inside another when at least `share` of its spans (at most `sample` per run
    looked at) lie within that name's spans: a handler runs within what waits on it nearly every
    time, while a poll loop in another process only overlaps a slow call by chance. Candidates come
    from a bounded scan: at most `per_point` spans of a name per run and `window` later-starting
    spans each.

    >>> nested_points([[{"name": "call", "start_ns": 0, "end_ns": 10}, {"name": "handle", "start_ns": 2, "end_ns": 5}]])
    {'call': {'handle'}}
    """
    from bisect import bisect_right

    candidates: dict[str, set[str]] = defaultdict(set)
    within: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for spans in runs:
        spans = sorted((s for s in spans if s.get("start_ns") is not None and s.get("end_ns") is not None),
                       key=lambda s: s["start_ns"])
        starts = [s["start_ns"] for s in spans]
        seen: dict[str, int] = defaultdict(int)
        found: dict[str, set[str]] = defaultdict(set)
        for i, outer in enumerate(spans):
            if seen[outer["name"]] >= per_point:
                continue
            seen[outer["name"]] += 1
            stop = min(bisect_right(starts, outer["end_ns"]), i + 1 + window)
            for inner in spans[i + 1:stop]:
                if inner["end_ns"] <= outer["end_ns"] and inner["name"] != outer["name"]:
                    found[outer["name"]].add(inner["name"])
        if not found:
            continue
        by_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for s in spans:
            by_name[s["name"]].append(s)
        for outer_name, inner_names in found.items():
            candidates[outer_name] |= inner_names
            cover = _union(by_name[outer_name])
            lefts = [a for a, _ in cover]
            for inner_name in inner_names:
                mine = by_name[inner_name]
                for s in mine[:: max(1, len(mine) // sample)][:sample]:
                    k = bisect_right(lefts, s["start_ns"]) - 1
                    tally = within[(outer_name, inner_name)]
                    tally[0] += 1 if k >= 0 and s["end_ns"] <= cover[k][1] else 0
                    tally[1] += 1
    out: dict[str, set[str]] = {}
    for outer_name, inner_names in candidates.items():
        kept = {n for n in inner_names if within[(outer_name, n)][0] >= share * within[(outer_name, n)][1]}
        if kept:
            out[outer_name] = kept
    return out


def _union(spans: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """The time covered by `spans` (sorted by start) as disjoint [start, end] intervals."""
    out: list[tuple[int, int]] = []
    for s in spans:
        if out and s["start_ns"] <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], s["end_ns"]))
        else:
            out.append((s["start_ns"], s["end_ns"]))
    return out


def nest_depth(inside: dict[str, Iterable[str]]) -> dict[str, int]:
    """How many points stand around each point when spans are nested in any process: the names whose
    spans contain its spans — how many frames an exception raised there can leave.

    Counted, not chained: when timing hides one containment (a job that started before the client
    began waiting on it is not within the wait, though its steps are), the point keeps its depth.

    >>> nest_depth({"request": ["call", "handle"], "call": ["handle"]})
    {'call': 1, 'handle': 2, 'request': 0}
    """
    around: dict[str, set[str]] = defaultdict(set)
    for outer, inners in inside.items():
        around[outer]
        for inner in inners:
            if inner != outer:
                around[inner].add(outer)
    return {name: len(around[name]) for name in sorted(around)}


def call_depth(infos: Iterable[PointInfo], base: dict[str, int] | None = None) -> dict[str, int]:
    """How many traced callers stand above each point (the longest chain of points calling it), each
    chain standing on `base` of its topmost point when given (what waits on it from other processes).

    An exception raised at a deep point leaves every traced frame above it unless one catches it:
    each frame it leaves is one more link a chain can have.

    >>> call_depth([PointInfo("a", "traced"), PointInfo("b", "traced", parents=("a",)),
    ...             PointInfo("c", "traced", parents=("b", None))])
    {'a': 0, 'b': 1, 'c': 2}
    """
    parents = {i.point: [p for p in i.parents if p is not None] for i in infos}
    depth: dict[str, int] = {}

    def walk(point: str, seen: frozenset[str]) -> int:
        if point not in depth:
            above = [walk(p, seen | {point}) + 1 for p in parents.get(point, ()) if p in parents and p not in seen]
            depth[point] = max(above, default=0) if base is None else max(above + [base.get(point, 0)])
        return depth[point]

    for point in parents:
        walk(point, frozenset())
    return depth


def point_depth(infos: Iterable[PointInfo]) -> dict[str, int]:
    """How many points stand above each point: its traced callers in its process, on top of the spans
    around the topmost of them in any process (a server handler is as deep as the client calls waiting
    on it, and the handler's own callees one deeper each), or the spans around its own spans if more.

    >>> point_depth([PointInfo("cli.call", "traced", inside=("srv.handle",)), PointInfo("srv.handle", "traced")])
    {'cli.call': 0, 'srv.handle': 1}
    """
    infos = list(infos)
    nests = nest_depth({i.point: i.inside for i in infos})
    return call_depth(infos, base=nests)


def _descendants(point: str, children: dict[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    stack = [point]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in seen and child != point:
                seen.add(child)
                stack.append(child)
    return seen


@dataclass(frozen=True)
class Signals:
    """Which profile signals rank points (each one a rank, averaged); switch one off to ablate it."""

    hot: bool = True
    loop: bool = True
    below: bool = True
    check: bool = True
    slack: bool = True
    depth: bool = True

    def values(self, info: PointInfo, depth: int = 0) -> list[float]:
        out: list[float] = []
        if self.depth:
            out.append(float(depth))
        if self.hot:
            out.append(info.calls)
        if self.loop:
            out.append(1.0 if info.loop else 0.0)
        if self.below:
            out.append(float(info.below))
        if self.check:
            out.append(1.0 if info.returns == "bool" else 0.0)
        if self.slack:
            out.append(float(info.spread))
        return out


def priorities(infos: list[PointInfo], signals: Signals = Signals(), seed: int = 0) -> dict[str, float]:
    """Each point's breadth priority in [0, 1] (higher first): the mean of its ranks over the signals.

    >>> hot = PointInfo("svc.handle", "traced", calls=12.0, loop=True)
    >>> cold = PointInfo("svc.start", "traced", calls=1.0)
    >>> p = priorities([cold, hot])
    >>> p["svc.handle"] > p["svc.start"]
    True
    """
    if not infos:
        return {}
    depth = point_depth(infos)
    columns = list(zip(*(signals.values(i, depth.get(i.point, 0)) for i in infos))) or [tuple(0.0 for _ in infos)]
    score = [0.0] * len(infos)
    for column in columns:
        ranks = _ranks(list(column))
        for k, r in enumerate(ranks):
            score[k] += r
    n = max(1, len(infos) - 1)
    return {info.point: score[k] / len(columns) / n for k, info in enumerate(infos)}


def _ranks(values: list[float]) -> list[float]:
    """Average ranks from 0 (smallest) to n-1 (largest); equal values share their mean rank."""
    order = sorted(range(len(values)), key=lambda k: values[k])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks
