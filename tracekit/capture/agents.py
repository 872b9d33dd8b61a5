"""Agent capture API: agent steps, messages and tool calls as spans, and the information edges between them.

Three ways to record what a step used:

* **observed** — every traced step's return value (and every message's content) is fingerprinted; when
  a later traced step receives that value, or a text containing it, the edge is recorded;
* **declared** — ``consumes=[message_id, ...]`` on `message`, and tool-call ids (a tool result names
  the call it answers);
* **inferred** edges are not made here: the IDG builder infers them for runs without any.

Steps are OpenTelemetry spans on the tracer of `current_run()` with the ``tracekit.conventions`` attributes; edges
go to the spool's ``links`` stream. Like all capture code, nothing here raises into user code.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import itertools
import threading
from collections import OrderedDict
from typing import Any, Callable, Iterable, TypeVar

from opentelemetry import trace as otel_trace

from tracekit import conventions as conv
from tracekit.capture import setup

__all__ = ["agent_step", "message", "tool_call", "tool_result"]

F = TypeVar("F", bound=Callable[..., Any])

MAX_CONTENT = 16_384  # characters of content kept on a span
MIN_FINGERPRINT_TEXT = 12  # shorter texts are too common to prove a flow by containment
MAX_REMEMBERED = 4096  # outputs remembered per process for observed edges


class _Flow:
    """The process's memory of recent step outputs: fingerprint -> span id, and texts for containment."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_hash: OrderedDict[str, str] = OrderedDict()
        self.texts: OrderedDict[str, str] = OrderedDict()  # text -> span id
        self.calls: dict[str, str] = {}  # tool call id -> span id that issued it
        self.counter = itertools.count()

    def remember(self, value: Any, span_id: str) -> None:
        with self.lock:
            for piece in _pieces(value):
                self.by_hash[_fingerprint(piece)] = span_id
                self.by_hash.move_to_end(_fingerprint(piece))
                if isinstance(piece, str) and len(piece.strip()) >= MIN_FINGERPRINT_TEXT:
                    self.texts[piece.strip()] = span_id
                    self.texts.move_to_end(piece.strip())
            while len(self.by_hash) > MAX_REMEMBERED:
                self.by_hash.popitem(last=False)
            while len(self.texts) > MAX_REMEMBERED:
                self.texts.popitem(last=False)

    def sources(self, values: Iterable[Any], own: str) -> dict[str, str]:
        """Span ids whose outputs appear in `values` -> how ("value" or "text")."""
        found: dict[str, str] = {}
        with self.lock:
            for value in values:
                for piece in _pieces(value):
                    src = self.by_hash.get(_fingerprint(piece))
                    if src and src != own:
                        found.setdefault(src, "value")
                    if isinstance(piece, str) and len(piece) >= MIN_FINGERPRINT_TEXT:
                        for text, src in self.texts.items():
                            if src != own and src not in found and text in piece:
                                found[src] = "text"
        return found


_flow = _Flow()


def _fingerprint(value: Any) -> str:
    if isinstance(value, str):
        data = "s:" + value.strip()
    else:
        data = f"{type(value).__name__}:{value!r}"
    return hashlib.blake2b(data.encode("utf-8", "replace"), digest_size=12).hexdigest()


def _pieces(value: Any, depth: int = 0) -> Iterable[Any]:
    """The value and, for containers and message-like objects, the values inside (two levels deep)."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, (int, float)) and abs(value) < 10:
        return  # tiny numbers flow everywhere; they prove nothing
    if isinstance(value, (str, int, float, bytes)):
        yield value
        return
    content = getattr(value, "content", None)
    if isinstance(content, str):
        yield content
        return
    if depth >= 2:
        return
    if isinstance(value, dict):
        for item in list(value.values())[:64]:
            yield from _pieces(item, depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in list(value)[:64]:
            yield from _pieces(item, depth + 1)
    else:
        try:
            yield repr(value)
        except Exception:  # noqa: BLE001 - a user's __repr__ must not break capture
            return


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value[:MAX_CONTENT]
    content = getattr(value, "content", None)
    if isinstance(content, str):
        return content[:MAX_CONTENT]
    try:
        return repr(value)[:MAX_CONTENT]
    except Exception:  # noqa: BLE001
        return f"<{type(value).__name__}>"


def _tracer() -> otel_trace.Tracer:
    run = setup.current_run()
    if run is not None and run.tracer is not None:
        return run.tracer
    return otel_trace.get_tracer("tracekit")


def _span_id(span: otel_trace.Span) -> str:
    return format(span.get_span_context().span_id, "016x")


def _edge(src: str, dst: str, relation: str, provenance: str, confidence: float) -> None:
    run = setup.current_run()
    if run is None:
        return
    run.spool.stream("links").write({
        "src_span_id": src, "dst_span_id": dst, "relation": relation,
        "provenance": provenance, "confidence": confidence, "attributes": "{}",
    })


def _observe_inputs(values: list[Any], dst: str) -> None:
    for src, how in _flow.sources(values, dst).items():
        _edge(src, dst, "consumes", "observed", 1.0 if how == "value" else 0.9)


def _step_attributes(agent: str, kind: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        conv.AGENT: agent, conv.STEP: next(_flow.counter), conv.STEP_KIND: kind, conv.NODE: f"agent:{agent}",
    }
    for key, value in (extra or {}).items():
        if value is not None:
            attrs[key] = value if isinstance(value, (str, bool, int, float)) else str(value)
    return attrs


def agent_step(
    func: F | None = None, /, *, agent: str, name: str | None = None, tool: str | None = None,
) -> Any:
    """Record each call of a function as one step of `agent`; its inputs that came from earlier
    traced steps become observed edges, and its return value is remembered for later steps.

    >>> @agent_step(agent="Planner")
    ... def plan(task: str) -> str:
    ...     return f"plan for {task}"
    >>> plan("the report")
    'plan for the report'

    ``tool="search"`` marks the step as a tool execution. An exception marks the span as an error
    and propagates unchanged.
    """

    def decorate(fn: F) -> F:
        span_name = name or getattr(fn, "__qualname__", "agent_step")
        kind = "tool_result" if tool else "step"

        def start(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[otel_trace.Span, str]:
            span = _tracer().start_span(span_name, attributes=_step_attributes(agent, kind, {conv.TOOL: tool}))
            sid = _span_id(span)
            try:
                inputs = [*args, *kwargs.values()]
                span.set_attribute(conv.INPUT, _text(inputs if len(inputs) != 1 else inputs[0]))
                _observe_inputs(inputs, sid)
            except Exception:  # noqa: BLE001 - capture never raises
                pass
            return span, sid

        def finish(span: otel_trace.Span, sid: str, result: Any) -> None:
            try:
                span.set_attribute(conv.CONTENT, _text(result))
                _flow.remember(result, sid)
            except Exception:  # noqa: BLE001
                pass

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                span, sid = start(args, kwargs)
                with otel_trace.use_span(span, end_on_exit=True):
                    result = await fn(*args, **kwargs)
                    finish(span, sid, result)
                    return result

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            span, sid = start(args, kwargs)
            with otel_trace.use_span(span, end_on_exit=True):
                result = fn(*args, **kwargs)
                finish(span, sid, result)
                return result

        return wrapper  # type: ignore[return-value]

    if func is not None:
        return decorate(func)
    return decorate


def message(
    *, agent: str, content: Any, consumes: Iterable[str] = (), role: str | None = None,
    tool_call_id: str | None = None, error: str | None = None, signals: dict[str, Any] | None = None,
) -> str:
    """Record one message (a step with no body) sent by `agent`; returns its id for ``consumes=``.

    ``consumes`` lists ids of earlier messages or steps this one used (declared edges); a message
    whose content contains an earlier step's output gets an observed edge as well. ``tool_call_id``
    says the message answers that tool call (declared edge from the call). ``error`` marks it failed.
    ``signals`` are general step signals by short name (``role``: task/orchestrator/worker/tool/verifier,
    ``judgment``: progress/no_progress/loop, ``verdict``: pass/fail, ``exit_code``, ``error``,
    ``final_answer``), read by attribution.
    """
    try:
        kind = "tool_result" if tool_call_id else "message"
        stated = {f"{conv.SIGNAL_ROLE.rsplit('.', 1)[0]}.{k}": v for k, v in (signals or {}).items()
                  if f"{conv.SIGNAL_ROLE.rsplit('.', 1)[0]}.{k}" in conv.SIGNALS and isinstance(v, (str, int, bool))}
        span = _tracer().start_span(
            f"message:{agent}",
            attributes=_step_attributes(agent, kind, {
                conv.CONTENT: _text(content), conv.ROLE: role, conv.TOOL_CALL_ID: tool_call_id, **stated,
            }),
        )
        sid = _span_id(span)
        declared = [c for c in consumes if isinstance(c, str) and c]
        for src in declared:
            _edge(src, sid, "consumes", "declared", 1.0)
        if tool_call_id and (caller := _flow.calls.get(tool_call_id)):
            _edge(caller, sid, "tool_result", "declared", 1.0)
        _observe_inputs([content], sid)
        if error:
            span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, error))
        span.end()
        _flow.remember(content, sid)
        return sid
    except Exception:  # noqa: BLE001 - capture never raises
        return ""


def tool_call(
    *, agent: str, tool: str, arguments: Any = None, call_id: str | None = None, consumes: Iterable[str] = (),
) -> str:
    """Record that `agent` asked for tool `tool`; returns the call id (given or new) for `tool_result`."""
    try:
        call_id = call_id or setup.new_id()[:16]
        span = _tracer().start_span(
            f"tool_call:{tool}",
            attributes=_step_attributes(agent, "tool_call", {
                conv.TOOL: tool, conv.TOOL_CALL_ID: call_id, conv.CONTENT: _text(arguments),
            }),
        )
        sid = _span_id(span)
        for src in consumes:
            _edge(src, sid, "consumes", "declared", 1.0)
        if arguments is not None:
            _observe_inputs([arguments], sid)
        span.end()
        _flow.calls[call_id] = sid
        return call_id
    except Exception:  # noqa: BLE001
        return call_id or ""


def tool_result(*, agent: str, call_id: str, content: Any, error: str | None = None) -> str:
    """Record a tool's result for `call_id` (declared edge from the call); returns the message id."""
    return message(agent=agent, content=content, tool_call_id=call_id, error=error)
