"""The injection runtime inside a campaign run: read the plan, count calls per point, fire the planned fault, record faults.

The campaign runner hands each run its plan in ``TRACEKIT_INJECT`` (JSON). A plan names the mode
(``profile``: inject nothing, only observe; ``inject``: one fault), the point, the fault type, its
variant (exception type, delay and whether it is busy, a return value) and which occurrence of the
point fires (per process; a forked child continues its parent's count: `_ForkSharedCount`). Every injected fault and every fault observed at an injection point (an
exception leaving it, a timeout, a retry declared with `observe_fault`) is written to the run's
``faults`` stream with the span it happened in; every point reached is written once per call
context to the ``inject_points`` stream, which is how a campaign discovers its points.

`arm` puts `CampaignHook` into capture's fault-point hook slot (tracekit.capture.hooks); the
``@tracekit.trace`` wrappers (functions, coroutines, generators, async generators) drive one
`_Call` per call through it.

Nothing here raises into the program except the injected exception itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import mmap
import os
import struct
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from opentelemetry import trace as otel_trace

from tracekit.capture import hooks
from tracekit.capture.hooks import PROCEED
from tracekit.conventions import INJECTED as INJECTED_ATTR, RETURN as RETURN_ATTR
from tracekit.faults import resolve_exception  # moved there: the analyses use it too

FAULT_TYPES = ("raise", "delay", "error_return", "drop")
PLAN_ENV = "TRACEKIT_INJECT"


@dataclass(frozen=True)
class Plan:
    """What one campaign run injects. `point`/`fault` are None in a profile run."""

    campaign: str = ""
    test: str = ""
    mode: str = "profile"
    point: str | None = None
    fault: str | None = None
    exception: str | None = None
    delay_ms: int = 0
    busy: bool = False
    value: Any = None
    occurrence: int = 1
    times: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        data = json.loads(text)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), default=str)


class InjectedFault(RuntimeError):
    """Raised by an injected `raise` fault when the campaign names no exception type."""


_path: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("tracekit_inject_path", default=())
_lock = threading.Lock()
_counts: dict[str, int] = {}
_seen: set[tuple[str, str | None]] = set()
_plan: Plan | None = None


class _ForkSharedCount:
    """Calls of the planned point, counted by this process and every child forked from it.

    A fork-per-task server (RQ's work horse, a pre-fork pool) runs each task in a fresh fork of one
    parent that never calls the point itself: counted per process, every task's call would be "the
    first" and the fault would fire in each. The count lives in an anonymous shared mapping made
    before any fork, so forks continue one count; a POSIX record lock (held per process, never
    inherited) orders increments between processes, `_lock` between threads. A process started
    anew (exec: another node, a subprocess) counts on its own, as before.
    """

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, 8)  # MAP_SHARED | MAP_ANONYMOUS: shared with forked children
        self._file = tempfile.TemporaryFile(prefix="tracekit-inject-")  # only its lock is used

    def increment(self) -> int:
        import fcntl

        fd = self._file.fileno()
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            n = struct.unpack("q", self._map[:8])[0] + 1
            self._map[:8] = struct.pack("q", n)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
        return n

    def value(self) -> int:
        return struct.unpack("q", self._map[:8])[0]


_shared: _ForkSharedCount | None = None


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # a thread of the parent may have held it at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)


def current_plan() -> Plan | None:
    """The plan of this campaign run, or None outside one (read once from ``TRACEKIT_INJECT``)."""
    global _plan
    if _plan is None:
        raw = os.environ.get(PLAN_ENV)
        if not raw:
            return None
        try:
            _plan = Plan.from_json(raw)
        except (ValueError, TypeError):
            _plan = Plan(mode="profile")
    return _plan


def _write_fault(point: str, fault_type: str, injected: bool, detail: dict[str, Any]) -> None:
    try:
        from tracekit.capture.setup import current_run

        run = current_run()
        if run is None:
            return
        plan = current_plan() or Plan()
        ctx = otel_trace.get_current_span().get_span_context()
        stream = run.spool.stream("faults")
        stream.write({
            "campaign": plan.campaign or None, "test": plan.test or None, "point": point,
            "fault_type": fault_type, "injected": injected, "ts_ns": time.time_ns(),
            "span_id": format(ctx.span_id, "016x") if ctx.is_valid else None,
            "detail": json.dumps({**detail, "pid": os.getpid()}, default=str),
        })
        if injected:
            stream.flush()  # the fault may kill the process: its record must reach the OS first
    except Exception:  # recording must never break the program under test
        pass


def _note_visit(point: str, parent: str | None, kind: str, result: Any, raises: str | None = None) -> None:
    key = (point, parent)
    if key in _seen:
        return
    with _lock:
        if key in _seen:
            return
        _seen.add(key)
    try:
        from tracekit.capture.setup import current_run

        run = current_run()
        if run is not None:
            run.spool.stream("inject_points").write({
                "point": point, "parent": parent, "kind": kind,
                "returns": type(result).__name__ if result is not None else None, "raises": raises,
            })
    except Exception:
        pass


def observe_fault(point: str, fault_type: str, **detail: Any) -> None:
    """Record a fault the program itself saw (a retry, a timeout, a failover) in a campaign run; no-op outside one."""
    if hooks.ACTIVE is not None:
        _write_fault(point, fault_type, False, detail)


def _firing(point: str) -> Plan | None:
    plan = current_plan()
    if plan is None or plan.mode != "inject" or plan.point != point:
        return None
    with _lock:
        if _shared is not None:
            try:
                n = _shared.increment()
            except OSError:  # the lock file is gone: count in this process only
                n = _counts.get(point, 0) + 1
        else:
            n = _counts.get(point, 0) + 1
        _counts[point] = n
    if plan.occurrence <= n < plan.occurrence + max(1, plan.times):
        return plan
    return None


def _announce(plan: Plan, point: str, parent: str | None) -> None:
    otel_trace.get_current_span().set_attribute(INJECTED_ATTR, str(plan.fault))
    _write_fault(point, str(plan.fault), True, {
        "parent": parent, "exception": plan.exception, "delay_ms": plan.delay_ms, "busy": plan.busy,
        "value": plan.value, "occurrence": _counts.get(point, 0),
    })


def _injected_exception(cls: type[BaseException], point: str) -> BaseException:
    exc = cls(f"tracekit injected fault at {point}")
    try:
        exc.__tracekit_origin__ = point  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        pass
    return exc


def _busy_wait(ms: int) -> None:
    end = time.perf_counter_ns() + ms * 1_000_000
    while time.perf_counter_ns() < end:
        pass


def _observe(point: str, parent: str | None, exc: BaseException) -> None:
    if isinstance(exc, (GeneratorExit, StopIteration, StopAsyncIteration, KeyboardInterrupt, SystemExit)):
        return
    origin = getattr(exc, "__tracekit_origin__", None)
    if origin == point:
        return  # the fault injected right here: already recorded as injected
    if origin is None:
        try:
            exc.__tracekit_origin__ = point  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            pass
    kind = "timeout" if isinstance(exc, TimeoutError) else "raise"
    _write_fault(point, kind, False, {
        "parent": parent, "exception": type(exc).__name__, "message": str(exc)[:200],
        "propagated_from": origin,
    })


def _mark_return(result: Any) -> None:
    if isinstance(result, bool):
        otel_trace.get_current_span().set_attribute(RETURN_ATTR, result)


def _override(plan: Plan, result: Any) -> Any:
    if isinstance(result, bool) and plan.value is None:
        return not result  # negate a boolean check
    return plan.value


class _OnPath:
    """The point is on the call path (the parent of points reached inside it) while its body runs."""

    __slots__ = ("_path", "_token")

    def __init__(self, path: tuple[str, ...]) -> None:
        self._path = path
        self._token: contextvars.Token[tuple[str, ...]] | None = None

    def __enter__(self) -> None:
        self._token = _path.set(self._path)

    def __exit__(self, *exc_info: Any) -> None:
        if self._token is not None:
            _path.reset(self._token)
            self._token = None


class _Call:
    """One call of a traced function in a campaign run (a `tracekit.capture.hooks.PointCall`):
    maybe inject the planned fault, always observe what leaves it and note the point as reached."""

    __slots__ = ("point", "parent", "plan", "path", "result")

    def __init__(self, point: str) -> None:
        path = _path.get()
        self.point = point
        self.parent = path[-1] if path else None
        self.path = path + (point,)
        self.plan = _firing(point)
        self.result: Any = None

    def begin(self) -> Any:
        """Announce a firing fault and do what happens before the body: raise, or drop the call
        (its stand-in value comes back). Otherwise PROCEED; a delay is `wait`'s to sleep."""
        plan = self.plan
        if plan is None:
            return PROCEED
        _announce(plan, self.point, self.parent)
        if plan.fault == "raise":
            raise _injected_exception(resolve_exception(plan.exception), self.point)
        if plan.fault == "drop":
            self.result = plan.value
            return plan.value
        return PROCEED

    def _delay_ms(self) -> int:
        plan = self.plan
        return plan.delay_ms if plan is not None and plan.fault == "delay" else 0

    def wait(self) -> None:
        ms = self._delay_ms()
        if ms:
            _busy_wait(ms) if self.plan.busy else time.sleep(ms / 1000)  # type: ignore[union-attr]

    async def wait_async(self) -> None:
        """`wait` for coroutines: a sleeping delay yields to the event loop."""
        ms = self._delay_ms()
        if ms and self.plan.busy:  # type: ignore[union-attr]
            _busy_wait(ms)
        elif ms:
            await asyncio.sleep(ms / 1000)

    def active(self) -> _OnPath:
        return _OnPath(self.path)

    def failed(self, exc: BaseException) -> None:
        _observe(self.point, self.parent, exc)

    def returned(self, result: Any) -> Any:
        if self.plan is not None and self.plan.fault == "error_return":
            result = _override(self.plan, result)
        _mark_return(result)
        self.result = result
        return result

    def end(self) -> None:
        _note_visit(self.point, self.parent, "traced", self.result)


class CampaignHook:
    """The `tracekit.capture.hooks.FaultHook` of a campaign run."""

    def enter(self, point: str) -> _Call:
        return _Call(point)


def arm() -> bool:
    """Fill capture's fault-point hook slot when this process is a campaign run (``TRACEKIT_INJECT`` set).

    The package root calls this at import; outside a campaign run the slot stays empty. Returns
    whether the hook is in."""
    global _shared
    plan = current_plan()
    if plan is None:
        return False
    if plan.mode == "inject" and _shared is None:
        try:
            _shared = _ForkSharedCount()
        except (OSError, ValueError):  # no shared memory or temp dir: per-process counts
            _shared = None
    hooks.install(CampaignHook())
    return True


def fire_explicit(name: str, value: Any, raises: type[BaseException] | None) -> Any:
    """An explicit `tracekit.fault_point` reached in a campaign run: a zero-work span that may carry a fault."""
    from tracekit.capture.decorators import span

    path = _path.get()
    parent = path[-1] if path else None
    declared = raises.__name__ if raises is not None else None
    with span(name):
        result = value
        try:
            plan = _firing(name)
            if plan is not None:
                _announce(plan, name, parent)
                if plan.fault == "raise":
                    cls = resolve_exception(plan.exception) if plan.exception else (raises or InjectedFault)
                    raise _injected_exception(cls, name)
                if plan.fault == "delay":
                    _busy_wait(plan.delay_ms) if plan.busy else time.sleep(plan.delay_ms / 1000)
                elif plan.fault == "drop":
                    result = False if isinstance(value, bool) else plan.value
                elif plan.fault == "error_return":
                    result = _override(plan, value)
            _mark_return(result)
            return result
        except BaseException as exc:
            _observe(name, parent, exc)
            raise
        finally:
            _note_visit(name, parent, "explicit", value, declared)
