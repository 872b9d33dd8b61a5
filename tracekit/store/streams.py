"""The record streams a spool file can hold: each stream's Arrow schema, required fields and target table.

This is the contract between capture (which writes JSON lines) and ingest (which bulk-loads them).
A stream's fields are the table's columns minus ``run_id`` (taken from the file header) and ``pid``.

Spool format 1 nested a span's events inside its record; format 2 (written since) keeps every
stream flat, with span events in an ``events`` stream of their own, so ingest can hand whole
files to DuckDB's JSON reader. Both formats load.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

EVENT = pa.struct([("ts_ns", pa.int64()), ("name", pa.string()), ("attributes", pa.string())])


@dataclass(frozen=True)
class StreamSpec:
    name: str
    table: str
    schema: pa.Schema
    required: tuple[str, ...]
    id_field: str | None = None  # names a record in quarantine reports
    with_pid: bool = True

    def for_version(self, version: int) -> "StreamSpec":
        """The fields a spool file of this format version holds: format 2 has no nested fields."""
        if version < 2 or not self.nested:
            return self
        flat = pa.schema([f for f in self.schema if not pa.types.is_nested(f.type)])
        return StreamSpec(self.name, self.table, flat, self.required, self.id_field, self.with_pid)

    @property
    def nested(self) -> bool:
        return any(pa.types.is_nested(f.type) for f in self.schema)


STREAMS: dict[str, StreamSpec] = {}


def register(spec: StreamSpec) -> StreamSpec:
    STREAMS[spec.name] = spec
    return spec


SPANS = register(StreamSpec(
    "spans", "spans",
    pa.schema([
        ("trace_id", pa.string()), ("span_id", pa.string()), ("parent_id", pa.string()),
        ("name", pa.string()), ("node", pa.string()), ("kind", pa.string()),
        ("start_ns", pa.int64()), ("end_ns", pa.int64()), ("status", pa.string()),
        ("status_message", pa.string()), ("attributes", pa.string()),
        ("events", pa.list_(EVENT)),  # format 1 only: format 2 writes the events stream
    ]),
    required=("trace_id", "span_id", "name", "start_ns", "end_ns"),
    id_field="span_id",
))
EVENTS = register(StreamSpec(  # span events (exceptions, retries, log lines); format 2 onwards
    "events", "events",
    pa.schema([("span_id", pa.string()), ("ts_ns", pa.int64()), ("name", pa.string()), ("attributes", pa.string())]),
    required=("span_id", "ts_ns", "name"),
    id_field="span_id",
    with_pid=False,
))
LINKS = register(StreamSpec(
    "links", "links",
    pa.schema([
        ("src_span_id", pa.string()), ("dst_span_id", pa.string()), ("relation", pa.string()),
        ("provenance", pa.string()), ("confidence", pa.float64()), ("attributes", pa.string()),
    ]),
    required=("src_span_id", "dst_span_id", "provenance"),
    with_pid=False,
))
COLLECTIVES = register(StreamSpec(
    "collectives", "collectives",
    pa.schema([
        ("rank", pa.int32()), ("world_size", pa.int32()), ("process_group", pa.string()),
        ("seq", pa.int64()), ("op", pa.string()), ("bytes", pa.int64()), ("dtype", pa.string()),
        ("enter_ns", pa.int64()), ("exit_ns", pa.int64()), ("step", pa.int64()), ("ok", pa.bool_()),
        # training (issue 3, migration 10): p2p peer, async work handle, who issued it, local check, failure
        ("peer", pa.int32()), ("async_op", pa.bool_()), ("source", pa.string()),
        ("nonfinite", pa.bool_()), ("error", pa.string()),
    ]),
    required=("rank", "seq", "op", "enter_ns"),
))
STEPS = register(StreamSpec(
    "steps", "steps",
    pa.schema([
        ("rank", pa.int32()), ("step", pa.int64()), ("start_ns", pa.int64()), ("end_ns", pa.int64()),
        ("loss", pa.float64()), ("grad_norm", pa.float64()), ("nonfinite", pa.bool_()),
    ]),
    required=("rank", "step", "start_ns"),
))
PROBES = register(StreamSpec(  # active pairwise link probes (C4-style), measured by the receiver
    "probes", "probes",
    pa.schema([
        ("rank", pa.int32()), ("world_size", pa.int32()), ("round", pa.int64()), ("src", pa.int32()),
        ("dst", pa.int32()), ("bytes", pa.int64()), ("ts_ns", pa.int64()), ("dur_ns", pa.int64()),
        ("step", pa.int64()),
    ]),
    required=("rank", "round", "src", "dst", "dur_ns"),
))
HEARTBEATS = register(StreamSpec(  # a rank's liveness and in-flight collective, written by a background thread
    "heartbeats", "heartbeats",
    pa.schema([
        ("rank", pa.int32()), ("ts_ns", pa.int64()), ("step", pa.int64()), ("last_seq", pa.int64()),
        ("inflight_op", pa.string()), ("inflight_seq", pa.int64()), ("inflight_since_ns", pa.int64()),
        ("state", pa.string()), ("sched_lag_ns", pa.int64()), ("lag_step", pa.int64()),
    ]),
    required=("rank", "ts_ns"),
))
FAULTS = register(StreamSpec(
    "faults", "faults",
    pa.schema([
        ("campaign", pa.string()), ("test", pa.string()), ("point", pa.string()),
        ("fault_type", pa.string()), ("injected", pa.bool_()), ("ts_ns", pa.int64()),
        ("span_id", pa.string()), ("detail", pa.string()),
    ]),
    required=("point", "fault_type", "injected", "ts_ns"),
    with_pid=False,
))
INJECT_POINTS = register(StreamSpec(
    "inject_points", "campaign_points",
    pa.schema([
        ("point", pa.string()), ("parent", pa.string()), ("kind", pa.string()),
        ("returns", pa.string()), ("raises", pa.string()),
    ]),
    required=("point", "kind"),
))
