"""OTLP log records joined to their spans: GenAI events sent as logs become span events.

GenAI instrumentations emit message content as log records (``gen_ai.user.message``,
``gen_ai.choice``, ...) carrying the trace and span id of the span they belong to. The span usually
ends, and is exported, after its log records, so the ingest loop keeps log batches (protobuf or
OTLP/JSON) in the spool and, each cycle:

1. before ingest, adds the records of spans in the protobuf batch being ingested to those spans as
   events (name = the record's event name, attributes = its attributes plus its body's fields), so
   the OTLP importer lifts their text into the span's content like any GenAI span event;
2. after ingest, adds the records whose span is already in the store (it arrived in an earlier
   cycle, or in a JSON batch) to the store (``tracekit.ingest.live_runs.join_log_events``; a record
   is never added twice).

A log batch is retired (to ``logs/done/``) once every record in it found its span, or after `hold_s`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tracekit.errors import SpoolError
from tracekit.importers.otlp import LogEvent, parse_otlp_logs
from tracekit.serve.otlp_out import set_any_value

__all__ = ["read_logs", "attach_logs", "retire_logs"]

Matched = set[tuple[Path, int]]  # (log file, index of the record in it)


def read_logs(paths: list[Path]) -> dict[Path, list[LogEvent]]:
    """The log records of each spooled log batch (an unreadable one holds none: it is retired)."""
    out: dict[Path, list[LogEvent]] = {}
    for path in paths:
        try:
            out[path] = parse_otlp_logs(path.read_bytes(), json_encoded=path.name.endswith(".json"))
        except (OSError, SpoolError):
            out[path] = []
    return out


def attach_logs(trace_file: Path, logs: dict[Path, list[LogEvent]]) -> Matched:
    """Add the log records whose spans are in the protobuf batch `trace_file` to those spans as events
    (the file is rewritten atomically); returns the records attached."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    matched: Matched = set()
    if not any(logs.values()):
        return matched
    request = ExportTraceServiceRequest()
    request.ParseFromString(trace_file.read_bytes())
    spans = {sp.span_id.hex(): sp for rs in request.resource_spans for ss in rs.scope_spans for sp in ss.spans}
    for path, records in logs.items():
        for i, record in enumerate(records):
            span = spans.get(record.span_id) if record.span_id else None
            if span is None:
                continue
            event = span.events.add(name=record.name, time_unix_nano=record.ts_ns or span.start_time_unix_nano)
            for key, value in record.attributes.items():
                set_any_value(event.attributes.add(key=key).value, value)
            matched.add((path, i))
    if matched:
        tmp = trace_file.with_name(trace_file.name + ".tmp")
        with tmp.open("wb") as out:
            out.write(request.SerializeToString())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, trace_file)
    return matched


def retire_logs(logs: dict[Path, list[LogEvent]], matched: Matched, done_dir: Path, *, hold_s: float = 120.0) -> int:
    """Move log batches whose every record (naming a span) found it, or older than `hold_s`, to `done_dir`;
    returns how many were retired."""
    retired = 0
    for path, records in logs.items():
        waiting = any(r.span_id and (path, i) not in matched for i, r in enumerate(records))
        try:
            if waiting and time.time() - path.stat().st_mtime <= hold_s:
                continue
            done_dir.mkdir(exist_ok=True)
            path.rename(done_dir / path.name)
            retired += 1
        except OSError:
            continue
    return retired
