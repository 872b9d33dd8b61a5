"""Automatic capture under `tracekit record`: instrument torch.distributed right after the process imports it."""

from __future__ import annotations

import functools
import sys
from typing import Any

from tracekit.capture.after_import import AfterImport
from tracekit.capture.torch import state
from tracekit.capture.torch.lifecycle import instrument
from tracekit.capture.torch.patching import patch_functions


class _TorchDistributedFinder(AfterImport):
    """Instruments torch.distributed right after it is imported (no torch import here)."""

    def __init__(self) -> None:
        super().__init__("torch.distributed", lambda _module: _on_torch_distributed_imported())


def _on_torch_distributed_imported() -> None:
    """torch.distributed is loaded (torch itself may be half-imported): wrap the functions now, the rest
    (DDP, optimizer) when the process group is created, once torch is fully imported."""
    try:
        from tracekit.capture.torch.launcher import watch_workers

        watch_workers()  # in torchrun's launcher: record each worker's exit
        patch_functions()
        dist = sys.modules["torch.distributed"]
        init_pg = getattr(dist, "init_process_group", None)
        if init_pg is None or hasattr(init_pg, "__tracekit_original__"):
            return

        @functools.wraps(init_pg)
        def init_process_group(*args: Any, **kwargs: Any) -> Any:
            result = init_pg(*args, **kwargs)
            try:
                instrument()
            except Exception as exc:  # noqa: BLE001 - capture must never stop training
                print(f"tracekit: torch.distributed capture is off: {exc}", file=sys.stderr)
            return result

        init_process_group.__tracekit_original__ = init_pg  # type: ignore[attr-defined]
        for module in (dist, sys.modules.get("torch.distributed.distributed_c10d")):
            if module is not None and getattr(module, "init_process_group", None) is init_pg:
                module.init_process_group = init_process_group
                state.originals[(module.__name__, "init_process_group")] = init_pg
    except Exception as exc:  # noqa: BLE001
        print(f"tracekit: torch.distributed capture is off: {exc}", file=sys.stderr)


def install_import_hook() -> None:
    """Instrument torch.distributed when (and only if) the process imports it. Honours TRACEKIT_TORCH=0."""
    from tracekit.config import env_flag

    if not env_flag("TRACEKIT_TORCH", True):
        return
    if "torch.distributed" in sys.modules:
        _on_torch_distributed_imported()
        return
    if not any(isinstance(f, _TorchDistributedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchDistributedFinder())
