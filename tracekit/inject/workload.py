"""`python -m tracekit.inject.workload module:function`: the process a campaign run starts for a function workload."""

from __future__ import annotations

import importlib
import inspect
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 1 or ":" not in argv[0]:
        print("usage: python -m tracekit.inject.workload module:function", file=sys.stderr)
        return 2
    module_name, _, func_name = argv[0].partition(":")
    func = getattr(importlib.import_module(module_name), func_name)
    result = func()
    if inspect.isawaitable(result):
        import asyncio

        result = asyncio.run(result)  # type: ignore[arg-type]
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
