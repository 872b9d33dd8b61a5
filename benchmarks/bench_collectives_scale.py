"""Scale of the collective-anomaly detection: 1,024 ranks x 1,000 steps x 8 collectives (8 M rows) in < 10 s.

    python benchmarks/bench_collectives_scale.py [--ranks 1024 --steps 1000 --per-step 8]

Builds a synthetic job (arrival noise on every rank, one straggler from step 500), loads it into a real
DuckDB store, then times (a) reading the run's frames back and (b) running every detector. Checks that
the straggler is named. The baseline is a single DuckDB `GROUP BY` over the same table (the least a
per-rank analysis must do). The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

MS = 1_000_000


def synthetic(ranks: int, steps: int, per_step: int, culprit: int, onset: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = ranks * steps * per_step
    step = np.repeat(np.arange(steps, dtype=np.int64), ranks * per_step)
    k = np.tile(np.repeat(np.arange(per_step, dtype=np.int64), ranks), steps)
    rank = np.tile(np.arange(ranks, dtype=np.int32), steps * per_step)
    seq = step * per_step + k
    base = 1_800_000_000 * 10**9 + step * 100 * MS + k * 5 * MS
    lag = rng.gamma(2.0, 1.0 * MS, n).astype(np.int64)
    lag += np.where((rank == culprit) & (step >= onset), 40 * MS, 0)
    enter = base + lag
    finish = (base.reshape(-1, ranks).max(axis=1) + lag.reshape(-1, ranks).max(axis=1)).repeat(ranks)
    exit_ = finish + rng.integers(100_000, 400_000, n)
    return pa.table({
        "rank": rank, "world_size": np.full(n, ranks, np.int32), "process_group": np.full(n, "default"),
        "seq": seq, "op": np.full(n, "all_reduce"), "bytes": np.full(n, 1 << 20, np.int64),
        "dtype": np.full(n, "float32"), "enter_ns": enter, "exit_ns": exit_, "step": step,
        "ok": np.ones(n, bool), "source": np.where(k < per_step - 1, "ddp", "call"),
    })


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=1024)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--per-step", type=int, default=8)
    args = p.parse_args()
    from tracekit.analysis.collectives import detect, frames_from_store
    from tracekit.store.db import connect

    culprit, onset = args.ranks * 2 // 3, args.steps // 2
    t0 = time.perf_counter()
    table = synthetic(args.ranks, args.steps, args.per_step, culprit, onset)
    gen_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "scale.duckdb"
        con = connect(db)
        con.register("synthetic", table)
        con.execute("INSERT INTO collectives BY NAME SELECT 'scale' AS run_id, * FROM synthetic")
        con.unregister("synthetic")
        t0 = time.perf_counter()
        con.execute("SELECT rank, avg(exit_ns - enter_ns) FROM collectives WHERE run_id = 'scale' GROUP BY rank").fetchall()
        baseline_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        frames = frames_from_store(con, "scale")
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        findings = detect(frames)
        detect_s = time.perf_counter() - t0
        con.close()
    top = findings[0] if findings else None
    named = bool(top and top.subject == f"rank:{culprit}")
    total = load_s + detect_s
    print(f"rows: {table.num_rows:,} ({args.ranks} ranks x {args.steps} steps x {args.per_step}); generated in {gen_s:.1f} s")
    print(f"read frames from DuckDB: {load_s:.2f} s; detect: {detect_s:.2f} s; total {total:.2f} s (target < 10 s)")
    print(f"baseline (one DuckDB GROUP BY rank): {baseline_s:.2f} s; ratio {total / baseline_s:.1f}x")
    print(f"top finding: {top.kind + ' ' + top.subject + ' from step ' + str(top.first_step) if top else None} "
          f"(injected: straggler rank:{culprit} from step {onset}); named: {named}")
    print(json.dumps({"name": "collectives_detect_8m_rows", "value": round(total, 2), "unit": "s",
                      "detect_s": round(detect_s, 2), "load_s": round(load_s, 2), "rows": table.num_rows,
                      "baseline": "duckdb group by rank", "baseline_value": round(baseline_s, 3),
                      "ratio": round(total / baseline_s, 1), "culprit_named": named}))


if __name__ == "__main__":
    main()
