"""DDP's gradient buckets on CUDA (NCCL): norm and finite flag stay on the device, timing comes from CUDA events.

NOT RUN ON A GPU: this project has none. What the CPU tests check is that this path is never taken
by accident (a CPU model never reaches it; handed a CPU bucket it refuses before touching anything)
and that the CPU path is unchanged. See docs/training.md, "GPUs".

Why a path of its own: the native hook (capture/native) measures a bucket by reading its memory on
the host, which a CUDA tensor's is not, and the Python hook's ``float(buffer.norm())`` would make the
host wait for the GPU once per bucket. Here, per bucket, on the training thread:

- the bucket's L2 norm is computed on the device and added, still on the device, into a per-step
  squared-norm accumulator and a non-finite flag (no ``.item()``, no host sync);
- a CUDA event is recorded on the current stream before the all-reduce, and another in the
  all-reduce future's callback, which for NCCL runs once the collective's stream work is done, so
  the collective's time comes from the GPU's clock (``start.elapsed_time(end)``), not the host-side
  future;
- the enter time is the host clock when the hook ran (as on CPU), the exit time enter + the event
  interval.

Once per step (the optimizer's step), the accumulators are copied to pinned host memory with
``non_blocking=True`` and an event marks the copy; the step's record and its buckets' records are
written one step later, when that event has long completed (``query()``; a blocking wait only when
it has not, or at exit), so the training thread never waits for the GPU on tracekit's account.
"""

from __future__ import annotations

import time
from typing import Any

from tracekit.capture.torch import state
from tracekit.capture.torch.state import CALL_FIELDS

__all__ = ["uses_cuda", "CudaBuckets", "cuda_allreduce_hook", "end_cuda_step"]


def uses_cuda(module: Any) -> bool:
    """Whether a DDP model's parameters live on a CUDA device (False for any CPU model, and without CUDA)."""
    try:
        param = next(module.parameters())
    except (StopIteration, AttributeError, TypeError):
        return False
    return bool(getattr(param, "is_cuda", False))


class CudaBuckets:
    """This process's device-side bucket measurements and the records waiting for their events."""

    def __init__(self, torch: Any, device: Any) -> None:
        self.torch = torch
        self.sqsum = torch.zeros((), dtype=torch.float64, device=device)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self.host = torch.zeros(2, dtype=torch.float64, pin_memory=True)
        self.buckets: list[list[Any]] = []  # this step's [token, enter_ns, start event, end event or None]
        self.previous: tuple[Any, list[list[Any]], tuple[Any, ...]] | None = None  # (copy event, buckets, step row)

    def measure(self, buffer: Any) -> None:
        """Add the bucket's norm and finite flag into the step's device accumulators (no host sync)."""
        torch = self.torch
        if not buffer.is_floating_point():
            return
        norm = torch.linalg.vector_norm(buffer, dtype=torch.float32).double()
        self.sqsum.add_(norm * norm)
        self.nonfinite.logical_or_(~torch.isfinite(norm))

    def end_step(self, cap: Any, step_row: tuple[Any, ...]) -> None:
        """Start this step's copy to the host; write the previous step's records (its copy is done by now)."""
        torch = self.torch
        self.host[0].copy_(self.sqsum, non_blocking=True)
        self.host[1].copy_(self.nonfinite, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        earlier, self.previous = self.previous, None
        if earlier is not None:
            self._write(cap, *earlier)
        # the next step accumulates after the copy, in stream order: nothing is overwritten early
        self.previous = (copied, self.buckets, step_row)
        self.buckets = []
        self.sqsum.zero_()
        self.nonfinite.zero_()

    def _write(self, cap: Any, copied: Any, buckets: list[list[Any]], step_row: tuple[Any, ...]) -> None:
        if not copied.query():
            copied.synchronize()  # only when the GPU is a whole step behind
        sqsum, flag = float(self.host[0]), bool(self.host[1])
        for token, enter_ns, start, end in buckets:
            record = cap.inflight.pop(token, None)
            if record is None:
                continue
            ok = end is not None
            exit_ns = enter_ns + int(start.elapsed_time(end) * 1e6) if ok else None
            cap.collectives.write_row(CALL_FIELDS, (cap.rank, cap.world, *record, exit_ns, ok,
                                                    None if ok else "the all-reduce did not complete"))
        rank, step, start_ns, end_ns, loss = step_row
        try:  # a device tensor until now: its step finished long ago, so reading it waits for nothing
            loss = None if loss is None else float(loss)
        except (TypeError, ValueError, RuntimeError):
            loss = None
        if loss is not None and loss != loss:
            loss = None
        grad_norm = sqsum ** 0.5 if sqsum == sqsum and sqsum != float("inf") else None
        cap.steps.write_row(("rank", "step", "start_ns", "end_ns", "loss", "grad_norm", "nonfinite"),
                            (rank, step, start_ns, end_ns, loss, grad_norm, flag))

    def close(self, cap: Any) -> None:
        """At exit: wait for the last copy and write what is pending."""
        earlier, self.previous = self.previous, None
        if earlier is not None:
            self._write(cap, *earlier)


def cuda_allreduce_hook(process_group: Any, bucket: Any) -> Any:
    """DDP's default all-reduce (average) for CUDA buckets, recorded with device-side measurements."""
    buffer = bucket.buffer()
    if not getattr(buffer, "is_cuda", False):
        raise RuntimeError("tracekit's CUDA bucket hook was given a CPU bucket: it records CUDA (NCCL) buckets only")
    cap = state.current
    if process_group is None:
        import torch.distributed as dist

        process_group = dist.distributed_c10d._get_default_group()
    group = process_group
    if cap is None or not cap.ready():
        buffer.div_(group.size())
        return group.allreduce([buffer]).get_future().then(lambda fut: fut.value()[0])
    torch = cap.torch
    buckets = cap.__dict__.get("cuda_buckets")
    if buckets is None:
        buckets = cap.__dict__["cuda_buckets"] = CudaBuckets(torch, buffer.device)
        cap.run.spool.before_close.insert(0, lambda: buckets.close(cap))
    enter = time.time_ns()
    start = torch.cuda.Event(enable_timing=True)
    start.record()
    buckets.measure(buffer)
    name = cap.group_name(group)
    nbytes, dtype = state.nbytes(buffer)
    token = cap.begin("all_reduce", name, cap.next_seq(name), nbytes, dtype, None, True, "ddp", None, enter)
    entry = [token, enter, start, None]
    buckets.buckets.append(entry)
    buffer.div_(group.size())
    future = group.allreduce([buffer]).get_future()

    def done(fut: Any) -> Any:
        value = fut.value()  # raises if the collective failed: the record stays unfinished (ok false)
        end = torch.cuda.Event(enable_timing=True)
        end.record()  # on the callback's stream: after the collective's work
        entry[3] = end
        return value[0]

    return future.then(done)


cuda_allreduce_hook.__annotations__ = {}  # DDP rejects a hook whose annotations are not GradBucket/Future


def end_cuda_step(cap: Any, loss: Any) -> bool:
    """Close the step of a process whose buckets are on CUDA (its record is written one step later);
    False when this process records no CUDA buckets (the CPU path then closes the step)."""
    buckets = cap.__dict__.get("cuda_buckets")
    if buckets is None:
        return False
    now = time.time_ns()
    buckets.end_step(cap, (cap.rank, cap.step, cap.step_start_ns, now, cap.loss if loss is None else loss))
    cap.step += 1
    cap.step_start_ns = now
    cap.nonfinite = None
    cap.loss = None
    return True
