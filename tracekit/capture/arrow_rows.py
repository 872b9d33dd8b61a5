"""Buffered spool rows as one Arrow IPC frame, built on the spool's flusher thread (pyarrow is imported here, lazily).

Capture never imports pyarrow at start-up (it costs ~0.3 s): this module is imported by the first flush
of a binary stream, which runs on the flusher thread (or at exit). Rows arrive as (field names, values)
tuples or dicts; a field a row does not name is null. A value of the wrong type is converted as the
JSON-lines writer would store it (a number in a text field becomes its JSON text, a one-element tensor
its number); a row with a value that cannot be converted is dropped and counted.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pyarrow as pa

from tracekit import frames

_TYPES = {"string": pa.string(), "int32": pa.int32(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
_SCHEMAS: dict[tuple[tuple[str, str], ...], pa.Schema] = {}


def schema_of(fields: tuple[tuple[str, str], ...]) -> pa.Schema:
    """The Arrow schema of a stream's flat fields (nested format-1 fields are left out)."""
    schema = _SCHEMAS.get(fields)
    if schema is None:
        schema = pa.schema([(name, _TYPES[kind]) for name, kind in fields if kind in _TYPES])
        _SCHEMAS[fields] = schema
    return schema


class _Bad(Exception):
    """A value that has no place in its column."""


def _number(value: Any) -> Any:
    item = getattr(value, "item", None)  # a one-element tensor or numpy scalar
    return item() if item is not None else value


def _convert(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "string":
        return value if type(value) is str else json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
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
        return float(value) if math.isfinite(value) else None
    if isinstance(value, float):
        if not value.is_integer():
            raise _Bad(f"{value!r} is not an integer")
        value = int(value)
    return value


def _column(values: list[Any], kind: str) -> tuple[pa.Array, list[int]]:
    """An Arrow column of ``values`` and the indexes of the values that could not be converted."""
    typ = _TYPES[kind]
    try:
        return pa.array(values, type=typ), []
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        pass
    out: list[Any] = []
    bad: list[int] = []
    for i, value in enumerate(values):
        try:
            out.append(_convert(value, kind))
        except _Bad:
            out.append(None)
            bad.append(i)
    try:
        return pa.array(out, type=typ), bad
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # an integer out of range
        return pa.nulls(len(out), typ), list(range(len(out)))


def encode(fields: tuple[tuple[str, str], ...], items: list[tuple[Any, Any]]) -> tuple[bytes, int, int]:
    """One batch frame of the rows in ``items`` ((field names, values) or (dict, None)): (frame bytes,
    records in it, rows dropped because a value could not be converted). Empty bytes when no row is left."""
    schema = schema_of(fields)
    groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    for first, second in items:
        if type(first) is dict:
            names = tuple(first)
            groups.setdefault(names, []).append(tuple(first.values()))
        else:
            groups.setdefault(first, []).append(second)
    batches = []
    dropped = 0
    for names, rows in groups.items():
        index = {name: i for i, name in enumerate(names)}
        columns = list(zip(*rows))
        arrays = []
        bad: set[int] = set()
        for fld, (_, kind) in zip(schema, ((n, k) for n, k in fields if k in _TYPES)):
            i = index.get(fld.name)
            if i is None:
                arrays.append(pa.nulls(len(rows), fld.type))
                continue
            array, wrong = _column(list(columns[i]), kind)
            arrays.append(array)
            bad.update(wrong)
        batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
        if bad:
            keep = pa.array([i not in bad for i in range(len(rows))])
            batch = batch.filter(keep)
            dropped += len(bad)
        batches.append(batch)
    count = sum(b.num_rows for b in batches)
    if not count:
        return b"", 0, dropped
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            if batch.num_rows:
                writer.write_batch(batch)
    return frames.frame(frames.BATCH, sink.getvalue()), count, dropped
