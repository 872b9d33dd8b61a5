"""The per-process recording state of torch capture: identity, sequence counters, call records, native sinks."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Callable

from tracekit.capture.torch.liveness import HEARTBEAT_S, TICK_S, Liveness

# A ``collectives`` record: an in-flight call is the tuple of INFLIGHT_FIELDS; once complete it is
# written as a row of CALL_FIELDS (encoded at the next spool flush, not on the training thread). The
# names are conventions.COLLECTIVES' fields (tests/test_torch_capture.py checks both writers' records).
INFLIGHT_FIELDS = ("process_group", "seq", "op", "enter_ns", "step", "bytes", "dtype", "peer", "async_op", "source",
                   "nonfinite")
CALL_FIELDS = ("rank", "world_size", *INFLIGHT_FIELDS, "exit_ns", "ok", "error")
SEQ, OP, ENTER = 1, 2, 3  # positions in an in-flight tuple


class _Local(threading.local):
    busy = False  # this thread is inside a recorded call (or a probe): calls it makes are not recorded again


local = _Local()
current: "Capture | None" = None  # this process's capture, once instrument() ran (None: paused or off)
originals: dict[tuple[str, str], Callable[..., Any]] = {}  # (module, name) -> original function
lock = threading.Lock()
# futures of async calls whose exit callback has not run yet (patching.on_completion), by a key of their
# own (Python and native tokens are separate counters): see settle_callbacks
awaiting: dict[int, Any] = {}
awaiting_keys = itertools.count()


def settle_callbacks(timeout_s: float) -> None:
    """Wait (at most ``timeout_s``) until every async call whose future completed has had its exit
    recorded. The backend's thread wakes the waiter first and runs the callback after, so a script can
    reach exit in between and the last flush would miss (or, at SIGTERM, mark interrupted) that call."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if not any(future.done() for future in list(awaiting.values())):
                return
        except Exception:  # noqa: BLE001
            return
        time.sleep(0.001)  # releases the GIL the callback needs


_DTYPE_NAMES: dict[Any, str] = {}  # torch.float32 -> "float32"


def nbytes(value: Any) -> tuple[int, str | None]:
    """Bytes and dtype of a tensor or a list of tensors."""
    if value is None:
        return 0, None
    if isinstance(value, (list, tuple)):
        total, dtype = 0, None
        for item in value:
            n, d = nbytes(item)
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


class Capture:
    """The per-process recording state: rank, sequence counters, current step, spool streams.

    Streams are looked up in the run's spool on every use (never kept): a forked child (a DataLoader
    worker) gets a spool of its own, and must not write through the parent's inherited stream objects.
    """

    def __init__(self, run: Any, dist: Any, torch: Any) -> None:
        self.run = run
        self.dist = dist
        self.torch = torch
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
        self.inflight: dict[int, tuple[Any, ...]] = {}  # token -> INFLIGHT_FIELDS
        self._inflight_ids = itertools.count()
        self.last_seq = -1
        self.probe_round = 0
        self.terminated = False
        self.native: Any = None  # the C++ DDP hook module (tracekit.capture.native), when it loads
        self.writer = False  # the native writer thread beats and writes the native records
        self.warned_native = False
        self.liveness = Liveness(self)

    @property
    def collectives(self) -> Any:
        return self.run.spool.stream("collectives")

    @property
    def steps(self) -> Any:
        return self.run.spool.stream("steps")

    def attach_native(self, module: Any) -> None:
        """Share the sequence counters and the step with the native DDP hook."""
        self.native = module
        if module is not None:
            module.set_step(self.step)
            if self.rank is not None:
                module.set_identity(self.rank, self.world)

    def after_fork_in_child(self) -> None:
        """A forked child (a DataLoader worker) has no native writer thread and none of the parent's
        in-flight calls; its records, if any, go through its own spool files."""
        self.writer = False
        self.inflight.clear()
        awaiting.clear()  # the parent's pending futures are the parent's
        self.liveness.after_fork_in_child()

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
        self.liveness.start()
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
        self.collectives.write_row(CALL_FIELDS, (self.rank, self.world, *record, time.time_ns(), ok,
                                                 error[:300] if error else None))

    def oldest_call(self) -> tuple[int, str | None, int | None, int | None]:
        """(last sequence number of the default group, and the oldest in-flight call's op, sequence number
        and enter time, or None): a wrapped call or bucket all-reduce, Python's or the native module's."""
        oldest = min(self.inflight.values(), key=lambda r: r[ENTER], default=None)
        op, seq, since = (oldest[OP], oldest[SEQ], oldest[ENTER]) if oldest else (None, None, None)
        last_seq = self.last_seq
        if self.native is not None:
            last_seq = self.native.last_seq("default")
            call = self.native.oldest_inflight()  # (group, seq, enter_ns, op): a bucket or a wrapped call
            if call is not None and (since is None or call[2] < since):
                op, seq, since = call[3], call[1], call[2]
        return last_seq, op, seq, since

    # -- the native module's records -------------------------------------------------------
    def drain_native(self, interrupted: str = "") -> None:
        """Write the calls and bucket all-reduces the native module completed (with ``interrupted``: also the
        in-flight ones), and the step records it kept: by its writer thread's files when that runs, else
        through the spool's streams."""
        native = self.native
        if native is None:
            return
        if self.writer:
            self.count_native(native.flush_writer(interrupted))
            return
        lines, count = native.drain(interrupted)  # JSON lines, formatted in C++
        if count:  # a stream is created on first use: a worker that recorded nothing writes no file
            self.collectives.write_lines(lines, count)
        lines, count = native.drain_steps()
        if count:
            self.steps.write_lines(lines, count)

    def settle(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s`` each) for the exit callbacks of async calls and bucket all-reduces that
        completed but whose callback has not run yet: the script may reach exit first (the backend's thread
        wakes the waiter before it runs callbacks), and the last flush would miss them."""
        settle_callbacks(timeout_s)
        if self.native is not None:
            try:
                self.native.settle(timeout_s)
            except Exception:  # noqa: BLE001 - waiting must never keep close() from writing what the hook holds
                pass

    def _native_streams(self) -> tuple[Any, Any, Any]:
        spool = self.run.spool
        return spool.stream("collectives"), spool.stream("steps"), spool.stream("heartbeats")

    def count_native(self, counts: Any) -> None:
        """Add what the native writer wrote (and dropped) to each stream's tally, which its footer reports."""
        for stream, (written, dropped, error) in zip(self._native_streams(), counts):
            with stream._io_lock:
                stream.records += written
            if dropped:
                stream._drop(dropped, f"cannot write {stream.path}: {error}" if error else "")

    def start_writer(self) -> bool:
        """Beat, sample scheduling lag and write the native records on the native writer thread: no Python
        thread then wakes up while training runs (the spool's flusher idles until Python records wait)."""
        native = self.native
        if native is None:
            return False
        fds = [stream._fd for stream in self._native_streams()]
        if any(fd is None for fd in fds):  # a stream could not open its file: the spool's path counts drops
            return False
        try:
            native.start_writer(*fds, tick_s=TICK_S, beat_s=HEARTBEAT_S, flush_s=self.run.spool.flush_interval)
        except Exception:  # noqa: BLE001
            return False
        self.writer = True
        return True

    def close(self) -> None:
        """Stop the heartbeat and write what the native hook still holds (the spool is closing)."""
        self.liveness.stop()
        self.settle(1.0)
        if self.writer:
            self.writer = False
            self.count_native(self.native.stop_writer())
        self.drain_native()
