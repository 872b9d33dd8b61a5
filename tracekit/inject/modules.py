"""Zero-code injection points: every function of chosen modules becomes a span and a point, via an import hook.

A campaign file's ``[points] modules = ["pysyncobj.*", "myservice.*"]`` reaches every Python
process of a campaign run through ``TRACEKIT_INJECT_MODULES`` (the runner sets it; the inject
autostart ``sitecustomize`` calls `install_from_env`). When a matching module is imported, each
function and method it defines (not dunders, not generators) is wrapped with `tracekit.trace`
under the name ``module.Qualified.name`` — no change to the code itself.

`static_points` reads the same modules' source (AST, never importing them) for what the runtime
cannot see before a fault: the exception type a ``raise`` fault should throw at a point (one its
body raises and its callers catch around the call, else one it raises, else one its callers
catch) and whether it is a boolean check (every ``return`` gives a bool), so ``raise`` and
``error_return`` faults are realistic.
"""

from __future__ import annotations

import ast
import builtins
import fnmatch
import importlib.abc
import importlib.machinery
import inspect
import json
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

MODULES_ENV = "TRACEKIT_INJECT_MODULES"
_GENERIC = {"Exception", "BaseException"}


def matches(module: str, patterns: Iterable[str]) -> bool:
    """True when `module` is one of `patterns` (globs over dotted names; ``pkg.*`` also covers ``pkg``'s submodules).

    >>> matches("pysyncobj.syncobj", ["pysyncobj.*"]), matches("pysyncobjx", ["pysyncobj.*"])
    (True, False)
    """
    return any(fnmatch.fnmatchcase(module, p) for p in patterns)


# ---------------------------------------------------------------------------------------------
# the import hook (runs inside campaign runs)


def _wrappable(fn: Any) -> bool:
    return inspect.isfunction(fn) and not (inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn))


def _dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def instrument_module(module: Any) -> int:
    """Wrap every function and method `module` defines with `tracekit.trace`; returns how many."""
    from tracekit.capture.decorators import trace

    name = module.__name__
    done = 0
    for attr, value in list(vars(module).items()):
        if _wrappable(value) and value.__module__ == name and not _dunder(attr):
            setattr(module, attr, trace(name=f"{name}.{value.__qualname__}")(value))
            done += 1
        elif inspect.isclass(value) and value.__module__ == name:
            done += _instrument_class(value, name)
    return done


def _instrument_class(cls: type, module: str) -> int:
    from tracekit.capture.decorators import trace

    done = 0
    for attr, value in list(vars(cls).items()):
        if _dunder(attr):
            continue
        if isinstance(value, (staticmethod, classmethod)) and _wrappable(value.__func__):
            wrapped = trace(name=f"{module}.{value.__func__.__qualname__}")(value.__func__)
            setattr(cls, attr, type(value)(wrapped))
            done += 1
        elif _wrappable(value):
            setattr(cls, attr, trace(name=f"{module}.{value.__qualname__}")(value))
            done += 1
    return done


class _Loader(importlib.abc.Loader):
    """Delegates to the real loader, then instruments the module it executed."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def create_module(self, spec: Any) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._inner.exec_module(module)
        try:
            instrument_module(module)
        except Exception as exc:  # instrumentation must never stop the program under test
            print(f"tracekit: cannot instrument {module.__name__}: {exc}", file=sys.stderr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class ModuleFinder(importlib.abc.MetaPathFinder):
    """Finds matching modules with the other finders and hands them a loader that instruments them."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if not matches(fullname, self.patterns):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def install(patterns: Iterable[str]) -> None:
    """Instrument matching modules from now on (and those already imported). Idempotent."""
    patterns = tuple(patterns)
    if not patterns or any(isinstance(f, ModuleFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, ModuleFinder(patterns))
    for name, module in list(sys.modules.items()):
        if module is not None and matches(name, patterns):
            instrument_module(module)


def install_from_env() -> None:
    """Install the hook when the campaign run asks for it (``TRACEKIT_INJECT_MODULES``, a JSON list). Never raises."""
    raw = os.environ.get(MODULES_ENV)
    if not raw:
        return
    try:
        install([str(p) for p in json.loads(raw)])
    except Exception as exc:  # the program under test must start anyway
        print(f"tracekit: zero-code injection points are off: {exc}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# static facts from the source (runs in the campaign runner)


@dataclass(frozen=True)
class StaticPoint:
    """What a point's source says: the exception a raise fault should throw, and whether it is a check."""

    point: str
    exception: str | None
    boolean: bool
    raised: tuple[str, ...] = ()
    caught: tuple[str, ...] = ()


def module_files(patterns: Iterable[str], roots: Iterable[Path]) -> Iterator[tuple[str, Path]]:
    """(module name, source file) of every module matching `patterns`, found without importing anything."""
    patterns = tuple(patterns)
    search = [str(r) for r in roots] + [p for p in sys.path if p]
    tops = {p.split(".")[0] for p in patterns}
    for top in sorted(tops):
        if any(ch in top for ch in "*?["):
            continue  # a wildcard top-level package: only the import hook can match it
        spec = importlib.machinery.PathFinder.find_spec(top, search)
        if spec is None:
            continue
        if spec.submodule_search_locations:
            for base in spec.submodule_search_locations:
                for file in sorted(Path(base).rglob("*.py")):
                    rel = file.relative_to(base).with_suffix("").parts
                    name = ".".join((top, *rel[:-1])) if rel[-1] == "__init__" else ".".join((top, *rel))
                    if matches(name, patterns):
                        yield name, file
        elif spec.origin and spec.origin.endswith(".py") and matches(top, patterns):
            yield top, Path(spec.origin)


def static_points(patterns: Iterable[str], roots: Iterable[Path] = ()) -> dict[str, StaticPoint]:
    """Every function of the matching modules, by point name, with its exception and boolean-ness."""
    functions: list[tuple[str, str, ast.AST, dict[str, str]]] = []  # (point, short name, node, names)
    for module, file in module_files(patterns, roots):
        try:
            tree = ast.parse(file.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, OSError):
            continue
        names = _imported_names(tree, module)
        for qualname, node in _functions(tree):
            functions.append((f"{module}.{qualname}", node.name, node, names))  # type: ignore[attr-defined]
    caught_around: dict[str, list[str]] = defaultdict(list)
    for _point, _short, node, names in functions:
        for callee, types in _calls_in_try(node, names):
            caught_around[callee].extend(types)
    out: dict[str, StaticPoint] = {}
    for point, short, node, names in functions:
        raised = _raised(node, names)
        caught = caught_around.get(short, [])
        specific = [t for t in raised if t not in _GENERIC]
        both = [t for t in specific if t in caught]
        handled = [t for t in caught if t not in _GENERIC]
        pick = (both or specific or handled or [None])[0]
        out[point] = StaticPoint(point, pick, _boolean(node), tuple(dict.fromkeys(raised)),
                                 tuple(dict.fromkeys(caught)))
    return out


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.AST]]:
    for node in getattr(tree, "body", []):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{prefix}{node.name}", node
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")


def _imported_names(tree: ast.AST, module: str) -> dict[str, str]:
    """Local name -> dotted path, for names an exception type may be spelled with in this module."""
    names: dict[str, str] = {}
    package = module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: -node.level] if node.level else []
                base = ".".join([*parts, base] if base else parts) or package
            for a in node.names:
                names[a.asname or a.name] = f"{base}.{a.name}"
        elif isinstance(node, ast.ClassDef):
            names.setdefault(node.name, f"{module}.{node.name}")
    return names


def _dotted(expr: ast.AST | None, names: dict[str, str]) -> str | None:
    if isinstance(expr, ast.Call):
        expr = expr.func
    if isinstance(expr, ast.Name):
        if isinstance(getattr(builtins, expr.id, None), type):
            return expr.id
        return names.get(expr.id)
    if isinstance(expr, ast.Attribute):
        head = _dotted(expr.value, names)
        return f"{head}.{expr.attr}" if head else None
    return None


def _own_nodes(fn: ast.AST) -> Iterator[ast.AST]:
    """The nodes of a function's body, not of functions or classes nested in it."""
    stack = list(getattr(fn, "body", []))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


def _raised(fn: ast.AST, names: dict[str, str]) -> list[str]:
    out = []
    for node in _own_nodes(fn):
        if isinstance(node, ast.Raise) and node.exc is not None:
            found = _dotted(node.exc, names)
            if found:
                out.append(found)
    return out


def _handler_types(handler: ast.ExceptHandler, names: dict[str, str]) -> list[str]:
    if handler.type is None:
        return []
    items = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return [t for t in (_dotted(i, names) for i in items) if t]


def _calls_in_try(fn: ast.AST, names: dict[str, str]) -> Iterator[tuple[str, list[str]]]:
    """(called function's short name, exception types the surrounding try catches)."""
    for node in _own_nodes(fn):
        if isinstance(node, ast.Try):
            types = [t for h in node.handlers for t in _handler_types(h, names)]
            if not types:
                continue
            for stmt in node.body:
                for sub in ast.walk(stmt):
                    if isinstance(sub, ast.Call):
                        f = sub.func
                        short = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
                        if short:
                            yield short, types


def _is_bool(expr: ast.AST | None) -> bool:
    if isinstance(expr, ast.Constant):
        return isinstance(expr.value, bool)
    if isinstance(expr, ast.Compare):
        return True
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Not):
        return True
    if isinstance(expr, ast.BoolOp):
        return all(_is_bool(v) for v in expr.values)
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name):
        return expr.func.id in ("bool", "isinstance", "hasattr", "callable")
    return False


def _boolean(fn: ast.AST) -> bool:
    """Every `return` of the function gives a bool (and there is at least one)."""
    returns = [n for n in _own_nodes(fn) if isinstance(n, ast.Return)]
    return bool(returns) and all(_is_bool(r.value) for r in returns)
