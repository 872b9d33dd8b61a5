"""Loading into the store: Arrow tables and closed spool files into their tables, and the ingest bookkeeping rows.

The ingest pipeline (``tracekit.ingest``) decides what to load and when; this module holds the SQL
that does it: bulk inserts from Arrow tables, DuckDB's JSON reader over whole spool files, the
quarantine, how far each spool file was loaded (``spool_files``), and the run rows. Everything here
runs inside the caller's transaction (see :func:`tracekit.store.sql.transaction`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from tracekit.config import segment_min_rows
from tracekit.store import segments
from tracekit.store.sql import insert_rows, literal, one, scratch
from tracekit.store.streams import StreamSpec, null_defaults

_DUCK_TYPES = {pa.int32(): "INTEGER", pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN"}


def tune_for_bulk_load(con: duckdb.DuckDBPyConnection) -> None:
    """Settings for a long load on a writer connection: one checkpoint at the end, no plain FSST."""
    con.execute("SET checkpoint_threshold = '1GB'")  # one checkpoint at the end, not one per file
    # plain FSST never wins over dictionary+FSST on these columns; analysing it cost 15 % of a load
    con.execute("SET disabled_compression_methods = 'fsst'")


def _value_exprs(spec: StreamSpec, fields: list[str], node_default: str) -> list[str]:
    """SELECT expressions for a stream's fields, with the defaults the store's tables expect."""
    defaults = {name: literal(value) for name, value in null_defaults(spec).items()}
    defaults["node"] = node_default
    return [f"coalesce({name}, {defaults[name]}) AS {name}" if name in defaults else name for name in fields]


@dataclass(frozen=True)
class Part:
    """One file's records for :func:`load_tables`: an Arrow table of the stream's schema and where it came from."""

    table: pa.Table
    run_id: str
    pid: int | None = None
    node: str | None = None  # the default for records without a node
    json_checked: bool = False  # its attribute texts are known to be JSON (a spool parser checked them)


def load_tables(con: duckdb.DuckDBPyConnection, spec: StreamSpec, parts: Sequence[Part]) -> int:
    """Insert the records of many files of one stream (tables of one schema) with one INSERT; returns the rows.

    Runs inside the caller's transaction. One statement per stream matters: each INSERT leaves a part-filled
    row group that the checkpoint rewrites, which cost as much as the insert itself for a file at a time.
    Each row carries the index of its part; its run id, pid and default node come from lists passed as
    parameters. Format-1 span records carry their events nested; those go to the ``events`` table.
    """
    parts = [p for p in parts if p.table.num_rows]
    if not parts:
        return 0
    if _to_segments(spec, parts):
        columns = segments.span_columns(con)
        table = segments.span_table([(p.table, p.run_id, p.pid, p.node) for p in parts], columns)
        try:
            return segments.write_segments(con, table, [p.run_id for p in parts])
        except OSError:  # the segments directory is not writable or full: the store itself may still take them
            pass
    tables = [p.table.append_column("tk_part", pa.repeat(pa.scalar(i, pa.int32()), p.table.num_rows))
              for i, p in enumerate(parts)]
    batch = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    if batch.column(0).num_chunks > 64:  # thousands of tiny chunks (one per run of an OTLP batch) scan 10x slower
        batch = batch.combine_chunks()
    params: dict[str, Any] = {"run_ids": [p.run_id for p in parts]}
    con.register("tk_batch", batch)
    try:
        fields = [f.name for f in spec.schema if f.name != "events"]
        columns = ["run_id", *fields] + (["pid"] if spec.with_pid else [])
        values = ["$run_ids[tk_part + 1]", *_value_exprs(spec, fields, "$nodes[tk_part + 1]")]
        if spec.with_pid:
            values.append("$pids[tk_part + 1]")
            params["pids"] = [p.pid for p in parts]
        if "node" in fields:
            params["nodes"] = [p.node or "unknown" for p in parts]
        con.execute(  # table and column names come from the stream declarations, values are parameters
            f"INSERT INTO {spec.table} ({', '.join(columns)}) SELECT {', '.join(values)} FROM tk_batch",
            params,
        )
        if "events" in spec.schema.names and batch.column("events").null_count < batch.num_rows:
            con.execute(
                "INSERT INTO events (run_id, span_id, ts_ns, name, attributes) "
                "SELECT $run_ids[tk_part + 1], span_id, e.ts_ns, e.name, coalesce(e.attributes, '{}') "
                "FROM (SELECT tk_part, span_id, unnest(events) AS e FROM tk_batch WHERE events IS NOT NULL)",
                {"run_ids": params["run_ids"]},
            )
    finally:
        con.unregister("tk_batch")
    return batch.num_rows


def _to_segments(spec: StreamSpec, parts: Sequence[Part]) -> bool:
    """Whether a load of spans is big enough to be written as Parquet segments (``tracekit.store.segments``).
    Format-1 records with nested events, and attribute text that is not JSON (the native insert rejects it,
    naming the file), take the native insert."""
    threshold = segment_min_rows()
    if spec.table != "span_rows" or not threshold or sum(p.table.num_rows for p in parts) < threshold:
        return False
    if any("events" in p.table.schema.names and p.table.column("events").null_count < p.table.num_rows for p in parts):
        return False
    attributes = pa.chunked_array([c for p in parts if not p.json_checked for c in p.table.column("attributes").chunks],
                                  pa.string())
    return not has_invalid_json(attributes)


def load_table(
    con: duckdb.DuckDBPyConnection, spec: StreamSpec, table: pa.Table, *, run_id: str,
    pid: int | None = None, default_node: str | None = None,
) -> int:
    """Insert one stream's records (an Arrow table of ``spec.schema``) into its table; returns the rows.

    Runs inside the caller's transaction (see :func:`load_tables`)."""
    return load_tables(con, spec, [Part(table, run_id, pid, default_node)])


def load_records(
    con: duckdb.DuckDBPyConnection, spec: StreamSpec, records: Sequence[dict[str, Any]], *, run_id: str,
    pid: int | None = None, default_node: str | None = None,
) -> int:
    """:func:`load_table` for records already of the stream's types (an importer's output, checked)."""
    table = pa.Table.from_pylist(list(records), schema=spec.schema)
    return load_table(con, spec, table, run_id=run_id, pid=pid, default_node=default_node)


@contextmanager
def _attributes(column: pa.ChunkedArray) -> Iterator[duckdb.DuckDBPyConnection]:
    """A scratch connection (``sql.scratch``) that sees an attributes column as ``tk_attrs(a)``."""
    con = scratch()
    try:
        con.register("tk_attrs", pa.table({"a": column}))
        yield con
    finally:
        con.close()


def has_invalid_json(column: pa.ChunkedArray) -> bool:
    """Whether any text of an attributes column is not JSON (the store's column is JSON: it would fail the insert)."""
    if column.null_count == len(column):
        return False
    with _attributes(column) as con:
        return bool(con.execute("SELECT bool_or(NOT json_valid(a)) FROM tk_attrs WHERE a IS NOT NULL").fetchall()[0][0])


def json_valid_mask(column: pa.ChunkedArray) -> pa.Array:
    """Per row: is the attributes text JSON (or absent)? In the column's order (a plain projection keeps it)."""
    with _attributes(column) as con:
        found = con.sql("SELECT a IS NULL OR json_valid(a) AS ok FROM tk_attrs").to_arrow_table()
    return found.column("ok").combine_chunks()


def load_ndjson_files(
    con: duckdb.DuckDBPyConnection, spec: StreamSpec, files: Sequence[tuple[Path, str, int | None, str]],
    *, skip_keys: Sequence[str],
) -> int:
    """Insert whole spool files of one stream with DuckDB's own JSON reader; returns the rows inserted.

    ``files`` are (path, run id, pid, default node). Lines holding one of ``skip_keys`` (the header
    and footer) and records missing a required field are left out; values are converted as DuckDB's
    reader does (a float into an integer column is rounded, a number or object into a text column
    becomes its JSON text). Raises ``duckdb.Error`` for a value it cannot convert. Paths must not
    hold glob characters (the reader would expand them).
    """
    columns = {key: "JSON" for key in skip_keys}
    checks = [f"{key} IS NULL" for key in skip_keys]
    for fld in spec.schema:
        columns[fld.name] = _DUCK_TYPES.get(fld.type, "VARCHAR")
        if fld.name in spec.required:
            checks.append(f"{fld.name} IS NOT NULL")
    reader = (  # read_ndjson takes its file list and columns as literals, not as parameters
        f"read_ndjson([{', '.join(literal(str(path)) for path, *_ in files)}], "
        f"columns={{{', '.join(f'{literal(k)}: {literal(v)}' for k, v in columns.items())}}}, "
        "format='newline_delimited', filename=true, hive_partitioning=false)"
    )
    fields = spec.schema.names
    target = ["run_id", *fields] + (["pid"] if spec.with_pid else [])
    values = ["f.tk_run_id", *_value_exprs(spec, fields, "f.tk_node")] + (["f.tk_pid"] if spec.with_pid else [])
    # which file a row came from gives its run, process and default node (a VALUES list: registering
    # an Arrow table would cost a 0.4 s import on first use)
    files_sql = ", ".join("(?, ?, ?, ?)" for _ in files)
    params: list[Any] = []
    for path, run_id, pid, node in files:
        params += [str(path), run_id, pid, node]
    sql = (
        f"INSERT INTO {spec.table} ({', '.join(target)}) SELECT {', '.join(values)} "
        f"FROM (SELECT * FROM {reader} WHERE {' AND '.join(checks)}) AS r "
        f"JOIN (VALUES {files_sql}) AS f(tk_filename, tk_run_id, tk_pid, tk_node) ON r.filename = f.tk_filename"
    )
    return int(con.execute(sql, params).fetchall()[0][0])


@contextmanager
def unordered_inserts(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Let parallel readers store rows out of file order (nothing reads the store by row order);
    wrap a whole transaction, so the setting is back after its rollback too."""
    con.execute("SET preserve_insertion_order = false")
    try:
        yield
    finally:
        con.execute("RESET preserve_insertion_order")


# ---------------------------------------------------------------------------------------------
# bookkeeping: the quarantine, spool_files (how far each file was loaded)


def quarantine(con: duckdb.DuckDBPyConnection, rows: Sequence[tuple[str | None, str, int | None, str | None, str, str | None]]) -> None:
    """Store records that could not be loaded: (run id, source, line, record id, error, raw text)."""
    if not rows:
        return
    now = time.time_ns()
    insert_rows(con, "INSERT INTO quarantine", [[*row, now] for row in rows])


SPOOL_FILE_COLUMNS = (
    "file_id", "run_id", "stream", "path", "pid", "host", "node", "started_ns", "ended_ns",
    "offset_bytes", "records", "torn_bytes",
)


def remember_files(con: duckdb.DuckDBPyConnection, files: Sequence[Sequence[Any]]) -> None:
    """Record how far each file was loaded (one row of ``SPOOL_FILE_COLUMNS`` values per file),
    so the next ingest adds only what is new."""
    if not files:
        return
    now = time.time_ns()
    insert_rows(con, "INSERT OR REPLACE INTO spool_files", [(*values, now) for values in files])


def known_file_ids(con: duckdb.DuckDBPyConnection, file_ids: Sequence[str]) -> set[str]:
    """Which of these files were loaded before."""
    if not file_ids:
        return set()
    return {r[0] for r in con.execute(
        "SELECT file_id FROM spool_files WHERE file_id IN (SELECT unnest($ids))", {"ids": list(file_ids)}
    ).fetchall()}


def file_progress(con: duckdb.DuckDBPyConnection, file_id: str) -> tuple[int, int, int | None] | None:
    """(bytes loaded, records seen, end time) of a file loaded before, or None."""
    row = one(con, "SELECT offset_bytes, records, ended_ns FROM spool_files WHERE file_id = ?", [file_id])
    return (int(row[0]), int(row[1]), row[2]) if row else None


# ---------------------------------------------------------------------------------------------
# runs and spans as ingest sees them


def run_processes(con: duckdb.DuckDBPyConnection, run_id: str) -> list[tuple[str | None, int, int | None, int | None, bool]]:
    """(host, pid, first start, last end, every file closed cleanly) of each process of a run's spool."""
    return [tuple(r) for r in con.execute(  # type: ignore[misc]
        "SELECT host, pid, min(started_ns), max(ended_ns), bool_and(ended_ns IS NOT NULL) "
        "FROM spool_files WHERE run_id = ? AND pid IS NOT NULL GROUP BY host, pid", [run_id]
    ).fetchall()]


def span_bounds(con: duckdb.DuckDBPyConnection, run_id: str) -> tuple[int | None, int | None, int]:
    """(first span start, last span end, root spans in error) of a run (``segments.run_bounds``)."""
    return segments.run_bounds(con, run_id)


def run_header(con: duckdb.DuckDBPyConnection, run_id: str) -> tuple[str, str, dict[str, Any]] | None:
    """(kind, name, attributes) of a stored run, or None."""
    row = one(con, "SELECT kind, name, attributes FROM runs WHERE run_id = ?", [run_id])
    return (row[0], row[1], json.loads(row[2] or "{}")) if row else None


def upsert_run(
    con: duckdb.DuckDBPyConnection, run_id: str, *, kind: str, name: str | None, started_ns: int | None,
    ended_ns: int | None, status: str, attributes: dict[str, Any],
) -> None:
    """Write (or replace) a run's row."""
    con.execute(
        "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)",
        [run_id, kind, name, started_ns, ended_ns, status, json.dumps(attributes, default=str)],
    )


def mark_running(con: duckdb.DuckDBPyConnection, run_ids: Sequence[str]) -> None:
    """Set these runs' status to running (spans are still arriving for them)."""
    con.execute("UPDATE runs SET status = 'running' WHERE list_contains(?, run_id)", [list(run_ids)])


def known_span_ids(con: duckdb.DuckDBPyConnection, run_id: str, span_ids: Sequence[str]) -> set[str]:
    """Which of these span ids the run already holds."""
    # a hash join, not list_contains: that scans the whole list for every stored span (quadratic;
    # a 600k-span batch into a run holding 600k spans never finished)
    rows = con.execute(
        "SELECT s.span_id FROM spans s JOIN (SELECT DISTINCT unnest(?::VARCHAR[]) AS id) q ON s.span_id = q.id "
        "WHERE s.run_id = ?", [list(span_ids), run_id]
    ).fetchall()
    return {r[0] for r in rows}
