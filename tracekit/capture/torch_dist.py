"""Per-rank capture of torch.distributed: every collective and p2p call, DDP bucket all-reduces, steps, probes.

``tracekit.torch.instrument()`` (automatic under ``tracekit record``) records, on every rank, one
lean spool record per collective (stream ``collectives``: process group, per-group sequence number,
op, bytes, dtype, enter/exit ns, step, ok) -- not one OpenTelemetry span per call:

* the public and ``distributed_c10d`` functions are wrapped; for ``async_op=True`` and isend/irecv
  the exit time is the work's completion (its future's callback), not the call's return;
* DistributedDataParallel is patched so every wrapped model gets a communication hook that records
  each gradient-bucket all-reduce and measures the *local* bucket before the reduction, in one pass:
  its norm (summed into the rank's gradient norm) and whether it holds a NaN or inf. The hook is native
  (``tracekit.capture.native``: no GIL per bucket) when its prebuilt library loads, else
  ``_ddp_allreduce_hook`` in Python. The native module also keeps the wrapped calls' and the steps'
  records, and its writer thread appends them to the spool files;
* the optimizer's step (global post hook) closes a training step (stream ``steps``: start, end,
  loss of the last ``backward()``, gradient norm, local non-finite flag), unless the script calls
  ``tracekit.torch.step(...)`` itself;
* a heartbeat (the native writer thread's, else a ticker on the spool's flusher) writes each rank's
  liveness, in-flight collective and scheduling lag (stream ``heartbeats``); on SIGTERM (torchrun
  stopping a failed job) a watcher thread records in-flight collectives as interrupted and flushes
  the spool, even while the main thread is blocked inside gloo;
* ``probe_links()`` is the active pairwise send/recv probe (C4-style) that names a slow link.

Nothing here imports torch until ``instrument()`` runs, and nothing raises into the training script.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

__all__ = ["instrument", "uninstrument", "step", "probe_links", "is_instrumented", "install_import_hook"]

# op -> (payload parameter, peer parameter or None, always async)
_OPS: dict[str, tuple[str | None, str | None, bool]] = {
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
_P2P = {"send", "recv", "isend", "irecv"}
# A ``collectives`` record: an in-flight call is the tuple of _INFLIGHT_FIELDS; once complete it is
# written as a row of _CALL_FIELDS (encoded at the next spool flush, not on the training thread).
_INFLIGHT_FIELDS = ("process_group", "seq", "op", "enter_ns", "step", "bytes", "dtype", "peer", "async_op", "source",
                    "nonfinite")
_CALL_FIELDS = ("rank", "world_size", *_INFLIGHT_FIELDS, "exit_ns", "ok", "error")
_STEP_FIELDS = ("rank", "step", "start_ns", "end_ns", "loss", "grad_norm", "nonfinite")
_SEQ, _OP, _ENTER = 1, 2, 3  # positions in an in-flight tuple
_HEARTBEAT_S = 0.5
# Mean spacing of the heartbeat's wake-ups (jittered +-50 %): about 5 a beat. Each wake-up costs ~0.1 ms
# of CPU on a VM, so at 40 ms the heartbeat alone used 3.6 ms CPU a second; a starved process still
# shows in the worst of 5 (a 90 %-stopped one wakes >= 40 ms late in ~97 % of beats).
_TICK_S = 0.1
_PROBE_REPEATS = 3


class _Local(threading.local):
    busy = False


_local = _Local()
_cap: "_Capture | None" = None
_originals: dict[tuple[str, str], Callable[..., Any]] = {}  # (module, name) -> original function
_lock = threading.Lock()


_DTYPE_NAMES: dict[Any, str] = {}  # torch.float32 -> "float32"


def _nbytes(value: Any) -> tuple[int, str | None]:
    """Bytes and dtype of a tensor or a list of tensors."""
    if value is None:
        return 0, None
    if isinstance(value, (list, tuple)):
        total, dtype = 0, None
        for item in value:
            n, d = _nbytes(item)
            total += n
            dtype = dtype or d
        return total, dtype
    try:
        dtype = value.dtype
        name = _DTYPE_NAMES.get(dtype)
        if name is None:
            name = _DTYPE_NAMES.setdefault(dtype, str(dtype).removeprefix("torch."))
        return int(value.nbytes), name
    except AttributeError:
        return 0, None


class _Capture:
    """The per-process recording state: rank, sequence counters, current step, spool streams."""

    def __init__(self, run: Any, dist: Any, torch: Any) -> None:
        self.run = run
        self.dist = dist
        self.torch = torch
        self.collectives = run.spool.stream("collectives")
        self.steps = run.spool.stream("steps")
        self.rank: int | None = None
        self.world: int | None = None
        self.step = 0
        self.step_start_ns = time.time_ns()
        self.explicit_steps = False
        self.nonfinite: bool | None = None
        self.grad_sqsum: float | None = None  # local buckets' squared norm this step (the Python hook's)
        self.loss: Any = None
        self._seq: dict[Any, Any] = {}
        self._group_names: dict[int, str] = {}
        self.inflight: dict[int, tuple[Any, ...]] = {}  # token -> _INFLIGHT_FIELDS
        self._inflight_ids = itertools.count()
        self.last_seq = -1
        self.probe_round = 0
        self._heartbeat_stream: Any = None  # the heartbeats stream, once beating
        self._next_beat_ns = 0
        self._worst_late_ns = 0
        self._worst_step: int | None = None  # the step in progress at that wake-up
        self._stop = threading.Event()
        self.terminated = False
        self.native: Any = None  # the C++ DDP hook module (tracekit.capture.native), when it loads
        self.writer = False  # the native writer thread beats and writes the native records
        self._warned_native = False

    def attach_native(self, module: Any) -> None:
        """Share the sequence counters and the step with the native DDP hook."""
        self.native = module
        if module is not None:
            module.set_step(self.step)
            if self.rank is not None:
                module.set_identity(self.rank, self.world)

    # -- identity --------------------------------------------------------------------------
    def ready(self) -> bool:
        if self.rank is not None:
            return True
        try:
            if not self.dist.is_initialized():
                return False
            self.rank = int(self.dist.get_rank())
            self.world = int(self.dist.get_world_size())
            if self.native is not None:
                self.native.set_identity(self.rank, self.world)
        except Exception:  # noqa: BLE001 - never raise into training code
            return False
        self._start_heartbeat()
        return True

    def group_name(self, group: Any) -> str:
        if group is None:
            return "default"
        key = id(group)
        name = self._group_names.get(key)
        if name is None:
            try:
                default = self.dist.distributed_c10d._get_default_group()
            except Exception:  # noqa: BLE001
                default = None
            world = getattr(getattr(self.dist, "GroupMember", None), "WORLD", None)
            if group is default or (world is not None and group is world):
                name = "default"
            else:
                name = str(getattr(group, "group_name", None) or f"pg{key:x}")
            self._group_names[key] = name
        return name

    def next_seq(self, group: str, peer: int | None = None, direction: str = "") -> int:
        if peer is None and self.native is not None:
            return self.native.next_seq(group)  # one sequence per group with DDP's native bucket hook
        key = group if peer is None else (group, direction, peer)
        counter = self._seq.get(key)
        if counter is None:
            counter = self._seq.setdefault(key, itertools.count())
        seq = next(counter)
        if peer is None and group == "default":
            self.last_seq = seq
        return seq

    # -- records ---------------------------------------------------------------------------
    def begin(self, op: str, group: str, seq: int, nbytes: int, dtype: str | None, peer: int | None,
              async_op: bool, source: str, nonfinite: bool | None = None, enter_ns: int | None = None) -> int:
        """Open the record of one call (enter: now, unless given); returns its token for ``finish``."""
        token = next(self._inflight_ids)
        self.inflight[token] = (group, seq, op, enter_ns or time.time_ns(), self.step, nbytes, dtype, peer, async_op,
                                source, nonfinite)
        return token

    def finish(self, token: int, ok: bool, error: str | None = None) -> None:
        """Close a call's record (exit: now) and hand it to the spool, which encodes it at its next flush."""
        record = self.inflight.pop(token, None)
        if record is None:
            return
        self.collectives.write_row(_CALL_FIELDS, (self.rank, self.world, *record, time.time_ns(), ok,
                                                  error[:300] if error else None))

    def drain_native(self, interrupted: str = "") -> None:
        """Write the calls and bucket all-reduces the native module completed (with ``interrupted``: also the
        in-flight ones), and the step records it kept: by its writer thread's files when that runs, else
        through the spool's streams."""
        native = self.native
        if native is None:
            return
        if self.writer:
            self._count_native(native.flush_writer(interrupted))
            return
        lines, count = native.drain(interrupted)  # JSON lines, formatted in C++
        self.collectives.write_lines(lines, count)
        lines, count = native.drain_steps()
        self.steps.write_lines(lines, count)

    def _native_streams(self) -> tuple[Any, Any, Any]:
        return self.collectives, self.steps, self._heartbeat_stream

    def _count_native(self, counts: Any) -> None:
        """Add what the native writer wrote (and dropped) to each stream's tally, which its footer reports."""
        for stream, (written, dropped, error) in zip(self._native_streams(), counts):
            with stream._io_lock:
                stream.records += written
            if dropped:
                stream._drop(dropped, f"cannot write {stream.path}: {error}" if error else "")

    def _start_writer(self) -> bool:
        """Beat, sample scheduling lag and write the native records on the native writer thread: no Python
        thread then wakes up while training runs (the spool's flusher idles until Python records wait)."""
        native = self.native
        if native is None:
            return False
        fds = [stream._fd for stream in self._native_streams()]
        if any(fd is None for fd in fds):  # a stream could not open its file: the spool's path counts drops
            return False
        try:
            native.start_writer(*fds, tick_s=_TICK_S, beat_s=_HEARTBEAT_S, flush_s=self.run.spool.flush_interval)
        except Exception:  # noqa: BLE001
            return False
        self.writer = True
        return True

    def close(self) -> None:
        """Stop the heartbeat and write what the native hook still holds (the spool is closing)."""
        self._stop.set()
        self.run.spool.remove_ticker(self._tick)
        if self.writer:
            self.writer = False
            self._count_native(self.native.stop_writer())
        self.drain_native()

    def end_step(self, *, loss: float | None = None, grad_norm: float | None = None, optimizer: Any = None) -> None:
        """Write the step record. The gradient norm, unless given, is this rank's *local* one, measured
        by the DDP hook on each bucket before the reduction, or else from ``optimizer``'s gradients."""
        if self.rank is None and not self.ready():
            return
        now = time.time_ns()
        sqsum, self.grad_sqsum = self.grad_sqsum, None
        native = self.native
        if native is not None:
            # did any bucket the native hook checked hold a NaN/inf, and their squared norm; next step begins
            if grad_norm is None and sqsum is None:
                # the common case: the buckets measured the norm, and C++ writes the whole record
                taken = native.close_step(self.step, self.step_start_ns, now, self.loss if loss is None else loss,
                                          self.nonfinite)
                if taken is None:
                    self.step += 1
                    self.step_start_ns = now
                    self.nonfinite = None
                    self.loss = None
                    return
                local, native_sqsum = taken
            else:
                local, native_sqsum = native.end_step(self.step + 1)
            if local is not None:
                self.nonfinite = bool(self.nonfinite) or local
            if native_sqsum is not None:
                sqsum = (sqsum or 0.0) + native_sqsum
        if grad_norm is None and sqsum is not None:
            grad_norm = math.sqrt(sqsum) if math.isfinite(sqsum) else None  # non-finite: the flag says so
        elif grad_norm is None and optimizer is not None:
            try:
                grad_norm = _grad_norm(optimizer, self.torch)
            except Exception:  # noqa: BLE001
                grad_norm = None
        nonfinite = self.nonfinite
        if loss is None and self.loss is not None:
            if nonfinite is not None:
                loss = self.loss  # the tensor: the spool's encoder reads its value at the flush, off this thread
            else:
                try:
                    loss = float(self.loss)
                except Exception:  # noqa: BLE001
                    loss = None
        if isinstance(loss, float):
            if nonfinite is None:
                nonfinite = not math.isfinite(loss)
            if not math.isfinite(loss):
                loss = None  # the flag says so
        self.steps.write_row(_STEP_FIELDS, (
            self.rank, self.step, self.step_start_ns, now, loss,
            grad_norm if grad_norm is None or math.isfinite(grad_norm) else None, nonfinite,
        ))
        self.step += 1
        self.step_start_ns = now
        self.nonfinite = None
        self.loss = None

    # -- liveness --------------------------------------------------------------------------
    def heartbeat_record(self, state: str) -> dict[str, Any]:
        oldest = min(self.inflight.values(), key=lambda r: r[_ENTER], default=None)
        op, seq, since = (oldest[_OP], oldest[_SEQ], oldest[_ENTER]) if oldest else (None, None, None)
        last_seq = self.last_seq
        if self.native is not None:
            last_seq = self.native.last_seq("default")
            call = self.native.oldest_inflight()  # (group, seq, enter_ns, op): a bucket or a wrapped call
            if call is not None and (since is None or call[2] < since):
                op, seq, since = call[3], call[1], call[2]
        return {
            "rank": self.rank, "ts_ns": time.time_ns(), "step": self.step, "last_seq": last_seq,
            "inflight_op": op, "inflight_seq": seq, "inflight_since_ns": since, "state": state,
        }

    def _start_heartbeat(self) -> None:
        """Beat on the native writer thread, else on the spool's flusher thread (no thread of its own: one
        wake-up serves both)."""
        if self._heartbeat_stream is not None:
            return
        self._heartbeat_stream = self.run.spool.stream("heartbeats")
        self._install_sigterm()
        if self._start_writer():
            return
        self._next_beat_ns = 0
        self.run.spool.add_ticker(self._tick, _TICK_S)

    def _tick(self, late_ns: int) -> None:
        """Every ~_TICK_S: keep the worst wake-up lateness; every _HEARTBEAT_S, write it with a beat. A
        process starved of CPU (a quota, SIGSTOP, a noisy neighbour) wakes late, a busy one on its own does not."""
        if self._stop.is_set():
            return
        if late_ns > self._worst_late_ns or self._worst_step is None:
            self._worst_late_ns = max(late_ns, self._worst_late_ns)
            self._worst_step = self.step
        now = time.monotonic_ns()
        if now >= self._next_beat_ns:
            self._next_beat_ns = now + int(_HEARTBEAT_S * 1e9)
            record = self.heartbeat_record("alive")
            record["sched_lag_ns"], self._worst_late_ns = self._worst_late_ns, 0
            record["lag_step"], self._worst_step = self._worst_step, None
            self._heartbeat_stream.write(record)

    def _install_sigterm(self) -> None:
        """On SIGTERM, write in-flight collectives as interrupted and flush, even if main is blocked in C++."""
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
                return  # the script (or a framework) handles SIGTERM itself
            read_fd, write_fd = os.pipe()
            os.set_blocking(write_fd, False)
            if signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False) != -1:
                signal.set_wakeup_fd(-1)  # someone else (asyncio) owns the wakeup fd: leave it
                signal.set_wakeup_fd(-1)
                os.close(read_fd)
                os.close(write_fd)
                return
            signal.signal(signal.SIGTERM, lambda _s, _f: None)
        except (ValueError, OSError):
            return
        threading.Thread(target=self._watch_sigterm, args=(read_fd,), name="tracekit-sigterm", daemon=True).start()

    def _watch_sigterm(self, read_fd: int) -> None:
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGTERM in data:
                self.on_terminate()
                # only the main thread may restore SIG_DFL, and it may be blocked in C++: exit as a
                # SIGTERM death would (no footers: this is not a clean exit)
                os._exit(128 + signal.SIGTERM)

    def on_terminate(self) -> None:
        self.terminated = True
        try:
            if self.writer:
                self.native.beat("sigterm")
            else:
                self.run.spool.stream("heartbeats").write(self.heartbeat_record("sigterm"))
            self.drain_native("interrupted: the process received SIGTERM while waiting")
            for token in list(self.inflight):
                self.finish(token, False, "interrupted: the process received SIGTERM while waiting")
            self.run.spool.flush()
        except Exception:  # noqa: BLE001 - dying anyway
            pass


# ---------------------------------------------------------------------------------------------
# wrapping torch.distributed


def _wrap(op: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    payload, peer_param, always_async = _OPS[op]
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
    p2p = op in _P2P
    # the usual call passes the payload alone, positionally (``all_reduce(t)``, ``barrier()``): then the
    # group and async_op are their defaults and no argument needs looking up
    if payload_pos is None:
        plain_args = 0
    else:
        plain_args = payload_pos + 1 if all(pos is None or pos > payload_pos for pos in (group_pos, async_pos)) else -1

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cap = _cap
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
                nbytes, dtype = _nbytes(tensors)
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
            _on_completion(finish, token, result)
        else:
            finish(token, True)
        return result

    wrapper.__tracekit_original__ = fn  # type: ignore[attr-defined]
    return wrapper


def _on_completion(finish: Callable[..., None], token: int, work: Any) -> None:
    """Record the exit when an async work handle completes (its future's callback)."""
    try:
        future = work.get_future()
    except Exception:  # noqa: BLE001 - a backend without futures: the exit is the wait() call
        _wrap_wait(finish, token, work)
        return

    def done(fut: Any) -> None:
        try:
            fut.value()
        except Exception as exc:  # noqa: BLE001
            finish(token, False, f"{type(exc).__name__}: {exc}")
            return
        finish(token, True)

    try:
        future.add_done_callback(done)
    except Exception:  # noqa: BLE001
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


def _wrap_batch(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def batch_isend_irecv(p2p_op_list: list[Any]) -> Any:
        cap = _cap
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
                nbytes, dtype = _nbytes(p2p.tensor)
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
                _on_completion(finish, token, work)
        elif works:
            for token in tokens:
                _on_completion(finish, token, works[-1])
        return works

    batch_isend_irecv.__tracekit_original__ = fn  # type: ignore[attr-defined]
    return batch_isend_irecv


def _patch_functions() -> None:
    """Wrap the collective and p2p functions in torch.distributed and distributed_c10d (idempotent)."""
    modules = [sys.modules.get("torch.distributed"), sys.modules.get("torch.distributed.distributed_c10d")]
    for module in filter(None, modules):
        for name in [*_OPS, "batch_isend_irecv"]:
            fn = getattr(module, name, None)
            if fn is None or hasattr(fn, "__tracekit_original__"):
                continue
            key = (module.__name__, name)
            _originals[key] = fn
            setattr(module, name, _wrap_batch(fn) if name == "batch_isend_irecv" else _wrap(name, fn))


def _original(name: str) -> Callable[..., Any]:
    import torch.distributed as dist

    fn = getattr(dist, name)
    return getattr(fn, "__tracekit_original__", fn)


# ---------------------------------------------------------------------------------------------
# DDP, optimizer, backward


def _ddp_allreduce_hook(process_group: Any, bucket: Any) -> Any:
    """DDP's default all-reduce (average), recorded, with the local non-finite check before reducing.

    This runs once per gradient bucket inside backward, so it is kept lean: it calls the process
    group's own (C++) allreduce, not ``dist.all_reduce`` and its Python argument checks, and tests
    finiteness with one ``sum`` (a NaN or inf anywhere makes the sum non-finite)."""
    cap = _cap
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


def _begin_bucket(cap: _Capture, group: Any, buffer: Any, source: str) -> int:
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
    nbytes, dtype = _nbytes(buffer)
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
        cap = _cap
        if cap is None or not cap.ready():
            return hook(state, bucket)
        group = state if hasattr(state, "size") and hasattr(state, "rank") else None
        token = _begin_bucket(cap, group, bucket.buffer(), "ddp_user_hook")
        return _record_completion(hook(state, bucket), cap, token, first_tensor=False)

    recorded.__annotations__ = dict(getattr(hook, "__annotations__", {}))
    return recorded


def _patch_ddp() -> None:
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
        cap = _cap
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
    _originals[("DDP", "register_comm_hook")] = register
    _originals[("DDP", "_register_builtin_comm_hook")] = builtin
    _originals[("DDP", "forward")] = forward


_native_groups: list[Any] = []


def _hook_ddp(ddp: Any, cap: _Capture, register: Callable[..., Any]) -> None:
    """Give a DDP model tracekit's recording all-reduce hook: the native one when it is built, else Python's."""
    try:
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
        if not cap._warned_native and cap.rank == 0:
            cap._warned_native = True
            from tracekit.capture import native

            print(f"tracekit: native DDP hook unavailable: {native.load_error()}; gradient buckets are recorded "
                  "by the Python hook instead (slower: see docs/training.md)", file=sys.stderr)
        register(ddp, ddp.process_group, _ddp_allreduce_hook)
    except Exception:  # noqa: BLE001 - e.g. a hook registered behind our back
        pass


_hook_handles: list[Any] = []


def _grad_norm(optimizer: Any, torch: Any) -> float | None:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return None
    norms = torch._foreach_norm(grads)
    return float(torch.linalg.vector_norm(torch.stack(norms)))


def _patch_optimizer_and_backward(torch: Any) -> None:
    if _hook_handles:
        return
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def post_step(optimizer: Any, _args: Any, _kwargs: Any) -> None:
        cap = _cap
        if cap is None or cap.explicit_steps:
            return
        cap.end_step(optimizer=optimizer)

    _hook_handles.append(register_optimizer_step_post_hook(post_step))
    backward = torch.Tensor.backward

    def recorded_backward(self: Any, *args: Any, **kwargs: Any) -> Any:
        cap = _cap
        if cap is not None and self.numel() == 1:
            cap.loss = self  # read when the step closes (no detach: a tensor allocation per step)
        return backward(self, *args, **kwargs)

    functools.update_wrapper(recorded_backward, backward)
    recorded_backward.__tracekit_original__ = backward  # type: ignore[attr-defined]
    torch.Tensor.backward = recorded_backward


# ---------------------------------------------------------------------------------------------
# public API


def instrument() -> bool:
    """Record every torch.distributed collective of this process into the current tracekit run.

    Starts a run if none is active (all ranks of one torchrun job join one run), wraps the
    collective and p2p functions, patches DDP to record its bucket all-reduces, and hooks the
    optimizer step. Idempotent. Returns False (and records nothing) when capture is off.
    """
    global _cap
    from tracekit.config import env_flag

    if env_flag("TRACEKIT_DISABLED", False) or not env_flag("TRACEKIT_TORCH", True):
        return False
    with _lock:
        if _cap is not None:
            return True
        import torch
        import torch.distributed as dist

        run = _ensure_run()
        if run is None:
            return False
        _patch_functions()
        _patch_ddp()
        _patch_optimizer_and_backward(torch)
        _cap = _Capture(run, dist, torch)
        from tracekit.capture import native

        _cap.attach_native(native.load())
        # the native hook's records reach the spool at every flush (every 200 ms, an explicit flush, exit)
        run.spool.before_flush.append(_cap.drain_native)
        run.spool.before_close.append(_cap.close)
        _cap.ready()
    return True


def _after_fork_in_child() -> None:
    # a forked child (a DataLoader worker) has no native writer thread: its records, if any, go
    # through the spool
    if _cap is not None:
        _cap.writer = False


os.register_at_fork(after_in_child=_after_fork_in_child)


def _ensure_run() -> Any:
    from tracekit.capture.setup import current_run, init

    run = current_run()
    if run is not None:
        return run
    if not os.environ.get("TRACEKIT_RUN_ID") and os.environ.get("TORCHELASTIC_RUN_ID") is not None:
        # one run for the whole torchrun job: every rank derives the same id from the launcher's identity
        import hashlib

        ident = "|".join(os.environ.get(k, "") for k in (
            "TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT", "GROUP_WORLD_SIZE",
        )) + f"|{os.getppid()}"
        os.environ["TRACEKIT_RUN_ID"] = hashlib.sha256(ident.encode()).hexdigest()[:32]
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
            from tracekit.store.ingest import ingest_paths

            report = ingest_paths([run.run_dir], db=run.db)
            print(f"tracekit: run {run.name!r} ({run.run_id[:12]}) -> {run.db}: {report.records} records",
                  file=sys.stderr)
        except Exception as exc:  # noqa: BLE001
            print(f"tracekit: run spooled to {run.run_dir} but not ingested ({exc}); "
                  f"run: tracekit ingest {run.run_dir}", file=sys.stderr)

    if run.ingest_at_exit:
        atexit.register(finish)


def _all_footers(run_dir: Any) -> bool:
    for path in run_dir.glob("*.jsonl"):
        try:
            with path.open("rb") as fh:
                fh.seek(max(0, path.stat().st_size - 200))
                if b'"tracekit_end"' not in fh.read():
                    return False
        except OSError:
            return False
    return True


def is_instrumented() -> bool:
    return _cap is not None


def uninstrument() -> None:
    """Restore every patched function (used by tests); records already written stay."""
    global _cap
    with _lock:
        for (module_name, name), fn in list(_originals.items()):
            if module_name == "DDP":
                from torch.nn.parallel import DistributedDataParallel as DDP

                setattr(DDP, name, fn)
                DDP.__tracekit_patched__ = False
            else:
                setattr(sys.modules[module_name], name, fn)
        _originals.clear()
        for handle in _hook_handles:
            handle.remove()
        _hook_handles.clear()
        torch = sys.modules.get("torch")
        if torch is not None:
            backward = torch.Tensor.backward
            torch.Tensor.backward = getattr(backward, "__tracekit_original__", backward)
        if _cap is not None:
            _cap.close()
            for hooks, hook in ((_cap.run.spool.before_flush, _cap.drain_native),
                                (_cap.run.spool.before_close, _cap.close)):
                try:
                    hooks.remove(hook)
                except ValueError:
                    pass
        _cap = None


def step(loss: Any = None, grad_norm: float | None = None) -> None:
    """Close the current training step explicitly (then the optimizer hook no longer does).

    Parameters
    ----------
    loss : the step's loss (a float or a one-element tensor).
    grad_norm : the gradient norm, if the script computes it anyway.
    """
    cap = _cap
    if cap is None:
        return
    cap.explicit_steps = True
    try:
        value = float(loss) if loss is not None else None
    except (TypeError, ValueError):
        value = None
    cap.end_step(loss=value, grad_norm=grad_norm)


def probe_links(nbytes: int = 256 * 1024, group: Any = None) -> list[dict[str, Any]]:
    """Active pairwise probe (C4-style): every ordered rank pair sends ``nbytes``; the receiver times it.

    Every rank of the group must call it at the same point. Pairs run in round-robin rounds (each
    rank in one pair at a time), each direction separately and three times (the fastest counts:
    scheduling noise only adds time, a rate limit does not go away), so a throttled direction shows
    whether or not the ring all-reduce happens to use it. Each receiver records its measurements in the
    ``probes`` stream and returns them.
    """
    import torch
    import torch.distributed as dist

    raw_send, raw_recv = _original("send"), _original("recv")
    rank, world = dist.get_rank(group), dist.get_world_size(group)

    def glob(r: int) -> int:  # send/recv take global ranks; the probe reports ranks within the group
        return r if group is None else int(dist.get_global_rank(group, r))

    def send(tensor: Any, r: int, group: Any = None) -> None:
        raw_send(tensor, glob(r), group=group)

    def recv(tensor: Any, r: int, group: Any = None) -> None:
        raw_recv(tensor, glob(r), group=group)

    payload = torch.zeros(max(1, nbytes // 4), dtype=torch.float32)
    token = torch.zeros(1, dtype=torch.float32)
    cap = _cap
    round_id = cap.probe_round if cap else 0
    if cap:
        cap.probe_round += 1
    results: list[dict[str, Any]] = []
    busy, _local.busy = _local.busy, True  # the probe's own send/recv are not training traffic
    try:
        _probe_rounds(rank, world, group, send, recv, payload, token, round_id, cap, results)
        _original("barrier")(group=group)  # leave together: the probe must not skew the next arrivals
    finally:
        _local.busy = busy
    if cap is not None:
        stream = cap.run.spool.stream("probes")
        for record in results:
            stream.write(record)
    return results


def _probe_rounds(rank: int, world: int, group: Any, send: Any, recv: Any, payload: Any, token: Any,
                  round_id: int, cap: Any, results: list[dict[str, Any]]) -> None:
    players = list(range(world)) + ([None] if world % 2 else [])
    n = len(players)
    for _ in range(n - 1):
        pairs = [(players[i], players[n - 1 - i]) for i in range(n // 2)]
        for a, b in pairs:
            if a is None or b is None or rank not in (a, b):
                continue
            for src, dst in ((a, b), (b, a)):
                if rank == dst:
                    recv(token, src, group=group)  # untimed handshake: both ends are here
                    dur = None
                    for _ in range(_PROBE_REPEATS):  # the fastest of a few: scheduling noise only adds
                        start = time.perf_counter_ns()
                        send(token, src, group=group)
                        recv(payload, src, group=group)
                        elapsed = time.perf_counter_ns() - start
                        dur = elapsed if dur is None else min(dur, elapsed)
                    results.append({"rank": rank, "world_size": world, "round": round_id, "src": src,
                                    "dst": dst, "bytes": payload.numel() * 4, "ts_ns": time.time_ns(),
                                    "dur_ns": dur, "step": cap.step if cap else None})
                else:
                    send(token, dst, group=group)
                    for _ in range(_PROBE_REPEATS):
                        recv(token, dst, group=group)
                        send(payload, dst, group=group)
        players = [players[0], players[-1], *players[1:-1]]


# ---------------------------------------------------------------------------------------------
# automatic capture under `tracekit record`


class _TorchDistributedFinder:
    """A meta-path finder that instruments torch.distributed right after it is imported (no torch import here)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "torch.distributed":
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_instrument(module: Any) -> None:
            exec_module(module)
            _on_torch_distributed_imported()

        spec.loader.exec_module = exec_and_instrument  # type: ignore[method-assign]
        return spec


def _on_torch_distributed_imported() -> None:
    """torch.distributed is loaded (torch itself may be half-imported): wrap the functions now, the rest
    (DDP, optimizer) when the process group is created, once torch is fully imported."""
    try:
        _patch_functions()
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
                _originals[(module.__name__, "init_process_group")] = init_pg
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
