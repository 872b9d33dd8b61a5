"""Accuracy of `tracekit anomalies` on real torchrun jobs: a fault matrix vs the naive slowest-rank baseline.

    python benchmarks/bench_collectives_accuracy.py                      # the full matrix (long on 2 cores)
    python benchmarks/bench_collectives_accuracy.py --worlds 4 --ranks 1 --healthy 3 --kinds slow_rank,hang

Every run is `tracekit record -- torchrun ... fixtures/ddp_job.py --fault KIND --fault-rank R` (slow_link:
`fixtures/netns_launch.py`, every rank in its own network namespace; skipped without root). Prints per
fault kind: top-1 localization accuracy (the most certain finding names the culprit *and* the kind),
detection delay in steps after onset, and beside it the naive baseline ("the rank with the slowest mean
step time"); then false findings on healthy runs. The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "fixtures" / "ddp_job.py"
LAUNCH = ROOT / "fixtures" / "netns_launch.py"
KINDS = {"slow_rank": "straggler", "throttle": "throttle", "hang": "hang", "crash": "crash", "nan": "nonfinite",
         "slow_link": "slow_link"}


def run_job(db: Path, name: str, world: int, fault: str, rank: int, steps: int, onset: int, seed: int) -> str | None:
    job = ["--steps", str(steps), "--fault", fault, "--fault-rank", str(rank), "--fault-step", str(onset),
           "--seed", str(seed), "--pg-timeout", "5"]
    if fault == "slow_link":
        cmd = [sys.executable, str(LAUNCH), "--nproc", str(world), "--", str(JOB), *job]
    else:
        cmd = ["torchrun", "--nproc-per-node", str(world), "--master-port", str(29600 + seed % 300), str(JOB), *job]
    proc = subprocess.run([sys.executable, "-m", "tracekit", "record", "--db", str(db), "--run", name,
                           "--kind", "training", "--", *cmd], capture_output=True, text=True, timeout=900)
    if proc.returncode == 77:
        return None
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else None


def analyse(db: Path, run_id: str) -> tuple[list[dict], list[dict]]:
    from tracekit.analysis.collectives import detect, frames_from_store, naive_slowest_rank, Thresholds
    from tracekit.store.db import connect

    with connect(db, read_only=True) as con:
        frames = frames_from_store(con, run_id)
    return ([f.to_dict() for f in detect(frames)], [f.to_dict() for f in naive_slowest_rank(frames, Thresholds())])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worlds", default="4,8")
    p.add_argument("--ranks", type=int, default=2, help="culprit ranks per (kind, world)")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--healthy", type=int, default=10)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--onset", type=int, default=8)
    p.add_argument("--out", default=None, help="keep the store here (default: a temporary directory)")
    p.add_argument("--reanalyse", metavar="DIR", default=None,
                   help="re-run the detectors over the runs a previous invocation stored in DIR (no new jobs)")
    args = p.parse_args()
    if args.reanalyse:
        report(reanalyse(Path(args.reanalyse) / "bench.duckdb", args.onset), time.monotonic())
        return
    workdir = Path(args.out or tempfile.mkdtemp(prefix="tk-bench-acc-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "bench.duckdb"
    os.environ["TRACEKIT_SPOOL_DIR"] = str(workdir / "spool")
    plan = []
    seed = 0
    for world in [int(w) for w in args.worlds.split(",")]:
        culprits = [1, world - 1, world // 2][: args.ranks]
        for fault in args.kinds.split(","):
            for rank in culprits:
                seed += 1
                plan.append((fault, world, rank, seed))
        for i in range(args.healthy if world == int(args.worlds.split(",")[0]) else 0):
            seed += 1
            plan.append(("none", world, -1, seed))
    results = []
    started = time.monotonic()
    for fault, world, rank, seed in plan:
        name = f"{fault}-w{world}-r{rank}-s{seed}"
        t0 = time.monotonic()
        run_id = run_job(db, name, world, fault, max(rank, 0), args.steps, args.onset, seed)
        if run_id is None:
            print(f"{name}: skipped (the machine cannot run it)", file=sys.stderr, flush=True)
            continue
        results.append(score(db, run_id, fault, world, rank, args.onset))
        results[-1]["seconds"] = round(time.monotonic() - t0, 1)
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    report(results, started)


def score(db: Path, run_id: str, fault: str, world: int, rank: int, onset: int) -> dict:
    found, naive = analyse(db, run_id)
    top = found[0] if found else None
    expect_subject = None
    if fault == "slow_link":
        peer = (rank + 1) % world
        expect_subject = f"link:{min(rank, peer)}-{max(rank, peer)}"
    elif fault != "none":
        expect_subject = f"rank:{rank}"
    hit = bool(top and fault != "none" and top["subject"] == expect_subject and top["kind"] == KINDS[fault])
    naive_hit = bool(naive and fault not in ("none", "slow_link") and naive[0]["subject"] == expect_subject)
    delay = (top["first_step"] - onset) if hit and top.get("first_step") is not None else None
    return {"fault": fault, "world": world, "rank": rank, "hit": hit, "naive_hit": naive_hit, "delay": delay,
            "findings": len(found), "top": top and f"{top['kind']} {top['subject']}"}


def reanalyse(db: Path, onset: int) -> list[dict]:
    from tracekit.store.db import connect

    with connect(db, read_only=True) as con:
        runs = con.execute("SELECT run_id, name FROM runs WHERE kind = 'training' ORDER BY started_ns").fetchall()
    results = []
    for run_id, name in runs:
        match = re.fullmatch(r"(\w+)-w(\d+)-r(-?\d+)-s(\d+)", name)
        if match is None:
            continue
        fault, world, rank = match.group(1), int(match.group(2)), int(match.group(3))
        results.append(score(db, run_id, fault, world, rank, onset))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def report(results: list[dict], started: float) -> None:
    summary = summarize(results)
    print(f"\n{'fault':<10} {'runs':>4} {'top-1':>7} {'naive':>7} {'delay (median/max)':>20}")
    for fault, row in summary["per_kind"].items():
        print(f"{fault:<10} {row['runs']:>4} {row['accuracy']:>7.0%} {row['naive_accuracy']:>7.0%} "
              f"{str(row['delay_median']) + ' / ' + str(row['delay_max']):>20}")
    h = summary["healthy"]
    print(f"healthy runs: {h['runs']}, runs with any finding: {h['runs_with_findings']} "
          f"(naive baseline blames a rank in {h['naive_blames']} of {h['runs']}); "
          f"analysis wall time {time.monotonic() - started:.0f} s")
    overall = summary["overall_accuracy"]
    print(json.dumps({"name": "collectives_top1_accuracy", "value": overall, "unit": "fraction",
                      "baseline": "naive slowest mean step time", "baseline_value": summary["overall_naive"],
                      "ratio": round(overall / summary["overall_naive"], 2) if summary["overall_naive"] else None,
                      "max_delay_steps": summary["max_delay"],
                      "false_findings_healthy": h["runs_with_findings"], "healthy_runs": h["runs"],
                      "per_kind": summary["per_kind"]}))


def summarize(results: list[dict]) -> dict:
    per_kind = {}
    faulty = [r for r in results if r["fault"] != "none"]
    for fault in dict.fromkeys(r["fault"] for r in faulty):
        rows = [r for r in faulty if r["fault"] == fault]
        delays = [r["delay"] for r in rows if r["delay"] is not None]
        per_kind[fault] = {"runs": len(rows), "accuracy": round(sum(r["hit"] for r in rows) / len(rows), 3),
                           "naive_accuracy": round(sum(r["naive_hit"] for r in rows) / len(rows), 3),
                           "delay_median": statistics.median(delays) if delays else None,
                           "delay_max": max(delays) if delays else None}
    healthy = [r for r in results if r["fault"] == "none"]
    delays = [r["delay"] for r in faulty if r["delay"] is not None]
    return {
        "per_kind": per_kind,
        "overall_accuracy": round(sum(r["hit"] for r in faulty) / len(faulty), 3) if faulty else None,
        "overall_naive": round(sum(r["naive_hit"] for r in faulty) / len(faulty), 3) if faulty else None,
        "max_delay": max(delays) if delays else None,
        "healthy": {"runs": len(healthy), "runs_with_findings": sum(r["findings"] > 0 for r in healthy),
                    "naive_blames": len(healthy)},
    }


if __name__ == "__main__":
    main()
