"""Wrapping the torch.distributed collective and point-to-point functions so every call is recorded."""

from __future__ import annotations

import functools
import inspect
import sys
from typing import Any, Callable

from tracekit.capture.torch import state

_local = state.local  # bound once: read on every wrapped call

# op -> (payload parameter, peer parameter or None, always async)
OPS: dict[str, tuple[str | None, str | None, bool]] = {
    "all_reduce": ("tensor", None, False),
    "broadcast": ("tensor", None, False),
    "reduce": ("tensor", None, False),
    "all_gather": ("tensor", None, False),
    "all_gather_into_tensor": ("input_tensor", None, False),
    "_all_gather_base": ("input_tensor", None, False),
    "reduce_scatter": ("input_list", None, False),
    "reduce_scatter_tensor": ("input", None, False),
    "_reduce_scatter_base": ("input", None, False),
    "all_to_all": ("input_tensor_list", None, False),
    "all_to_all_single": ("input", None, False),
    "barrier": (None, None, False),
    "monitored_barrier": (None, None, False),
    "gather": ("tensor", None, False),
    "scatter": ("tensor", None, False),
    "send": ("tensor", "dst", False),
    "recv": ("tensor", "src", False),
    "isend": ("tensor", "dst", True),
    "irecv": ("tensor", "src", True),
}
P2P = {"send", "recv", "isend", "irecv"}


def wrap(op: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (the torch.distributed function ``op``), recording each call: natively when the module loaded."""
    payload, peer_param, always_async = OPS[op]
    params = list(inspect.signature(fn).parameters)
    payload_pos = params.index(payload) if payload in params else None
    group_pos = params.index("group") if "group" in params else None
    async_pos = params.index("async_op") if "async_op" in params else None
    peer_pos = params.index(peer_param) if peer_param in params else None

    def arg(args: tuple[Any, ...], kwargs: dict[str, Any], pos: int | None, name: str | None) -> Any:
        if name is not None and name in kwargs:
            return kwargs[name]
        if pos is not None and pos < len(args):
            return args[pos]
        return None

    direction = "send" if op in ("send", "isend") else "recv"
    p2p = op in P2P
    # the usual call passes the payload alone, positionally (``all_reduce(t)``, ``barrier()``): then the
    # group and async_op are their defaults and no argument needs looking up
    if payload_pos is None:
        plain_args = 0
    else:
        plain_args = payload_pos + 1 if all(pos is None or pos > payload_pos for pos in (group_pos, async_pos)) else -1

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cap = state.current
        if cap is None or _local.busy or (cap.rank is None and not cap.ready()):
            return fn(*args, **kwargs)
        try:
            if len(args) == plain_args and not kwargs:
                is_async, group, tensors = always_async, "default", args[-1] if args else None
            else:
                is_async = always_async or bool(arg(args, kwargs, async_pos, "async_op"))
                group = cap.group_name(arg(args, kwargs, group_pos, "group"))
                tensors = arg(args, kwargs, payload_pos, payload)
            native = cap.native
            if native is not None:  # recorded in C++: its sequence counters and in-flight table
                if p2p:
                    peer = arg(args, kwargs, peer_pos, peer_param)
                    token = native.begin_call(op, group, tensors, is_async, "call",
                                              int(peer) if isinstance(peer, int) else -1)  # -1: any source
                else:
                    token = native.begin_call(op, group, tensors, is_async, "call")
                finish = native.finish_call
            else:
                nbytes, dtype = state.nbytes(tensors)
                peer = arg(args, kwargs, peer_pos, peer_param) if peer_param else None
                peer = int(peer) if isinstance(peer, int) else None
                seq = cap.next_seq(group, peer, direction) if p2p else cap.next_seq(group)
                token = cap.begin(op, group, seq, nbytes, dtype, peer, is_async, "call")
                finish = cap.finish
        except Exception:  # noqa: BLE001 - describing the call must never break it
            return fn(*args, **kwargs)
        _local.busy = True
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            finish(token, False, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            _local.busy = False
        if is_async and result is not None:
            on_completion(finish, token, result)
        else:
            finish(token, True)
        return result

    wrapper.__tracekit_original__ = fn  # type: ignore[attr-defined]
    return wrapper


def on_completion(finish: Callable[..., None], token: int, work: Any) -> None:
    """Record the exit when an async work handle completes (its future's callback)."""
    try:
        future = work.get_future()
    except Exception:  # noqa: BLE001 - a backend without futures: the exit is the wait() call
        _wrap_wait(finish, token, work)
        return
    key = next(state.awaiting_keys)

    def done(fut: Any) -> None:
        try:
            fut.value()
        except Exception as exc:  # noqa: BLE001
            finish(token, False, f"{type(exc).__name__}: {exc}")
        else:
            finish(token, True)
        finally:
            state.awaiting.pop(key, None)

    state.awaiting[key] = future
    try:
        future.add_done_callback(done)
    except Exception:  # noqa: BLE001
        state.awaiting.pop(key, None)
        finish(token, True)


def _wrap_wait(finish: Callable[..., None], token: int, work: Any) -> None:
    try:
        original = work.wait

        def wait(*args: Any, **kwargs: Any) -> Any:
            try:
                result = original(*args, **kwargs)
            except Exception as exc:
                finish(token, False, f"{type(exc).__name__}: {exc}")
                raise
            finish(token, True)
            return result

        work.wait = wait
    except (AttributeError, TypeError):
        finish(token, True)


def wrap_batch(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def batch_isend_irecv(p2p_op_list: list[Any]) -> Any:
        cap = state.current
        if cap is None or _local.busy or not cap.ready():
            return fn(p2p_op_list)
        tokens = []
        native = cap.native
        finish = native.finish_call if native is not None else cap.finish
        try:
            for p2p in p2p_op_list:
                name = getattr(p2p.op, "__name__", "p2p")
                op = "isend" if "send" in name else "irecv"
                group = cap.group_name(p2p.group)
                if native is not None:
                    tokens.append(native.begin_call(op, group, p2p.tensor, True, "batch", int(p2p.peer)))
                    continue
                nbytes, dtype = state.nbytes(p2p.tensor)
                seq = cap.next_seq(group, int(p2p.peer), "send" if op == "isend" else "recv")
                tokens.append(cap.begin(op, group, seq, nbytes, dtype, int(p2p.peer), True, "batch"))
        except Exception:  # noqa: BLE001
            tokens = []
        _local.busy = True
        try:
            works = fn(p2p_op_list)
        except Exception as exc:
            for token in tokens:
                finish(token, False, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            _local.busy = False
        if tokens and works and len(works) == len(tokens):
            for token, work in zip(tokens, works):
                on_completion(finish, token, work)
        elif works:
            for token in tokens:
                on_completion(finish, token, works[-1])
        return works

    batch_isend_irecv.__tracekit_original__ = fn  # type: ignore[attr-defined]
    return batch_isend_irecv


def patch_functions() -> None:
    """Wrap the collective and p2p functions in torch.distributed and distributed_c10d (idempotent)."""
    modules = [sys.modules.get("torch.distributed"), sys.modules.get("torch.distributed.distributed_c10d")]
    for module in filter(None, modules):
        for name in [*OPS, "batch_isend_irecv"]:
            fn = getattr(module, name, None)
            if fn is None or hasattr(fn, "__tracekit_original__"):
                continue
            key = (module.__name__, name)
            state.originals[key] = fn
            setattr(module, name, wrap_batch(fn) if name == "batch_isend_irecv" else wrap(name, fn))


def original(name: str) -> Callable[..., Any]:
    import torch.distributed as dist

    fn = getattr(dist, name)
    return getattr(fn, "__tracekit_original__", fn)
