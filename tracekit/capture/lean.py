"""The lean span path: `@tracekit.trace` and `tracekit.span` record a span's fields for the spool's flusher, with no SDK span.

When the run's spool is the only consumer of spans (``tracekit.init`` made the provider and nobody added an
exporter or processor to it), a traced call costs what it must: two ids, two clock reads, one context
attach/detach, and one append to a lock-free queue. :class:`LeanSpan` is a real OpenTelemetry ``Span`` with a
real, sampled ``SpanContext``: it is set in the OpenTelemetry context like an SDK span, so spans that other
instrumentation (HTTP clients, OpenInference) opens inside a traced call have it as their parent, and a
traced call inside theirs has theirs. The flusher turns the queued spans into the same spool records the SDK
path writes (``tracekit.capture.otel.span_row``), off the caller's thread.

What it mirrors of the SDK, so both paths store the same records: ids from ``random.getrandbits``, the
parent's trace id and trace state, the ``ParentBased(ALWAYS_ON)`` sampler (a child of an unsampled parent
is not recorded), an ``Exception`` leaving ``start_as_current_span`` recorded as one ``exception`` event and
an error status ``"<Type>: <message>"``, an OK status being final, attributes of invalid types dropped.
"""

from __future__ import annotations

import collections
import os
import random
import time
import traceback
import weakref
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

from tracekit import conventions as conv
from tracekit.capture.otel import EVENT_FIELDS, SPAN_FIELDS, event_row, span_row
from tracekit.capture.spool import Spool, drain

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSAMPLED = TraceFlags(TraceFlags.DEFAULT)
_PRIMITIVES = (str, bool, int, float)
_STATUS = {StatusCode.UNSET: "unset", StatusCode.OK: "ok", StatusCode.ERROR: "error"}
_getrandbits = random.getrandbits
_time_ns = time.time_ns
_attach = otel_context.attach
_detach = otel_context.detach
_set_span = otel_trace.set_span_in_context
_current_span = otel_trace.get_current_span


def _clean(value: Any) -> Any:
    """An attribute value as the SDK keeps it: a primitive, or a homogeneous sequence of primitives (a list
    here); anything else is None (dropped)."""
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, (list, tuple)):
        kinds = {type(v) for v in value if v is not None}
        if len(kinds) <= 1 and all(k in _PRIMITIVES for k in kinds):
            return list(value)
    return None


class LeanSpan(otel_trace.Span):
    """A span recorded by the lean path: its fields, a real span context, and nothing else."""

    __slots__ = ("_tracer", "_context", "parent_id", "name", "attributes", "_own_attrs", "start_ns", "end_ns",
                 "status", "status_message", "events", "_token", "_recording")

    def __init__(self, tracer: LeanTracer, name: str, attributes: dict[str, Any] | None) -> None:
        parent = _current_span().get_span_context()
        if parent.is_valid:
            self.parent_id: int | None = parent.span_id
            self._recording = parent.trace_flags.sampled
            self._context = SpanContext(parent.trace_id, _getrandbits(64) or 1, False,
                                        _SAMPLED if self._recording else _UNSAMPLED, parent.trace_state)
        else:
            self.parent_id = None
            self._recording = True
            self._context = SpanContext(_getrandbits(128) or 1, _getrandbits(64) or 1, False, _SAMPLED)
        self._tracer = tracer
        self.name = name
        self.attributes = attributes  # shared with the decorator until a set_attribute copies it
        self._own_attrs = False
        self.status = "unset"
        self.status_message: str | None = None
        self.events: list[tuple[str, dict[str, Any] | None, int]] | None = None
        self._token: Any = None
        self.end_ns: int | None = None
        self.start_ns = _time_ns()

    # -- as the current span of a block ------------------------------------------------------
    def __enter__(self) -> LeanSpan:
        self._token = _attach(_set_span(self))
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if isinstance(exc, Exception) and self._recording:  # as the SDK's use_span does
                self.record_exception(exc)
                self.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        finally:
            if self._token is not None:
                _detach(self._token)
                self._token = None
            self.end()

    # -- the OpenTelemetry Span interface ----------------------------------------------------
    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._recording and self.end_ns is None

    def set_attribute(self, key: str, value: Any) -> None:
        value = _clean(value)
        if value is None or not self.is_recording():
            return
        if not self._own_attrs:
            self.attributes = dict(self.attributes or {})
            self._own_attrs = True
        self.attributes[key] = value  # type: ignore[index]

    def set_attributes(self, attributes: Any) -> None:
        for key, value in dict(attributes).items():
            self.set_attribute(key, value)

    def add_event(self, name: str, attributes: Any = None, timestamp: int | None = None) -> None:
        if not self.is_recording():
            return
        cleaned = {k: c for k, v in dict(attributes or {}).items() if (c := _clean(v)) is not None}
        if self.events is None:
            self.events = []
        self.events.append((name, cleaned, timestamp if timestamp is not None else _time_ns()))

    def add_link(self, context: SpanContext, attributes: Any = None) -> None:
        pass  # the spool keeps no span links (the SDK path drops them too)

    def update_name(self, name: str) -> None:
        if self.is_recording():
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self.status == "ok" or not self.is_recording():
            return
        if isinstance(status, Status):
            code, description = status.status_code, status.description
        else:
            code = status
        if code is StatusCode.UNSET:
            return
        self.status = _STATUS[code]
        self.status_message = description if code is StatusCode.ERROR else None

    def record_exception(self, exception: BaseException, attributes: Any = None, timestamp: int | None = None,
                         escaped: bool = False) -> None:
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        attrs: dict[str, Any] = {
            "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            attrs.update(attributes)
        self.add_event("exception", attrs, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self.end_ns is not None:
            return
        self.end_ns = end_time if end_time is not None else _time_ns()
        if self._recording:
            self._tracer._finish(self)


class LeanTracer:
    """Starts lean spans and hands the finished ones to the spool's flusher (a ``before_flush`` hook)."""

    def __init__(self, spool: Spool, node: str, *, max_queue_size: int = 1 << 16) -> None:
        self.spool = spool
        self.node = node
        self.max_queue_size = max_queue_size
        self.enabled = True  # cleared when a consumer other than the spool joins the provider
        self._queue: collections.deque[LeanSpan] = collections.deque()  # append/popleft are atomic
        spool.before_flush.append(self._write_queued)
        spool.watch(self._queue)
        ref = weakref.ref(self)
        # a forked child must not write its parent's queued spans again
        os.register_at_fork(after_in_child=lambda: (t := ref()) is not None and t._queue.clear())

    def start_span(self, name: str, attributes: dict[str, Any] | None = None) -> LeanSpan:
        """A started span that is not current (the caller attaches it, as ``Tracer.start_span``)."""
        return LeanSpan(self, name, attributes)

    def start_as_current_span(self, name: str, attributes: dict[str, Any] | None = None) -> LeanSpan:
        """A span to use as ``with``: current inside the block, ended (and an exception recorded) on leaving it."""
        return LeanSpan(self, name, attributes)

    def _finish(self, span: LeanSpan) -> None:
        queue = self._queue
        if len(queue) >= self.max_queue_size:
            self.spool.stream("spans")._drop(1, f"more than {self.max_queue_size} spans waited for a flush")
            return
        queue.append(span)
        self.spool.notify()

    def _write_queued(self) -> None:
        """The spool's before_flush hook (on the flusher thread): the queued spans become spool records."""
        spans = drain(self._queue)
        if not spans:
            return
        stream = self.spool.stream("spans")
        events = None
        default = self.node
        for span in spans:
            try:
                ctx = span._context
                attrs = span.attributes
                node = default
                if attrs:
                    if conv.NODE in attrs or conv.RUN_ID in attrs:
                        attrs = dict(attrs)
                        node = str(attrs.pop(conv.NODE, None) or default)
                        attrs.pop(conv.RUN_ID, None)
                stream.write_row(SPAN_FIELDS, span_row(
                    ctx.trace_id, ctx.span_id, span.parent_id, span.name, node, "internal", span.start_ns,
                    span.end_ns, span.status, span.status_message, attrs,
                ))
                if span.events:
                    events = events or self.spool.stream("events")
                    for name, ev_attrs, ts in span.events:
                        events.write_row(EVENT_FIELDS, event_row(ctx.span_id, ts, name, ev_attrs))
            except Exception as exc:  # noqa: BLE001 - never raise from the flusher
                stream._drop(1, f"a span could not be converted: {exc}")
