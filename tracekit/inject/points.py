"""Registry of injection points: every `@tracekit.trace`d function and every explicit `tracekit.fault_point`."""

from __future__ import annotations

from typing import Any, Callable

# name -> the function (or None for explicit fault points); read by campaign discovery.
TRACED_POINTS: dict[str, Callable[..., Any] | None] = {}


def register_traced_point(name: str, fn: Callable[..., Any] | None) -> None:
    TRACED_POINTS.setdefault(name, fn)
