"""Host clock offsets of a multi-host training run, estimated from its collectives, and frames put on one clock.

Every rank leaves a completed all-reduce at nearly the same instant: the last rank to arrive releases
them all, whoever it is (a straggler included). So, for each collective every host completed, the
difference between a host's median exit time and the reference host's is that host's clock offset
plus a little network noise; the median over many collectives is the offset. The reference host is
the one holding the lowest rank. Shifting every timestamp of a host's ranks by minus its offset puts
the whole run on the reference host's clock, so the detectors that compare times across ranks
(arrival lag, liveness after the others entered) give the same findings whatever the hosts' clocks
say. Durations measured on one rank (waits, step times) need no correction and are unchanged.

Examples
--------
>>> import polars as pl
>>> c = pl.DataFrame({"rank": [0, 1] * 3, "process_group": ["0"] * 6, "seq": [0, 0, 1, 1, 2, 2],
...                   "exit_ns": [1_000, 51_000, 2_000, 52_100, 3_000, 53_300], "ok": [True] * 6,
...                   "peer": [None] * 6})
>>> estimate_offsets(c, {0: "a", 1: "b"})
{'a': 0, 'b': 50100}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import polars as pl

__all__ = ["host_of_rank", "estimate_offsets", "shift_frames", "align_clocks", "clock_evidence", "MIN_SHARED_COLLECTIVES"]

MIN_SHARED_COLLECTIVES = 3  # fewer collectives completed on every host give no offset (kept at 0)

# the time columns of each frame, all shifted alike for a host's ranks
_TIME_COLUMNS = {
    "collectives": ("enter_ns", "exit_ns"),
    "steps": ("start_ns", "end_ns"),
    "probes": ("ts_ns",),
    "heartbeats": ("ts_ns", "inflight_since_ns"),
    "rank_exits": ("ended_ns", "started_ns"),
    "worker_exits": ("ts_ns",),
}


def host_of_rank(rank_exits: pl.DataFrame) -> dict[int, str]:
    """Which host each rank ran on (from its spool files' headers); empty when unknown."""
    if rank_exits.height == 0 or "host" not in rank_exits.columns:
        return {}
    rows = rank_exits.filter(pl.col("rank").is_not_null() & pl.col("host").is_not_null())
    return dict(zip(rows["rank"].cast(pl.Int64).to_list(), rows["host"].to_list()))


def estimate_offsets(collectives: pl.DataFrame, hosts: Mapping[int, str]) -> dict[str, int]:
    """Each host's clock offset from the reference host (the lowest rank's) in ns: the median, over
    the collectives completed on both hosts, of the difference between their median exit times."""
    if len(set(hosts.values())) < 2 or collectives.height == 0:
        return {}
    ref = hosts[min(hosts)]
    mapping = pl.DataFrame({"rank": list(hosts), "host": list(hosts.values())},
                           schema={"rank": collectives.schema["rank"], "host": pl.Utf8})
    c = collectives.filter(pl.col("peer").is_null() & pl.col("ok").fill_null(False) & pl.col("exit_ns").is_not_null())
    per_host = (c.select("rank", "process_group", "seq", "exit_ns").join(mapping, on="rank")
                .group_by("process_group", "seq", "host").agg(exit=pl.col("exit_ns").median()))
    base = per_host.filter(pl.col("host") == ref).select("process_group", "seq", ref_exit="exit")
    diffs = (per_host.filter(pl.col("host") != ref).join(base, on=["process_group", "seq"])
             .group_by("host").agg(offset=(pl.col("exit") - pl.col("ref_exit")).median(), n=pl.len()))
    offsets = {h: 0 for h in set(hosts.values())}
    for host, offset, n in diffs.iter_rows():
        if n >= MIN_SHARED_COLLECTIVES and offset is not None:
            offsets[host] = int(round(offset))
    return dict(sorted(offsets.items()))


def shift_frames(frames: Any, hosts: Mapping[int, str], offsets: Mapping[str, int]) -> Any:
    """The frames with every timestamp of each host's ranks moved onto the reference host's clock."""
    by_rank = {rank: offsets.get(host, 0) for rank, host in hosts.items()}
    if not any(by_rank.values()):
        return frames
    shift = pl.DataFrame({"rank": list(by_rank), "_shift": list(by_rank.values())},
                         schema={"rank": pl.Int64, "_shift": pl.Int64})
    changes = {}
    for name, columns in _TIME_COLUMNS.items():
        frame = getattr(frames, name)
        present = [col for col in columns if col in frame.columns]
        if frame.height == 0 or "rank" not in frame.columns or not present:
            continue
        dtype = frame.schema["rank"]
        joined = frame.join(shift.with_columns(pl.col("rank").cast(dtype)), on="rank", how="left")
        changes[name] = joined.with_columns(
            [(pl.col(col) - pl.col("_shift").fill_null(0)).cast(frame.schema[col]) for col in present]
        ).drop("_shift")
    return dataclasses.replace(frames, **changes)


def align_clocks(frames: Any) -> Any:
    """The frames on one clock, with `clock_offsets` set ({} for a single-host run: nothing to do)."""
    hosts = host_of_rank(frames.rank_exits)
    offsets = estimate_offsets(frames.collectives, hosts)
    aligned = shift_frames(frames, hosts, offsets) if offsets else frames
    return dataclasses.replace(aligned, clock_offsets=offsets)


def clock_evidence(findings: list[Any], frames: Any) -> list[Any]:
    """Add the host clock offsets (ms, as estimated and applied) and the subject's host to each
    finding's evidence of a multi-host run; single-host findings are returned unchanged."""
    if not frames.clock_offsets:
        return findings
    hosts = host_of_rank(frames.rank_exits)
    offsets_ms = {h: round(v / 1e6, 3) for h, v in frames.clock_offsets.items()}
    out = []
    for f in findings:
        extra: dict[str, Any] = {"clock_offsets_ms": offsets_ms}
        if f.subject.startswith("rank:") and f.subject[5:].isdigit() and int(f.subject[5:]) in hosts:
            extra["host"] = hosts[int(f.subject[5:])]
        out.append(dataclasses.replace(f, evidence={**f.evidence, **extra}))
    return out
