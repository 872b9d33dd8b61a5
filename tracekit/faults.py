"""How a fault plan names an exception: the one resolver shared by the injection runtime and the analyses.

A leaf module (standard library only): the runtime inside user processes and the causality analysis
both import it, so neither depends on the other.
"""

from __future__ import annotations

import builtins
import importlib


def resolve_exception(name: str | None) -> type[BaseException]:
    """An exception class from a builtin name (``TimeoutError``) or a dotted path (``socket.timeout``).

    Anything that names no exception class resolves to ``RuntimeError``.

    >>> resolve_exception("TimeoutError").__name__
    'TimeoutError'
    >>> resolve_exception("socket.timeout").__name__
    'TimeoutError'
    >>> resolve_exception("no.such.Thing").__name__
    'RuntimeError'
    """
    if not name:
        return RuntimeError
    found = getattr(builtins, name, None)
    if isinstance(found, type) and issubclass(found, BaseException):
        return found
    module, _, attr = name.replace(":", ".").rpartition(".")
    if module:
        try:
            found = getattr(importlib.import_module(module), attr, None)
        except ImportError:
            found = None
        if isinstance(found, type) and issubclass(found, BaseException):
            return found
    return RuntimeError
