"""The active pairwise link probe (C4-style): every ordered rank pair sends a payload; the receiver times it."""

from __future__ import annotations

import time
from typing import Any

from tracekit.capture.torch import state
from tracekit.capture.torch.patching import original

PROBE_REPEATS = 3  # each direction is timed this many times; the fastest counts


def probe_links(nbytes: int = 256 * 1024, group: Any = None) -> list[dict[str, Any]]:
    """Active pairwise probe (C4-style): every ordered rank pair sends ``nbytes``; the receiver times it.

    Every rank of the group must call it at the same point. Pairs run in round-robin rounds (each
    rank in one pair at a time), each direction separately and three times (the fastest counts:
    scheduling noise only adds time, a rate limit does not go away), so a throttled direction shows
    whether or not the ring all-reduce happens to use it. Each receiver records its measurements in the
    ``probes`` stream and returns them.
    """
    import torch
    import torch.distributed as dist

    raw_send, raw_recv = original("send"), original("recv")
    rank, world = dist.get_rank(group), dist.get_world_size(group)

    def glob(r: int) -> int:  # send/recv take global ranks; the probe reports ranks within the group
        return r if group is None else int(dist.get_global_rank(group, r))

    def send(tensor: Any, r: int, group: Any = None) -> None:
        raw_send(tensor, glob(r), group=group)

    def recv(tensor: Any, r: int, group: Any = None) -> None:
        raw_recv(tensor, glob(r), group=group)

    payload = torch.zeros(max(1, nbytes // 4), dtype=torch.float32)
    token = torch.zeros(1, dtype=torch.float32)
    cap = state.current
    round_id = cap.probe_round if cap else 0
    if cap:
        cap.probe_round += 1
    results: list[dict[str, Any]] = []
    busy, state.local.busy = state.local.busy, True  # the probe's own send/recv are not training traffic
    try:
        _probe_rounds(rank, world, group, send, recv, payload, token, round_id, cap, results)
        original("barrier")(group=group)  # leave together: the probe must not skew the next arrivals
    finally:
        state.local.busy = busy
    if cap is not None:
        stream = cap.run.spool.stream("probes")
        for record in results:
            stream.write(record)
    return results


def _probe_rounds(rank: int, world: int, group: Any, send: Any, recv: Any, payload: Any, token: Any,
                  round_id: int, cap: Any, results: list[dict[str, Any]]) -> None:
    players = list(range(world)) + ([None] if world % 2 else [])
    n = len(players)
    for _ in range(n - 1):
        pairs = [(players[i], players[n - 1 - i]) for i in range(n // 2)]
        for a, b in pairs:
            if a is None or b is None or rank not in (a, b):
                continue
            for src, dst in ((a, b), (b, a)):
                if rank == dst:
                    recv(token, src, group=group)  # untimed handshake: both ends are here
                    dur = None
                    for _ in range(PROBE_REPEATS):  # the fastest of a few: scheduling noise only adds
                        start = time.perf_counter_ns()
                        send(token, src, group=group)
                        recv(payload, src, group=group)
                        elapsed = time.perf_counter_ns() - start
                        dur = elapsed if dur is None else min(dur, elapsed)
                    results.append({"rank": rank, "world_size": world, "round": round_id, "src": src,
                                    "dst": dst, "bytes": payload.numel() * 4, "ts_ns": time.time_ns(),
                                    "dur_ns": dur, "step": cap.step if cap else None})
                else:
                    send(token, dst, group=group)
                    for _ in range(PROBE_REPEATS):
                        recv(token, dst, group=group)
                        send(payload, dst, group=group)
        players = [players[0], players[-1], *players[1:-1]]
