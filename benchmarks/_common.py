"""Shared helpers for benchmark scripts: timing and the closing JSON line every benchmark prints."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    """Run `fn` `repeats` times; return (minimum seconds, all timings)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), times


def median(values: list[float]) -> float:
    return statistics.median(values)


def final_line(**figures: Any) -> None:
    """The last line of every benchmark: one JSON object of its figures."""
    print(json.dumps(figures, default=str))
