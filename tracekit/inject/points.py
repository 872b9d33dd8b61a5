"""Registry of injection points: every `@tracekit.trace`d function and every explicit `tracekit.fault_point`.

`ARMED` is the one flag the capture wrappers check per call: it is true only inside a campaign run
(the runner sets ``TRACEKIT_INJECT``), so outside a campaign an injection point costs one module
attribute read. When armed, calls go through `intercept` / `intercept_async` (tracekit.inject.runtime).
"""

from __future__ import annotations

import os
from typing import Any, Callable

# name -> the function (or None for explicit fault points); read by campaign discovery.
TRACED_POINTS: dict[str, Callable[..., Any] | None] = {}

ARMED: bool = bool(os.environ.get("TRACEKIT_INJECT"))


def register_traced_point(name: str, fn: Callable[..., Any] | None) -> None:
    TRACED_POINTS.setdefault(name, fn)


def intercept(point: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Call `fn` at injection point `point` inside a campaign run (may inject a fault)."""
    from tracekit.inject.runtime import call_point

    return call_point(point, fn, args, kwargs)


async def intercept_async(point: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    from tracekit.inject.runtime import call_point_async

    return await call_point_async(point, fn, args, kwargs)


def fault_point(name: str, value: Any = True, *, raises: type[BaseException] | None = None) -> Any:
    """An explicit injection point: returns `value`, unless a campaign run injects a fault here.

    ``if not tracekit.fault_point("replica.send"): return`` is a call a campaign can drop
    (``drop`` returns False); ``ok = tracekit.fault_point("cache.hit", value=ok)`` is a check it can
    negate (``error_return``); ``raises`` declares the exception a ``raise`` fault throws here; a
    ``delay`` fault sleeps (or spins) before returning. Outside a campaign run this is one flag check.
    """
    if not ARMED:
        return value
    from tracekit.inject.runtime import fire_explicit

    return fire_explicit(name, value, raises)


def observe_fault(point: str, fault_type: str, **detail: Any) -> None:
    """Record a fault the program noticed itself (``"retry"``, ``"timeout"``, ``"failover"``); no-op outside a campaign."""
    if not ARMED:
        return
    from tracekit.inject.runtime import observe_fault as _observe

    _observe(point, fault_type, **detail)
