"""DDP's gradient buckets: tracekit's recording comm hook (native, else Python's) on every DDP model."""

from __future__ import annotations

import functools
import math
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

from tracekit.capture.torch import state

if TYPE_CHECKING:
    from tracekit.capture.torch.state import Capture


def _ddp_allreduce_hook(process_group: Any, bucket: Any) -> Any:
    """DDP's default all-reduce (average), recorded, with the local non-finite check before reducing.

    This runs once per gradient bucket inside backward, so it is kept lean: it calls the process
    group's own (C++) allreduce, not ``dist.all_reduce`` and its Python argument checks, and tests
    finiteness with one ``sum`` (a NaN or inf anywhere makes the sum non-finite)."""
    cap = state.current
    buffer = bucket.buffer()
    group = process_group if process_group is not None else _default_group()
    if cap is None or not cap.ready():
        buffer.div_(group.size())
        return group.allreduce([buffer]).get_future().then(_first_tensor)
    token = _begin_bucket(cap, group, buffer, "ddp")
    buffer.div_(group.size())
    try:
        future = group.allreduce([buffer]).get_future()
    except Exception as exc:
        cap.finish(token, False, f"{type(exc).__name__}: {exc}")
        raise

    return _record_completion(future, cap, token, first_tensor=True)


def _first_tensor(fut: Any) -> Any:
    return fut.value()[0]


def _begin_bucket(cap: Capture, group: Any, buffer: Any, source: str) -> int:
    """Open the record of one gradient bucket's all-reduce, measuring the *local* bucket first, in one
    pass: its L2 norm (summed into the rank's gradient norm) and whether it holds a NaN or inf (then
    the norm is not finite; an infinite norm is confirmed element-wise, since squares of huge values
    overflow). Sets the step's non-finite flag."""
    enter = time.time_ns()
    norm = float(buffer.norm()) if buffer.is_floating_point() else 0.0
    nonfinite = not math.isfinite(norm) and (math.isnan(norm) or not bool(buffer.isfinite().all()))
    cap.nonfinite = bool(cap.nonfinite) or nonfinite
    cap.grad_sqsum = (cap.grad_sqsum or 0.0) + norm * norm
    name = cap.group_name(group)
    nbytes, dtype = state.nbytes(buffer)
    return cap.begin("all_reduce", name, cap.next_seq(name), nbytes, dtype, None, True, source, nonfinite, enter)


def _default_group() -> Any:
    import torch.distributed as dist

    return dist.distributed_c10d._get_default_group()


def _record_completion(future: Any, cap: Any, token: Any, *, first_tensor: bool) -> Any:
    """Chain onto a bucket's future: record completion (or its error) and pass the value on.

    DDP's default hook returns the reduced tensor (``value[0]`` of the all-reduce's list); a user's
    hook already returns what DDP expects."""

    def done(fut: Any) -> Any:
        try:
            value = fut.value()
        except Exception as exc:
            cap.finish(token, False, f"{type(exc).__name__}: {exc}")
            raise
        cap.finish(token, True)
        return value[0] if first_tensor else value

    return future.then(done)


_ddp_allreduce_hook.__annotations__ = {}  # DDP rejects a hook whose annotations are not GradBucket/Future


def _wrap_user_hook(hook: Callable[..., Any]) -> Callable[..., Any]:
    """A user's own comm hook, recorded around (completion = its future)."""

    @functools.wraps(hook)
    def recorded(state: Any, bucket: Any) -> Any:
        cap = state.current
        if cap is None or not cap.ready():
            return hook(state, bucket)
        group = state if hasattr(state, "size") and hasattr(state, "rank") else None
        token = _begin_bucket(cap, group, bucket.buffer(), "ddp_user_hook")
        return _record_completion(hook(state, bucket), cap, token, first_tensor=False)

    recorded.__annotations__ = dict(getattr(hook, "__annotations__", {}))
    return recorded


def patch_ddp() -> None:
    """Patch DistributedDataParallel so each model gets tracekit's hook at its first forward (idempotent)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    if getattr(DDP, "__tracekit_patched__", False):
        return
    register = DDP.register_comm_hook
    builtin = DDP._register_builtin_comm_hook
    forward = DDP.forward

    def register_comm_hook(self: Any, state: Any, hook: Callable[..., Any]) -> None:
        self.__dict__["_tracekit_hooked"] = True
        return register(self, state, _wrap_user_hook(hook))

    def _register_builtin_comm_hook(self: Any, comm_hook_type: Any) -> None:
        self.__dict__["_tracekit_hooked"] = True
        return builtin(self, comm_hook_type)

    def patched_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        cap = state.current
        if not self.__dict__.get("_tracekit_hooked") and cap is not None:
            self.__dict__["_tracekit_hooked"] = True
            _hook_ddp(self, cap, register)
        return forward(self, *args, **kwargs)

    functools.update_wrapper(register_comm_hook, register)
    functools.update_wrapper(patched_forward, forward)
    DDP.register_comm_hook = register_comm_hook
    DDP._register_builtin_comm_hook = _register_builtin_comm_hook
    DDP.forward = patched_forward
    DDP.__tracekit_patched__ = True
    state.originals[("DDP", "register_comm_hook")] = register
    state.originals[("DDP", "_register_builtin_comm_hook")] = builtin
    state.originals[("DDP", "forward")] = forward


_native_groups: list[Any] = []


def _hook_ddp(ddp: Any, cap: Capture, register: Callable[..., Any]) -> None:
    """Give a DDP model tracekit's recording all-reduce hook: for a CUDA model the device-side one, else the
    native one when it is built, else Python's."""
    try:
        from tracekit.capture.torch.cuda import cuda_allreduce_hook, uses_cuda

        if uses_cuda(ddp):  # the native hook reads bucket memory on the host: never hand it a CUDA bucket
            register(ddp, ddp.process_group, cuda_allreduce_hook)
            return
        if cap.native is not None and cap.ready():
            cap.native.register_hook(ddp.reducer, ddp.process_group, cap.group_name(ddp.process_group), True)
            # The hook holds the process group in C++. Keep a Python reference too, so the group is never
            # freed by the reducer's destructor, which runs holding the GIL: the group's destructor joins
            # gloo's threads, and one may need the GIL to free a tensor (a deadlock at exit, seen in 2 of
            # 4 jobs). The reference goes at exit, before the interpreter finalizes (a group freed during
            # finalization aborts the process): freed from Python, the group's binding releases the GIL.
            if not _native_groups:
                import atexit

                atexit.register(_native_groups.clear)
            if not any(group is ddp.process_group for group in _native_groups):
                _native_groups.append(ddp.process_group)
            return
        if not cap.warned_native and cap.rank == 0:
            cap.warned_native = True
            from tracekit.capture import native

            print(f"tracekit: native DDP hook unavailable: {native.load_error()}; gradient buckets are recorded "
                  "by the Python hook instead (slower: see docs/training.md)", file=sys.stderr)
        register(ddp, ddp.process_group, _ddp_allreduce_hook)
    except Exception:  # noqa: BLE001 - e.g. a hook registered behind our back
        pass
