"""Training steps: the optimizer's step closes one (its loss, gradient norm, non-finite flag) unless the script does."""

from __future__ import annotations

import functools
import math
import time
from typing import TYPE_CHECKING, Any

from tracekit.capture.torch import state

if TYPE_CHECKING:
    from tracekit.capture.torch.state import Capture

# the values end_step writes, by name (the ``steps`` stream's fields: tests/test_torch_capture.py checks)
STEP_FIELDS = ("rank", "step", "start_ns", "end_ns", "loss", "grad_norm", "nonfinite")

def end_step(cap: Capture, *, loss: float | None = None, grad_norm: float | None = None, optimizer: Any = None) -> None:
    """Write the step record. The gradient norm, unless given, is this rank's *local* one, measured
    by the DDP hook on each bucket before the reduction, or else from ``optimizer``'s gradients."""
    if cap.rank is None and not cap.ready():
        return
    if grad_norm is None and "cuda_buckets" in cap.__dict__:
        from tracekit.capture.torch.cuda import end_cuda_step

        if end_cuda_step(cap, loss):  # buckets on CUDA: the record is written one step later
            return
    now = time.time_ns()
    sqsum, cap.grad_sqsum = cap.grad_sqsum, None
    native = cap.native
    if native is not None:
        # did any bucket the native hook checked hold a NaN/inf, and their squared norm; next step begins
        if grad_norm is None and sqsum is None:
            # the common case: the buckets measured the norm, and C++ writes the whole record
            taken = native.close_step(cap.step, cap.step_start_ns, now, cap.loss if loss is None else loss,
                                      cap.nonfinite)
            if taken is None:
                cap.step += 1
                cap.step_start_ns = now
                cap.nonfinite = None
                cap.loss = None
                return
            local, native_sqsum = taken
        else:
            local, native_sqsum = native.end_step(cap.step + 1)
        if local is not None:
            cap.nonfinite = bool(cap.nonfinite) or local
        if native_sqsum is not None:
            sqsum = (sqsum or 0.0) + native_sqsum
    if grad_norm is None and sqsum is not None:
        grad_norm = math.sqrt(sqsum) if math.isfinite(sqsum) else None  # non-finite: the flag says so
    elif grad_norm is None and optimizer is not None:
        try:
            grad_norm = grad_norm_of(optimizer, cap.torch)
        except Exception:  # noqa: BLE001
            grad_norm = None
    nonfinite = cap.nonfinite
    if loss is None and cap.loss is not None:
        if nonfinite is not None:
            loss = cap.loss  # the tensor: the spool's encoder reads its value at the flush, off this thread
        else:
            try:
                loss = float(cap.loss)
            except Exception:  # noqa: BLE001
                loss = None
    if isinstance(loss, float):
        if nonfinite is None:
            nonfinite = not math.isfinite(loss)
        if not math.isfinite(loss):
            loss = None  # the flag says so
    cap.steps.write_row(STEP_FIELDS, (
        cap.rank, cap.step, cap.step_start_ns, now, loss,
        grad_norm if grad_norm is None or math.isfinite(grad_norm) else None, nonfinite,
    ))
    cap.step += 1
    cap.step_start_ns = now
    cap.nonfinite = None
    cap.loss = None


hook_handles: list[Any] = []


def grad_norm_of(optimizer: Any, torch: Any) -> float | None:
    """The L2 norm of ``optimizer``'s gradients (None without any)."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return None
    norms = torch._foreach_norm(grads)
    return float(torch.linalg.vector_norm(torch.stack(norms)))


def patch_optimizer_and_backward(torch: Any) -> None:
    """A global optimizer post-step hook closes each step; ``Tensor.backward`` notes the loss (idempotent)."""
    if hook_handles:
        return
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def post_step(optimizer: Any, _args: Any, _kwargs: Any) -> None:
        cap = state.current
        if cap is None or cap.explicit_steps:
            return
        end_step(cap, optimizer=optimizer)

    hook_handles.append(register_optimizer_step_post_hook(post_step))
    backward = torch.Tensor.backward

    def recorded_backward(self: Any, *args: Any, **kwargs: Any) -> Any:
        cap = state.current
        if cap is not None and self.numel() == 1:
            cap.loss = self  # read when the step closes (no detach: a tensor allocation per step)
        return backward(self, *args, **kwargs)

    functools.update_wrapper(recorded_backward, backward)
    recorded_backward.__tracekit_original__ = backward  # type: ignore[attr-defined]
    torch.Tensor.backward = recorded_backward
