"""OTLP log records joined to their spans: GenAI events sent as logs become span events before ingest.

GenAI instrumentations emit message content as log records (``gen_ai.user.message``,
``gen_ai.choice``, ...) carrying the trace and span id of the span they belong to. The span usually
ends, and is exported, after its log records, so the ingest loop keeps protobuf log batches in the
spool and, before each ingest, adds the records of spans in the batch being ingested as span events
(name = the record's event name, attributes = its attributes plus its body's fields). The OTLP
importer then lifts their text into the span's content like any GenAI span event. A log batch is
retired (to ``logs/done/``) once every record in it found its span, or after `hold_s`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tracekit.serve.otlp_out import set_any_value

__all__ = ["attach_logs"]


def _plain(value: Any) -> Any:
    """An OTLP AnyValue as a plain Python value."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in value.kvlist_value.values}
    if which == "array_value":
        return [_plain(v) for v in value.array_value.values]
    if which == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, which)


def _records(path: Path) -> Iterator[tuple[bytes, Any]]:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    request = ExportLogsServiceRequest()
    request.ParseFromString(path.read_bytes())
    for rl in request.resource_logs:
        for sl in rl.scope_logs:
            for record in sl.log_records:
                yield record.span_id, record


def _event_of(record: Any) -> tuple[str, int, dict[str, Any]]:
    attributes = {kv.key: _plain(kv.value) for kv in record.attributes}
    name = record.event_name or str(attributes.pop("event.name", "") or "log")
    body = _plain(record.body)
    if isinstance(body, dict):
        for key, value in body.items():
            attributes.setdefault(key, value if isinstance(value, (str, int, float, bool)) else json.dumps(value))
    elif body not in (None, ""):
        attributes.setdefault("body", body if isinstance(body, str) else json.dumps(body))
    return name, record.time_unix_nano or record.observed_time_unix_nano, attributes


def attach_logs(trace_file: Path, log_files: list[Path], done_dir: Path, *, hold_s: float = 120.0) -> int:
    """Add the log records of `log_files` whose spans are in `trace_file` to those spans as events
    (the file is rewritten atomically); retire log files fully used or older than `hold_s`.
    Returns how many records were attached."""
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    if not log_files:
        return 0
    request = ExportTraceServiceRequest()
    request.ParseFromString(trace_file.read_bytes())
    spans = {sp.span_id: sp for rs in request.resource_spans for ss in rs.scope_spans for sp in ss.spans}
    attached = 0
    retire: list[Path] = []
    for path in log_files:
        try:
            records = list(_records(path))
        except (OSError, DecodeError):
            retire.append(path)
            continue
        pending = 0
        for span_id, record in records:
            span = spans.get(span_id) if span_id else None
            if span is None:
                pending += bool(span_id)
                continue
            name, ts, attributes = _event_of(record)
            event = span.events.add(name=name, time_unix_nano=ts or span.start_time_unix_nano)
            for key, value in attributes.items():
                set_any_value(event.attributes.add(key=key).value, value)
            attached += 1
        if pending == 0 or time.time() - path.stat().st_mtime > hold_s:
            retire.append(path)
    if attached:
        tmp = trace_file.with_name(trace_file.name + ".tmp")
        with tmp.open("wb") as out:
            out.write(request.SerializeToString())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, trace_file)
    done_dir.mkdir(exist_ok=True)
    for path in retire:
        path.rename(done_dir / path.name)
    return attached

