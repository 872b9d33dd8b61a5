"""A rank's liveness: heartbeats, scheduling-lag sampling, and the SIGTERM watcher that saves in-flight calls."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

HEARTBEAT_S = 0.5
# Mean spacing of the heartbeat's wake-ups (jittered +-50 %): about 5 a beat. Each wake-up costs ~0.1 ms
# of CPU on a VM, so at 40 ms the heartbeat alone used 3.6 ms CPU a second; a starved process still
# shows in the worst of 5 (a 90 %-stopped one wakes >= 40 ms late in ~97 % of beats).
TICK_S = 0.1
INTERRUPTED = "interrupted: the process received SIGTERM while waiting"


class Liveness:
    """Heartbeats of one rank's capture (``cap``, a :class:`tracekit.capture.torch.state.Capture`): on the
    native writer thread when it runs, else on the spool's flusher thread (no thread of its own: one
    wake-up serves both); and the SIGTERM watcher."""

    def __init__(self, cap: Any) -> None:
        self.cap = cap
        self.beating = False
        self._next_beat_ns = 0
        self._worst_late_ns = 0
        self._worst_step: int | None = None  # the step in progress at that wake-up
        self._stop = threading.Event()
        self._sigterm_fds: tuple[int, int] | None = None  # the wakeup pipe, when tracekit owns SIGTERM

    def record(self, state: str) -> dict[str, Any]:
        """A ``heartbeats`` record of this rank now, in ``state`` (alive, sigterm)."""
        cap = self.cap
        last_seq, op, seq, since = cap.oldest_call()
        return {
            "rank": cap.rank, "ts_ns": time.time_ns(), "step": cap.step, "last_seq": last_seq,
            "inflight_op": op, "inflight_seq": seq, "inflight_since_ns": since, "state": state,
        }

    def start(self) -> None:
        """Start beating (once the rank is known) and watch for SIGTERM."""
        if self.beating:
            return
        self.beating = True
        self.cap.run.spool.stream("heartbeats")  # its file exists from now on (the native writer needs it)
        self._install_sigterm()
        if self.cap.start_writer():
            return
        self._next_beat_ns = 0
        self.cap.run.spool.add_ticker(self._tick, TICK_S)

    def stop(self) -> None:
        self._stop.set()
        self.cap.run.spool.remove_ticker(self._tick)

    def _tick(self, late_ns: int) -> None:
        """Every ~TICK_S: keep the worst wake-up lateness; every HEARTBEAT_S, write it with a beat. A
        process starved of CPU (a quota, SIGSTOP, a noisy neighbour) wakes late, a busy one on its own does not."""
        if self._stop.is_set():
            return
        if late_ns > self._worst_late_ns or self._worst_step is None:
            self._worst_late_ns = max(late_ns, self._worst_late_ns)
            self._worst_step = self.cap.step
        now = time.monotonic_ns()
        if now >= self._next_beat_ns:
            self._next_beat_ns = now + int(HEARTBEAT_S * 1e9)
            record = self.record("alive")
            record["sched_lag_ns"], self._worst_late_ns = self._worst_late_ns, 0
            record["lag_step"], self._worst_step = self._worst_step, None
            self.cap.run.spool.stream("heartbeats").write(record)

    # -- SIGTERM -----------------------------------------------------------------------------
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
        self._sigterm_fds = (read_fd, write_fd)
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
        cap = self.cap
        cap.terminated = True
        try:
            if cap.writer:
                cap.native.beat("sigterm")
            else:
                cap.run.spool.stream("heartbeats").write(self.record("sigterm"))
            cap.settle(0.1)  # completed, not yet recorded: written as completed, not as interrupted
            cap.drain_native(INTERRUPTED)
            for token in list(cap.inflight):
                cap.finish(token, False, INTERRUPTED)
            cap.run.spool.flush()
        except Exception:  # noqa: BLE001 - dying anyway
            pass

    def after_fork_in_child(self) -> None:
        """A forked child (a DataLoader worker) has no watcher thread, and shares the parent's wakeup pipe:
        a SIGTERM sent to the child would wake the *parent's* watcher, which would then end the parent.
        The child gets SIGTERM's default back and leaves the pipe to the parent."""
        self.beating = False
        self._stop = threading.Event()
        fds, self._sigterm_fds = self._sigterm_fds, None
        if fds is None:
            return
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except (ValueError, OSError):
            pass
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
