"""Which optional extra provides which module, and the one-line error that names the `pip install` to run."""

from __future__ import annotations

import importlib.util

from tracekit.errors import TracekitError

# top-level module -> the extra of pyproject.toml that installs it
EXTRA_OF: dict[str, str] = {
    "torch": "torch", "ninja": "torch",
    "ray": "ray",
    "streamlit": "dashboard", "plotly": "dashboard", "pandas": "dashboard",
    "uvicorn": "serve", "starlette": "serve", "grpc": "serve",
    "openai": "judge",
}


class MissingExtraError(TracekitError):
    """A command needs a package of an optional extra that is not installed."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f"this needs {module}, which is not installed: pip install 'tracekit[{extra}]'")
        self.module, self.extra = module, extra


def for_missing_module(exc: ModuleNotFoundError) -> MissingExtraError | None:
    """The clean error for an import that failed because an extra is missing (None if no extra has it)."""
    top = (exc.name or "").partition(".")[0]
    extra = EXTRA_OF.get(top)
    return MissingExtraError(top, extra) if extra else None


def require(extra: str) -> None:
    """Fail early (before starting a server or a child process) when `extra` is not installed."""
    for module, owner in EXTRA_OF.items():
        if owner == extra and module != "ninja" and importlib.util.find_spec(module) is None:
            raise MissingExtraError(module, extra)
