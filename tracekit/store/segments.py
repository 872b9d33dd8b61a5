"""Span segments: big span loads stored as Parquet files beside the store, read through the ``spans`` view.

A DuckDB table cannot take spans faster than about 1.7 M/s on two cores, even from Arrow already in memory:
compressing random hex ids and attribute text into its blocks is most of an insert's CPU time. So a big
load of spans is written as Parquet by pyarrow instead and registered in ``span_segments`` in the loading
transaction: a closed binary spool file of at least TRACEKIT_SEGMENT_MIN_ROWS spans becomes a segment of
its own on the ingest's parse worker (two files at once), and any other load of that many spans (a batch
of smaller files, an OTLP file) is split into one segment per core. Smaller loads (live polling, imports
of a few runs) insert into the native table ``span_rows``. Readers never see the split: ``spans`` is a
view over ``span_rows`` and the registered segments, rebuilt whenever the segments change.

Layout: a store ``traces.duckdb`` keeps its segments in ``traces.duckdb.segments/`` next to it, registered
by their path relative to the store's directory. The view names them by absolute path, so the plain DuckDB
CLI reads ``spans`` too; tracekit re-points the view when the store was moved together with its segments
directory (``configure``). Sandboxed readers may read only that directory.

Segments are immutable. Changing spans of a segment (replacing an imported run, adding attributes)
first moves the segment's rows into ``span_rows`` (``materialise``). A segment file no longer registered
(rolled back, killed mid-load, materialised) is deleted by ``sweep`` at a later ingest.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from tracekit.config import segment_compression
from tracekit.errors import StoreError
from tracekit.store.sql import insert_rows, literal, one
from tracekit.store.streams import SPANS, null_defaults

SUFFIX = ".segments"
ROW_GROUP = 122_880  # DuckDB scans a Parquet file one row group per thread; its own row groups are this size
# attribute keys that make a span an agent's (GenAI or OpenInference): a segment records whether it holds any
AGENT_MARKERS = ('"openinference.span.kind"', '"gen_ai.operation.name"')
_ORPHAN_AGE_S = 600  # an unregistered file younger than this may belong to a load still in progress
# Parquet encodings, each measured on 250k bench spans (CPU per span of the write): random ids and attribute
# text are never worth a dictionary (pyarrow tries, then gives up: -5 %); min/max statistics only where a
# filter can skip row groups (a run, a time window), not on names within a run (-7 %); delta-encoded times
# (-6 %, and 5 % smaller files)
_LOW_CARDINALITY = ("run_id", "name", "node", "kind", "status", "status_message", "pid")
_PRUNING = ("run_id", "start_ns", "end_ns", "pid")
_TIMES = ("start_ns", "end_ns")
_IDS = ("trace_id", "span_id", "parent_id")  # stored plain by "fast" segments when they are random (_stored_plain)


def store_file(con: duckdb.DuckDBPyConnection) -> Path | None:
    """The store's own file (None for an in-memory database)."""
    row = one(con, "SELECT path FROM duckdb_databases() WHERE database_name = current_database()")
    return Path(row[0]) if row and row[0] else None


def directory_of(store: Path) -> Path:
    return store.with_name(store.name + SUFFIX)


def configure(con: duckdb.DuckDBPyConnection, store: Path, *, sandbox: bool, writer: bool) -> None:
    """Let a connection read the store's segments. A sandboxed reader may read the segments directory (and
    nothing else) once external access is off. The ``spans`` view names segments by absolute path, so plain
    DuckDB reads it too; when the store was moved (with its segments directory), a writer redefines the view
    and a reader shadows it with a temporary view of the new paths."""
    store = store.resolve()
    if sandbox:
        con.execute(f"SET allowed_directories = [{literal(f'{directory_of(store)}{os.sep}')}]")
    paths = [r[0] for r in con.execute("SELECT path FROM span_segments").fetchall()]
    if not paths:
        return
    missing = [p for p in paths if not (store.parent / p).is_file()]
    if missing:
        raise StoreError(
            f"the store {store} keeps {len(paths)} span segment file(s) in {directory_of(store)}, and {len(missing)} "
            f"of them are missing (first: {missing[0]}): the store was copied or moved without its segments "
            "directory; copy the directory beside it, or move the store aside and re-ingest the spool directories"
        )
    view = one(con, "SELECT sql FROM duckdb_views() WHERE view_name = 'spans' AND database_name = current_database()")
    if view and literal(f"{directory_of(store)}{os.sep}")[1:-1] in view[0]:  # the directory as the SQL spells it
        return
    if writer:
        rebuild_view(con)
    else:
        con.execute(f"CREATE OR REPLACE TEMP VIEW spans AS SELECT * FROM {spans_source(con, span_columns(con))}")


def _files(con: duckdb.DuckDBPyConnection, paths: Iterable[str]) -> str:
    """A DuckDB list of the absolute paths of segment files (registered relative to the store's directory)."""
    store = store_file(con)
    base = store.resolve().parent if store else Path.cwd()
    return "[" + ", ".join(literal(str(base / p)) for p in paths) + "]"


# ---------------------------------------------------------------------------------------------
# the spans view


def span_columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE table_name = 'span_rows' AND database_name = current_database() "
        "ORDER BY column_index").fetchall()]


def rebuild_view(con: duckdb.DuckDBPyConnection) -> None:
    """(Re)define ``spans``: the native rows, and every registered segment. Runs in the caller's transaction."""
    con.execute(f"CREATE OR REPLACE VIEW spans AS SELECT * FROM {spans_source(con, span_columns(con))}")


# ---------------------------------------------------------------------------------------------
# writing


def span_table(parts: Sequence[tuple[pa.Table, str, int | None, str | None]], columns: Sequence[str]) -> pa.Table:
    """The stored columns of spans from many files, as the native insert would store them: each part's run id
    and pid, its default node where a record names none, the defaults of kind, status and attributes."""
    import pyarrow.compute as pc

    defaults = null_defaults(SPANS)
    tables = []
    for table, run_id, pid, node in parts:
        n = table.num_rows
        if not n:
            continue
        fills = {**defaults, "node": node or "unknown"}
        fixed = {name: pc.fill_null(table.column(name), value) for name, value in fills.items()}
        fixed["run_id"] = pa.repeat(pa.scalar(run_id, pa.string()), n)
        fixed["pid"] = pa.repeat(pa.scalar(pid, pa.int32()), n)
        tables.append(pa.table({c: fixed[c] if c in fixed else table.column(c) for c in columns}))
    out = pa.concat_tables(tables)
    text = pa.chunked_array([pa.ExtensionArray.from_storage(pa.json_(), chunk)  # typed JSON for DuckDB; no copy
                             for chunk in out.column("attributes").chunks], pa.json_())
    return out.set_column(out.schema.get_field_index("attributes"), "attributes", text)


@dataclass(frozen=True)
class Segment:
    """One written segment file, not yet registered. Its bounds (first start, last end, root spans in error)
    stand for its run when it holds one run (``run_bounds`` then reads them instead of the file)."""

    name: str  # relative to the store's directory: <store>.segments/spans-<uuid>.parquet
    run_ids: tuple[str, ...]
    rows: int
    bytes: int
    agent: bool
    min_start_ns: int | None
    max_end_ns: int | None
    root_errors: int


def folder_of(con: duckdb.DuckDBPyConnection) -> Path:
    """The store's segments directory (made by the first segment written into it)."""
    store = store_file(con)
    if store is None:
        raise ValueError("span segments need a store file, not an in-memory database")
    return directory_of(store)


def write_file(folder: Path, table: pa.Table, run_ids: Sequence[str], *, flush: bool = True) -> Segment:
    """Write span rows (columns of ``span_rows``, in its order, from :func:`span_table`) to one Parquet file in
    `folder` (any thread: pyarrow and DuckDB release the GIL). The file is removed again when the write fails.
    With ``flush=False`` the caller flushes it to disk (:func:`flush_file`) before registering it."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    columns = table.column_names
    folder.mkdir(exist_ok=True)
    path = folder / f"spans-{uuid.uuid4().hex}.parquet"
    try:
        plain = {c for c in _IDS if c in columns and _stored_plain(table.column(c))} \
            if segment_compression() == "fast" else set()
        pq.write_table(table, path, compression={c: "none" if c in plain else "zstd" for c in columns},
                       row_group_size=ROW_GROUP,
                       use_dictionary=[c for c in _LOW_CARDINALITY if c in columns],
                       write_statistics=[c for c in _PRUNING if c in columns],
                       column_encoding={c: "DELTA_BINARY_PACKED" for c in _TIMES if c in columns})
        size = _sync(path) if flush else path.stat().st_size
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    roots = pc.and_(pc.is_null(table.column("parent_id")), pc.equal(table.column("status"), "error"))
    return Segment(f"{folder.name}/{path.name}", tuple(sorted(set(run_ids))), table.num_rows, size,
                   _names_agent_keys(table.column("attributes")),
                   pc.min(table.column("start_ns")).as_py(), pc.max(table.column("end_ns")).as_py(),
                   int(pc.sum(roots.cast(pa.int64())).as_py() or 0))


def flush_file(path: Path) -> bool:
    """Flush a segment written with ``flush=False`` to disk; on an error remove it and return False."""
    try:
        _sync(path)
        return True
    except OSError:
        path.unlink(missing_ok=True)
        return False


def _sync(path: Path) -> int:
    """Flush a written file to disk (a registered segment must survive a power cut as DuckDB's commit does);
    returns its size."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _stored_plain(ids: pa.ChunkedArray) -> bool:
    """Whether an id column is stored uncompressed: random hex (OpenTelemetry's ids), which zstd halves only by
    entropy coding at a third of a write's CPU, as judged by LZ4 (no entropy coding) on a sample. Sequential or
    otherwise structured ids (an importer's counters) compress many times over and are zstd-compressed."""
    sample = "".join(v for v in ids.slice(0, 2048).to_pylist() if v).encode()
    if len(sample) < 1024:
        return False
    return len(pa.Codec("lz4").compress(sample)) > 0.8 * len(sample)


def register(con: duckdb.DuckDBPyConnection, segments: Sequence[Segment]) -> None:
    """Record written segments in the caller's transaction and put them in the ``spans`` view."""
    if not segments:
        return
    store = store_file(con)
    if store is not None:  # the new files' directory entries (and the directory's own), before the commit
        _sync(directory_of(store))
        _sync(store.parent)
    now = time.time_ns()
    insert_rows(con, "INSERT INTO span_segments", [
        [Path(g.name).stem, g.name, list(g.run_ids), g.rows, g.bytes, now, g.agent, g.min_start_ns, g.max_end_ns,
         g.root_errors] for g in segments])
    rebuild_view(con)


def write_segments(con: duckdb.DuckDBPyConnection, table: pa.Table, run_ids: Sequence[str]) -> int:
    """Write span rows as Parquet segments, one per worker thread in parallel, and register them in the
    caller's transaction. `run_ids` names the run of each row's part (the runs the segments hold)."""
    from concurrent.futures import ThreadPoolExecutor

    folder = folder_of(con)
    n = max(1, min(os.cpu_count() or 1, table.num_rows // ROW_GROUP or 1))
    step = -(-table.num_rows // n)
    slices = [table.slice(k * step, step) for k in range(n)]
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="tracekit-segment") as pool:
        futures = [pool.submit(write_file, folder, piece, sorted(set(run_ids))) for piece in slices]
    written = [f.result() for f in futures if f.exception() is None]
    failed = [f.exception() for f in futures if f.exception() is not None]
    if failed:  # every slice's file or none
        remove_files(folder.parent / g.name for g in written)
        raise failed[0]  # type: ignore[misc]
    register(con, written)
    return table.num_rows


def run_bounds(con: duckdb.DuckDBPyConnection, run_id: str) -> tuple[int | None, int | None, int]:
    """(first span start, last span end, root spans in error) of a run: the native rows scanned, segments of
    this run alone read from their recorded bounds, segments shared with other runs scanned."""
    shared = [r[0] for r in con.execute(
        "SELECT path FROM span_segments WHERE list_contains(run_ids, ?) AND len(run_ids) > 1", [run_id]).fetchall()]
    agg = "min(start_ns) AS a, max(end_ns) AS b, count(*) FILTER (WHERE parent_id IS NULL AND status = 'error') AS e"
    parts = [f"SELECT {agg} FROM span_rows WHERE run_id = $run",
             "SELECT min_start_ns, max_end_ns, root_errors FROM span_segments WHERE run_ids = [$run]"]
    if shared:
        parts.append(f"SELECT {agg} FROM read_parquet({_files(con, shared)}) WHERE run_id = $run")
    row = one(con, f"SELECT min(a), max(b), sum(e) FROM ({' UNION ALL '.join(parts)})", {"run": run_id})
    return (row[0], row[1], int(row[2] or 0)) if row else (None, None, 0)


def _names_agent_keys(attributes: pa.ChunkedArray) -> bool:
    """Whether some attribute text may name an agent key (``AGENT_MARKERS``): a byte search of each chunk's
    whole text buffer (2.5 ms per 125k spans, a third of DuckDB's `contains` over the rows). A chunk sliced out
    of a bigger array is searched with its neighbours' text: it may say yes for a span outside it (the
    segment is then searched again by ``runs_with_agent_spans``, correctly), never no for one inside."""
    markers = [m.encode() for m in AGENT_MARKERS]
    for chunk in attributes.chunks:
        if isinstance(chunk, pa.ExtensionArray):
            chunk = chunk.storage
        data = chunk.buffers()[2] if len(chunk) else None
        if data is not None and data.size:
            text = data.to_pybytes()
            if any(text.find(m) >= 0 for m in markers):
                return True
    return False


def agent_condition(column: str = "attributes") -> str:
    """SQL: the span's attributes (`column`) name an agent key (``AGENT_MARKERS``)."""
    return "(" + " OR ".join(f"contains(CAST({column} AS VARCHAR), {literal(m)})" for m in AGENT_MARKERS) + ")"


def spans_source(con: duckdb.DuckDBPyConnection, columns: Sequence[str], *, agent_only: bool = False) -> str:
    """A FROM-able SQL source of span `columns`: like the ``spans`` view, or (`agent_only`) only the segments
    that hold an agent span, which is all a search for agent spans needs to read."""
    cols = ", ".join(columns)
    where = " WHERE agent" if agent_only else ""
    paths = [r[0] for r in con.execute(f"SELECT path FROM span_segments{where} ORDER BY created_ns, segment").fetchall()]
    sql = f"SELECT {cols} FROM span_rows"
    if paths:
        sql += f" UNION ALL SELECT {cols} FROM read_parquet({_files(con, paths)})"
    return f"({sql})"


# ---------------------------------------------------------------------------------------------
# changing stored spans, and cleaning up


def materialise(con: duckdb.DuckDBPyConnection, run_ids: Sequence[str]) -> list[Path]:
    """Move the rows of every segment holding one of `run_ids` into ``span_rows`` (they may then be changed),
    in the caller's transaction. Returns the files no longer used, to delete once the transaction commits."""
    if not run_ids:
        return []
    rows = con.execute("SELECT segment, path FROM span_segments WHERE list_has_any(run_ids, ?)",
                       [list(run_ids)]).fetchall()
    if not rows:
        return []
    cols = ", ".join(span_columns(con))
    con.execute(f"INSERT INTO span_rows ({cols}) SELECT {cols} FROM read_parquet({_files(con, [p for _, p in rows])})")
    con.execute("DELETE FROM span_segments WHERE list_contains(?, segment)", [[s for s, _ in rows]])
    rebuild_view(con)
    store = store_file(con)
    return [store.resolve().parent / p for _, p in rows] if store else []


def remove_files(paths: Iterable[Path]) -> None:
    """Delete segment files no longer registered (after the transaction that dropped them committed)."""
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass  # swept at the next ingest


def sweep(con: duckdb.DuckDBPyConnection, min_age_s: float = _ORPHAN_AGE_S) -> int:
    """Delete segment files the store does not register (a load rolled back or killed, a materialised
    segment) that are older than `min_age_s`; returns how many. Run by a writer."""
    store = store_file(con)
    folder = directory_of(store) if store else None
    if folder is None or not folder.is_dir():
        return 0
    known = {r[0] for r in con.execute("SELECT path FROM span_segments").fetchall()}
    cutoff = time.time() - min_age_s
    removed = 0
    for path in folder.glob("spans-*.parquet"):
        if f"{folder.name}/{path.name}" in known:
            continue
        try:
            if path.stat().st_mtime <= cutoff:
                path.unlink()
                removed += 1
        except OSError:
            continue
    return removed
