"""Scale of the collective-anomaly detection: 1,024 ranks x 1,000 steps x 8 collectives (8 M rows) in < 10 s;
8,192 ranks x 500 steps x 8 (33 M rows) in < 15 s and < 8 GiB; a live poll at 1,024 ranks in < 1 s.

    python benchmarks/bench_collectives_scale.py [--ranks 1024 --steps 1000 --per-step 8]
    python benchmarks/bench_collectives_scale.py --ranks 8192 --steps 500

Reading and detecting run in a fresh child process, so its peak memory (ru_maxrss) is detection's own.

Builds a synthetic job (arrival noise on every rank, one straggler from step 500), loads it into a real
DuckDB store, then times (a) reading the run's frames back and (b) running every detector. Checks that
the straggler is named. The baseline is a single DuckDB `GROUP BY` over the same table (the least a
per-rank analysis must do). The read (a) is also timed alone, `--repeats` times in fresh processes
alternated with its own baseline: a plain `SELECT` of the same columns of the run fetched to Arrow
(what the read did before it learned to skip constant columns and to code text). With ``--against REV``
the read of tracekit at git revision REV (a temporary worktree, its own store written by its own code) is
timed in the same alternation, so a speed-up against earlier code is measured in one run:

    python benchmarks/bench_collectives_scale.py --against 64a09cf

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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
    def repeated(value: str) -> pa.DictionaryArray:  # one string for every row, without n Python strings
        return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int8)), pa.array([value]))

    source = pa.DictionaryArray.from_arrays(pa.array((k == per_step - 1).astype(np.int8)), pa.array(["ddp", "call"]))
    return pa.table({
        "rank": rank, "world_size": np.full(n, ranks, np.int32), "process_group": repeated("default"),
        "seq": seq, "op": repeated("all_reduce"), "bytes": np.full(n, 1 << 20, np.int64),
        "dtype": repeated("float32"), "enter_ns": enter, "exit_ns": exit_, "step": step,
        "ok": np.ones(n, bool), "source": source,
    })


def store(table: pa.Table, db: Path):
    """A store at ``db`` holding ``table`` as run "scale"'s collectives (written by whichever tracekit is imported)."""
    from tracekit.store.db import connect

    con = connect(db)
    con.register("synthetic", table)
    con.execute("INSERT INTO collectives BY NAME SELECT 'scale' AS run_id, * FROM synthetic")
    con.unregister("synthetic")
    return con


def earlier_tree(rev: str, table: pa.Table, tmp: Path) -> Path:
    """A worktree of this repository at ``rev`` holding a store of ``table`` written by that revision's code."""
    import pyarrow.ipc

    tree = tmp / "earlier"
    out = subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], capture_output=True, text=True,
                         cwd=Path(__file__).parent)
    if out.returncode:
        sys.exit(f"error: cannot check out revision {rev!r} of this repository: {out.stderr.strip()}")
    with pyarrow.ipc.new_file(tmp / "scale.arrow", table.schema) as writer:
        writer.write_table(table)
    subprocess.run([sys.executable, __file__, "--store", str(tmp / "scale.arrow"), str(tree / "scale.duckdb")],
                   check=True, env=tree_env(tree))
    (tmp / "scale.arrow").unlink()
    return tree


def tree_env(tree: Path | None) -> dict[str, str] | None:
    """The environment of a child importing tracekit from ``tree`` (None: this checkout's, as installed)."""
    if tree is None:
        return None
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}


def measure_detection(db: Path, run_id: str, live_steps: int | None, mode: str = "detect") -> dict:
    """In a fresh process (so its peak memory is detection's own): read the run's frames and detect, or
    (live_steps) one live poll: read the last `live_steps` steps and detect. Prints one JSON line.
    Mode "load": only read the frames; "plain": only the baseline read (a plain SELECT to Arrow)."""
    import resource

    import polars as pl

    from tracekit.analysis.collectives import RunFrames, detect, frames_from_store
    from tracekit.store.db import connect

    with connect(db, read_only=True) as con:
        t0 = time.perf_counter()
        c0 = time.process_time()
        if mode == "plain":
            from tracekit.store.collectives import _COLLECTIVES_SQL

            rows = con.sql(_COLLECTIVES_SQL, params={"run": run_id}).to_arrow_table().num_rows
            return {"load_s": round(time.perf_counter() - t0, 3), "load_cpu_s": round(time.process_time() - c0, 3),
                    "rows": rows}
        if live_steps:
            from tracekit.store.live import window_tables

            frames = RunFrames(**{k: pl.from_arrow(v) for k, v in window_tables(con, run_id, live_steps).items()})
        else:
            frames = frames_from_store(con, run_id)
        load_s = time.perf_counter() - t0
        load_cpu_s = time.process_time() - c0
    if mode == "load":
        import tracekit

        return {"load_s": round(load_s, 3), "load_cpu_s": round(load_cpu_s, 3), "rows": frames.collectives.height,
                "tracekit": tracekit.__file__}
    t0 = time.perf_counter()
    findings = detect(frames)
    detect_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    top = findings[0] if findings else None
    return {"load_s": round(load_s, 2), "detect_s": round(detect_s, 2), "peak_rss_gib": round(peak / 2**30, 2),
            "top": None if top is None else f"{top.kind} {top.subject} from step {top.first_step}"}


def measure_all(args: argparse.Namespace, db: Path, earlier: Path | None) -> tuple[dict, dict, dict | None]:
    """The fresh-process measurements: the reads alternated (this code's, the plain SELECT, the earlier
    revision's), then one read + detect and one live poll."""
    def child(live: int, mode: str = "detect", tree: Path | None = None) -> dict:
        out = subprocess.run([sys.executable, __file__, "--measure", str(tree / "scale.duckdb" if tree else db),
                              str(live), mode], capture_output=True, text=True, check=True, env=tree_env(tree))
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        if tree and not measured["tracekit"].startswith(str(tree)):
            sys.exit(f"error: the read at {args.against} imported tracekit from {measured['tracekit']}")
        return measured

    reads: dict[str, list[dict]] = {"load": [], "plain": [], **({"earlier": []} if earlier else {})}
    for _ in range(args.repeats):  # alternated, so a change in the machine's load falls on all
        for mode in reads:
            reads[mode].append(child(0, "load", earlier) if mode == "earlier" else child(0, mode))
    full = child(0)
    live = child(args.live_steps) if args.live_steps else None
    return reads, full, live


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=1024)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--per-step", type=int, default=8)
    p.add_argument("--live-steps", type=int, default=64, help="also time one live poll over this many last steps "
                   "(what `anomalies --follow` reads each second; 0: skip)")
    p.add_argument("--repeats", type=int, default=3, help="fresh-process reads of the frames and of the baseline "
                   "read, alternated (medians reported; 0: skip)")
    p.add_argument("--against", metavar="REV", help="also time the read of tracekit at this git revision "
                   "(e.g. the commit before a change), alternated with this one's")
    p.add_argument("--measure", nargs=3, metavar=("DB", "LIVE_STEPS", "MODE"), help=argparse.SUPPRESS)
    p.add_argument("--store", nargs=2, metavar=("ARROW", "DB"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:  # the child process of the separate-process measurement
        db, live_steps, mode = args.measure
        print(json.dumps(measure_detection(Path(db), "scale", int(live_steps) or None, mode)))
        return
    if args.store:  # the child that writes an earlier revision's store with that revision's code
        import pyarrow.ipc

        store(pyarrow.ipc.open_file(args.store[0]).read_all(), Path(args.store[1])).close()
        return
    culprit, onset = args.ranks * 2 // 3, args.steps // 2
    t0 = time.perf_counter()
    table = synthetic(args.ranks, args.steps, args.per_step, culprit, onset)
    gen_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "scale.duckdb"
        con = store(table, db)
        t0 = time.perf_counter()
        con.execute("SELECT rank, avg(exit_ns - enter_ns) FROM collectives WHERE run_id = 'scale' GROUP BY rank").fetchall()
        baseline_s = time.perf_counter() - t0
        con.close()
        earlier = earlier_tree(args.against, table, Path(tmp)) if args.against else None
        del table
        try:
            reads, full, live = measure_all(args, db, earlier)
        finally:
            if earlier:
                subprocess.run(["git", "worktree", "remove", "--force", str(earlier)], capture_output=True,
                               cwd=Path(__file__).parent)
    read = {mode: {k: float(np.median([r[k] for r in runs])) for k in ("load_s", "load_cpu_s")}
            for mode, runs in reads.items() if runs}
    load_s, detect_s = full["load_s"], full["detect_s"]
    named = bool(full["top"] and full["top"].split()[1] == f"rank:{culprit}")
    total = load_s + detect_s
    rows = args.ranks * args.steps * args.per_step
    print(f"rows: {rows:,} ({args.ranks} ranks x {args.steps} steps x {args.per_step}); generated in {gen_s:.1f} s")
    print(f"read frames from DuckDB: {load_s:.2f} s; detect: {detect_s:.2f} s; total {total:.2f} s; "
          f"peak memory of the detecting process {full['peak_rss_gib']} GiB")
    print(f"baseline (one DuckDB GROUP BY rank): {baseline_s:.2f} s; ratio {total / baseline_s:.1f}x")
    print(f"top finding: {full['top']} (injected: straggler rank:{culprit} from step {onset}); named: {named}")
    if read:
        load, plain = read["load"], read["plain"]
        print(f"read alone, median of {args.repeats} fresh processes: {load['load_s']:.3f} s ({load['load_cpu_s']:.3f} "
              f"CPU-s); baseline (plain SELECT of the same columns to Arrow): {plain['load_s']:.3f} s "
              f"({plain['load_cpu_s']:.3f} CPU-s); the read is {plain['load_s'] / load['load_s']:.2f}x as fast "
              f"({plain['load_cpu_s'] / load['load_cpu_s']:.2f}x in CPU)")
    if "earlier" in read:
        was = read["earlier"]
        print(f"read at {args.against}, same alternation: {was['load_s']:.3f} s ({was['load_cpu_s']:.3f} CPU-s); "
              f"this code is {was['load_s'] / read['load']['load_s']:.2f}x as fast "
              f"({was['load_cpu_s'] / read['load']['load_cpu_s']:.2f}x in CPU)")
    if live:
        print(f"one live poll (last {args.live_steps} steps): read {live['load_s']:.2f} s + detect {live['detect_s']:.2f} s "
              f"= {live['load_s'] + live['detect_s']:.2f} s; top {live['top']}")
    print(json.dumps({"name": "collectives_detect", "value": round(total, 2), "unit": "s",
                      "detect_s": detect_s, "load_s": load_s, "rows": rows, "peak_rss_gib": full["peak_rss_gib"],
                      "live_poll_s": None if not live else round(live["load_s"] + live["detect_s"], 2),
                      "baseline": "duckdb group by rank", "baseline_value": round(baseline_s, 3),
                      "ratio": round(total / baseline_s, 1), "culprit_named": named,
                      "read_s": read["load"]["load_s"] if read else None,
                      "read_cpu_s": read["load"]["load_cpu_s"] if read else None,
                      "read_baseline": "plain select to arrow",
                      "read_baseline_s": read["plain"]["load_s"] if read else None,
                      "read_speedup": round(read["plain"]["load_s"] / read["load"]["load_s"], 2) if read else None,
                      "earlier": args.against, "earlier_read_s": read["earlier"]["load_s"] if "earlier" in read else None,
                      "speedup_vs_earlier": round(read["earlier"]["load_s"] / read["load"]["load_s"], 2)
                      if "earlier" in read else None}))


if __name__ == "__main__":
    main()
