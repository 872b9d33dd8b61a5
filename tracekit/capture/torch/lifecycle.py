"""The lifecycle of torch capture: instrument and uninstrument a process, the run it records into, explicit steps."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from tracekit.capture.torch import state
from tracekit.capture.torch.ddp import patch_ddp
from tracekit.capture.torch.patching import patch_functions
from tracekit.capture.torch.state import Capture
from tracekit.capture.torch.steps import end_step, hook_handles, patch_optimizer_and_backward


def instrument() -> bool:
    """Record every torch.distributed collective of this process into the current tracekit run.

    Starts a run if none is active (all ranks of one torchrun job join one run), wraps the
    collective and p2p functions, patches DDP to record its bucket all-reduces, and hooks the
    optimizer step. Idempotent. Returns False (and records nothing) when capture is off.
    """
    from tracekit.config import env_flag

    if env_flag("TRACEKIT_DISABLED", False) or not env_flag("TRACEKIT_TORCH", True):
        return False
    with state.lock:
        if state.current is not None:
            return True
        import torch
        import torch.distributed as dist

        run = _ensure_run()
        if run is None:
            return False
        patch_functions()
        patch_ddp()
        patch_optimizer_and_backward(torch)
        cap = state.current = Capture(run, dist, torch)
        from tracekit.capture import native

        cap.attach_native(native.load())
        # the native hook's records reach the spool at every flush (every 200 ms, an explicit flush, exit)
        run.spool.before_flush.append(cap.drain_native)
        run.spool.before_close.append(cap.close)
        cap.ready()
    return True


def _after_fork_in_child() -> None:
    # a forked child (a DataLoader worker): no native writer thread, no SIGTERM watcher; its records,
    # if any, go through its own spool files
    if state.current is not None:
        state.current.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _ensure_run() -> Any:
    from tracekit.capture.setup import current_run, init

    run = current_run()
    if run is not None:
        return run
    if not os.environ.get("TRACEKIT_RUN_ID") and os.environ.get("TORCHELASTIC_RUN_ID") is not None:
        # one run for the whole torchrun job: every rank derives the same id from the launcher's identity;
        # a rendezvous id (--rdzv-id) is shared by every host, torchrun's default one ("none") is not
        import hashlib

        from tracekit.capture.multihost import elastic_run_id

        ident = "|".join(os.environ.get(k, "") for k in (
            "TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT", "GROUP_WORLD_SIZE",
        )) + f"|{os.getppid()}"
        os.environ["TRACEKIT_RUN_ID"] = elastic_run_id(os.environ) or hashlib.sha256(ident.encode()).hexdigest()[:32]
        os.environ.setdefault("TRACEKIT_RUN_KIND", "training")
        run = init(kind="training")
        if os.environ.get("RANK", "0") == "0":
            _write_shared_manifest(run)
        return run
    return init(kind="training")


def _write_shared_manifest(run: Any) -> None:
    """Rank 0 of a job started without `tracekit record` writes the run manifest and ingests at exit."""
    import atexit

    from tracekit.capture.spool import write_run_manifest

    try:
        write_run_manifest(run.run_dir, run.manifest())
    except OSError:
        return

    def finish() -> None:
        run.spool.close()
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and not _all_footers(run.run_dir):
            time.sleep(0.2)
        try:
            write_run_manifest(run.run_dir, run.manifest(ended_ns=time.time_ns()))
            from tracekit.ingest import ingest_paths

            report = ingest_paths([run.run_dir], db=run.db)
            print(f"tracekit: run {run.name!r} ({run.run_id[:12]}) -> {run.db}: {report.records} records",
                  file=sys.stderr)
        except Exception as exc:  # noqa: BLE001
            print(f"tracekit: run spooled to {run.run_dir} but not ingested ({exc}); "
                  f"run: tracekit ingest {run.run_dir}", file=sys.stderr)

    if run.ingest_at_exit:
        atexit.register(finish)


def _all_footers(run_dir: Any) -> bool:  # a binary file's footer frame holds the same JSON
    for path in [*run_dir.glob("*.jsonl"), *run_dir.glob("*.tkb")]:
        try:
            with path.open("rb") as fh:
                fh.seek(max(0, path.stat().st_size - 200))
                if b'"tracekit_end"' not in fh.read():
                    return False
        except OSError:
            return False
    return True


def is_instrumented() -> bool:
    """Whether this process's torch.distributed calls are being recorded."""
    return state.current is not None


def uninstrument() -> None:
    """Restore every patched function (used by tests); records already written stay."""
    with state.lock:
        for (module_name, name), fn in list(state.originals.items()):
            if module_name == "DDP":
                from torch.nn.parallel import DistributedDataParallel as DDP

                setattr(DDP, name, fn)
                DDP.__tracekit_patched__ = False
            else:
                setattr(sys.modules[module_name], name, fn)
        state.originals.clear()
        for handle in hook_handles:
            handle.remove()
        hook_handles.clear()
        torch = sys.modules.get("torch")
        if torch is not None:
            backward = torch.Tensor.backward
            torch.Tensor.backward = getattr(backward, "__tracekit_original__", backward)
        cap, state.current = state.current, None
        if cap is not None:
            cap.close()
            for hooks, hook in ((cap.run.spool.before_flush, cap.drain_native),
                                (cap.run.spool.before_close, cap.close)):
                try:
                    hooks.remove(hook)
                except ValueError:
                    pass


def step(loss: Any = None, grad_norm: float | None = None) -> None:
    """Close the current training step explicitly (then the optimizer hook no longer does).

    Parameters
    ----------
    loss : the step's loss (a float or a one-element tensor).
    grad_norm : the gradient norm, if the script computes it anyway.
    """
    cap = state.current
    if cap is None:
        return
    cap.explicit_steps = True
    try:
        value = float(loss) if loss is not None else None
    except (TypeError, ValueError):
        value = None
    end_step(cap, loss=value, grad_norm=grad_norm)
