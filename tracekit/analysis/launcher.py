"""The launcher's view of a crash: the first torchrun worker to fail, from the exits its launcher recorded.

When a rank dies early the others often die before their first flush, so the records alone cannot
tell who stopped first (every rank's records stop at the same place). torchrun saw it: under
``tracekit record`` its launcher records each worker's exit (``worker_exits``: code, signal, wall
time; capture/torch/launcher.py). The first worker to fail, clearly before any other, is the crashed
rank; the ones after it failed waiting for it, or were stopped by the launcher (SIGTERM/SIGKILL, or
exit 143/137 when a handler turned the signal into a code). Clearly before: by 15 ms or more, or
failing unlike every other failure (its own exit code or signal: the victims of a crash can exit
within a few ms of it, and under load the launcher can find the crash and a victim in one wake-up,
where they share a time; of those, the one failing unlike all others is named, if exactly one). A hang
looks different: the waiting ranks time out together, all alike, and the hung rank is stopped last,
so no failure stands out in front and this detector says nothing.

Examples
--------
>>> import polars as pl
>>> exits = pl.DataFrame({"rank": [1, 0, 2, 3], "exit_code": [13, 1, 1, None], "signal": [None, None, None, 15],
...                       "ts_ns": [0, 120_000_000, 121_000_000, 125_000_000], "host": ["a"] * 4})
>>> f = first_failure(exits, lambda rank: 0)
>>> f["kind"], f["subject"], f["confidence"]
('crash', 'rank:1', 0.95)
>>> hang = exits.with_columns(exit_code=pl.Series([1, 1, 1, None]), ts_ns=pl.Series([0, 2_000_000, 3_000_000, 9_000_000]))
>>> first_failure(hang, lambda rank: 0) is None
True
>>> quick = exits.with_columns(ts_ns=pl.Series([0, 6_000_000, 7_000_000, 9_000_000]))  # victims within 6 ms
>>> first_failure(quick, lambda rank: 0)["subject"]
'rank:1'
>>> tie = quick.with_columns(ts_ns=pl.Series([0, 0, 7_000_000, 9_000_000]))  # rank 1 and 0 in one wake-up
>>> first_failure(tie, lambda rank: 0)["subject"]  # rank 1 failed unlike every other failure
'rank:1'
>>> two = tie.with_columns(exit_code=pl.Series([13, 7, 1, None]))  # two odd ones in one wake-up
>>> first_failure(two, lambda rank: 0) is None
True
>>> first_failure(two, lambda rank: 0, waiting=frozenset({0, 2}))["subject"]  # rank 0 failed inside a collective
'rank:1'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import polars as pl

__all__ = ["first_failure", "next_step", "merge_launcher_view", "MIN_LEAD_NS", "SURE_LEAD_NS"]

MS = 1_000_000
MIN_LEAD_NS = 15 * MS   # the first failure must precede every other by more than one launcher poll (20 ms) ...
SURE_LEAD_NS = 50 * MS  # ... and by this much for the highest confidence
_STOPPED_CODES = (143, 137)  # 128 + SIGTERM / SIGKILL: a worker whose handler turned the launcher's signal into a code
_STOP_SIGNALS = (15, 9)


def first_failure(exits: pl.DataFrame, next_step: Callable[[int], int],
                  waiting: frozenset[int] = frozenset()) -> dict[str, Any] | None:
    """The crashed rank from the launcher's record of worker exits, as a finding's fields (kind, subject,
    first_step, confidence, evidence, summary), or None when no failure stands out in front.

    ``waiting``: ranks whose own records show them failing inside a collective (a peer's error or a
    time-out): symptoms, so of two odd failures in one wake-up the other one is named."""
    if exits.height == 0:
        return None
    failed = exits.filter(pl.col("exit_code").fill_null(0).ne(0) | pl.col("signal").is_not_null()).sort("ts_ns")
    if failed.height == 0:
        return None
    first_ts = int(failed["ts_ns"][0])
    sweep = failed.filter(pl.col("ts_ns") == first_ts)  # exits the launcher found in one wake-up share a time
    later = failed.filter(pl.col("ts_ns") > first_ts)
    lead = None if later.height == 0 else int(later["ts_ns"][0]) - first_ts
    # each failure's own way of failing (exit code, signal), the launcher's stops left out: a failure
    # unlike every other failure is the odd one out -- a crash's victims fail alike (a peer error, a
    # timeout), and so do a hang's, so a hang has no odd one out
    rows = list(failed.iter_rows(named=True))
    own = [(r["exit_code"], r["signal"]) for r in rows
           if r["signal"] not in _STOP_SIGNALS and r["exit_code"] not in _STOPPED_CODES]

    def unlike(r: dict[str, Any]) -> bool:
        return len(own) > 1 and own.count((r["exit_code"], r["signal"])) == 1

    odd = [r for r in sweep.iter_rows(named=True) if unlike(r)]
    if sweep.height > 1:
        # two or more failed in the first wake-up: the one failing unlike every other failure, if exactly
        # one (or exactly one not failing inside a collective, by its own records)
        if len(odd) > 1:
            odd = [r for r in odd if int(r["rank"]) not in waiting]
        if len(odd) != 1:
            return None
        first = odd[0]
    else:
        first = sweep.row(0, named=True)
        # seen on its own: ahead by a clear lead, or failing unlike every later failure (a crash's
        # victims can exit within a few ms of it; a first failure followed only by stops needs the lead)
        if lead is not None and lead < MIN_LEAD_NS and not odd:
            return None  # no failure stands out in front: a hang's timeouts, or a job-wide failure
    stopped_first = first["signal"] in _STOP_SIGNALS or first["exit_code"] in _STOPPED_CODES
    if stopped_first and failed.height > 1:
        return None  # the first one out was stopped, not failed: nothing to say
    shared = [int(r["rank"]) for r in sweep.iter_rows(named=True) if r["rank"] != first["rank"]]
    lead = 0 if shared else lead
    confidence = 0.95 if lead is None or lead >= SURE_LEAD_NS else 0.9
    rank = int(first["rank"])
    how = f"signal {first['signal']}" if first["signal"] is not None else f"exit code {first['exit_code']}"
    order = [first, *(r for r in rows if r["rank"] != first["rank"])]
    exits_list = [{"rank": int(r["rank"]), "exit_code": r["exit_code"], "signal": r["signal"],
                   "after_first_ms": round((int(r["ts_ns"]) - first_ts) / MS, 1)} for r in order]
    evidence = {"exit_code": first["exit_code"], "signal": first["signal"], "host": first.get("host"),
                "next_failure_after_ms": None if lead is None else round(lead / MS, 1), "same_wake_up": shared,
                "worker_exits": exits_list}
    summary = (f"rank {rank} was the first worker to fail ({how}), "
               + (f"found in the same launcher wake-up as rank(s) {', '.join(map(str, shared))} and failing unlike "
                  "every other worker; " if shared
                  else f"{lead / MS:.0f} ms before any other; " if lead is not None else "the only one; ")
               + f"{max(0, len(exits_list) - 1)} others failed or were stopped after it (the launcher's record of "
               "worker exits)")
    return {"kind": "crash", "subject": f"rank:{rank}", "first_step": next_step(rank), "confidence": confidence,
            "evidence": evidence, "summary": summary}


def next_step(frames: Any, rank: int) -> int:
    """The step the rank was in when it died: one after its last recorded step (0 with no records)."""
    last = []
    for frame in (frames.collectives, frames.steps):
        if frame.height and "step" in frame.columns:
            value = frame.filter(pl.col("rank") == rank)["step"].max()
            if value is not None:
                last.append(int(value))
    return max(last) + 1 if last else 0


def merge_launcher_view(findings: list[Any]) -> list[Any]:
    """One crash finding per crashed rank: the launcher's crash merges into the records' crash of the same
    rank (the higher confidence, both evidences), and the records' crash findings of other ranks -- ranks
    that failed after it -- go. Findings of a hang from the records stand, and the launcher's crash then
    goes (the records saw a rank alive but stuck: the exits were its symptoms)."""
    launcher = [f for f in findings if f.kind == "crash" and "worker_exits" in f.evidence]
    if not launcher:
        return findings
    rest = [f for f in findings if f not in launcher]
    if any(f.kind == "hang" for f in rest):
        return rest
    crash = launcher[0]
    same = [f for f in rest if f.kind == "crash" and f.subject == crash.subject]
    if same:
        evidence = {**same[0].evidence, "launcher": crash.evidence}
        crash = dataclasses.replace(same[0], confidence=max(crash.confidence, same[0].confidence), evidence=evidence,
                                    summary=f"{same[0].summary}; {crash.summary}")
    return [crash, *(f for f in rest if f.kind != "crash")]
