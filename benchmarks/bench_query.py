"""Queries over a synthetic 10-million-span store through `tracekit sql`: per-node error counts and p99 durations.

Each query runs as a real `tracekit sql ... --format json` subprocess (CLI start-up included), against a
baseline in the same run: pandas loading the needed columns from the same store and grouping in memory.
The spans are stored both ways a store holds them, and each is timed: in the native table, and as Parquet
segments written by tracekit's own segment writer (what a big ingest makes; see tracekit.store.segments).

    python benchmarks/bench_query.py [--spans 10000000] [--keep STORE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import final_line, median  # noqa: E402

from tracekit.store.db import connect  # noqa: E402
from tracekit.store.segments import directory_of as segments_dir  # noqa: E402

QUERIES = {
    "errors_per_node": "SELECT node, count(*) FILTER (WHERE status = 'error') AS errors, count(*) AS spans "
                       "FROM spans GROUP BY node ORDER BY errors DESC",
    "p99_per_node": "SELECT node, quantile_cont(end_ns - start_ns, 0.99) / 1e6 AS p99_ms "
                    "FROM spans GROUP BY node ORDER BY p99_ms DESC",
}


def build_store(path: Path, spans: int, segmented: bool) -> None:
    con = connect(path)
    con.execute("INSERT INTO runs VALUES ('synthetic', 'training', 'synthetic-10m', 0, 1, 'ok', '{}')")
    con.execute("""
        INSERT INTO span_rows
        SELECT 'synthetic', printf('%032x', i // 50), printf('%016x', i),
               CASE WHEN i % 50 = 0 THEN NULL ELSE printf('%016x', i - i % 50) END,
               ['forward', 'backward', 'all_reduce', 'optimizer.step', 'load_batch'][1 + i % 5],
               'rank:' || (i % 64), 'internal', 1700000000000000000 + i * 1000,
               1700000000000000000 + i * 1000 + (hash(i) % 5000000)::BIGINT + 1000,
               CASE WHEN hash(i * 7) % 1000 = 0 THEN 'error' ELSE 'unset' END,
               NULL, '{}', 1
        FROM range($n) t(i)
    """, {"n": spans})
    if segmented:  # the same rows moved into segments of 1 M spans, as big ingests write them
        from tracekit.store import segments
        from tracekit.store.sql import transaction

        columns = segments.span_columns(con)
        rows = con.sql(f"SELECT {', '.join(columns)} FROM span_rows").to_arrow_table()
        with transaction(con):
            for start in range(0, rows.num_rows, 1_000_000):
                part = rows.slice(start, 1_000_000)
                segments.write_segments(con, segments.span_table([(part, "synthetic", 1, None)], columns), ["synthetic"])
            con.execute("DELETE FROM span_rows")
        con.execute("CHECKPOINT")
    con.close()


def via_cli(store: Path, query: str) -> tuple[float, list[dict]]:
    exe = shutil.which("tracekit") or "tracekit"
    t0 = time.perf_counter()
    out = subprocess.run([exe, "sql", query, "--format", "json", "--db", str(store)],
                         check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - t0, json.loads(out)


def via_pandas(store: Path, name: str) -> float:
    import duckdb

    t0 = time.perf_counter()
    con = duckdb.connect(str(store), read_only=True)
    df = con.execute("SELECT node, status, end_ns - start_ns AS d FROM spans").df()
    if name == "errors_per_node":
        df.assign(err=df.status.eq("error")).groupby("node").err.sum()
    else:
        df.groupby("node").d.quantile(0.99)
    con.close()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="build (or reuse) the store here instead of a temp dir")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tk-bench-query-"))
    try:
        figures = {}
        for storage in ("native", "segments"):
            store = (args.keep.with_name(f"{args.keep.stem}-{storage}{args.keep.suffix}") if args.keep
                     else tmp / f"{storage}.duckdb")
            if not store.exists():
                t0 = time.perf_counter()
                build_store(store, args.spans, segmented=storage == "segments")
                size = os.path.getsize(store) + sum(f.stat().st_size for f in segments_dir(store).glob("*"))
                print(f"built a {args.spans:,}-span store, spans {storage} ({size / 1e6:.0f} MB) "
                      f"in {time.perf_counter() - t0:.1f} s")
            for name, query in QUERIES.items():
                timings = []
                for _ in range(args.repeats):
                    seconds, result = via_cli(store, query)
                    timings.append(seconds)
                assert len(result) == 64, result[:3]
                baseline = via_pandas(store, name)
                figures[f"{storage}_{name}"] = (median(timings), baseline)
                print(f"{storage:8s} {name:16s}: tracekit sql {median(timings):.3f} s (median of {args.repeats}, CLI "
                      f"start included); pandas in-memory baseline {baseline:.3f} s; ratio "
                      f"{baseline / median(timings):.1f}x faster (target < 1 s)")
        worst = max(v[0] for v in figures.values())
        final_line(name="query_10m_spans_worst_s", value=round(worst, 3), unit="s",
                   baseline="pandas in-memory groupby", baseline_value=round(max(v[1] for v in figures.values()), 3),
                   ratio=round(max(v[1] for v in figures.values()) / worst, 2),
                   **{f"{k}_s": round(v[0], 3) for k, v in figures.items()}, spans=args.spans)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
