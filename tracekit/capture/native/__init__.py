"""tracekit's native (C++) capture parts: built once per torch and Python install, never inside a job.

The DDP communication hook in ``ddp_hook.cpp`` records every gradient-bucket all-reduce without
taking the GIL (see its header). ``python -m tracekit.capture.native --build`` compiles it with
``torch.utils.cpp_extension`` (g++ and ninja) into a cache directory keyed by the torch version, the
Python version and the hash of the source and compiler flags; the README's install command runs it. A training job only
*loads* the prebuilt library: compiling takes ~40 s and must never stall a rank. When no build is
there, capture falls back to the Python comm hook (correct, but slower: docs/training.md) and says so once.

``TRACEKIT_EXT_DIR`` moves the cache (default ``$XDG_CACHE_HOME/tracekit/ext`` or ``~/.cache/tracekit/ext``);
``TRACEKIT_NATIVE=0`` turns the native hook off.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["NAME", "SOURCE", "build", "build_dir", "library_path", "load", "load_error"]

NAME = "tracekit_ddp_hook"
SOURCE = Path(__file__).with_name("ddp_hook.cpp")

CFLAGS = ["-O3", "-fopenmp-simd"]  # -fopenmp-simd: the norm loop's `omp simd`, no OpenMP runtime

_loaded: Any = None
_error: str | None = None


def build_dir() -> Path:
    """Where the library for this torch, this Python, this source and these flags lives."""
    import torch

    base = os.environ.get("TRACEKIT_EXT_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tracekit" / "ext"
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:12]
    torch_version = torch.__version__.replace("+", "_")
    return Path(base) / f"{NAME}-torch{torch_version}-py{sys.version_info[0]}{sys.version_info[1]}-{digest}"


def library_path() -> Path:
    return build_dir() / f"{NAME}.so"


def build(verbose: bool = False) -> Path:
    """Compile the extension into :func:`build_dir` (a no-op when it is already there); returns the library."""
    from torch.utils import cpp_extension

    target = build_dir()
    target.mkdir(parents=True, exist_ok=True)  # cpp_extension's lock file lives there
    cpp_extension.load(NAME, [str(SOURCE)], build_directory=str(target), extra_cflags=CFLAGS, verbose=verbose)
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
