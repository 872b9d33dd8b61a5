"""The launcher's view of a crash: the first torchrun worker to fail, from the exits its launcher recorded.

When a rank dies early the others often die before their first flush, so the records alone cannot
tell who stopped first (every rank's records stop at the same place). torchrun saw it: under
``tracekit record`` its launcher records each worker's exit (``worker_exits``: code, signal, wall
time; capture/torch/launcher.py). The first worker to fail, clearly before any other, is the crashed
rank; the ones after it failed waiting for it, or were stopped by the launcher (SIGTERM/SIGKILL, or
exit 143/137 when a handler turned the signal into a code). Clearly before: by 15 ms or more, or seen
on its own (exits the launcher found in one wake-up share a time) and failing unlike every later
failure (its own exit code or signal: the victims of a crash can exit within a few ms of it). A hang
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
>>> first_failure(quick.with_columns(ts_ns=pl.Series([0, 0, 7_000_000, 9_000_000])), lambda rank: 0) is None
True
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


def first_failure(exits: pl.DataFrame, next_step: Callable[[int], int]) -> dict[str, Any] | None:
    """The crashed rank from the launcher's record of worker exits, as a finding's fields (kind, subject,
    first_step, confidence, evidence, summary), or None when no failure stands out in front."""
    if exits.height == 0:
        return None
    failed = exits.filter(pl.col("exit_code").fill_null(0).ne(0) | pl.col("signal").is_not_null()).sort("ts_ns")
    if failed.height == 0:
        return None
    first = failed.row(0, named=True)
    later = failed.slice(1)
    lead = None if later.height == 0 else int(later["ts_ns"][0]) - int(first["ts_ns"])
    # the others' own failures (not the launcher stopping them): alike when they all failed the same way
    failures = {(r["exit_code"], r["signal"]) for r in later.iter_rows(named=True)
                if r["signal"] not in _STOP_SIGNALS and r["exit_code"] not in _STOPPED_CODES}
    # a failure unlike all of them (its own exit code or signal), seen on its own before any other:
    # victims of a crash can exit within a few ms of it, while a hang's timeouts all fail alike (and
    # a first failure followed only by stops, as when the launcher stops the rest of a hang, needs the lead)
    unlike = bool(failures) and lead is not None and lead > 0 and (first["exit_code"], first["signal"]) not in failures
    if lead is not None and lead < MIN_LEAD_NS and not unlike:
        return None  # no failure stands out in front: a hang's timeouts, or a job-wide failure
    stopped_first = first["signal"] in _STOP_SIGNALS or first["exit_code"] in _STOPPED_CODES
    if stopped_first and later.height:
        return None  # the first one out was stopped, not failed: nothing to say
    confidence = 0.95 if lead is None or lead >= SURE_LEAD_NS else 0.9
    rank = int(first["rank"])
    how = f"signal {first['signal']}" if first["signal"] is not None else f"exit code {first['exit_code']}"
    exits_list = [{"rank": int(r["rank"]), "exit_code": r["exit_code"], "signal": r["signal"],
                   "after_first_ms": round((int(r["ts_ns"]) - int(first["ts_ns"])) / MS, 1)}
                  for r in failed.iter_rows(named=True)]
    evidence = {"exit_code": first["exit_code"], "signal": first["signal"], "host": first.get("host"),
                "next_failure_after_ms": None if lead is None else round(lead / MS, 1), "worker_exits": exits_list}
    summary = (f"rank {rank} was the first worker to fail ({how}), "
               + (f"{lead / MS:.0f} ms before any other; " if lead is not None else "the only one; ")
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
