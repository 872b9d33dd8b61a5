"""Spans per second from spool files into DuckDB: `tracekit ingest` against a naive row-by-row `executemany`.

Spool files are written by the real `SpoolStream` writer (8 processes' worth of files, realistic span records
with attributes and a few exception events), then synced to disk, as they are when a job has ended. Each
repeat ingests them into a fresh store; the median rate is reported (this machine is shared and noisy). The
baseline parses the same lines with `json.loads` and inserts them with `executemany` into the same schema;
it runs on a slice of the data and its rate is compared.

    python benchmarks/bench_ingest.py [--spans 1000000] [--repeat 3] [--baseline-spans 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import final_line, median  # noqa: E402

from tracekit.capture.spool import Spool  # noqa: E402
from tracekit.store.db import connect  # noqa: E402
from tracekit.ingest import ingest_paths  # noqa: E402

NODES = [f"rank:{i}" for i in range(8)] + ["service:api", "service:db"]
NAMES = ["forward", "backward", "optimizer.step", "load_batch", "GET /orders", "SELECT orders", "retry"]


def make_spool(root: Path, spans: int, files: int) -> Path:
    rng = random.Random(7)
    run_dir = root / "runbench"
    per_file = spans // files
    t = 1_700_000_000_000_000_000
    for f in range(files):
        spool = Spool(run_dir, "b" * 32, NODES[f % len(NODES)])
        stream = spool.stream("spans")
        events = spool.stream("events")  # spool format 2: span events have a stream of their own
        lines = []
        for i in range(per_file):
            start = t + i * 1000
            record = {
                "trace_id": f"{rng.getrandbits(128):032x}", "span_id": f"{rng.getrandbits(64):016x}",
                "parent_id": f"{rng.getrandbits(64):016x}" if i % 10 else None,
                "name": NAMES[i % len(NAMES)], "node": NODES[(i + f) % len(NODES)], "kind": "internal",
                "start_ns": start, "end_ns": start + rng.randint(1000, 5_000_000),
                "status": "error" if i % 97 == 0 else "unset",
                "status_message": "ValueError: boom" if i % 97 == 0 else None,
                "attributes": json.dumps({"step": i, "bytes": rng.randint(0, 1 << 20), "dtype": "float32"}),
            }
            lines.append(json.dumps(record, separators=(",", ":")) + "\n")
            if i % 97 == 0:
                events.write({"span_id": record["span_id"], "ts_ns": start + 10, "name": "exception",
                              "attributes": json.dumps({"exception.type": "ValueError"})})
        for line in lines:
            stream.write_line(line)
        spool.close()
    (run_dir / "run.json").write_text(json.dumps({"run_id": "b" * 32, "name": "bench", "kind": "service"}))
    return run_dir


def naive_insert(run_dir: Path, db: Path, limit: int) -> tuple[int, float]:
    con = connect(db)
    rows = []
    for path in sorted(run_dir.glob("spans.*.jsonl")):
        for line in path.read_text().splitlines()[1:-1]:
            r = json.loads(line)
            rows.append(["b" * 32, r["trace_id"], r["span_id"], r["parent_id"], r["name"], r["node"], r["kind"],
                         r["start_ns"], r["end_ns"], r["status"], r["status_message"], r["attributes"], 1])
            if len(rows) >= limit:
                break
        if len(rows) >= limit:
            break
    t0 = time.perf_counter()
    con.executemany("INSERT INTO spans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    elapsed = time.perf_counter() - t0
    con.close()
    return len(rows), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--baseline-spans", type=int, default=3_000)
    parser.add_argument("--repeat", type=int, default=3, help="ingests into fresh stores; the median is reported")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tk-bench-ingest-"))
    try:
        t0 = time.perf_counter()
        run_dir = make_spool(root, args.spans, args.files)
        size = sum(p.stat().st_size for p in run_dir.glob("*.jsonl"))
        print(f"wrote {args.spans:,} spans in {args.files} spool files ({size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s")

        os.sync()
        rates = []
        for i in range(args.repeat):
            db = root / f"fast{i}.duckdb"
            t0 = time.perf_counter()
            report = ingest_paths([run_dir], db)
            fast_s = time.perf_counter() - t0
            con = connect(db, read_only=True)
            spans, events = con.execute("SELECT (SELECT count(*) FROM spans), (SELECT count(*) FROM events)").fetchone()
            con.close()
            assert spans == args.spans and report.records == spans + events and not report.quarantined, report.to_dict()
            rates.append(spans / fast_s)
            print(f"  ingest {i + 1}: {spans / fast_s:12,.0f} spans/s ({spans:,} spans and {events:,} events in {fast_s:.2f} s)")
            db.unlink()
        fast_rate = median(rates)

        n, naive_s = naive_insert(run_dir, root / "naive.duckdb", args.baseline_spans)
        naive_rate = n / naive_s
        ratio = fast_rate / naive_rate
        print(f"tracekit ingest (median of {args.repeat})     : {fast_rate:12,.0f} spans/s")
        print(f"naive executemany (row by row)   : {naive_rate:12,.0f} spans/s ({n:,} spans in {naive_s:.2f} s)")
        print(f"ratio {ratio:.1f}x (targets: >= 500,000 spans/s and >= 20x)")
        final_line(name="ingest_spans_per_s", value=round(fast_rate), unit="spans/s",
                   baseline="naive row-by-row executemany", baseline_value=round(naive_rate), ratio=round(ratio, 1),
                   spans=args.spans, repeats=[round(r) for r in rates])
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
