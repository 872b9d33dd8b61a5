"""The launcher's view: in a torchrun launcher under `tracekit record`, record each worker's exit (code, signal, time).

torchrun knows which worker failed first and how; its workers often do not live long enough to say
so themselves (an early crash kills the others before their first flush). Under ``tracekit record``
the launcher is a Python process with capture on, so one daemon thread here registers every worker
torchrun starts (its ``SubprocessHandler``) and waits on their pidfds (without pidfds: a poll every
20 ms); each exit becomes one ``worker_exits`` record (global rank, local rank, pid, exit code, signal, wall time, host), written
to the spool at once. ``Popen.poll`` is thread-safe and caches the exit status, so torchrun's own
monitoring sees exactly what it would without us.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from typing import Any

from tracekit.capture.after_import import AfterImport
from tracekit.capture.multihost import host_name

_HANDLER_MODULE = "torch.distributed.elastic.multiprocessing.subprocess_handler.subprocess_handler"
POLL_S = 0.02
_lock = threading.Lock()
_workers: list[tuple[Any, int, int]] = []  # (handler, global rank, local rank)
_started = False


def is_launcher() -> bool:
    """Whether this process is torchrun's launcher (``torchrun`` or ``python -m torch.distributed.run``)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return os.path.basename(sys.argv[0] if sys.argv else "") == "torchrun" or (
        spec is not None and spec.name in ("torch.distributed.run", "torch.distributed.launch"))


def watch_workers() -> None:
    """Start recording worker exits if this is a torchrun launcher with capture on. Never raises."""
    global _started
    try:
        from tracekit.capture.setup import current_run

        run = current_run()
        if _started or run is None or not is_launcher():
            return
        _started = True
        import atexit

        # patched before torchrun can start a worker: the moment its handler module is imported (a poll from the
        # watcher thread could come late under load and miss every worker)
        if _HANDLER_MODULE in sys.modules:
            _patch(sys.modules[_HANDLER_MODULE])
        else:
            sys.meta_path.insert(0, AfterImport(_HANDLER_MODULE, _patch_quietly))
        threading.Thread(target=_watch, args=(run,), daemon=True, name="tracekit-workers").start()
        atexit.register(_sweep, run, _done)  # the launcher may exit between two polls: the last exits
    except Exception as exc:  # noqa: BLE001 - capture must never stop the launcher
        print(f"tracekit: worker exits are not recorded: {exc}", file=sys.stderr)


def _patch_quietly(module: Any) -> None:
    try:
        _patch(module)
    except Exception as exc:  # noqa: BLE001 - capture must never stop the launcher
        print(f"tracekit: worker exits are not recorded: {exc}", file=sys.stderr)


def _patch(module: Any) -> None:
    cls = module.SubprocessHandler
    init = cls.__init__
    if getattr(init, "__tracekit_original__", None) is not None:
        return

    @functools.wraps(init)
    def __init__(self: Any, entrypoint: str, args: tuple, env: dict[str, str], *rest: Any, **kw: Any) -> None:
        init(self, entrypoint, args, env, *rest, **kw)
        try:
            with _lock:
                _workers.append((self, int(env.get("RANK", -1)), int(env.get("LOCAL_RANK", -1))))
        except Exception:  # noqa: BLE001
            pass

    __init__.__tracekit_original__ = init  # type: ignore[attr-defined]
    cls.__init__ = __init__


_done: set[int] = set()  # workers whose exit was recorded (by id of their handler)


def _sweep(run: Any, done: set[int]) -> None:
    """Record every worker exit not recorded yet (a poll; also the last one, at the launcher's exit)."""
    host = host_name()
    now = time.time_ns()  # exits found by one sweep share its time: which came first is not known
    with _lock:
        workers = [w for w in _workers if id(w[0]) not in done]
        exited = []
        for handler, rank, local_rank in workers:
            code = handler.proc.poll()
            if code is None:
                continue
            done.add(id(handler))
            exited.append({"rank": rank, "local_rank": local_rank, "worker_pid": handler.proc.pid,
                           "exit_code": code if code >= 0 else None, "signal": -code if code < 0 else None,
                           "ts_ns": now, "host": host})
    if exited:
        try:
            for record in exited:
                run.spool.write("worker_exits", record)
            run.spool.flush()
        except Exception:  # noqa: BLE001 - the spool counts what it drops
            pass


def _watch(run: Any) -> None:
    patched = False
    waiter = _ExitWaiter()
    while True:
        # a fallback: watch_workers patches the handler at its import (this catches an import its hook did not see)
        if not patched and _HANDLER_MODULE in sys.modules:
            _patch(sys.modules[_HANDLER_MODULE])
            patched = True
        _sweep(run, _done)
        try:
            with _lock:
                alive = [(id(h), h.proc.pid) for h, _r, _l in _workers if id(h) not in _done]
            waiter.wait(alive, POLL_S)
        except Exception:  # noqa: BLE001 - the watcher must outlive anything odd: sleep-polling still works
            time.sleep(POLL_S)


class _ExitWaiter:
    """Sleep until a worker exits or `timeout` passes: a poll on the workers' pidfds (Linux), so an exit is
    stamped when it happens, not up to a poll interval later -- under load a sleeping poller could find the
    crashed rank and the ranks that failed after it in one sweep, in rank order. Without pidfds: a sleep."""

    def __init__(self) -> None:
        import select

        self.poller = select.poll() if hasattr(os, "pidfd_open") and hasattr(select, "poll") else None
        self.fds: dict[int, int] = {}  # id(handler) -> pidfd

    def wait(self, alive: list[tuple[int, int]], timeout: float) -> None:
        if self.poller is None:
            time.sleep(timeout)
            return
        import select

        wanted = {key for key, _pid in alive}
        for key in [k for k in self.fds if k not in wanted]:  # recorded: stop watching
            fd = self.fds.pop(key)
            self.poller.unregister(fd)
            os.close(fd)
        for key, pid in alive:
            if key not in self.fds:
                try:
                    fd = os.pidfd_open(pid)
                except OSError:  # gone already (the next sweep records it) or not allowed: the timeout still polls
                    continue
                self.fds[key] = fd
                self.poller.register(fd, select.POLLIN)
        if self.fds:
            self.poller.poll(timeout * 1000)
        else:
            time.sleep(timeout)


def signal_name(number: int | None) -> str | None:
    """SIGTERM for 15, and so on (None for no signal)."""
    if number is None:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
