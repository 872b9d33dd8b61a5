"""Buffered spool rows as one Arrow IPC frame, encoded in pure Python (no pyarrow, no numpy, no pandas).

The binary spool's payload is an Arrow IPC stream (a schema message, one record batch message per group of
rows, the end-of-stream marker; see ``tracekit.frames``). It is written here without pyarrow: importing
pyarrow costs ~0.1 s of CPU (it imports numpy) and its array constructors import pandas (another 0.2-0.4 s),
which every process would pay at its first flush and a forked child leaving through ``os._exit`` at its
exit. The columns are built the way Arrow lays them out, with the ``array`` module and byte joins (int32
offsets and UTF-8 data for text; little-endian int32 / int64 / float64 values; bit-packed booleans and
validity bitmaps), and the few flatbuffers of the IPC messages by a minimal forward flatbuffer writer.

Rows arrive as (field names, values) tuples or (dict, None); a field a row does not name is null. A value
of the wrong type is converted as the JSON-lines writer would store it (a number in a text field becomes
its JSON text, a one-element tensor its number); a row with a value that cannot be converted (a bool or a
fraction in an integer field, an integer out of range, text that is not valid Unicode) is dropped and counted.
"""

from __future__ import annotations

import json
import math
import operator
import struct
from array import array
from itertools import accumulate, repeat
from typing import Any, Sequence

from tracekit import frames

_NONE = type(None)
_WIDTH = {"int32": "i", "int64": "q", "float64": "d"}  # array typecodes: 4, 8 and 8 bytes on every platform we run on
_KINDS = frozenset((*_WIDTH, "string", "bool"))
_BITS = bytes.maketrans(b"\x00\x01", b"01")
_CONTINUATION = b"\xff\xff\xff\xff"
_END_OF_STREAM = _CONTINUATION + b"\x00\x00\x00\x00"
_PADDING = [bytes(-n % 8) for n in range(8)]
_STEPS: dict[int, bytes] = {}  # text width -> int32 offsets 0, w, 2w, ... (uniform-width columns slice them)
_SCHEMAS: dict[tuple[tuple[str, str], ...], tuple[tuple[tuple[str, str], ...], bytes]] = {}

Column = tuple[int, list[bytes]]  # (null count, the column's buffers in Arrow order: validity first)


class _Bad(Exception):
    """A value that has no place in its column."""


# --- values ---------------------------------------------------------------------------------------

def _number(value: Any) -> Any:
    item = getattr(value, "item", None)  # a one-element tensor or numpy scalar
    return item() if item is not None else value


def _convert(value: Any, kind: str) -> Any:
    """``value`` as its column stores it (None: null). Raises _Bad when it cannot be stored there."""
    if value is None:
        return None
    if kind == "string":
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate
            raise _Bad(str(exc)) from None
    try:
        value = _number(value)
    except Exception as exc:  # noqa: BLE001 - not a one-element value
        raise _Bad(str(exc)) from None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise _Bad(f"{value!r} is not a boolean")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"{value!r} is not a number")
    if kind == "float64":
        try:
            return float(value) if math.isfinite(value) else None
        except OverflowError:
            raise _Bad(f"{value} does not fit in a float64") from None
    if isinstance(value, float):
        if not value.is_integer():
            raise _Bad(f"{value!r} is not an integer")
        value = int(value)
    try:
        array(_WIDTH[kind], (value,))
    except OverflowError:
        raise _Bad(f"{value} does not fit in {kind}") from None
    return value


# --- columns --------------------------------------------------------------------------------------

def _bitmap(flags: bytes) -> bytes:
    """One bit per byte of ``flags`` (each 0 or 1), least significant bit first, as Arrow packs them."""
    if not flags:
        return b""
    return int(flags[::-1].translate(_BITS), 2).to_bytes((len(flags) + 7) // 8, "little")


def _validity(values: Sequence[Any]) -> tuple[int, bytes]:
    """(null count, validity bitmap) of ``values``; no bitmap when nothing is null."""
    flags = bytes(map(operator.is_not, values, repeat(None)))
    nulls = len(flags) - sum(flags)
    return nulls, (_bitmap(flags) if nulls else b"")


def _offsets(values: Sequence[Any], maybe_null: bool) -> bytes:
    """The int32 offsets of ``values`` (each of its length in bytes; None: empty) in their concatenation."""
    widths = set() if maybe_null else set(map(len, values))
    if len(widths) == 1:  # ids and names of one width: a slice of the cached arithmetic sequence
        width, size = widths.pop(), 4 * (len(values) + 1)
        if not width:
            return bytes(size)
        steps = _STEPS.get(width, b"")
        if len(steps) < size:
            if len(_STEPS) > 256:
                _STEPS.clear()
            steps = _STEPS[width] = array("i", range(0, width * max(len(values), 2048) + 1, width)).tobytes()
        return steps[:size]
    return array("i", accumulate(map(operator.length_hint, values), initial=0)).tobytes()  # length_hint(None): 0


def _build(values: Sequence[Any], kind: str, maybe_null: bool = True) -> Column:
    """The column of ``values``, every one already of its column's Python type (bytes for text) or None
    (only where ``maybe_null``)."""
    nulls, validity = _validity(values) if maybe_null and None in values else (0, b"")
    if kind == "string":
        return nulls, [validity, _offsets(values, bool(nulls)), b"".join(filter(None, values))]
    if kind == "bool":
        return nulls, [validity, _bitmap(bytes(map(operator.truth, values)))]
    filled = [0 if v is None else v for v in values] if nulls else values
    return nulls, [validity, array(_WIDTH[kind], filled).tobytes()]


def _text(values: Sequence[Any]) -> Column | None:
    """The column of text ``values`` (or None), or None when some value is not text."""
    try:
        text, maybe_null = "".join(values), False  # fails on a None or a value that is not text
    except TypeError:
        if not set(map(type, values)) <= {str, _NONE}:
            return None
        text, maybe_null = "".join(filter(None, values)), True
    data = text.encode("utf-8")  # UnicodeEncodeError: a lone surrogate
    if len(data) != len(text):  # not ASCII: a value's length in bytes is not its length in characters
        return _build([None if v is None else v.encode("utf-8") for v in values], "string", maybe_null)
    nulls, validity = _validity(values) if maybe_null else (0, b"")
    return nulls, [validity, _offsets(values, maybe_null), data]


def _column(values: Sequence[Any], kind: str) -> tuple[Column, list[int]]:
    """The column of ``values`` and the indexes of the values that could not be converted (null in it)."""
    try:
        if kind == "string":
            column = _text(values)
            if column is not None:
                return column, []
        else:
            types = set(map(type, values))
            if types == {_NONE}:
                return _nulls(len(values), kind), []
            if types <= ({bool, _NONE} if kind == "bool" else {int, float, _NONE} if kind == "float64" else {int, _NONE}):
                return _build(values, kind, _NONE in types), []
    except (OverflowError, UnicodeEncodeError):
        pass  # some value is out of range or not valid Unicode: the careful path finds which
    out: list[Any] = []
    bad: list[int] = []
    for i, value in enumerate(values):
        try:
            out.append(_convert(value, kind))
        except _Bad:
            out.append(None)
            bad.append(i)
    return _build(out, kind), bad


def _nulls(rows: int, kind: str) -> Column:
    """A column of ``rows`` nulls."""
    validity = bytes((rows + 7) // 8)
    if kind == "string":
        return rows, [validity, bytes(4 * (rows + 1)), b""]
    if kind == "bool":
        return rows, [validity, validity]
    return rows, [validity, bytes(array(_WIDTH[kind]).itemsize * rows)]


# --- Arrow IPC messages ---------------------------------------------------------------------------
# A minimal forward flatbuffer writer: a table is written before its children, so every offset points
# forward (unsigned, as flatbuffers wants them); a table's vtable sits just before it. Enough for the
# Schema and RecordBatch messages of Arrow's Message.fbs / Schema.fbs (metadata version V5).

class _Table:
    """A flatbuffer table: (slot, struct format or "o" for an object, value) fields."""

    def __init__(self, *fields: tuple[int, str, Any]) -> None:
        self.fields = fields


class _Structs:
    """A vector of ``count`` 16-byte structs (FieldNode, Buffer: two int64 each), already packed."""

    def __init__(self, count: int, data: bytes) -> None:
        self.count, self.data = count, data


def _pad(buf: bytearray, align: int, extra: int = 0) -> None:
    buf += bytes(-(len(buf) + extra) % align)


def _place(buf: bytearray, obj: Any, pending: list[tuple[int, Any]]) -> int:
    """Append ``obj`` to ``buf``; its children go to ``pending`` as (offset position, child). Where it starts."""
    if isinstance(obj, _Table):
        inline, slots, cursor = [], {}, 4  # after the table's int32 vtable offset
        for slot, fmt, value in sorted(obj.fields, key=lambda f: -struct.calcsize("I" if f[1] == "o" else f[1])):
            size = struct.calcsize("I" if fmt == "o" else fmt)
            cursor += -cursor % size
            slots[slot] = cursor
            inline.append((cursor, fmt, value))
            cursor += size
        count = max(slots, default=-1) + 1
        vtable = struct.pack(f"<HH{count}H", 4 + 2 * count, cursor, *(slots.get(i, 0) for i in range(count)))
        _pad(buf, 8, len(vtable))
        buf += vtable
        start = len(buf)
        buf += bytes(cursor)
        struct.pack_into("<i", buf, start, len(vtable))
        for at, fmt, value in inline:
            if fmt == "o":
                pending.append((start + at, value))
            else:
                struct.pack_into("<" + fmt, buf, start + at, value)
        return start
    if isinstance(obj, _Structs):
        _pad(buf, 8, 4)  # the structs (int64s) are 8-aligned, after the uint32 length
        start = len(buf)
        buf += struct.pack("<I", obj.count) + obj.data
        return start
    _pad(buf, 4)
    start = len(buf)
    if isinstance(obj, str):
        data = obj.encode("utf-8")
        buf += struct.pack("<I", len(data)) + data + b"\x00"
    else:  # a vector of tables
        buf += struct.pack("<I", len(obj)) + bytes(4 * len(obj))
        pending.extend((start + 4 + 4 * i, child) for i, child in enumerate(obj))
    return start


def _message(header_type: int, header: _Table, body_length: int) -> bytes:
    """An encapsulated IPC message's prefix and flatbuffer (its body follows), padded to 8 bytes."""
    root = _Table((0, "h", 4), (1, "B", header_type), (2, "o", header), (3, "q", body_length))  # version V5
    buf = bytearray(4)
    pending: list[tuple[int, Any]] = [(0, root)]
    while pending:
        at, obj = pending.pop()
        struct.pack_into("<I", buf, at, _place(buf, obj, pending) - at)
    _pad(buf, 8)
    return _CONTINUATION + struct.pack("<i", len(buf)) + bytes(buf)


def _field_type(kind: str) -> tuple[int, _Table]:
    """The Schema.fbs Type union member of a column kind: (type id, its table)."""
    if kind == "string":
        return 5, _Table()  # Utf8
    if kind == "bool":
        return 6, _Table()  # Bool
    if kind == "float64":
        return 3, _Table((0, "h", 2))  # FloatingPoint, DOUBLE
    return 2, _Table((0, "i", 32 if kind == "int32" else 64), (1, "?", True))  # Int, signed


def _schema(fields: tuple[tuple[str, str], ...]) -> tuple[tuple[tuple[str, str], ...], bytes]:
    """A stream's flat fields (nested format-1 fields are left out) and its schema message, built once."""
    known = _SCHEMAS.get(fields)
    if known is None:
        flat = tuple((name, kind) for name, kind in fields if kind in _KINDS)
        columns = []
        for name, kind in flat:
            type_id, type_table = _field_type(kind)
            columns.append(_Table((0, "o", name), (1, "?", True), (2, "B", type_id), (3, "o", type_table), (5, "o", [])))
        known = _SCHEMAS[fields] = (flat, _message(1, _Table((1, "o", columns)), 0))
    return known


def _batch(rows: int, columns: list[Column]) -> bytes:
    """One record batch message and its body."""
    nodes, buffers, body, size = [], [], [], 0
    for nulls, parts in columns:
        nodes.append(struct.pack("<qq", rows, nulls))
        for part in parts:
            buffers.append(struct.pack("<qq", size, len(part)))
            padding = _PADDING[len(part) % 8]  # every buffer starts 8-aligned
            body += (part, padding)
            size += len(part) + len(padding)
    header = _Table((0, "q", rows), (1, "o", _Structs(len(nodes), b"".join(nodes))),
                    (2, "o", _Structs(len(buffers), b"".join(buffers))))
    return b"".join((_message(3, header, size), *body))


# --- frames ---------------------------------------------------------------------------------------

def encode(fields: tuple[tuple[str, str], ...], items: list[tuple[Any, Any]]) -> tuple[bytes, int, int]:
    """One batch frame of the rows in ``items`` ((field names, values) or (dict, None)): (frame bytes,
    records in it, rows dropped because a value could not be converted). Empty bytes when no row is left."""
    flat, schema_message = _schema(fields)
    groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    first = items[0][0] if items else None
    if type(first) is tuple and len(set(map(id, map(operator.itemgetter(0), items)))) == 1:
        groups[first] = list(map(operator.itemgetter(1), items))  # the usual flush: rows of one writer's fields
    else:
        for first, second in items:
            if type(first) is dict:
                groups.setdefault(tuple(first), []).append(tuple(first.values()))
            else:
                groups.setdefault(first, []).append(second)
    messages = [schema_message]
    count = dropped = 0
    for names, rows in groups.items():
        index = {name: i for i, name in enumerate(names)}
        while rows:
            values = list(zip(*rows))
            columns: list[Column] = []
            bad: set[int] = set()
            for name, kind in flat:
                i = index.get(name)
                if i is None or i >= len(values):
                    columns.append(_nulls(len(rows), kind))
                    continue
                column, wrong = _column(values[i], kind)
                columns.append(column)
                bad.update(wrong)
            if not bad:
                messages.append(_batch(len(rows), columns))
                count += len(rows)
                break
            dropped += len(bad)  # the rest convert as they did: the next pass drops nothing more
            rows = [row for i, row in enumerate(rows) if i not in bad]
    if not count:
        return b"", 0, dropped
    messages.append(_END_OF_STREAM)
    return frames.frame(frames.BATCH, b"".join(messages)), count, dropped
