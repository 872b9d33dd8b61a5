"""Reading spool files: the header check, parsing JSON lines into Arrow tables, record validation and quarantine.

A file is parsed from the byte offset already loaded. The fast path hands the body to pyarrow's JSON
reader; garbage, a wrong type, a missing required field or invalid attribute JSON sends the file to
the careful path, which parses line by line, keeps every good record and quarantines each bad one
with its line and id. A torn last record (the writer was killed mid-line) is skipped and reported.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.json as pajson

from tracekit import conventions as conv
from tracekit import frames
from tracekit.errors import SpoolError
from tracekit.ingest.report import Quarantined
from tracekit.store.load import has_invalid_json, json_valid_mask
from tracekit.store.streams import STREAMS, StreamSpec

READABLE_VERSIONS = (*conv.READABLE_VERSIONS, frames.BINARY_VERSION)
_FOOTER_PREFIX = b'{"' + conv.FOOTER_KEY.encode() + b'"'
_TAIL_BYTES = 4096


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


# ---------------------------------------------------------------------------------------------
# validation


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


# ---------------------------------------------------------------------------------------------
# parsing


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


def parse_body(body: bytes, spec: StreamSpec, source: str, first_line: int) -> tuple[pa.Table, list[Quarantined]]:
    """Records of a spool file's body (JSON lines) as a table of the stream, and the records quarantined."""
    if not body.strip():
        return spec.schema.empty_table(), []
    table = _read_json_fast(body, spec)
    if table is None:  # garbage or a wrong type somewhere: the careful path names the bad lines
        return _parse_lines_slowly(body, spec, source, first_line)
    # required fields: a null in any of them sends the file to the careful path to name the lines
    for name in spec.required:
        if table.column(name).null_count:
            return _parse_lines_slowly(body, spec, source, first_line)
    if "attributes" in spec.schema.names and has_invalid_json(table.column("attributes")):
        return _parse_lines_slowly(body, spec, source, first_line)
    return table, []


def declared_spec(path: Path, header: Any) -> StreamSpec:
    """The record stream a spool file's header declares, as its format version writes it.

    Raises SpoolError saying what is wrong with the header."""
    if not isinstance(header, dict) or conv.HEADER_KEY not in header:
        raise SpoolError(f"{path}: no tracekit spool header; this is not a tracekit spool file")
    version = header[conv.HEADER_KEY]
    if (version not in READABLE_VERSIONS or isinstance(version, bool)
            or (version == frames.BINARY_VERSION) != (header.get("encoding") == frames.ENCODING)):
        raise SpoolError(
            f"{path}: written in spool format version {version!r} ({header.get('encoding') or 'json'}), but this "
            f"tracekit reads versions {READABLE_VERSIONS[0]} to {READABLE_VERSIONS[-1]} (3 is the binary "
            "encoding): ingest it with the tracekit version that recorded it"
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
    spec = declared_spec(path, header)
    if header[conv.HEADER_KEY] == frames.BINARY_VERSION:
        return _parse_binary(path, data, nl + 1, header, spec, offset, records_before)
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
    table, bad = parse_body(body, spec, str(path), first_line=records_before + 2)
    return ParsedFile(header, spec, table, bad, max(body_end, start), torn, footer, records_before)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A batch's table with exactly the stream's columns: a missing one is null, an extra one left out.
    Raises ArrowInvalid when a column cannot be cast."""
    if table.schema.equals(schema):
        return table
    columns = []
    for fld in schema:
        if fld.name in table.column_names:
            columns.append(table.column(fld.name).cast(fld.type))
        else:
            columns.append(pa.nulls(table.num_rows, fld.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _parse_binary(
    path: Path, data: bytes, body_start: int, header: dict[str, Any], spec: StreamSpec, offset: int, records_before: int,
) -> ParsedFile:
    """The frames of a binary spool file from `offset`: Arrow record batches, read without parsing (zero copy).
    A torn last frame is left for later; a record missing a required field is quarantined (line = its number
    in the file, counting from 1 after the header)."""
    start = max(offset, body_start)
    found = frames.scan(data, start)
    buffer = pa.py_buffer(data)
    tables = []
    footer = None
    for kind, begin, end in found.frames:
        if kind == frames.END:
            try:
                footer = json.loads(bytes(data[begin:end]))
            except ValueError:
                footer = None
            continue
        try:
            tables.append(_conform(pa.ipc.open_stream(buffer.slice(begin, end - begin)).read_all(), spec.schema))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise SpoolError(f"{path}: a batch at byte {begin} is not readable Arrow ({exc}); the file is rejected") from None
    table = pa.concat_tables(tables) if tables else spec.schema.empty_table()
    bad: list[Quarantined] = []
    missing = [name for name in spec.required if table.column(name).null_count]
    # attribute text is checked here, on the parse thread, so a load never has to (the JSON reader checks it too)
    not_json = "attributes" in spec.schema.names and has_invalid_json(table.column("attributes"))
    if missing or not_json:
        import pyarrow.compute as pc

        checks = [pc.is_valid(table.column(name)) for name in spec.required]
        if not_json:
            checks.append(json_valid_mask(table.column("attributes")))
        ok = functools.reduce(pc.and_, checks)
        for i in pc.indices_nonzero(pc.invert(ok)).to_pylist():
            name = next((n for n in spec.required if table.column(n)[i].as_py() is None), None)
            error = f"required field {name!r} is missing" if name else "field 'attributes' is not valid JSON text"
            bad.append(Quarantined(str(path), records_before + i + 1, _record_id(table.slice(i, 1).to_pylist()[0], spec),
                                   error))
        table = table.filter(ok)
    return ParsedFile(header, spec, table, bad, found.end, found.torn, footer, records_before)


def peek_file_id(path: Path) -> str | None:
    """The file id a spool file's header names, or None when the header is unreadable."""
    try:
        with path.open("rb") as fh:
            header = json.loads(fh.readline())
        file_id = header.get("file_id") if isinstance(header, dict) else None
        return file_id if isinstance(file_id, str) else None
    except (OSError, ValueError):
        return None


@dataclass
class Closed:
    """A spool file its process closed cleanly (footer present, nothing torn)."""

    path: Path
    header: dict[str, Any]
    footer: dict[str, Any]
    spec: StreamSpec
    size: int


def peek_closed(path: Path) -> Closed | None:
    """Header and footer of a spool file the fast path can load whole, or None (the careful path decides)."""
    if path.suffix != ".jsonl" or any(ch in str(path) for ch in "*?[]{}'"):  # DuckDB would read the path as a glob pattern
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
        spec = declared_spec(path, header)
    except SpoolError:
        return None
    records = footer.get("records")
    if spec.nested or not isinstance(records, int) or isinstance(records, bool):
        return None
    return Closed(path, header, footer, spec, size)


def raw_lines(path: Path, items: list[Quarantined]) -> dict[int, str]:
    """The text of the quarantined lines of a file (cut at 2000 characters), by line number."""
    wanted = {q.line for q in items if q.line is not None}
    if not wanted or path.suffix == frames.SUFFIX:  # a binary file's records have no text
        return {}
    out: dict[int, str] = {}
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if number in wanted:
                out[number] = line[:2000].decode("utf-8", "replace").rstrip("\n")
    return out
