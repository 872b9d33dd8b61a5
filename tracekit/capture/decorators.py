"""`@tracekit.trace` and `tracekit.span`: OpenTelemetry spans around functions and blocks, carrying a node."""

from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar, overload

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace

from tracekit.capture import setup
from tracekit.conventions import NODE as NODE_ATTR
from tracekit.inject import points as _inject

F = TypeVar("F", bound=Callable[..., Any])
_PRIMITIVES = (str, bool, int, float)
_global_tracer = otel_trace.get_tracer("tracekit")


def _tracer() -> otel_trace.Tracer:
    run = setup._current
    if run is not None and run.tracer is not None:
        return run.tracer
    return _global_tracer  # no init: spans go to whatever provider the program set (or nowhere)


def clean_attributes(attrs: dict[str, Any]) -> dict[str, Any]:
    """OpenTelemetry accepts primitives and homogeneous sequences; everything else becomes its str()."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, _PRIMITIVES):
            out[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            out[key] = list(value)
        else:
            out[key] = str(value)
    return out


@overload
def trace(func: F, /) -> F: ...
@overload
def trace(
    *, name: str | None = None, node: str | None = None, attributes: dict[str, Any] | None = None
) -> Callable[[F], F]: ...


def trace(
    func: F | None = None,
    /,
    *,
    name: str | None = None,
    node: str | None = None,
    attributes: dict[str, Any] | None = None,
) -> Any:
    """Record each call of a function as a span (sync, async, generator and async generator).

    Use bare (``@tracekit.trace``) or with arguments (``@tracekit.trace(name=..., node=...)``).
    An exception sets the span's status to error, adds an ``exception`` event, and propagates
    unchanged. Without ``tracekit.init`` (or ``tracekit record``) spans go to the global
    OpenTelemetry provider, so the decorator costs next to nothing where nothing is recorded.
    """

    def decorate(fn: F) -> F:
        span_name = name or getattr(fn, "__qualname__", getattr(fn, "__name__", "call"))
        attrs = clean_attributes(dict(attributes or {}))
        if node is not None:
            attrs[NODE_ATTR] = node
        span_attrs = attrs or None
        _inject.register_traced_point(span_name, fn)

        if inspect.isasyncgenfunction(fn):
            @functools.wraps(fn)
            async def agen_wrapper(*args: Any, **kwargs: Any) -> Any:
                span = _tracer().start_span(span_name, attributes=span_attrs)
                gen = fn(*args, **kwargs)
                try:
                    send: Any = None
                    while True:
                        token = otel_context.attach(otel_trace.set_span_in_context(span))
                        try:
                            item = await gen.asend(send)
                        except StopAsyncIteration:
                            return
                        finally:
                            otel_context.detach(token)
                        send = yield item
                except BaseException as exc:
                    _record_error(span, exc)
                    raise
                finally:
                    span.end()

            return agen_wrapper  # type: ignore[return-value]

        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
                span = _tracer().start_span(span_name, attributes=span_attrs)
                try:
                    token = otel_context.attach(otel_trace.set_span_in_context(span))
                    try:
                        gen = fn(*args, **kwargs)
                    finally:
                        otel_context.detach(token)
                    send: Any = None
                    while True:
                        token = otel_context.attach(otel_trace.set_span_in_context(span))
                        try:
                            item = gen.send(send)
                        except StopIteration as stop:
                            return stop.value
                        finally:
                            otel_context.detach(token)
                        send = yield item
                except BaseException as exc:
                    _record_error(span, exc)
                    raise
                finally:
                    span.end()

            return gen_wrapper  # type: ignore[return-value]

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with _tracer().start_as_current_span(span_name, attributes=span_attrs):
                    if _inject.ARMED:  # inside a fault-injection campaign run only
                        return await _inject.intercept_async(span_name, fn, args, kwargs)
                    return await fn(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with _tracer().start_as_current_span(span_name, attributes=span_attrs):
                if _inject.ARMED:  # inside a fault-injection campaign run only
                    return _inject.intercept(span_name, fn, args, kwargs)
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    if func is not None:
        return decorate(func)
    return decorate


def _record_error(span: otel_trace.Span, exc: BaseException) -> None:
    if isinstance(exc, GeneratorExit):
        return  # the consumer closed the generator early: not an error
    span.record_exception(exc)
    span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


@contextmanager
def span(name: str, node: str | None = None, **attrs: Any) -> Iterator[otel_trace.Span]:
    """A span around a block: ``with tracekit.span("load", node="service:db", rows=10): ...``.

    Yields the OpenTelemetry span, so ``sp.set_attribute(...)`` and ``sp.add_event(...)`` work.
    """
    attributes = clean_attributes(attrs)
    if node is not None:
        attributes[NODE_ATTR] = node
    with _tracer().start_as_current_span(name, attributes=attributes or None) as sp:
        yield sp
