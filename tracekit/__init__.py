"""tracekit: tracing and failure attribution for distributed training jobs and multi-agent workflows.

The public API is imported lazily so that ``import tracekit`` (and ``tracekit --help``) stays fast.
In a fault-injection campaign run (``TRACEKIT_INJECT`` set by the campaign runner) the injection
runtime fills capture's fault-point hook slot here, before any traced function runs: capture itself
never imports tracekit.inject.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, tuple[str, str]] = {
    "init": ("tracekit.capture.setup", "init"),
    "shutdown": ("tracekit.capture.setup", "shutdown"),
    "current_run": ("tracekit.capture.setup", "current_run"),
    "Run": ("tracekit.capture.setup", "Run"),
    "trace": ("tracekit.capture.decorators", "trace"),
    "span": ("tracekit.capture.decorators", "span"),
    "SpoolSpanExporter": ("tracekit.capture.otel", "SpoolSpanExporter"),
    "CaptureWarning": ("tracekit.capture.spool", "CaptureWarning"),
    "TracekitError": ("tracekit.errors", "TracekitError"),
    "fault_point": ("tracekit.inject.points", "fault_point"),
    "observe_fault": ("tracekit.inject.points", "observe_fault"),
    "agent_step": ("tracekit.capture.agents", "agent_step"),
    "message": ("tracekit.capture.agents", "message"),
    "tool_call": ("tracekit.capture.agents", "tool_call"),
    "tool_result": ("tracekit.capture.agents", "tool_result"),
}
_SUBMODULES = {"torch": "tracekit.capture.torch"}

__all__ = sorted([*_EXPORTS, *_SUBMODULES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attr)
    elif name in _SUBMODULES:
        value = importlib.import_module(_SUBMODULES[name])
    else:
        raise AttributeError(f"module 'tracekit' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if os.environ.get("TRACEKIT_INJECT"):
    from tracekit.inject.runtime import arm as _arm

    _arm()
