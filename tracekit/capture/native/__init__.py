"""tracekit's native (C++) capture parts: built once per torch and Python install, never inside a job.

The DDP communication hook in ``ddp_hook.cpp`` records every gradient-bucket all-reduce without
taking the GIL (see its header). ``python -m tracekit.capture.native --build`` compiles it with
``torch.utils.cpp_extension`` (g++ and ninja) into a cache directory keyed by the torch version, the
Python version and the hash of the source and compiler flags; the README's install command runs it. A training job only
*loads* the prebuilt library: compiling takes ~40 s and must never stall a rank. When no build is
there, capture falls back to the Python comm hook (correct, but slower: docs/training.md) and says so once.

The records the native writer formats (streams ``collectives``, ``steps``, ``heartbeats``) take their
field names, order and types from ``tracekit.conventions.STREAMS``, the one stream schema: :func:`layout_header`
generates a C++ header of them at build time, and its text is part of the cache key, so a field added to
conventions is in the native output (null until the C++ fills it) after the next build; a field the C++
sets that conventions dropped fails the build instead of writing a stray key.

``TRACEKIT_EXT_DIR`` moves the cache (default ``$XDG_CACHE_HOME/tracekit/ext`` or ``~/.cache/tracekit/ext``);
``TRACEKIT_NATIVE=0`` turns the native hook off.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from tracekit.conventions import Stream

__all__ = ["NAME", "SOURCE", "LAYOUT_STREAMS", "build", "build_dir", "layout_header", "library_path", "load",
           "load_error"]

NAME = "tracekit_ddp_hook"
SOURCE = Path(__file__).with_name("ddp_hook.cpp")

CFLAGS = ["-O3", "-fopenmp-simd"]  # -fopenmp-simd: the norm loop's `omp simd`, no OpenMP runtime
LAYOUT_STREAMS = ("collectives", "steps", "heartbeats")  # the streams whose records the C++ writes
LAYOUT_HEADER = "tracekit_layout.h"  # generated into the build directory; ddp_hook.cpp includes it
_CPP_TYPES = {"string": "kString", "int32": "kInt", "int64": "kInt", "float64": "kFloat", "bool": "kBool"}
_CPP_KEYWORDS = frozenset(
    "alignas alignof and asm auto bitand bitor bool break case catch char class compl const constexpr const_cast "
    "continue decltype default delete do double dynamic_cast else enum explicit export extern false float for "
    "friend goto if inline int long mutable namespace new noexcept not nullptr operator or private protected "
    "public register reinterpret_cast return short signed sizeof static static_assert static_cast struct switch "
    "template this thread_local throw true try typedef typeid typename union unsigned using virtual void "
    "volatile wchar_t while xor kCount kFields Field Type".split())

_loaded: Any = None
_error: str | None = None


def layout_header(streams: Mapping[str, Stream] | None = None) -> str:
    """The C++ header of the native writer's record layouts: per stream of :data:`LAYOUT_STREAMS`, an enum
    of its fields (``layout::steps::loss``) and their JSON keys and types in the schema's order.

    ``streams`` defaults to ``tracekit.conventions.STREAMS``; a field name that is no C++ identifier
    raises ValueError (the build reports it)."""
    if streams is None:
        from tracekit.conventions import STREAMS as streams
    lines = [
        "// Generated from tracekit.conventions.STREAMS by tracekit/capture/native/__init__.py: do not edit.",
        "#pragma once",
        "namespace layout {",
        "enum class Type { kString, kInt, kFloat, kBool };",
        "struct Field {",
        "  const char* key;  // the JSON key with its quotes and colon",
        "  Type type;",
        "};",
    ]
    for name in LAYOUT_STREAMS:
        fields = streams[name].fields
        for field, kind in fields:
            if not field.isidentifier() or not field.isascii() or field in _CPP_KEYWORDS or kind not in _CPP_TYPES:
                raise ValueError(f"stream {name!r}: field {field!r} ({kind}) has no C++ layout")
        names = ", ".join(field for field, _ in fields)
        keys = ", ".join(f'{{"\\"{field}\\":", Type::{_CPP_TYPES[kind]}}}' for field, kind in fields)
        lines += [f"namespace {name} {{", f"enum : int {{ {names}, kCount }};",
                  f"inline constexpr Field kFields[kCount] = {{{keys}}};", f"}}  // namespace {name}"]
    lines.append("}  // namespace layout")
    return "\n".join(lines) + "\n"


def build_dir() -> Path:
    """Where the library for this torch, this Python, this source, this record layout and these flags lives."""
    import torch

    base = os.environ.get("TRACEKIT_EXT_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tracekit" / "ext"
    key = SOURCE.read_bytes() + layout_header().encode() + " ".join(CFLAGS).encode()
    digest = hashlib.sha256(key).hexdigest()[:12]
    torch_version = torch.__version__.replace("+", "_")
    return Path(base) / f"{NAME}-torch{torch_version}-py{sys.version_info[0]}{sys.version_info[1]}-{digest}"


def library_path() -> Path:
    return build_dir() / f"{NAME}.so"


def build(verbose: bool = False) -> Path:
    """Compile the extension into :func:`build_dir` (a no-op when it is already there); returns the library."""
    from torch.utils import cpp_extension

    target = build_dir()
    target.mkdir(parents=True, exist_ok=True)  # cpp_extension's lock file lives there
    (target / LAYOUT_HEADER).write_text(layout_header())
    cpp_extension.load(NAME, [str(SOURCE)], build_directory=str(target), extra_cflags=CFLAGS,
                       extra_include_paths=[str(target)], verbose=verbose)
    path = library_path()
    if not path.is_file():
        raise RuntimeError(f"the build finished but {path} is not there")
    return path


def load() -> Any:
    """The prebuilt extension module, or None (then :func:`load_error` says why). Never compiles."""
    global _loaded, _error
    if _loaded is not None or _error is not None:
        return _loaded
    from tracekit.config import env_flag

    if not env_flag("TRACEKIT_NATIVE", True):
        _error = "TRACEKIT_NATIVE=0"
        return None
    try:
        import importlib.util

        import torch  # noqa: F401 - the library links against torch's, which must be loaded first

        path = library_path()
        if not path.is_file():
            _error = f"not built for this torch and Python (no {path}); run: python -m tracekit.capture.native --build"
            return None
        spec = importlib.util.spec_from_file_location(NAME, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded = module
    except Exception as exc:  # noqa: BLE001 - a broken build must not stop training
        _error = f"could not load it ({type(exc).__name__}: {exc})"
    return _loaded


def load_error() -> str | None:
    return _error
