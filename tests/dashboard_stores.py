"""Small stores for the dashboard tests, written through the real capture and ingest paths.

Training runs are per-rank spool files written with `tracekit.capture.spool.Spool` (one per rank,
the records the torch hooks write: spans, steps, collectives) and loaded by `ingest_paths`; agent
runs are Who&When logs imported by the real importer; analyses run for real on the result.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from tracekit.capture.spool import Spool, write_run_manifest
from tracekit.ingest import ingest_paths

BASE_NS = 1_763_000_000 * 10**9
MS = 1_000_000
SCRIPT = "<script>document.title='pwned'</script><b>bold?</b>"


def _hex(n: int) -> str:
    return uuid.uuid4().hex[:n]


def write_training_run(
    spool_root: Path, name: str, *, ranks: int = 4, steps: int = 30, slow_rank: int | None = None,
    slow_from: int = 10, base_ns: int = BASE_NS,
) -> str:
    """Per-rank spool files of a data-parallel job: each step a compute phase then one all-reduce
    that every rank leaves together once the last one arrived. `slow_rank` computes 3x slower from
    step `slow_from` on (a straggler: its peers wait for it inside the collective)."""
    run_id = uuid.uuid4().hex
    run_dir = spool_root / run_id
    write_run_manifest(run_dir, {"run_id": run_id, "name": name, "kind": "training", "started_ns": base_ns,
                                 "attributes": {"world_size": ranks}, "pid": 0})
    spools = [Spool(run_dir, run_id, f"rank:{r}") for r in range(ranks)]
    trace = _hex(32)
    t = base_ns
    for step in range(steps):
        compute = [40 * MS + r * MS // 3 + (80 * MS if r == slow_rank and step >= slow_from else 0) for r in range(ranks)]
        arrive = [t + c for c in compute]
        leave = max(arrive) + 5 * MS
        for r, sp in enumerate(spools):
            step_span = _hex(16)
            sp.write("spans", {"trace_id": trace, "span_id": step_span, "parent_id": None, "name": "train_step",
                               "node": f"rank:{r}", "kind": "internal", "start_ns": t, "end_ns": leave,
                               "status": "ok", "attributes": json.dumps({"step": step, "rank": r})})
            sp.write("spans", {"trace_id": trace, "span_id": _hex(16), "parent_id": step_span, "name": "forward_backward",
                               "node": f"rank:{r}", "start_ns": t, "end_ns": arrive[r], "status": "ok",
                               "attributes": json.dumps({"step": step})})
            reduce_span = _hex(16)
            sp.write("spans", {"trace_id": trace, "span_id": reduce_span, "parent_id": step_span, "name": "all_reduce",
                               "node": f"rank:{r}", "start_ns": arrive[r], "end_ns": leave, "status": "ok",
                               "attributes": json.dumps({"bytes": 4 << 20})})
            sp.write("events", {"span_id": reduce_span, "ts_ns": arrive[r], "name": "enter", "attributes": "{}"})
            sp.write("steps", {"rank": r, "step": step, "start_ns": t, "end_ns": leave, "loss": 2.0 / (step + 1),
                               "grad_norm": 1.0, "nonfinite": False})
            sp.write("collectives", {"rank": r, "world_size": ranks, "process_group": "0", "seq": step,
                                     "op": "allreduce", "bytes": 4 << 20, "dtype": "float32", "enter_ns": arrive[r],
                                     "exit_ns": leave, "step": step, "ok": True})
        t = leave + MS
    for sp in spools:
        sp.close()
    write_run_manifest(run_dir, {"run_id": run_id, "name": name, "kind": "training", "started_ns": base_ns,
                                 "ended_ns": t, "exit_code": 0, "attributes": {"world_size": ranks}, "pid": 0})
    return run_id


def whowhen_log(directory: Path) -> Path:
    """A small Who&When-format log: the WebSurfer reports a wrong number at step 2 that the Assistant
    and the Orchestrator carry to a wrong final answer. One message holds HTML and JavaScript."""
    history = [
        {"role": "Orchestrator (thought)", "content": "Plan: ask WebSurfer for the population of Lisbon in 2021, "
         "then have Assistant compute the answer."},
        {"role": "Orchestrator (-> WebSurfer)", "content": "WebSurfer, please find the population of Lisbon "
         "(census 2021) on https://www.ine.pt/census2021 and report the number."},
        {"role": "WebSurfer", "content": "I could not load https://www.ine.pt/census2021 (error 404). The page "
         f"I found instead says the population is 5,450,000. {SCRIPT}"},
        {"role": "Orchestrator (thought)", "content": "WebSurfer reported 5,450,000. Assistant, halve 5,450,000."},
        {"role": "Assistant", "content": "Half of 5,450,000 is 2,725,000."},
        {"role": "Orchestrator (final answer)", "content": "FINAL ANSWER: 2,725,000"},
    ]
    log = {"is_correct": False, "question": "What is half the 2021 census population of Lisbon (city)?",
           "question_ID": "tk-demo-1", "ground_truth": "272,704", "mistake_agent": "WebSurfer",
           "mistake_step": "2", "mistake_reason": "Reported the metropolitan population instead of the city's.",
           "history": history}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "1.json"
    path.write_text(json.dumps(log))
    return path


def ingest(spool_root: Path, db: Path) -> Any:
    return ingest_paths([spool_root], db)
