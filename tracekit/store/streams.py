"""The Arrow schema of each spool record stream, built from the field lists in ``tracekit.conventions.STREAMS``.

This is the contract between capture (which writes JSON lines) and ingest (which bulk-loads them).
A stream's fields are the table's columns minus ``run_id`` (taken from the file header) and ``pid``.

Spool format 1 nested a span's events inside its record; format 2 (written since) keeps every
stream flat, with span events in an ``events`` stream of their own, so ingest can hand whole
files to DuckDB's JSON reader. Both formats load.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from tracekit import conventions as conv

_SCALARS = {"string": pa.string(), "int32": pa.int32(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
# a format-1 span's nested events: the events stream's fields without the span id they hang under
EVENT = pa.struct([(name, _SCALARS[kind]) for name, kind in conv.EVENTS.fields if name != "span_id"])
_ARROW = {**_SCALARS, "events": pa.list_(EVENT)}


@dataclass(frozen=True)
class StreamSpec:
    name: str
    table: str
    schema: pa.Schema
    required: tuple[str, ...]
    id_field: str | None = None  # names a record in quarantine reports
    with_pid: bool = True

    @classmethod
    def of(cls, stream: conv.Stream) -> StreamSpec:
        schema = pa.schema([(name, _ARROW[kind]) for name, kind in stream.fields])
        return cls(stream.name, stream.table, schema, stream.required, stream.id_field, stream.with_pid)

    def for_version(self, version: int) -> StreamSpec:
        """The fields a spool file of this format version holds: format 2 has no nested fields."""
        if version < 2 or not self.nested:
            return self
        flat = pa.schema([f for f in self.schema if not pa.types.is_nested(f.type)])
        return StreamSpec(self.name, self.table, flat, self.required, self.id_field, self.with_pid)

    @property
    def nested(self) -> bool:
        return any(pa.types.is_nested(f.type) for f in self.schema)


def null_defaults(spec: StreamSpec) -> dict[str, str]:
    """What a stored record of the stream holds where its field is null (its node comes from its file instead).
    The native insert (``store.load``) and span segments (``store.segments``) both store these."""
    defaults = {"attributes": "{}"}
    if spec.name == "spans":
        defaults.update(kind="internal", status="unset")
    return defaults


STREAMS: dict[str, StreamSpec] = {name: StreamSpec.of(stream) for name, stream in conv.STREAMS.items()}
SPANS = STREAMS[conv.SPANS.name]
EVENTS = STREAMS[conv.EVENTS.name]
LINKS = STREAMS[conv.LINKS.name]
COLLECTIVES = STREAMS[conv.COLLECTIVES.name]
STEPS = STREAMS[conv.STEPS.name]
PROBES = STREAMS[conv.PROBES.name]
HEARTBEATS = STREAMS[conv.HEARTBEATS.name]
FAULTS = STREAMS[conv.FAULTS.name]
INJECT_POINTS = STREAMS[conv.INJECT_POINTS.name]
