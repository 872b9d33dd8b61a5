"""The ingest pipeline's orchestration: discover → parse (spool files, importers) → load (store) → derive.

`ingest_paths` is the single writer that bulk-loads spool files (and imported files) into the store
through Arrow. Every file loads in one transaction: all of its good records, or nothing. Ingest is
idempotent and incremental: each spool file remembers how many bytes were loaded, so ingesting the
same spool again adds nothing, and ingesting a growing one adds only what is new.

Cleanly closed files never loaded before take the fast path (DuckDB's JSON reader over whole files,
batched by stream); any other file, or a closed one the fast path refuses, takes the careful path
(parsed on a worker thread while the previous batch loads, bad records quarantined).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from tracekit import conventions as conv
from tracekit.capture.multihost import read_host_manifests
from tracekit.config import segment_compression, segment_min_rows
from tracekit.errors import SpoolError
from tracekit.ingest.derive import derive_runs
from tracekit.ingest.discover import discover
from tracekit.ingest.liveness import read_manifest, refresh_run
from tracekit.ingest.report import IngestReport
from tracekit.ingest.resume import Prepared, is_unchanged, prepare, split_closed, spool_file_row
from tracekit.ingest.spool import Closed, ParsedFile, parse_spool_file, raw_lines
from tracekit.store import segments
from tracekit.store.db import connect
from tracekit.store.load import (
    Part, load_ndjson_files, load_tables, quarantine, remember_files, tune_for_bulk_load, unordered_inserts,
)
from tracekit.store.sql import transaction
from tracekit.store.streams import SPANS

Progress = Callable[[int, int, str], None]

BATCH_ROWS = 500_000  # files are loaded together up to this many rows: big inserts skip the WAL
FAST_BATCH_BYTES = 1 << 30  # closed files are loaded by one INSERT per stream, up to this much JSON
PARSE_AHEAD_BYTES = 512 << 20  # how much spool the parser may read ahead of the loader
PARSE_WORKERS = 2  # parse (and write segments of) two files at once: the load itself is mostly DuckDB's threads


# ---------------------------------------------------------------------------------------------
# the fast path: DuckDB's own JSON reader loads cleanly closed files whole (no Python, no Arrow hop)


def _pid(header: dict[str, Any]) -> int | None:
    pid = header.get("pid")
    return pid if isinstance(pid, int) and not isinstance(pid, bool) else None


class _NotClean(Exception):
    """Some record of a closed file was not loadable as is: the careful path takes the files."""


def _load_closed(con: duckdb.DuckDBPyConnection, files: list[Closed], report: IngestReport) -> bool:
    """Load closed files of one stream with one INSERT, in one transaction; False (rolled back) when
    a value does not convert or the rows inserted differ from what the footers say was written: the
    files then go the careful way, which names and quarantines the bad records."""
    spec = files[0].spec
    sources = []
    for c in files:
        sources.append((c.path, str(c.header["run_id"]), _pid(c.header), str(c.header.get("node") or "unknown")))
    expected = sum(int(c.footer["records"]) for c in files)
    try:
        with unordered_inserts(con), transaction(con):
            if load_ndjson_files(con, spec, sources, skip_keys=(conv.HEADER_KEY, conv.FOOTER_KEY)) != expected:
                raise _NotClean
            remember_files(con, [spool_file_row(c.path, c.header, spec, c.footer, c.size, int(c.footer["records"]), 0)
                                 for c in files])
    except (duckdb.Error, _NotClean):
        return False
    report.files += len(files)
    report.records += expected
    return True


def _batches_by_size(files: list[Closed], limit: int) -> Iterator[list[Closed]]:
    """Consecutive files in batches of at most `limit` bytes (a bigger file is a batch of its own)."""
    batch: list[Closed] = []
    size = 0
    for c in files:
        if batch and size + c.size > limit:
            yield batch
            batch, size = [], 0
        batch.append(c)
        size += c.size
    if batch:
        yield batch


def _ingest_closed_files(
    con: duckdb.DuckDBPyConnection, files: list[Closed], report: IngestReport, on_done: Callable[[Path], None]
) -> list[Path]:
    """Load closed files stream by stream, in batches of FAST_BATCH_BYTES; returns the files left to the careful path."""
    left: list[Path] = []
    by_stream: dict[tuple[str, ...], list[Closed]] = {}
    for c in files:
        by_stream.setdefault((c.spec.name, *c.spec.schema.names), []).append(c)
    for group in by_stream.values():
        for batch in _batches_by_size(group, FAST_BATCH_BYTES):
            if _load_closed(con, batch, report):
                for done in batch:
                    on_done(done.path)
            else:
                left.extend(done.path for done in batch)
    return left


# ---------------------------------------------------------------------------------------------
# the careful path: parse ahead on a worker thread, load in batches


@dataclass(frozen=True)
class _SegmentTarget:
    """Where a parse worker writes a big file's spans as a Parquet segment (``tracekit.store.segments``), and
    the thread that flushes written segments to disk meanwhile."""

    folder: Path
    columns: tuple[str, ...]
    min_rows: int
    flusher: Any


def _segment_target(con: duckdb.DuckDBPyConnection, flusher: Any) -> _SegmentTarget | None:
    threshold = segment_min_rows()
    if not threshold or segments.store_file(con) is None:
        return None
    segment_compression()  # a bad setting is an error before any file is written, not on a worker
    return _SegmentTarget(segments.folder_of(con), tuple(segments.span_columns(con)), threshold, flusher)


def _write_segment(item: Prepared, target: _SegmentTarget) -> None:
    """A big file of flat spans is written as its own segment on the parse worker, overlapping the parse of
    the next file and the load of the last batch; on a write error the load inserts it natively instead.
    The file is flushed to disk on the flusher thread, so the worker parses on while the disk writes (each
    fsync of an 11 MB segment waits ~7 ms: 60-70 ms of a 0.5 s ingest of 1 M spans)."""
    parsed = item.parsed
    if parsed is None or parsed.spec.name != SPANS.name or parsed.spec.nested or parsed.table.num_rows < target.min_rows:
        return
    header = parsed.header
    run_id = str(header["run_id"])
    table = segments.span_table([(parsed.table, run_id, _pid(header), header.get("node"))], target.columns)
    try:
        item.segment = segments.write_file(target.folder, table, [run_id], flush=False)
    except OSError:
        item.segment = None
        return
    path = target.folder.parent / item.segment.name
    try:
        item.flushed = target.flusher.submit(segments.flush_file, path)
    except RuntimeError:  # the interpreter is shutting down (no new threads): flushed here
        if not segments.flush_file(path):
            item.segment = None


def _flushed(batch: list[Prepared]) -> None:
    """Wait until the batch's segments are on disk; one whose flush failed (its file removed) loads natively."""
    for item in batch:
        if item.flushed is not None and not item.flushed.result():
            item.segment = None
        item.flushed = None


def _parse_prepared(item: Prepared, target: _SegmentTarget | None = None) -> Prepared:
    offset, records_before = item.start()
    try:
        item.parsed = parse_spool_file(item.path, offset, records_before)
    except SpoolError as exc:
        item.error = str(exc)
    if target is not None:
        _write_segment(item, target)
    return item


def _submit(pool: Any, item: Prepared, target: _SegmentTarget | None) -> Any:
    try:
        return pool.submit(_parse_prepared, item, target)
    except RuntimeError:
        return _parse_prepared(item, target)


def _parsed_ahead(pool: Any, items: list[Prepared], target: _SegmentTarget | None = None) -> Iterator[Prepared]:
    """Yield parsed items in order while `pool` parses up to PARSE_AHEAD_BYTES of later files, so
    loading one batch overlaps parsing the next. Parses inline when the interpreter is shutting
    down (an ingest at exit cannot start threads)."""
    from collections import deque

    def size(item: Prepared) -> int:
        try:
            return item.path.stat().st_size
        except OSError:
            return 0

    pending: deque[tuple[Any, int]] = deque()
    ahead = 0
    next_index = 0
    while next_index < len(items) or pending:
        while next_index < len(items) and (not pending or ahead + size(items[next_index]) <= PARSE_AHEAD_BYTES):
            nbytes = size(items[next_index])
            pending.append((_submit(pool, items[next_index], target), nbytes))
            ahead += nbytes
            next_index += 1
        future, nbytes = pending.popleft()
        ahead -= nbytes
        yield future.result() if hasattr(future, "result") else future


def _load_batch(con: duckdb.DuckDBPyConnection, batch: list[Prepared], report: IngestReport) -> None:
    """Load parsed files in one transaction: every file entirely, or (on a database error) none of them."""
    parsed_files = [item.parsed for item in batch if item.parsed is not None]
    if not parsed_files:
        return
    _flushed(batch)
    by_stream: dict[tuple[str, ...], list[ParsedFile]] = {}
    for item in batch:
        if item.parsed is not None and item.segment is None:
            by_stream.setdefault((item.parsed.spec.name, *item.parsed.spec.schema.names), []).append(item.parsed)
    with unordered_inserts(con), transaction(con):
        segments.register(con, [item.segment for item in batch if item.segment is not None])
        for group in by_stream.values():  # one INSERT per stream: whole row groups, nothing for the checkpoint to redo
            load_tables(con, group[0].spec, [
                Part(parsed.table, str(parsed.header["run_id"]), _pid(parsed.header), parsed.header.get("node"),
                     json_checked=True)
                for parsed in group
            ])
        remembered = []
        for item in batch:
            parsed = item.parsed
            if parsed is None:
                continue
            header = parsed.header
            raw = raw_lines(item.path, parsed.quarantined)
            quarantine(con, [(str(header["run_id"]), q.source, q.line, q.record_id, q.error, raw.get(q.line or -1))
                             for q in parsed.quarantined])
            remembered.append(spool_file_row(
                item.path, header, parsed.spec, parsed.footer, parsed.new_offset,
                parsed.records_before + parsed.table.num_rows + len(parsed.quarantined), parsed.torn_bytes,
            ))
        remember_files(con, remembered)
    for parsed in parsed_files:
        report.files += 1
        report.records += parsed.table.num_rows
        report.quarantined.extend(parsed.quarantined)


def _ingest_spool_files(
    con: duckdb.DuckDBPyConnection, paths: list[Path], report: IngestReport, on_done: Callable[[Path], None]
) -> set[str]:
    """Load one spool run's files (fast path first); returns the run ids their headers name."""
    from concurrent.futures import ThreadPoolExecutor

    closed, paths = split_closed(con, paths)
    run_ids = {str(c.header["run_id"]) for c in closed}
    paths += _ingest_closed_files(con, closed, report, on_done)
    items = [prepare(con, path) for path in paths]
    batch: list[Prepared] = []
    batch_rows = 0
    # parse the next file on a worker thread while the current batch loads (pyarrow and DuckDB release the GIL)
    with ThreadPoolExecutor(max_workers=PARSE_WORKERS, thread_name_prefix="tracekit-parse") as pool, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracekit-flush") as flusher:
        for item in _parsed_ahead(pool, items, _segment_target(con, flusher)):
            on_done(item.path)
            if item.error is not None or item.parsed is None:
                report.rejected.append((str(item.path), item.error or f"{item.path}: could not be read"))
                continue
            run_ids.add(str(item.parsed.header["run_id"]))
            if item.parsed.torn_bytes:
                report.torn.append((str(item.path), item.parsed.torn_bytes))
            if is_unchanged(item):
                report.unchanged_files += 1
                continue
            batch.append(item)
            batch_rows += 0 if item.segment else item.parsed.table.num_rows  # a written segment is only registered
            if batch_rows >= BATCH_ROWS:
                _load_batch(con, batch, report)
                batch, batch_rows = [], 0
        _load_batch(con, batch, report)
    return run_ids


# ---------------------------------------------------------------------------------------------
# the entry point


def ingest_paths(
    paths: Iterable[str | os.PathLike[str]],
    db: str | os.PathLike[str] | None = None,
    *,
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest spool directories, spool files and OTLP files into the store at `db`.

    Raises TracekitError for a path that does not exist and StoreError when the store cannot be
    opened (after waiting for another writer's lock); bad files and records are reported, not raised.
    """
    sources = discover(paths)
    report = IngestReport()
    total = sources.count()
    done = 0

    def on_done(path: Path) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total, str(path))

    con = connect(db)
    try:
        tune_for_bulk_load(con)
        segments.sweep(con)  # files of loads that were rolled back or killed, of segments moved into rows
        for run_dir, files in sources.spool_runs.items():
            run_ids = _ingest_spool_files(con, files, report, on_done)
            manifest = read_manifest(run_dir)
            if manifest and isinstance(manifest.get("run_id"), str):
                run_ids.add(manifest["run_id"])
            hosts = read_host_manifests(run_dir)
            for run_id in run_ids:
                mine = manifest if manifest and manifest.get("run_id") == run_id else None
                refresh_run(con, run_id, mine, hosts if mine else None)
                report.runs.add(run_id)
        if sources.otlp:
            from tracekit.ingest.otlp import ingest_otlp_file

            for path in sources.otlp:
                ingest_otlp_file(con, path, report)
                on_done(path)
        derive_runs(con, sorted(report.runs))
    finally:
        con.close()
    return report
