"""The one place OpenTelemetry SDK span objects become tracekit spool records, and the exporter that writes them."""

from __future__ import annotations

import atexit
import collections
import json
import os
import weakref
from typing import Any, Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from tracekit import conventions as conv
from tracekit.capture.spool import Spool, drain, open_run_spool

_KIND = {
    SpanKind.INTERNAL: "internal",
    SpanKind.SERVER: "server",
    SpanKind.CLIENT: "client",
    SpanKind.PRODUCER: "producer",
    SpanKind.CONSUMER: "consumer",
}
_STATUS = {StatusCode.UNSET: "unset", StatusCode.OK: "ok", StatusCode.ERROR: "error"}


def _attrs_json(attributes: Any) -> str:
    if not attributes:
        return "{}"
    return json.dumps(
        {k: list(v) if isinstance(v, tuple) else v for k, v in attributes.items()},
        separators=(",", ":"),
        default=str,
        ensure_ascii=False,
    )


SPAN_FIELDS = tuple(name for name, kind in conv.SPANS.fields if kind != "events")  # a span record's fields
EVENT_FIELDS = conv.EVENTS.field_names()


def span_row(
    trace_id: int, span_id: int, parent_id: int | None, name: str, node: str, kind: str, start_ns: int | None,
    end_ns: int | None, status: str, status_message: str | None, attributes: Any,
) -> tuple[Any, ...]:
    """A span record's values (``SPAN_FIELDS``): the one encoding of a span, for the SDK and the lean path alike."""
    return (
        format(trace_id, "032x"), format(span_id, "016x"), format(parent_id, "016x") if parent_id is not None else None,
        name, node, kind, start_ns, end_ns, status, status_message, _attrs_json(attributes),
    )


def event_row(span_id: int, ts_ns: int, name: str, attributes: Any) -> tuple[Any, ...]:
    """A span event's record values (``EVENT_FIELDS``)."""
    return (format(span_id, "016x"), ts_ns, name, _attrs_json(attributes))


def sdk_span_row(span: ReadableSpan, default_node: str) -> tuple[Any, ...]:
    """Convert one finished SDK span into the spool's span record values (``SPAN_FIELDS``)."""
    ctx = span.context
    attributes = dict(span.attributes or {})
    node = attributes.pop(conv.NODE, None)
    if node is None and span.resource is not None:
        node = span.resource.attributes.get(conv.NODE)
    attributes.pop(conv.RUN_ID, None)
    parent = span.parent
    status = span.status
    return span_row(
        ctx.trace_id, ctx.span_id, parent.span_id if parent is not None else None, span.name,
        str(node or default_node), _KIND.get(span.kind, "internal"), span.start_time, span.end_time,
        _STATUS.get(status.status_code, "unset"), status.description, attributes,
    )


def span_record(span: ReadableSpan, default_node: str) -> dict[str, Any]:
    """Convert one finished SDK span into the spool's span record (``conventions.SPANS``)."""
    return dict(zip(SPAN_FIELDS, sdk_span_row(span, default_node)))


def event_records(span: ReadableSpan) -> list[dict[str, Any]]:
    """The span's events as records of the ``events`` stream (spool format 2 keeps spans flat)."""
    return [dict(zip(EVENT_FIELDS, event_row(span.context.span_id, ev.timestamp, ev.name, ev.attributes)))
            for ev in span.events]


class SpoolSpanExporter(SpanExporter):
    """Writes finished spans to this process's spool file of a run; add it to any TracerProvider.

    >>> from opentelemetry.sdk.trace import TracerProvider
    >>> from opentelemetry.sdk.trace.export import BatchSpanProcessor
    >>> provider = TracerProvider()
    >>> exporter = SpoolSpanExporter(spool_dir="/tmp/tk-doctest-spool", run_name="doctest")
    >>> provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=200))
    >>> exporter.run_id == exporter.spool.run_id
    True

    Export never raises: a disk error is counted on the spool and warned about once.
    """

    def __init__(
        self,
        spool: Spool | None = None,
        *,
        spool_dir: str | os.PathLike[str] | None = None,
        run_id: str | None = None,
        run_name: str | None = None,
        node: str | None = None,
        flush_interval_ms: int = 200,
    ) -> None:
        self._owns_spool = spool is None
        if spool is None:
            spool = open_run_spool(
                spool_dir=spool_dir, run_id=run_id, run_name=run_name, node=node,
                flush_interval_ms=flush_interval_ms,
            )
            # The provider shuts this exporter down at exit (after its last export), and that closes
            # the spool. The spool's own exit hook would run first (atexit is last-in, first-out:
            # the provider was made before us), close the files early and drop the final batch.
            atexit.unregister(spool.close)
        self.spool = spool
        self.run_id = spool.run_id
        self.default_node = node or spool.node
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        stream = self.spool.stream("spans")
        before = stream.dropped
        for span in spans:
            try:
                stream.write_row(SPAN_FIELDS, sdk_span_row(span, self.default_node))
                if span.events:
                    events = self.spool.stream("events")
                    for ev in span.events:
                        events.write_row(EVENT_FIELDS, event_row(span.context.span_id, ev.timestamp, ev.name,
                                                                 ev.attributes))
            except Exception as exc:  # never raise into the SDK worker
                stream._drop(1, f"a span could not be converted: {exc}")
        self.exported += len(spans)
        return SpanExportResult.FAILURE if stream.dropped > before else SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self.spool.flush()
        return True

    def shutdown(self) -> None:
        """Flush; a spool this exporter opened itself is closed (its files get their clean-exit footers)."""
        if self._owns_spool:
            self.spool.close()
        else:
            self.spool.flush()


class SpoolSpanProcessor(SpanProcessor):
    """Queues finished spans for a :class:`SpoolSpanExporter` and exports them from the spool's own
    flusher, just before each flush: the work of a ``BatchSpanProcessor`` without a thread of its own
    (one timer thread per process instead of two; each wake-up costs ~0.1 ms of CPU on a VM).

    ``on_end`` only appends to a queue; a span past ``max_queue_size`` waiting spans is dropped and
    counted on the spool, like any record the spool cannot take. ``tracekit.init`` installs this;
    with an exporter of your own (OTLP over the network), use a ``BatchSpanProcessor`` instead: an
    exporter that blocks would hold up the spool's flushes.
    """

    def __init__(self, exporter: SpoolSpanExporter, *, max_queue_size: int = 1 << 16) -> None:
        self.exporter = exporter
        self.max_queue_size = max_queue_size
        self._queue: collections.deque[ReadableSpan] = collections.deque()  # append/popleft are atomic
        spool = exporter.spool
        spool.before_flush.append(self._export_queued)
        spool.watch(self._queue)
        ref = weakref.ref(self)
        # a forked child must not export its parent's queued spans again
        os.register_at_fork(after_in_child=lambda: (p := ref()) is not None and p._queue.clear())

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if not span.context.trace_flags.sampled:
            return
        if len(self._queue) >= self.max_queue_size:
            self.exporter.spool.stream("spans")._drop(1, f"more than {self.max_queue_size} spans waited for a flush")
            return
        self._queue.append(span)
        self.exporter.spool.notify()

    def _export_queued(self) -> None:
        """The spool's before_flush hook: runs under its flush lock, so a close waits for it."""
        batch = drain(self._queue)
        if batch:
            self.exporter.export(batch)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self.exporter.spool.flush()  # exports the queue first (the before_flush hook)
        return True

    def shutdown(self) -> None:
        self.exporter.spool.flush()
        try:
            self.exporter.spool.before_flush.remove(self._export_queued)
        except ValueError:
            pass
        self.exporter.shutdown()
