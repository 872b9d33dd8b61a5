"""`@tracekit.trace` and `tracekit.span`: OpenTelemetry spans around functions and blocks, carrying a node."""

from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from typing import Any, Callable, Generator, Iterator, TypeVar, overload

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace

from tracekit.capture import hooks, setup
from tracekit.conventions import NODE as NODE_ATTR

F = TypeVar("F", bound=Callable[..., Any])
_PRIMITIVES = (str, bool, int, float)
_global_tracer = otel_trace.get_tracer("tracekit")


def _tracer() -> Any:
    """The lean tracer while the run's spool is the only consumer of spans (capture/lean.py), else the SDK's."""
    run = setup._current
    if run is not None:
        lean = run.lean
        if lean is not None and lean.enabled:
            return lean
        if run.tracer is not None:
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

        if inspect.isasyncgenfunction(fn):
            @functools.wraps(fn)
            async def agen_wrapper(*args: Any, **kwargs: Any) -> Any:
                span = _tracer().start_span(span_name, attributes=span_attrs)
                hook = hooks.ACTIVE
                call = hook.enter(span_name) if hook is not None else None
                current = _Current(span, call)
                try:
                    with current:
                        agen = fn(*args, **kwargs)
                        early = call.begin() if call is not None else hooks.PROCEED
                    if early is not hooks.PROCEED:
                        return  # the call was dropped: an async generator yields nothing
                    if call is not None:
                        await call.wait_async()
                    # `yield from` by hand (async generators have none): asend/athrow/aclose pass through
                    sent: Any = None
                    thrown: BaseException | None = None
                    while True:
                        with current:
                            try:
                                item = await (agen.asend(sent) if thrown is None else agen.athrow(thrown))
                            except StopAsyncIteration:
                                if call is not None:
                                    call.returned(None)
                                return
                            except BaseException as exc:
                                if call is not None:
                                    call.failed(exc)
                                raise
                        try:
                            sent, thrown = (yield item), None
                        except GeneratorExit:
                            with current:
                                await agen.aclose()
                            raise
                        except BaseException as exc:  # athrow() into the wrapper: hand it to the body
                            sent, thrown = None, exc
                except BaseException as exc:
                    _record_error(span, exc)
                    raise
                finally:
                    if call is not None:
                        call.end()
                    span.end()

            return agen_wrapper  # type: ignore[return-value]

        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
                span = _tracer().start_span(span_name, attributes=span_attrs)
                hook = hooks.ACTIVE
                call = hook.enter(span_name) if hook is not None else None
                current = _Current(span, call)
                try:
                    with current:
                        gen = fn(*args, **kwargs)
                        early = call.begin() if call is not None else hooks.PROCEED
                    if early is not hooks.PROCEED:
                        gen.close()
                        return early  # the call was dropped: no items, the stand-in is the return value
                    if call is None:
                        return (yield from _delegate(gen, current))
                    call.wait()
                    try:
                        result = yield from _delegate(gen, current)
                    except BaseException as exc:
                        call.failed(exc)
                        raise
                    return call.returned(result)
                except BaseException as exc:
                    _record_error(span, exc)
                    raise
                finally:
                    if call is not None:
                        call.end()
                    span.end()

            return gen_wrapper  # type: ignore[return-value]

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with _tracer().start_as_current_span(span_name, attributes=span_attrs):
                    hook = hooks.ACTIVE
                    if hook is None:  # outside a fault-injection campaign run
                        return await fn(*args, **kwargs)
                    call = hook.enter(span_name)
                    try:
                        with call.active():
                            early = call.begin()
                            if early is not hooks.PROCEED:
                                return early
                            await call.wait_async()
                            try:
                                result = await fn(*args, **kwargs)
                            except BaseException as exc:
                                call.failed(exc)
                                raise
                            return call.returned(result)
                    finally:
                        call.end()

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with _tracer().start_as_current_span(span_name, attributes=span_attrs):
                hook = hooks.ACTIVE
                if hook is None:  # outside a fault-injection campaign run
                    return fn(*args, **kwargs)
                call = hook.enter(span_name)
                try:
                    with call.active():
                        early = call.begin()
                        if early is not hooks.PROCEED:
                            return early
                        call.wait()
                        try:
                            result = fn(*args, **kwargs)
                        except BaseException as exc:
                            call.failed(exc)
                            raise
                        return call.returned(result)
                finally:
                    call.end()

        return wrapper  # type: ignore[return-value]

    if func is not None:
        return decorate(func)
    return decorate


class _Current:
    """Enters one stretch of a traced body: its span is current and its injection-point call active.

    A generator's body runs in many stretches (one per resume), so the same object is entered again
    at each one; a resumed generator never runs twice at once, so one token slot is enough.
    """

    __slots__ = ("_span", "_call", "_token", "_active")

    def __init__(self, span: otel_trace.Span, call: hooks.PointCall | None) -> None:
        self._span = span
        self._call = call
        self._token: object = None
        self._active: Any = None

    def __enter__(self) -> None:
        self._token = otel_context.attach(otel_trace.set_span_in_context(self._span))
        if self._call is not None:
            self._active = self._call.active()
            self._active.__enter__()

    def __exit__(self, *exc_info: Any) -> None:
        try:
            if self._active is not None:
                self._active.__exit__(*exc_info)
                self._active = None
        finally:
            otel_context.detach(self._token)  # type: ignore[arg-type]


def _delegate(gen: Generator[Any, Any, Any], current: _Current) -> Generator[Any, Any, Any]:
    """``yield from gen`` with `current` entered around each resume: send, throw and close pass through
    (so a traced ``@contextmanager`` generator sees the exception of its ``with`` block)."""
    sent: Any = None
    thrown: BaseException | None = None
    while True:
        with current:
            try:
                item = gen.send(sent) if thrown is None else gen.throw(thrown)
            except StopIteration as stop:
                return stop.value
        try:
            sent, thrown = (yield item), None
        except GeneratorExit:
            with current:
                gen.close()
            raise
        except BaseException as exc:  # throw() into the wrapper: hand it to the body
            sent, thrown = None, exc


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
