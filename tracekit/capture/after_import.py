"""Run a callback right after a named module is imported: a meta-path finder that imports nothing itself."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any


class AfterImport:
    """A meta-path finder that calls ``then(module)`` the moment ``fullname`` has been executed."""

    def __init__(self, fullname: str, then: Callable[[ModuleType], None]) -> None:
        self.fullname = fullname
        self.then = then

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.fullname:
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        exec_module, then = spec.loader.exec_module, self.then

        def exec_and_then(module: ModuleType) -> None:
            exec_module(module)
            then(module)

        spec.loader.exec_module = exec_and_then  # type: ignore[method-assign]
        return spec
