"""Explicit injection points in user code: `tracekit.fault_point` and `tracekit.observe_fault`.

Every ``@tracekit.trace``d function is an injection point too, through capture's hook slot
(tracekit.capture.hooks), which `tracekit.inject.runtime.arm` fills only inside a campaign run. Outside
one the slot is empty and an explicit point costs one module attribute read.
"""

from __future__ import annotations

from typing import Any

from tracekit.capture import hooks


def fault_point(name: str, value: Any = True, *, raises: type[BaseException] | None = None) -> Any:
    """An explicit injection point: returns `value`, unless a campaign run injects a fault here.

    ``if not tracekit.fault_point("replica.send"): return`` is a call a campaign can drop
    (``drop`` returns False); ``ok = tracekit.fault_point("cache.hit", value=ok)`` is a check it can
    negate (``error_return``); ``raises`` declares the exception a ``raise`` fault throws here; a
    ``delay`` fault sleeps (or spins) before returning. Outside a campaign run this is one flag check.
    """
    if hooks.ACTIVE is None:
        return value
    from tracekit.inject.runtime import fire_explicit

    return fire_explicit(name, value, raises)


def observe_fault(point: str, fault_type: str, **detail: Any) -> None:
    """Record a fault the program noticed itself (``"retry"``, ``"timeout"``, ``"failover"``); no-op outside a campaign."""
    if hooks.ACTIVE is None:
        return
    from tracekit.inject.runtime import observe_fault as _observe

    _observe(point, fault_type, **detail)
