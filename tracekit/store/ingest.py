"""`tracekit ingest`: the single writer that bulk-loads spool files (and imported files) into the store through Arrow.

Every file loads in one transaction: all of its good records, or nothing. Records that cannot be
loaded (garbage, wrong types, missing required fields) are quarantined with their line and id;
a torn last record (the writer was killed mid-line) is skipped and reported. Ingest is idempotent
and incremental: each spool file remembers how many bytes were loaded, so ingesting the same
spool again adds nothing, and ingesting a growing one adds only what is new.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.json as pajson

from tracekit import conventions as conv
from tracekit.store.sql import one
from tracekit.errors import SpoolError, TracekitError
from tracekit.store.db import connect
from tracekit.store.streams import STREAMS, StreamSpec

Progress = Callable[[int, int, str], None]
_FOOTER_PREFIX = b'{"' + conv.FOOTER_KEY.encode() + b'"'
_OTLP_SUFFIXES = (".otlp.json", ".otlp.jsonl", ".otlp", ".pb", ".binpb", ".otlp.pb")


@dataclass
class Quarantined:
    source: str
    line: int | None
    record_id: str | None
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "line": self.line, "record_id": self.record_id, "error": self.error}


@dataclass
class IngestReport:
    """What one ingest did; `rejected` files were left out whole."""

    files: int = 0
    unchanged_files: int = 0
    records: int = 0
    runs: set[str] = field(default_factory=set)
    quarantined: list[Quarantined] = field(default_factory=list)
    torn: list[tuple[str, int]] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "unchanged_files": self.unchanged_files,
            "records": self.records,
            "runs": sorted(self.runs),
            "quarantined": [q.to_dict() for q in self.quarantined],
            "torn": [{"source": s, "bytes": n} for s, n in self.torn],
            "rejected": [{"source": s, "error": e} for s, e in self.rejected],
        }


# ---------------------------------------------------------------------------------------------
# discovery


@dataclass
class Sources:
    spool_runs: dict[Path, list[Path]] = field(default_factory=dict)  # run dir -> its .jsonl files
    otlp: list[Path] = field(default_factory=list)

    def count(self) -> int:
        return sum(len(v) for v in self.spool_runs.values()) + len(self.otlp)


def _looks_like_spool(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(len(conv.HEADER_KEY) + 3).startswith(b'{"' + conv.HEADER_KEY.encode())
    except OSError:
        return False


def discover(paths: Iterable[str | os.PathLike[str]]) -> Sources:
    """Sort the given files and directories into spool runs and OTLP files."""
    sources = Sources()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise TracekitError(f"{path} does not exist: give a spool directory, a spool file or an OTLP file")
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                if not file.is_file():
                    continue
                if file.name.endswith(_OTLP_SUFFIXES):
                    sources.otlp.append(file)
                elif file.suffix == ".jsonl":
                    sources.spool_runs.setdefault(file.parent, []).append(file)
            for manifest in sorted(path.rglob("run.json")):
                sources.spool_runs.setdefault(manifest.parent, [])
        elif _looks_like_spool(path) or (path.suffix == ".jsonl" and not path.name.endswith(_OTLP_SUFFIXES)):
            sources.spool_runs.setdefault(path.parent, []).append(path)
        else:
            sources.otlp.append(path)
    return sources


# ---------------------------------------------------------------------------------------------
# parsing


@dataclass
class ParsedFile:
    header: dict[str, Any]
    spec: StreamSpec
    table: pa.Table
    quarantined: list[Quarantined]
    new_offset: int
    torn_bytes: int
    footer: dict[str, Any] | None
    records_before: int


def _check_value(value: Any, typ: pa.DataType) -> bool:
    if value is None:
        return True
    if pa.types.is_integer(typ):
        return isinstance(value, int) and not isinstance(value, bool)
    if pa.types.is_floating(typ):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if pa.types.is_boolean(typ):
        return isinstance(value, bool)
    if pa.types.is_string(typ):
        return isinstance(value, str)
    if pa.types.is_list(typ):
        return isinstance(value, list) and all(_check_value(v, typ.value_type) for v in value)
    if pa.types.is_struct(typ):
        return isinstance(value, dict) and all(
            _check_value(value.get(typ.field(i).name), typ.field(i).type) for i in range(typ.num_fields)
        )
    return False


def validate_record(record: Any, spec: StreamSpec) -> str | None:
    """Why this record cannot be loaded into `spec`'s table, or None if it can."""
    if not isinstance(record, dict):
        return f"expected a JSON object, found {type(record).__name__}"
    for name in spec.required:
        if record.get(name) is None:
            return f"required field {name!r} is missing"
    for fld in spec.schema:
        if pa.types.is_string(fld.type):
            continue  # any JSON value is accepted as text (see _as_text), as DuckDB's reader does
        if not _check_value(record.get(fld.name), fld.type):
            return f"field {fld.name!r} has the wrong type ({type(record.get(fld.name)).__name__}, expected {fld.type})"
    attrs = record.get("attributes")
    if isinstance(attrs, str):
        try:
            json.loads(attrs)
        except ValueError:
            return "field 'attributes' is not valid JSON text"
    return None


def _record_id(record: Any, spec: StreamSpec) -> str | None:
    if spec.id_field and isinstance(record, dict):
        value = record.get(spec.id_field)
        return str(value) if value is not None else None
    return None


def _as_text(record: dict[str, Any], text_fields: list[str]) -> dict[str, Any]:
    """A number, boolean, object or array in a text field is stored as its compact JSON text."""
    odd = [name for name in text_fields if record.get(name) is not None and not isinstance(record[name], str)]
    if not odd:
        return record
    record = dict(record)
    for name in odd:
        record[name] = json.dumps(record[name], separators=(",", ":"), ensure_ascii=False)
    return record


def rows_to_table(
    rows: Sequence[Any], spec: StreamSpec, *, source: str, first_line: int
) -> tuple[pa.Table, list[Quarantined]]:
    """Validate Python records one by one: the good ones become a table, the bad ones are quarantined."""
    good: list[dict[str, Any]] = []
    bad: list[Quarantined] = []
    text_fields = [f.name for f in spec.schema if pa.types.is_string(f.type)]
    for i, record in enumerate(rows):
        error = validate_record(record, spec)
        if error is None:
            good.append(_as_text(record, text_fields))
        else:
            bad.append(Quarantined(source, first_line + i, _record_id(record, spec), error))
    return pa.Table.from_pylist(good, schema=spec.schema), bad


def _parse_lines_slowly(body: bytes, spec: StreamSpec, source: str, first_line: int) -> tuple[pa.Table, list[Quarantined]]:
    rows: list[Any] = []
    bad: list[Quarantined] = []
    line_of: list[int] = []
    for i, line in enumerate(body.split(b"\n")):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
            line_of.append(first_line + i)
        except ValueError as exc:
            bad.append(Quarantined(source, first_line + i, None, f"not JSON: {exc.msg}"))
    table, more_bad = rows_to_table(rows, spec, source=source, first_line=0)
    for q in more_bad:
        q.line = line_of[q.line] if q.line is not None else None
    return table, bad + more_bad


# Small blocks let pyarrow parse one file on every core (1 MiB blocks parse 2x faster than 16 MiB
# here); a record longer than a block fails the read, so a second try uses blocks of 64 MiB.
_BLOCK_SIZES = (1 << 20, 1 << 26)


def _read_json_fast(body: bytes, spec: StreamSpec) -> pa.Table | None:
    for block_size in _BLOCK_SIZES:
        if block_size > _BLOCK_SIZES[0] and len(body) <= _BLOCK_SIZES[0]:
            return None  # the whole body fit in one block: the failure was not a long record
        try:
            return pajson.read_json(
                pa.BufferReader(body),
                read_options=pajson.ReadOptions(block_size=block_size),
                parse_options=pajson.ParseOptions(explicit_schema=spec.schema, unexpected_field_behavior="ignore"),
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            continue
    return None


def _parse_body(body: bytes, spec: StreamSpec, source: str, first_line: int) -> tuple[pa.Table, list[Quarantined]]:
    if not body.strip():
        return spec.schema.empty_table(), []
    table = _read_json_fast(body, spec)
    if table is None:  # garbage or a wrong type somewhere: the careful path names the bad lines
        return _parse_lines_slowly(body, spec, source, first_line)
    # required fields: a null in any of them sends the file to the careful path to name the lines
    for name in spec.required:
        if table.column(name).null_count:
            return _parse_lines_slowly(body, spec, source, first_line)
    if "attributes" in spec.schema.names and _has_invalid_json(table.column("attributes")):
        return _parse_lines_slowly(body, spec, source, first_line)
    return table, []


def _has_invalid_json(column: pa.ChunkedArray) -> bool:
    """Whether any attributes text is not JSON (the store's column is JSON: it would fail the whole insert)."""
    if column.null_count == len(column):
        return False
    con = duckdb.connect()
    try:
        con.register("tk_attrs", pa.table({"a": column}))
        row = con.execute("SELECT bool_or(NOT json_valid(a)) FROM tk_attrs WHERE a IS NOT NULL").fetchall()
        return bool(row[0][0])
    finally:
        con.close()


def _declared_spec(path: Path, header: Any) -> StreamSpec:
    """The record stream a spool file's header declares, as its format version writes it.

    Raises SpoolError saying what is wrong with the header."""
    if not isinstance(header, dict) or conv.HEADER_KEY not in header:
        raise SpoolError(f"{path}: no tracekit spool header; this is not a tracekit spool file")
    version = header[conv.HEADER_KEY]
    if version not in conv.READABLE_VERSIONS or isinstance(version, bool):
        raise SpoolError(
            f"{path}: written in spool format version {version!r}, but this tracekit reads versions "
            f"{conv.READABLE_VERSIONS[0]} to {conv.SPOOL_VERSION}: ingest it with the tracekit version that recorded it"
        )
    spec = STREAMS.get(str(header.get("stream")))
    if spec is None:
        raise SpoolError(f"{path}: unknown record stream {header.get('stream')!r} (known: {', '.join(STREAMS)})")
    for key in ("run_id", "file_id"):
        if not isinstance(header.get(key), str) or not header[key]:
            raise SpoolError(f"{path}: the header has no {key}; this is not a complete spool file")
    return spec.for_version(version)


def parse_spool_file(path: Path, offset: int, records_before: int) -> ParsedFile:
    """Read one spool file from `offset` (bytes already loaded). Raises SpoolError for a file to reject whole."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpoolError(f"{path}: cannot read ({exc.strerror or exc})") from None
    nl = data.find(b"\n")
    if nl < 0:
        raise SpoolError(f"{path}: no complete header line; it is empty, truncated, or not a tracekit spool file")
    try:
        header = json.loads(data[:nl])
    except ValueError:
        raise SpoolError(f"{path}: the first line is not JSON; this is not a tracekit spool file") from None
    spec = _declared_spec(path, header)
    last_nl = data.rfind(b"\n")
    torn = len(data) - (last_nl + 1)
    body_end = last_nl + 1
    footer = None
    prev_nl = data.rfind(b"\n", 0, last_nl)
    if prev_nl >= nl:
        last_line = data[prev_nl + 1:last_nl]
        if last_line.startswith(_FOOTER_PREFIX):
            try:
                footer = json.loads(last_line)
                body_end = prev_nl + 1
            except ValueError:
                footer = None
    start = max(offset, nl + 1)
    body = data[start:body_end] if body_end > start else b""
    table, bad = _parse_body(body, spec, str(path), first_line=records_before + 2)
    return ParsedFile(header, spec, table, bad, max(body_end, start), torn, footer, records_before)


# ---------------------------------------------------------------------------------------------
# loading


def _value_exprs(spec: StreamSpec, fields: list[str], node_default: str) -> list[str]:
    """SELECT expressions for a stream's fields, with the defaults the store's tables expect."""
    select = []
    for name in fields:
        if name == "node":
            select.append(f"coalesce(node, {node_default}) AS node")
        elif name == "attributes":
            select.append("coalesce(attributes, '{}') AS attributes")
        elif name == "kind" and spec.name == "spans":
            select.append("coalesce(kind, 'internal') AS kind")
        elif name == "status" and spec.name == "spans":
            select.append("coalesce(status, 'unset') AS status")
        else:
            select.append(name)
    return select


def load_table(
    con: duckdb.DuckDBPyConnection, spec: StreamSpec, table: pa.Table, *, run_id: str,
    pid: int | None = None, default_node: str | None = None,
) -> int:
    """Insert one stream's records into its table (inside the caller's transaction)."""
    if table.num_rows == 0:
        return 0
    con.register("tk_batch", table)
    try:
        fields = [f.name for f in spec.schema if f.name != "events"]
        columns = ["run_id", *fields] + (["pid"] if spec.with_pid else [])
        values = ["$run_id", *_value_exprs(spec, fields, "$node")] + (["$pid"] if spec.with_pid else [])
        params: dict[str, Any] = {"run_id": run_id}
        if spec.with_pid:
            params["pid"] = pid
        if "node" in fields:
            params["node"] = default_node or "unknown"
        con.execute(
            f"INSERT INTO {spec.table} ({', '.join(columns)}) SELECT {', '.join(values)} FROM tk_batch",
            params,
        )
        if "events" in spec.schema.names and table.column("events").null_count < table.num_rows:
            con.execute(
                "INSERT INTO events (run_id, span_id, ts_ns, name, attributes) "
                "SELECT $run_id, span_id, e.ts_ns, e.name, coalesce(e.attributes, '{}') "
                "FROM (SELECT span_id, unnest(events) AS e FROM tk_batch WHERE events IS NOT NULL)",
                {"run_id": run_id},
            )
    finally:
        con.unregister("tk_batch")
    return table.num_rows


def _quarantine(con: duckdb.DuckDBPyConnection, run_id: str | None, items: list[Quarantined], raw: dict[int, str]) -> None:
    if not items:
        return
    now = time.time_ns()
    con.executemany(
        "INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?)",
        [[run_id, q.source, q.line, q.record_id, q.error, raw.get(q.line or -1), now] for q in items],
    )


@dataclass
class _Prepared:
    path: Path
    prior: tuple[Any, ...] | None
    parsed: ParsedFile | None = None
    error: str | None = None


def _prior_state(con: duckdb.DuckDBPyConnection, path: Path) -> tuple[Any, ...] | None:
    file_id = _peek_header(path)
    if file_id is None:
        return None
    return one(con, "SELECT offset_bytes, records, ended_ns FROM spool_files WHERE file_id = ?", [file_id])


def _parse_prepared(item: _Prepared) -> _Prepared:
    offset, records_before = (int(item.prior[0]), int(item.prior[1])) if item.prior else (0, 0)
    try:
        item.parsed = parse_spool_file(item.path, offset, records_before)
    except SpoolError as exc:
        item.error = str(exc)
    return item


BATCH_ROWS = 500_000  # files are loaded together up to this many rows: big inserts skip the WAL


def _is_unchanged(item: _Prepared) -> bool:
    parsed, prior = item.parsed, item.prior
    return bool(
        prior and parsed is not None and parsed.table.num_rows == 0 and not parsed.quarantined
        and (prior[2] is not None or parsed.footer is None)
    )


def _remember_files(
    con: duckdb.DuckDBPyConnection,
    files: list[tuple[Path, dict[str, Any], StreamSpec, dict[str, Any] | None, int, int, int]],
) -> None:
    """Record how far each spool file was loaded (path, header, spec, footer, offset, records, torn
    bytes), so the next ingest adds only what is new."""
    if not files:
        return
    now = time.time_ns()
    params: list[Any] = []
    for path, header, spec, footer, offset, records, torn in files:
        params += [
            header["file_id"], str(header["run_id"]), spec.name, str(path.absolute()),
            header.get("pid"), header.get("host"), header.get("node"), header.get("started_ns"),
            footer.get(conv.FOOTER_KEY) if footer else None, offset, records, torn, now,
        ]
    row = "(" + ", ".join("?" * 13) + ")"
    con.execute(f"INSERT OR REPLACE INTO spool_files VALUES {', '.join([row] * len(files))}", params)


def _load_batch(con: duckdb.DuckDBPyConnection, batch: list[_Prepared], report: IngestReport) -> None:
    """Load parsed files in one transaction: every file entirely, or (on a database error) none of them."""
    if not batch:
        return
    con.execute("BEGIN TRANSACTION")
    try:
        for item in batch:  # inserts into one table within one transaction write whole row groups
            parsed = item.parsed
            assert parsed is not None
            pid = parsed.header.get("pid")
            load_table(con, parsed.spec, parsed.table, run_id=str(parsed.header["run_id"]),
                       pid=pid if isinstance(pid, int) else None, default_node=parsed.header.get("node"))
        remembered = []
        for item in batch:
            parsed = item.parsed
            assert parsed is not None
            header = parsed.header
            _quarantine(con, str(header["run_id"]), parsed.quarantined, _raw_lines(item.path, parsed.quarantined))
            remembered.append((
                item.path, header, parsed.spec, parsed.footer, parsed.new_offset,
                parsed.records_before + parsed.table.num_rows + len(parsed.quarantined), parsed.torn_bytes,
            ))
        _remember_files(con, remembered)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    for item in batch:
        parsed = item.parsed
        assert parsed is not None
        report.files += 1
        report.records += parsed.table.num_rows
        report.quarantined.extend(parsed.quarantined)


# ---------------------------------------------------------------------------------------------
# the fast path: DuckDB's own JSON reader loads cleanly closed files whole (no Python, no Arrow hop)


@dataclass
class _Closed:
    """A spool file its process closed cleanly (footer present, nothing torn) and never loaded before."""

    path: Path
    header: dict[str, Any]
    footer: dict[str, Any]
    spec: StreamSpec
    size: int


_DUCK_TYPES = {pa.int32(): "INTEGER", pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN"}
FAST_BATCH_BYTES = 1 << 30  # closed files are loaded by one INSERT per stream, up to this much JSON
_TAIL_BYTES = 4096


def _peek_closed(path: Path) -> _Closed | None:
    """Header and footer of a spool file the fast path can load whole, or None (the careful path decides)."""
    if any(ch in str(path) for ch in "*?[]{}'"):  # DuckDB would read the path as a glob pattern
        return None
    try:
        with path.open("rb") as fh:
            first = fh.readline(1 << 16)
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, size - _TAIL_BYTES))
            tail = fh.read()
    except OSError:
        return None
    if not tail.endswith(b"\n") or not first.endswith(b"\n"):
        return None
    start = tail.rfind(b"\n", 0, len(tail) - 1) + 1
    if start == 0 and size > len(tail):
        return None
    try:
        header, footer = json.loads(first), json.loads(tail[start:-1])
    except ValueError:
        return None
    if not isinstance(footer, dict) or conv.FOOTER_KEY not in footer:
        return None
    try:
        spec = _declared_spec(path, header)
    except SpoolError:
        return None
    records = footer.get("records")
    if spec.nested or not isinstance(records, int) or isinstance(records, bool):
        return None
    return _Closed(path, header, footer, spec, size)


def _closed_files(con: duckdb.DuckDBPyConnection, paths: list[Path]) -> tuple[list[_Closed], list[Path]]:
    """Split files into those the fast path loads (closed, never loaded before) and the rest."""
    peeked = {path: _peek_closed(path) for path in paths}
    ids = [c.header["file_id"] for c in peeked.values() if c is not None]
    known = {r[0] for r in con.execute(
        "SELECT file_id FROM spool_files WHERE file_id IN (SELECT unnest($ids))", {"ids": ids}
    ).fetchall()} if ids else set()
    closed = [c for c in peeked.values() if c is not None and c.header["file_id"] not in known]
    rest = [path for path, c in peeked.items() if c is None or c.header["file_id"] in known]
    return closed, rest


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _load_closed(con: duckdb.DuckDBPyConnection, files: list[_Closed], report: IngestReport) -> bool:
    """Load closed files of one stream with one INSERT through DuckDB's JSON reader, in one transaction.

    Every record must be an object with its required fields whose values DuckDB can convert to the
    column types (it converts as its JSON reader does: a float into an integer column is rounded, a
    number or object into a text column becomes its JSON text), and the number inserted must equal
    what the footers say was written. Anything else rolls back and returns False, and the files go
    the careful way, which names and quarantines the bad records.
    """
    spec = files[0].spec
    columns = {conv.HEADER_KEY: "JSON", conv.FOOTER_KEY: "JSON"}
    checks = [f"{conv.HEADER_KEY} IS NULL", f"{conv.FOOTER_KEY} IS NULL"]  # the header and footer lines
    for fld in spec.schema:
        columns[fld.name] = _DUCK_TYPES.get(fld.type, "VARCHAR")
        if fld.name in spec.required:
            checks.append(f"{fld.name} IS NOT NULL")
    reader = (
        f"read_ndjson([{', '.join(_sql_text(str(c.path)) for c in files)}], "
        f"columns={{{', '.join(f'{_sql_text(k)}: {_sql_text(v)}' for k, v in columns.items())}}}, "
        "format='newline_delimited', filename=true, hive_partitioning=false)"
    )
    fields = spec.schema.names
    target = ["run_id", *fields] + (["pid"] if spec.with_pid else [])
    values = ["f.tk_run_id", *_value_exprs(spec, fields, "f.tk_node")] + (["f.tk_pid"] if spec.with_pid else [])
    # which file a row came from gives its run, process and default node (a VALUES list: registering
    # an Arrow table would cost a 0.4 s import on first use)
    files_sql = ", ".join("(?, ?, ?, ?)" for _ in files)
    params: list[Any] = []
    for c in files:
        pid = c.header.get("pid")
        params += [str(c.path), str(c.header["run_id"]), pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
                   str(c.header.get("node") or "unknown")]
    sql = (
        f"INSERT INTO {spec.table} ({', '.join(target)}) SELECT {', '.join(values)} "
        f"FROM (SELECT * FROM {reader} WHERE {' AND '.join(checks)}) AS r "
        f"JOIN (VALUES {files_sql}) AS f(tk_filename, tk_run_id, tk_pid, tk_node) ON r.filename = f.tk_filename"
    )
    expected = sum(int(c.footer["records"]) for c in files)
    con.execute("BEGIN TRANSACTION")
    try:
        # parallel readers may store rows out of file order; nothing reads the store by row order
        con.execute("SET preserve_insertion_order = false")
        inserted = con.execute(sql, params).fetchall()[0][0]
        if inserted != expected:
            raise _NotClean
        _remember_files(con, [(c.path, c.header, spec, c.footer, c.size, int(c.footer["records"]), 0) for c in files])
        con.execute("COMMIT")
    except (duckdb.Error, _NotClean):
        con.execute("ROLLBACK")
        return False
    finally:
        con.execute("RESET preserve_insertion_order")
    report.files += len(files)
    report.records += expected
    return True


class _NotClean(Exception):
    """Some record of a closed file was not loadable as is: the careful path takes the files."""


def _batches_by_size(files: list[_Closed], limit: int) -> Iterator[list[_Closed]]:
    """Consecutive files in batches of at most `limit` bytes (a bigger file is a batch of its own)."""
    batch: list[_Closed] = []
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
    con: duckdb.DuckDBPyConnection, files: list[_Closed], report: IngestReport, on_done: Callable[[Path], None]
) -> list[Path]:
    """Load closed files stream by stream, in batches of FAST_BATCH_BYTES; returns the files left to the careful path."""
    left: list[Path] = []
    by_stream: dict[tuple[str, ...], list[_Closed]] = {}
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


PARSE_AHEAD_BYTES = 512 << 20  # how much spool the parser may read ahead of the loader


def _parsed_ahead(pool: Any, items: list[_Prepared]) -> Iterator[_Prepared]:
    """Yield parsed items in order while `pool` parses up to PARSE_AHEAD_BYTES of later files, so
    loading one batch overlaps parsing the next. Parses inline when the interpreter is shutting
    down (an ingest at exit cannot start threads)."""
    from collections import deque

    def size(item: _Prepared) -> int:
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
            pending.append((_submit(pool, items[next_index]), nbytes))
            ahead += nbytes
            next_index += 1
        future, nbytes = pending.popleft()
        ahead -= nbytes
        yield future.result() if hasattr(future, "result") else future


def _submit(pool: Any, item: _Prepared) -> Any:
    try:
        return pool.submit(_parse_prepared, item)
    except RuntimeError:
        return _parse_prepared(item)


def _ingest_spool_files(
    con: duckdb.DuckDBPyConnection, paths: list[Path], report: IngestReport, on_done: Callable[[Path], None]
) -> set[str]:
    """Parse the next file on a worker thread while the current batch loads (pyarrow and DuckDB release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    closed, paths = _closed_files(con, paths)
    run_ids = {str(c.header["run_id"]) for c in closed}
    paths += _ingest_closed_files(con, closed, report, on_done)
    items = [_Prepared(path, _prior_state(con, path)) for path in paths]
    batch: list[_Prepared] = []
    batch_rows = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracekit-parse") as pool:
        for item in _parsed_ahead(pool, items):
            on_done(item.path)
            if item.error is not None or item.parsed is None:
                report.rejected.append((str(item.path), item.error or f"{item.path}: could not be read"))
                continue
            run_ids.add(str(item.parsed.header["run_id"]))
            if item.parsed.torn_bytes:
                report.torn.append((str(item.path), item.parsed.torn_bytes))
            if _is_unchanged(item):
                report.unchanged_files += 1
                continue
            batch.append(item)
            batch_rows += item.parsed.table.num_rows
            if batch_rows >= BATCH_ROWS:
                _load_batch(con, batch, report)
                batch, batch_rows = [], 0
        _load_batch(con, batch, report)
    return run_ids


def _peek_header(path: Path) -> str | None:
    try:
        with path.open("rb") as fh:
            header = json.loads(fh.readline())
        file_id = header.get("file_id") if isinstance(header, dict) else None
        return file_id if isinstance(file_id, str) else None
    except (OSError, ValueError):
        return None


def _raw_lines(path: Path, items: list[Quarantined]) -> dict[int, str]:
    wanted = {q.line for q in items if q.line is not None}
    if not wanted:
        return {}
    out: dict[int, str] = {}
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if number in wanted:
                out[number] = line[:2000].decode("utf-8", "replace").rstrip("\n")
    return out


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def refresh_run(con: duckdb.DuckDBPyConnection, run_id: str, manifest: dict[str, Any] | None) -> None:
    """(Re)compute the run row from its manifest and what was ingested."""
    import socket

    manifest = manifest or {}
    files = con.execute(
        "SELECT host, pid, min(started_ns), max(ended_ns), bool_and(ended_ns IS NOT NULL) "
        "FROM spool_files WHERE run_id = ? AND pid IS NOT NULL GROUP BY host, pid", [run_id]
    ).fetchall()
    span_bounds = one(con, 
        "SELECT min(start_ns), max(end_ns), count(*) FILTER (WHERE parent_id IS NULL AND status = 'error') "
        "FROM spans WHERE run_id = ?", [run_id]
    ) or (None, None, 0)
    here = socket.gethostname()
    abrupt = [pid for host, pid, _s, _e, clean in files if not clean and not (host == here and _pid_alive(pid))]
    still_running = [pid for host, pid, _s, _e, clean in files if not clean and host == here and _pid_alive(pid)]
    starts = [s for _h, _p, s, _e, _c in files if s] + ([span_bounds[0]] if span_bounds[0] else [])
    ends = [e for _h, _p, _s, e, _c in files if e] + ([span_bounds[1]] if span_bounds[1] else [])
    exit_code = manifest.get("exit_code")
    if abrupt:
        status = "aborted"
    elif isinstance(exit_code, int) and exit_code != 0:
        status = "error"
    elif still_running or (manifest and "ended_ns" not in manifest and _pid_alive(manifest.get("pid"))):
        status = "running"
    elif exit_code is None and span_bounds[2]:
        status = "error"
    else:
        status = "ok"
    attributes = dict(manifest.get("attributes") or {})
    if abrupt:
        attributes["abrupt_pids"] = sorted(abrupt)
    if exit_code is not None:
        attributes["exit_code"] = exit_code
    if manifest.get("argv"):
        attributes.setdefault("argv", manifest["argv"])
    existing = one(con, "SELECT kind, name, attributes FROM runs WHERE run_id = ?", [run_id])
    if existing and not manifest:
        kind, name = existing[0], existing[1]
        attributes = {**json.loads(existing[2] or "{}"), **attributes}
    else:
        kind, name = manifest.get("kind") or "service", manifest.get("name") or run_id[:12]
    con.execute(
        "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            run_id, kind, name, manifest.get("started_ns") or (min(starts) if starts else None),
            manifest.get("ended_ns") or (max(ends) if ends else None), status,
            json.dumps(attributes, default=str),
        ],
    )


def ingest_paths(
    paths: Iterable[str | os.PathLike[str]],
    db: str | os.PathLike[str] | None = None,
    *,
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest spool directories, spool files and OTLP files into the store at `db`."""
    sources = discover(paths)
    report = IngestReport()
    total = sources.count()
    done = 0
    con = connect(db)
    con.execute("SET checkpoint_threshold = '1GB'")  # one checkpoint at the end, not one per file
    # plain FSST never wins over dictionary+FSST on these columns; analysing it cost 15 % of a load
    con.execute("SET disabled_compression_methods = 'fsst'")

    def on_done(path: Path) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total, str(path))

    try:
        for run_dir, files in sources.spool_runs.items():
            run_ids = _ingest_spool_files(con, files, report, on_done)
            manifest = read_manifest(run_dir)
            if manifest and isinstance(manifest.get("run_id"), str):
                run_ids.add(manifest["run_id"])
            for run_id in run_ids:
                refresh_run(con, run_id, manifest if manifest and manifest.get("run_id") == run_id else None)
                report.runs.add(run_id)
        if sources.otlp:
            from tracekit.importers.otlp import ingest_otlp_file

            for path in sources.otlp:
                ingest_otlp_file(con, path, report)
                done += 1
                if progress:
                    progress(done, total, str(path))
        from tracekit.store.agents import has_agent_spans

        for run_id in sorted(report.runs):  # agent edges from GenAI/OpenInference span attributes
            if has_agent_spans(con, run_id):  # (the deriving module imports the OTel SDK: only when needed)
                from tracekit.importers.genai import store_derived_links

                store_derived_links(con, run_id)
    finally:
        con.close()
    return report
