"""Live detection latency: fault onset -> first finding printed by `tracekit anomalies RUN --follow`.

    python benchmarks/bench_collectives_live.py                       # 5 runs per fault kind, 10 healthy
    python benchmarks/bench_collectives_live.py --runs 2 --healthy 2 --kinds slow_rank,hang

Each run is `tracekit record -- torchrun --nproc-per-node 4 fixtures/ddp_job.py --fault KIND` with a
follower (`tracekit anomalies RUN --follow --format json`) started beside it; each line the follower
prints is time-stamped as it arrives. The fault onset is read back from the recorded run: the wall
time the culprit finished the step before `--fault-step` (its last collective of that step); for a
crash, the time its launcher saw it exit. Per
kind: the latency of the first printed finding (median, max), and whether it named the culprit and
the kind. Healthy runs are followed to their end: every printed finding is a false alarm. The last
line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "fixtures" / "ddp_job.py"
KINDS = {"slow_rank": "straggler", "hang": "hang", "crash": "crash", "nan": "nonfinite", "throttle": "throttle"}
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import final_line  # noqa: E402


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEKIT_")}
    env.update(TRACEKIT_SPOOL_DIR=str(tmp / "spool"), TRACEKIT_DB=str(tmp / "t.duckdb"), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return env


def _onset_ns(db: Path, rank: int, step: int, fault: str) -> int | None:
    """When the fault began: a crash when its worker exited (the launcher's record; the rank's last 200 ms
    of records die with it), any other fault when the culprit finished the step before the onset step."""
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        if fault == "crash":
            row = con.execute("SELECT min(ts_ns) FROM worker_exits WHERE rank = ?", [rank]).fetchone()
        else:
            row = con.execute("SELECT max(exit_ns) FROM collectives WHERE rank = ? AND step = ?",
                              [rank, step - 1]).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def one_run(fault: str, rank: int, steps: int, onset: int, seed: int, world: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="tk-live-") as raw:
        tmp = Path(raw)
        name = f"{fault}{seed}"
        env = _env(tmp)
        job_args = ["--steps", str(steps), "--fault", fault, "--fault-rank", str(rank), "--fault-step", str(onset),
                    "--seed", str(seed), "--probe-every", "0", "--pg-timeout", "60"]
        job = subprocess.Popen(
            [sys.executable, "-m", "tracekit", "record", "--run", name, "--kind", "training", "--", "torchrun",
             "--nproc-per-node", str(world), "--master-port", str(29300 + seed % 200), str(JOB), *job_args],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        follower = subprocess.Popen([sys.executable, "-m", "tracekit", "anomalies", name, "--follow", "--format", "json"],
                                    cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: list[tuple[int, dict]] = []

        def read() -> None:
            for line in follower.stdout:  # type: ignore[union-attr]
                if line.strip():
                    lines.append((time.time_ns(), json.loads(line)))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and follower.poll() is None:
            if fault != "none" and lines:
                break  # the first finding is in: stop the job (a hang would otherwise wait 60 s)
            time.sleep(0.1)
        if job.poll() is None:
            job.send_signal(signal.SIGTERM)
        job.communicate(timeout=180)
        try:
            follower.wait(timeout=60)
        except subprocess.TimeoutExpired:
            follower.send_signal(signal.SIGTERM)
            follower.wait(timeout=30)
        reader.join(timeout=5)
        out: dict = {"fault": fault, "rank": rank, "seed": seed, "findings": [(f["kind"], f["subject"]) for _t, f in lines]}
        if fault != "none" and lines:
            onset = _onset_ns(tmp / "t.duckdb", rank, onset, fault)
            t, first = lines[0]
            out["latency_s"] = None if onset is None else round((t - onset) / 1e9, 2)
            out["correct"] = (first["kind"], first["subject"]) == (KINDS[fault], f"rank:{rank}")
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="runs per fault kind")
    p.add_argument("--healthy", type=int, default=10)
    p.add_argument("--kinds", default="slow_rank,hang,crash,nan")
    p.add_argument("--world", type=int, default=4)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--onset", type=int, default=12)
    args = p.parse_args()
    figures: dict = {}
    for fault in [k for k in args.kinds.split(",") if k]:
        results = [one_run(fault, 1 + i % (args.world - 1), args.steps, args.onset, 10 + i, args.world)
                   for i in range(args.runs)]
        latencies = [r["latency_s"] for r in results if r.get("latency_s") is not None]
        figures[fault] = {
            "runs": len(results), "correct": sum(bool(r.get("correct")) for r in results),
            "median_s": statistics.median(latencies) if latencies else None, "max_s": max(latencies, default=None),
            "latencies_s": latencies,
        }
        print(f"{fault:<10} correct {figures[fault]['correct']}/{len(results)}  latency median "
              f"{figures[fault]['median_s']} s, max {figures[fault]['max_s']} s  {latencies}", flush=True)
        for r in results:
            if not r.get("correct"):
                print(f"   miss: {r}", flush=True)
    healthy = [one_run("none", 1, args.steps // 2, args.onset, 100 + i, args.world) for i in range(args.healthy)]
    alarms = [r["findings"] for r in healthy if r["findings"]]
    figures["healthy"] = {"runs": len(healthy), "runs_with_findings": len(alarms), "findings": alarms}
    print(f"healthy    {len(healthy)} runs followed to the end, {len(alarms)} with findings {alarms}", flush=True)
    final_line(**figures)


if __name__ == "__main__":
    main()
