"""Spans per second from closed spool files into DuckDB, binary (Arrow frames) and JSON lines, against DuckDB's own readers.

tracekit ingest is timed three ways on the binary spool: as configured by default (each big file becomes a
Parquet span segment, hex ids stored plain), with TRACEKIT_SEGMENT_COMPRESSION=small (every column zstd),
and with segments off (TRACEKIT_SEGMENT_MIN_ROWS=0: the native DuckDB table, the design before segments),
each with its store's size on disk. Spool files are written by the real `SpoolStream` writer (8 processes'
worth of files, realistic span records with attributes and a few exception events), once per spool
encoding, then synced to disk, as they are when a job has ended. Each repeat ingests them into a fresh
store; the median rate is reported (this machine is shared and noisy). The fair baselines load the same
span rows into the same schema in the same run: `read_parquet` of one Parquet file holding them (a
columnar file DuckDB reads natively) and `read_ndjson` of the same rows as plain JSON lines (what the JSON
spool's fast path builds on), and an INSERT from the same rows already in memory as one Arrow table (no
file at all: the native table's own ceiling), with the settings ingest loads with, timed to the store's
close as ingest is. Besides wall-clock spans/s it prints spans per CPU-second of the process (all
threads), which a shared, loaded machine distorts far less.

    python benchmarks/bench_ingest.py [--spans 1000000] [--repeat 5]
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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import final_line, median  # noqa: E402

from tracekit.capture.spool import Spool  # noqa: E402
from tracekit.ingest import ingest_paths  # noqa: E402
from tracekit.store import segments  # noqa: E402
from tracekit.store.db import connect  # noqa: E402
from tracekit.store.load import tune_for_bulk_load  # noqa: E402

NODES = [f"rank:{i}" for i in range(8)] + ["service:api", "service:db"]
NAMES = ["forward", "backward", "optimizer.step", "load_batch", "GET /orders", "SELECT orders", "retry"]
FIELDS = ("trace_id", "span_id", "parent_id", "name", "node", "kind", "start_ns", "end_ns", "status",
          "status_message", "attributes")


def span_rows(spans: int, files: int) -> list[list[tuple]]:
    """The span rows of each file (the same for every encoding)."""
    rng = random.Random(7)
    per_file = spans // files
    t = 1_700_000_000_000_000_000
    out = []
    for f in range(files):
        rows = []
        for i in range(per_file):
            start = t + i * 1000
            rows.append((
                f"{rng.getrandbits(128):032x}", f"{rng.getrandbits(64):016x}",
                f"{rng.getrandbits(64):016x}" if i % 10 else None, NAMES[i % len(NAMES)], NODES[(i + f) % len(NODES)],
                "internal", start, start + rng.randint(1000, 5_000_000), "error" if i % 97 == 0 else "unset",
                "ValueError: boom" if i % 97 == 0 else None,
                json.dumps({"step": i, "bytes": rng.randint(0, 1 << 20), "dtype": "float32"}),
            ))
        out.append(rows)
    return out


def make_spool(root: Path, rows_by_file: list[list[tuple]], encoding: str) -> Path:
    run_dir = root / encoding / ("b" * 32)
    for f, rows in enumerate(rows_by_file):
        spool = Spool(run_dir, "b" * 32, NODES[f % len(NODES)], encoding=encoding, flush_interval_ms=60000)
        stream, events = spool.stream("spans"), spool.stream("events")
        for n, row in enumerate(rows):
            stream.write_row(FIELDS, row)
            if n % 97 == 0:
                events.write_row(("span_id", "ts_ns", "name", "attributes"),
                                 (row[1], row[6] + 10, "exception", '{"exception.type":"ValueError"}'))
            if n % 20000 == 19999:  # one flush interval's worth: a frame (or a block of lines) per flush
                spool.flush()
        spool.close()
    (run_dir / "run.json").write_text(json.dumps({"run_id": "b" * 32, "name": "bench", "kind": "service"}))
    return run_dir


def _timed(label: str, i: int, spans: int, run: Callable[[], None]) -> tuple[float, float]:
    """(spans per second of wall-clock time, spans per CPU-second of this process, every thread) of one run."""
    c0, t0 = time.process_time(), time.perf_counter()
    run()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"  {label} {i + 1}: {spans / seconds:12,.0f} spans/s ({seconds:.2f} s; {cpu:.2f} CPU-s, "
          f"{spans / cpu:,.0f} spans/CPU-s; load {os.getloadavg()[0]:.1f})")
    return spans / seconds, spans / cpu


SIZES: dict[str, float] = {}  # MB on disk of each variant's store (the DuckDB file and its segments directory)


def time_ingest(run_dir: Path, root: Path, spans: int, repeat: int, label: str,
                env: dict[str, str] | None = None) -> list[tuple[float, float]]:
    """tracekit ingest of the spool into a fresh store, from opening the store to closing it, with the
    TRACEKIT_* settings `env` (segments on or off, their compression)."""
    rates = []
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        for i in range(repeat):
            db = root / f"{label.replace(' ', '_')}{i}.duckdb"
            reports = []
            rates.append(_timed(label + " ingest", i, spans, lambda: reports.append(ingest_paths([run_dir], db))))
            con = connect(db, read_only=True)
            stored, events = con.execute("SELECT (SELECT count(*) FROM spans), (SELECT count(*) FROM events)").fetchone()
            con.close()
            report = reports[0]
            assert stored == spans and report.records == spans + events and not report.quarantined, report.to_dict()
            folder = segments.directory_of(db)
            SIZES[label] = (db.stat().st_size + sum(f.stat().st_size for f in folder.glob("*"))) / 1e6
            db.unlink()
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return rates


def time_reader(root: Path, source: str, spans: int, repeat: int, label: str,
                table: "pa.Table | None" = None) -> list[tuple[float, float]]:
    """DuckDB reading the same span rows into the same spans table (run id and pid as constants), with the
    settings ingest loads with, timed from the INSERT to the store's close (its checkpoint), as ingest is.
    With `table`, `source` may name it: the rows already in memory as Arrow (no file read or decode at all)."""
    rates = []
    cols = ", ".join(FIELDS)
    for i in range(repeat):
        db = root / f"{label}{i}.duckdb"
        con = connect(db)
        tune_for_bulk_load(con)
        con.execute("SET preserve_insertion_order = false")
        if table is not None:
            con.register("tk_rows", table)

        def load() -> None:
            con.execute(f"INSERT INTO span_rows (run_id, {cols}, pid) SELECT 'b', {cols}, 1 FROM {source}")
            con.close()

        rates.append(_timed(label, i, spans, load))
        con = connect(db, read_only=True)
        assert con.execute("SELECT count(*) FROM spans").fetchone()[0] == spans
        con.close()
        db.unlink()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5, help="ingests into fresh stores; the median is reported")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tk-bench-ingest-"))
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows_by_file = span_rows(args.spans, args.files)
        spans = len(rows_by_file) * len(rows_by_file[0])
        runs = {}
        for encoding in ("arrow", "json"):
            t0 = time.perf_counter()
            runs[encoding] = make_spool(root, rows_by_file, encoding)
            size = sum(p.stat().st_size for p in runs[encoding].iterdir())
            print(f"{encoding}: wrote {spans:,} spans in {args.files} spool files ({size / 1e6:.0f} MB) "
                  f"in {time.perf_counter() - t0:.1f} s")
        table = pa.Table.from_pylist([dict(zip(FIELDS, r)) for rows in rows_by_file for r in rows])
        pq.write_table(table, root / "spans.parquet")
        in_memory = table
        with (root / "spans.ndjson").open("w") as fh:
            for rows in rows_by_file:
                fh.writelines(json.dumps(dict(zip(FIELDS, r)), separators=(",", ":")) + "\n" for r in rows)
        del table, rows_by_file  # in_memory keeps the Arrow rows for the insert ceiling
        os.sync()

        load_before = os.getloadavg()
        binary = time_ingest(runs["arrow"], root, spans, args.repeat, "binary",
                             {"TRACEKIT_SEGMENT_MIN_ROWS": "100000", "TRACEKIT_SEGMENT_COMPRESSION": "fast"})
        small = time_ingest(runs["arrow"], root, spans, args.repeat, "binary small",
                            {"TRACEKIT_SEGMENT_MIN_ROWS": "100000", "TRACEKIT_SEGMENT_COMPRESSION": "small"})
        native = time_ingest(runs["arrow"], root, spans, args.repeat, "binary native", {"TRACEKIT_SEGMENT_MIN_ROWS": "0"})
        jsonl = time_ingest(runs["json"], root, spans, args.repeat, "json")
        parquet = time_reader(root, f"read_parquet('{root / 'spans.parquet'}')", spans, args.repeat, "read_parquet")
        ndjson = time_reader(root, f"read_ndjson('{root / 'spans.ndjson'}', columns={{"
                                   + ", ".join(f"'{c}': '{'BIGINT' if c.endswith('_ns') else 'VARCHAR'}'" for c in FIELDS)
                                   + "})", spans, args.repeat, "read_ndjson")
        # the same rows inserted from memory: only the table's own insert and checkpoint, the ceiling of any loader
        ceiling = time_reader(root, "tk_rows", spans, args.repeat, "arrow insert", table=in_memory)
        measured = (("binary", binary), ("small", small), ("native", native), ("json", jsonl), ("parquet", parquet),
                    ("ndjson", ndjson), ("arrow", ceiling))
        wall = {k: median([r[0] for r in v]) for k, v in measured}
        cpu = {k: median([r[1] for r in v]) for k, v in measured}
        print(f"load average (1 min) {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after; "
              f"{os.cpu_count()} CPUs; medians of {args.repeat}; wall-clock spans/s | spans per CPU-second")
        print(f"tracekit ingest, binary spool : {wall['binary']:12,.0f} | {cpu['binary']:12,.0f}  (target >= 2,000,000 spans/s; "
              f"segments, compression fast; store {SIZES['binary']:.0f} MB)")
        print(f"  segments, compression small : {wall['small']:12,.0f} | {cpu['small']:12,.0f}  "
              f"(store {SIZES['binary small']:.0f} MB)")
        print(f"  segments off (native table) : {wall['native']:12,.0f} | {cpu['native']:12,.0f}  "
              f"binary/native {wall['binary'] / wall['native']:.2f} (the design before segments; store "
              f"{SIZES['binary native']:.0f} MB)")
        print(f"tracekit ingest, JSON spool   : {wall['json']:12,.0f} | {cpu['json']:12,.0f}  (closed JSON files: native table)")
        print(f"DuckDB read_parquet, same rows: {wall['parquet']:12,.0f} | {cpu['parquet']:12,.0f}  "
              f"binary/parquet {wall['binary'] / wall['parquet']:.2f} | {cpu['binary'] / cpu['parquet']:.2f} (target >= 0.5)")
        print(f"DuckDB read_ndjson, same rows : {wall['ndjson']:12,.0f} | {cpu['ndjson']:12,.0f}  "
              f"binary/ndjson {wall['binary'] / wall['ndjson']:.2f} | {cpu['binary'] / cpu['ndjson']:.2f}")
        print(f"DuckDB insert of in-memory Arrow: {wall['arrow']:12,.0f} | {cpu['arrow']:12,.0f}  "
              f"binary/insert {wall['binary'] / wall['arrow']:.2f} | {cpu['binary'] / cpu['arrow']:.2f} "
              "(no file at all: the native table's own insert, the ceiling of any loader into it)")
        final_line(name="ingest_spans_per_s", value=round(wall["binary"]), unit="spans/s", baseline="duckdb read_parquet",
                   baseline_value=round(wall["parquet"]), ratio=round(wall["binary"] / wall["parquet"], 2), target_ratio=0.5,
                   json_spool=round(wall["json"]), read_ndjson=round(wall["ndjson"]),
                   segments_small=round(wall["small"]), segments_off=round(wall["native"]),
                   store_mb={k: round(v, 1) for k, v in SIZES.items()},
                   arrow_insert_ceiling=round(wall["arrow"]), ratio_to_ceiling=round(wall["binary"] / wall["arrow"], 2),
                   cpu_spans_per_s={k: round(v) for k, v in cpu.items()},
                   cpu_ratio=round(cpu["binary"] / cpu["parquet"], 2), spans=spans, repeats=args.repeat,
                   load_avg=[round(load_before[0], 1), round(os.getloadavg()[0], 1)])
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
