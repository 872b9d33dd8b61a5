"""Three-phase allocation grows chains from where exceptions start: nesting, depth, head probes, next frames."""

from __future__ import annotations

from dataclasses import replace

from tracekit.inject.budget import Observed, Steering, make_allocator, simulate
from tracekit.inject.campaign import Experiment, PointInfo
from tracekit.inject.profile import nest_depth, nested_points, point_depth, priorities


def span(name: str, start: int, end: int) -> dict:
    return {"name": name, "start_ns": start, "end_ns": end}


def test_a_poll_loop_overlapping_a_slow_call_by_chance_is_not_nested():
    # `job` (40 ns) runs in a worker; `poll` ticks every 50 ns in the producer for the whole run, so some
    # polls fall within a job by chance; `handle` runs within every `call` (a server answering a client)
    spans = [span("job", 100 * k, 100 * k + 40) for k in range(6)]
    spans += [span("poll", 7 + 50 * k, 9 + 50 * k) for k in range(30)]
    spans += [span("call", 1000 + 100 * k, 1060 + 100 * k) for k in range(5)]
    spans += [span("handle", 1010 + 100 * k, 1050 + 100 * k) for k in range(5)]
    inside = nested_points([spans])
    assert inside.get("call") == {"handle"}
    assert "poll" not in inside.get("job", set())


def test_depth_counts_frames_around_a_point_in_any_process():
    infos = [PointInfo("app.request", "traced", inside=("app.call", "db.query", "db.disk")),
             PointInfo("app.call", "traced", parents=("app.request",), inside=("db.query", "db.disk")),
             PointInfo("db.query", "traced", inside=("db.disk",)),  # another process: no traced parent
             PointInfo("db.disk", "traced", parents=("db.query",))]
    assert point_depth(infos) == {"app.request": 0, "app.call": 1, "db.query": 2, "db.disk": 3}
    # a point's traced callers stand on whatever waits on the topmost of them: `db.disk` is rare, so no
    # profile span lay around it, yet its exception leaves `db.query` and the two client frames too
    rare = [replace(i, inside=tuple(n for n in i.inside if n != "db.disk")) for i in infos]
    assert point_depth(rare)["db.disk"] == 3
    # timing hid one containment (the job started before the client began waiting): its step keeps depth 2
    assert nest_depth({"wait": ["step"], "job": ["step"]}) == {"job": 0, "step": 2, "wait": 0}


class System:
    """A made-up service whose outcomes are known: what each injected fault causes.

    Chain: `<s>.disk:raise -> <s>.handle:raise -> <c>.call:raise` (a disk error leaves the handler, the
    client call fails). Cycle: `<k>.check:error_return -> <s>.handle:delay -> <k>.check:error_return`
    (a miss queries again: more handler calls; a slow handler makes the check miss). Other points cause
    nothing. `<s>`, `<c>`, `<k>` are prefixes the test swaps, so the order cannot come from names.
    """

    def __init__(self, server: str, client: str, check: str, other: str) -> None:
        self.s, self.c, self.k = server, client, check
        self.infos = [
            PointInfo(f"{client}.request", "traced", calls=10, below=1,
                      inside=(f"{client}.call", f"{server}.handle", f"{server}.disk")),
            PointInfo(f"{client}.call", "traced", parents=(f"{client}.request",), calls=10,
                      inside=(f"{server}.handle", f"{server}.disk")),
            PointInfo(f"{server}.handle", "traced", calls=10, below=1, inside=(f"{server}.disk",)),
            PointInfo(f"{server}.disk", "traced", parents=(f"{server}.handle",), calls=10),
            PointInfo(f"{check}.check", "traced", calls=30, returns="bool", loop=True),
        ] + [PointInfo(f"{other}.{n}", "traced", calls=c) for n, c in (("log", 12), ("tick", 8), ("sweep", 3))]
        self.candidates = [Experiment("w", i.point, f, delay_ms=300 if f == "delay" else 0)
                           for i in self.infos for f in ("delay", "raise", "error_return")
                           if f != "error_return" or i.returns == "bool"]
        self.primary = {i.point: "error_return" if i.returns == "bool" else "delay" for i in self.infos}
        s, c, k = server, client, check
        self.effects = {
            f"{s}.disk:raise": {f"{s}.handle:raise", f"{c}.call:raise"},
            f"{s}.handle:raise": {f"{c}.call:raise"},
            f"{k}.check:error_return": {f"{s}.handle:delay"},
            f"{s}.handle:delay": {f"{k}.check:error_return", f"{s}.handle:delay"},
            f"{s}.disk:delay": {f"{k}.check:error_return"},
        }

    def allocator(self, strategy: str = "three-phase", steering: Steering | None = None):
        return make_allocator(strategy, self.candidates, self.primary, 0, priorities(self.infos), batch=2,
                              points=self.infos, steering=steering)

    def run(self, alloc, slots: int) -> list[Experiment]:
        return simulate(alloc, slots, lambda e: Observed(frozenset(self.effects.get(e.fault_name, ()))))

    def found(self, order: list[Experiment]) -> tuple[bool, bool]:
        """(cycle, chain): every fault of it injected, each one's consequence linking to the next."""
        ran = {e.fault_name for e in order}
        s, k = self.s, self.k
        cycle = {f"{k}.check:error_return", f"{s}.handle:delay"} <= ran
        chain = {f"{s}.disk:raise", f"{s}.handle:raise"} <= ran
        return cycle, chain


def breadth_done(order: list[str], infos: list[PointInfo]) -> int:
    """The position where every point has had some fault injected (breadth is over)."""
    return max(min(k for k, name in enumerate(order) if name.rsplit(":", 1)[0] == i.point) for i in infos)


NAMINGS = [("srv", "cli", "cache", "misc"), ("aaa", "zzz", "mmm", "bbb"), ("zzz", "aaa", "bbb", "mmm")]


def test_the_first_batch_probes_where_an_exception_can_leave_most_frames():
    for naming in NAMINGS:
        system = System(*naming)
        first = system.allocator().next_batch({}, 2)
        assert Experiment("w", f"{system.s}.disk", "raise") in first  # three frames around it
        assert len(first) == 2


def test_only_the_next_frame_of_an_exception_path_is_stitched_before_breadth():
    """The probe at the innermost point caused exceptions at two frames around it: the inner one (the
    handler) is injected next, before the rest of breadth; the outer one (the client call) only after."""
    system = System(*NAMINGS[0])
    alloc = system.allocator()
    order = system.run(alloc, 4)
    names = [e.fault_name for e in order]
    assert names.index("srv.handle:raise") < 4  # the head's next frame comes at once
    assert "cli.call:raise" not in names  # the outer frame waits: it follows from srv.handle:raise too
    whole = [e.fault_name for e in system.run(system.allocator(), len(system.candidates))]
    assert whole.index("cli.call:raise") > whole.index("srv.handle:raise")
    assert whole.index("srv.handle:raise") < breadth_done(whole, system.infos)


def test_seeded_cycle_and_chain_within_a_third_whatever_the_names():
    for naming in NAMINGS:
        system = System(*naming)
        slots = len(system.candidates) // 3
        assert system.found(system.run(system.allocator(), slots)) == (True, True), naming
    # what the chain rules buy: breadth alone, or three-phase without the head probe, misses the chain
    system = System(*NAMINGS[0])
    slots = len(system.candidates) // 3
    assert system.found(system.run(system.allocator("breadth"), slots))[1] is False
    assert system.found(system.run(system.allocator(steering=Steering(head=False)), slots))[1] is False


def test_an_exception_at_an_outermost_point_waits_for_breadth():
    """An exception at a point nothing runs around can only end the process: stitched after breadth."""
    system = System(*NAMINGS[0])
    system.effects["misc.tick:delay"] = {"cli.request:raise"}  # something made the outermost point raise
    whole = [e.fault_name for e in system.run(system.allocator(), len(system.candidates))]
    assert whole.index("cli.request:raise") > breadth_done(whole, system.infos)
    relaxed = system.allocator(steering=Steering(outermost_last=False))
    whole = [e.fault_name for e in system.run(relaxed, len(system.candidates))]
    assert whole.index("cli.request:raise") < breadth_done(whole, system.infos)


def test_an_outermost_exception_the_system_survived_and_retried_is_not_held_back():
    """A delay at the outermost point made the system raise there (a timeout) and run it again (a retry):
    the process survived that exception, so it is stitched before breadth ends (the loop a redelivery
    makes); with the rule off it waits for breadth like an exception that ends the process."""
    system = System(*NAMINGS[0])
    system.effects["cli.request:delay"] = {"cli.request:raise", "cli.request:delay"}  # timed out, run again
    system.effects["cli.request:raise"] = {"cli.request:delay"}
    whole = [e.fault_name for e in system.run(system.allocator(), len(system.candidates))]
    assert whole.index("cli.request:raise") < breadth_done(whole, system.infos)
    strict = system.allocator(steering=Steering(retried=False))
    whole = [e.fault_name for e in system.run(strict, len(system.candidates))]
    assert whole.index("cli.request:raise") > breadth_done(whole, system.infos)


def test_pending_experiments_are_not_offered_again_when_marked_as_run():
    """A pipelined runner asks with pending experiments marked as run (no outcome yet): the answer is new work."""
    system = System(*NAMINGS[0])
    alloc = system.allocator()
    first = alloc.next_batch({}, 2)
    again = alloc.next_batch({e: Observed() for e in first}, 2)
    assert again and not set(again) & set(first)


def test_a_batch_no_outcome_steers_is_only_as_large_as_keeps_the_workers_busy():
    """With nothing caused to follow up, more breadth goes out one experiment at a time (its repeats fill
    two workers), so an outcome arriving meanwhile steers the next one; a steered batch stays full."""
    system = System(*NAMINGS[0])
    alloc = system.allocator(steering=Steering(reprobe=False))
    first = alloc.next_batch({}, 4)
    quiet = {e: Observed() for e in first}  # the first experiments caused nothing
    assert len(alloc.next_batch(quiet, 4)) == 1
    assert len(system.allocator(steering=Steering(hold_blind=False, reprobe=False)).next_batch(quiet, 4)) == 2
    # the head probe left no frame: the next probe follows from that outcome, so the batch stays full
    again = system.allocator().next_batch(quiet, 4)
    assert len(again) == 2 and Experiment("w", "srv.handle", "raise") in again
    busy = dict(quiet)
    busy[Experiment("w", "srv.disk", "raise")] = Observed(frozenset({"srv.handle:raise", "cache.check:error_return"}))
    assert len(alloc.next_batch(busy, 4)) == 2


def test_of_equally_deep_points_the_one_between_its_callers_other_calls_is_probed_first():
    """`<p>.take`, `<p>.work`, `<p>.give` run in that order inside `<p>.job`, equally deep; an exception
    in `work` leaves `take`'s hold without `give` (the chain), one in `take` or `give` leaves nothing.
    The head probe goes to `work` under any naming and seed; with the rule off, to whichever sorts first."""
    from tracekit.inject.profile import between_points

    def spans(p: str, runs: int = 3) -> list[list[dict]]:
        out = []
        for r in range(runs):
            job = {"span_id": f"j{r}", "parent_id": None, "name": f"{p}.job", "start_ns": 0, "end_ns": 100}
            kids = [{"span_id": f"{n}{r}", "parent_id": f"j{r}", "name": f"{p}.{n}", "start_ns": a, "end_ns": b}
                    for n, a, b in (("take", 10, 20), ("work", 30, 60), ("give", 70, 80))]
            out.append([job, *kids])
        return out

    picks = set()
    for p in ("alpha", "zulu", "m"):
        middle = between_points(spans(p))
        assert middle == {f"{p}.work"}
        infos = [PointInfo(f"{p}.job", "traced", calls=3, below=3, inside=(f"{p}.take", f"{p}.work", f"{p}.give"))]
        infos += [PointInfo(f"{p}.{n}", "traced", parents=(f"{p}.job",), calls=3, between=f"{p}.{n}" in middle)
                  for n in ("take", "work", "give")]
        candidates = [Experiment("w", i.point, f, delay_ms=300 if f == "delay" else 0)
                      for i in infos for f in ("delay", "raise")]
        for seed in range(4):
            alloc = make_allocator("three-phase", candidates, {i.point: "delay" for i in infos}, seed,
                                   priorities(infos, seed=seed), batch=2, points=infos)
            heads = alloc._chain_starts(set())
            assert heads[0].fault_name == f"{p}.work:raise"
            off = make_allocator("three-phase", candidates, {i.point: "delay" for i in infos}, seed,
                                 priorities(infos, seed=seed), batch=2, points=infos, steering=Steering(between=False))
            picks.add(off._chain_starts(set())[0].point.split(".")[1])
    assert len(picks) > 1  # without the rule the first probe is a toss-up among the three


def with_bystander(system: System, around: tuple[str, ...]) -> System:
    """`system` plus `<other>.beat`, a heartbeat its profile saw within the spans of `around` by coincidence
    (a busy service covers the whole run): as deep as those make it, no traced caller, hot, and its
    exception leaves no frame (it only fails a check)."""
    o = system.infos[-1].point.split(".")[0]
    system.infos = [replace(i, inside=(*i.inside, f"{o}.beat")) if i.point in around else i for i in system.infos]
    system.infos.append(PointInfo(f"{o}.beat", "traced", calls=60, loop=True))
    system.candidates += [Experiment("w", f"{o}.beat", f, delay_ms=300 if f == "delay" else 0) for f in ("delay", "raise")]
    system.primary[f"{o}.beat"] = "delay"
    system.effects[f"{o}.beat:raise"] = {f"{system.k}.check:error_return"}
    return system


def test_of_equally_deep_points_the_one_whose_callers_are_recorded_is_probed_first():
    """`beat` lies within three points' spans by timing alone; `disk` has a traced caller (recorded
    structure) under a handler two client frames wait on: equally deep, `disk` is probed first."""
    for naming in NAMINGS:
        s, c = naming[0], naming[1]
        system = with_bystander(System(*naming), (f"{c}.request", f"{c}.call", f"{s}.handle"))
        depth = point_depth(system.infos)
        assert depth[f"{s}.disk"] == depth[f"{naming[3]}.beat"] == 3
        assert Experiment("w", f"{s}.disk", "raise") in system.allocator().next_batch({}, 2)


def test_a_probe_whose_exception_left_no_frame_is_followed_by_the_next_deepest():
    """`beat` is deeper than `disk` by coincidence (four spans around it) and probed first; its exception
    only fails a check -- it left no frame, so the depth was wrong there: `disk` is probed next, before
    breadth goes on. With the rule off, the chain waits for breadth and is missed within a third."""
    for naming in NAMINGS:
        s, c, k = naming[0], naming[1], naming[2]
        system = with_bystander(System(*naming), (f"{c}.request", f"{c}.call", f"{s}.handle", f"{k}.check"))
        order = [e.fault_name for e in system.run(system.allocator(), 4)]
        assert order[0] == f"{naming[3]}.beat:raise"
        assert f"{s}.disk:raise" in order[2:4], order
        slots = len(system.candidates) // 3
        assert system.found(system.run(system.allocator(), slots)) == (True, True), naming
        off = system.run(system.allocator(steering=Steering(reprobe=False)), slots)
        assert system.found(off)[1] is False, naming
