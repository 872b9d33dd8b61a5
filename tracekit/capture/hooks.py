"""The fault-point hook slot: capture's wrappers call through it when it is filled (inject fills it in a campaign run).

Capture never imports tracekit.inject. In a fault-injection campaign run the package root calls
``tracekit.inject.runtime.arm()``, which puts a `FaultHook` into `ACTIVE`; everywhere else the slot
stays None and a traced call pays one module attribute read for it.

A traced call asks the hook for a `PointCall` and drives it: `begin` before the body (it may raise
the planned exception or hand back a stand-in value, the call being dropped), `wait` (or
`wait_async`) for a planned delay, `active` around every stretch of the body (a generator's body
runs in many steps), `failed` when an exception leaves the body, `returned` with the body's result
(it may replace it), and `end` once the call is over.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

PROCEED: Any = object()
"""What `PointCall.begin` returns when the call goes ahead (no stand-in value)."""


class PointCall(Protocol):
    """One call of an injection point inside a campaign run."""

    def begin(self) -> Any: ...
    def wait(self) -> None: ...
    async def wait_async(self) -> None: ...
    def active(self) -> AbstractContextManager[Any]: ...
    def failed(self, exc: BaseException) -> None: ...
    def returned(self, result: Any) -> Any: ...
    def end(self) -> None: ...


class FaultHook(Protocol):
    """What fills the slot: makes a `PointCall` for each call of a traced function."""

    def enter(self, point: str) -> PointCall: ...


ACTIVE: FaultHook | None = None


def install(hook: FaultHook | None) -> None:
    """Fill the slot (or empty it with None)."""
    global ACTIVE
    ACTIVE = hook
