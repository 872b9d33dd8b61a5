"""Crash-safe per-process spool files: one append-only file per (process, stream), JSON lines or binary, flushed on a timer.

The high-volume streams (``BINARY_STREAMS``) are written as binary Arrow frames (``tracekit.frames``,
``.tkb``) by default: about half the flusher CPU per span of JSON lines, half the file size, and ingest
reads them without parsing. The frames are encoded in pure Python (``arrow_rows``: no pyarrow, numpy or
pandas import), so the first flush of a process costs what a JSON flush does. ``TRACEKIT_SPOOL_FORMAT=json``
writes them as JSON lines instead (readable with ``head``/``jq``; ingest reads both). Every other stream,
and what the native torch writer writes, is JSON lines.

Layout of a run's spool directory::

    <spool root>/<run_id>/run.json                      written by the process that started the run
    <spool root>/<run_id>/<stream>.<pid>.<id8>.tkb      one per process and binary record stream
    <spool root>/<run_id>/<stream>.<pid>.<id8>.jsonl    one per process and JSON-lines record stream

Each JSON-lines file starts with a header line (``{"tracekit_spool": 2, "stream": ..., "run_id": ..., ...}``),
then one JSON object per line, and ends with a footer line (``{"tracekit_end": ...}``) when the
process exits cleanly. A file without a footer belongs to a process that was killed; a last line
without its newline is a torn record that ingest skips and reports.

Records sit in memory for at most one flush interval (200 ms by default) before ``os.write`` hands
them to the operating system, so a SIGKILL loses at most that interval. The flusher is the one Python
timer thread of a process's capture: other periodic work (span export; the training heartbeat when
torch capture's native writer thread is not there) rides on its wake-ups as tickers or
``before_flush`` hooks instead of waking a thread of its own (each wake-up costs ~0.1 ms of CPU on a
VM), and with no ticker it sleeps while no record waits. Hot paths (a collective, a
training step) hand over a tuple of values with ``write_row``; it is encoded (Arrow or JSON) at the flush, in
a batch, on the flusher thread rather than the caller's. Writing never raises into
user code: a disk or permission error is counted, warned about once, and the records are dropped.
"""

from __future__ import annotations

import atexit
import collections
import errno
import json
import math
import os
import random
import socket
import sys
import threading
import time
import uuid
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable

from tracekit import conventions as conv
from tracekit import frames
from tracekit.capture import arrow_rows
from tracekit.config import default_node, spool_root

JSON = "json"
BINARY_STREAMS = ("spans", "events", "collectives", "steps")  # the high-volume streams a binary spool encodes
FRAME_ROWS = 2048  # rows per binary frame at most: bounds a frame's size (~300 kB of spans) and what a torn one loses
_IDLE_MAX_S = 5.0  # an idle flusher still looks every 5 s (a producer that did not notify loses no record)


class CaptureWarning(RuntimeWarning):
    """Capture could not write some records; the traced program keeps running."""


DEFAULT_ENCODING = frames.ENCODING  # binary Arrow frames; TRACEKIT_SPOOL_FORMAT=json for JSON lines


def spool_encoding(explicit: str | None = None) -> str:
    """The encoding of the high-volume streams (``BINARY_STREAMS``): ``explicit``, else ``TRACEKIT_SPOOL_FORMAT``
    (``arrow``: binary Arrow frames, the default; ``json``: JSON lines). An unknown value falls back to the
    default with one warning: capture never raises."""
    value = (explicit or os.environ.get("TRACEKIT_SPOOL_FORMAT") or DEFAULT_ENCODING).strip().lower()
    if value in (JSON, "jsonl"):
        return JSON
    if value == frames.ENCODING:
        return frames.ENCODING
    warnings.warn(f"tracekit: unknown spool format {value!r} (arrow or json); writing {DEFAULT_ENCODING}",
                  CaptureWarning, stacklevel=2)
    return DEFAULT_ENCODING


def _default(value: Any) -> Any:
    """JSON for what ``json`` cannot encode: a one-element tensor or numpy scalar (a loss handed over
    as is, so the training thread does not convert it: ``float(tensor)`` costs it ~10 us) becomes its
    number, or null when not finite; anything else its ``str``."""
    item = getattr(value, "item", None)
    if item is not None:
        try:
            number = item()
        except Exception:  # noqa: BLE001 - not a one-element value
            return str(value)
        if isinstance(number, float) and not math.isfinite(number):
            return None
        return number if isinstance(number, (int, float, bool)) else str(value)
    return str(value)


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_default, ensure_ascii=False)  # built once: ~2 us a record


def _dumps(record: dict[str, Any]) -> str:
    return _ENCODER.encode(record)


def drain(queue: "collections.deque[Any]") -> list[Any]:
    """Everything in ``queue`` now, oldest first, taken with popleft: safe against writers appending
    from other threads without a lock (what they append meanwhile is taken too, or left for next time)."""
    items = []
    try:
        while True:
            items.append(queue.popleft())
    except IndexError:
        return items


def _join(items: list[tuple[Any, Any]]) -> tuple[str, int, int]:
    """The buffered items as JSON lines: (text, count) as is, (fields, values) rows encoded now; how many
    records they hold, and how many rows could not be encoded (dropped)."""
    parts: list[str] = []
    count = bad = 0
    for first, second in items:
        if type(first) is str:
            parts.append(first)
            count += second
            continue
        count += 1
        try:
            parts.append(_dumps(dict(zip(first, second))) + "\n")
        except (TypeError, ValueError):
            bad += 1
    return "".join(parts), count, bad


def write_run_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    """Atomically (re)write ``run.json``; errors are the caller's to count."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".run.json.{os.getpid()}.tmp"
    tmp.write_text(_dumps(manifest))
    os.replace(tmp, run_dir / "run.json")


class SpoolStream:
    """One append-only file holding one record stream of this process.

    Its encoding is JSON lines (``.jsonl``) or binary (``.tkb``: Arrow IPC frames, see ``tracekit.frames``).
    A binary stream keeps records handed over as JSON text (``write_lines``: the native writer's) and its
    file descriptor for a native writer (``_fd``) in a JSON-lines file of the same stream beside it.
    """

    def __init__(self, spool: "Spool", stream: str, encoding: str = JSON, io_lock: Any = None) -> None:
        self.spool = spool
        self.stream = stream
        self.encoding = encoding
        self.binary = encoding == frames.ENCODING
        self.file_id = uuid.uuid4().hex
        suffix = frames.SUFFIX if self.binary else ".jsonl"
        self.path = spool.run_dir / f"{stream}.{os.getpid()}.{self.file_id[:8]}{suffix}"
        self._written = 0
        self.dropped = 0
        # (fields, values): a row to encode at the flush; (dict, None): a record (binary streams);
        # (text, count): lines already encoded. Writers take no lock: deque.append and popleft are
        # atomic, and the flush drains with popleft
        self._queue: collections.deque[tuple[Any, Any]] = collections.deque()
        self._io_lock = io_lock or threading.RLock()
        self._file_fd: int | None = None
        self._text: SpoolStream | None = None  # a binary stream's JSON-lines file, made on first use
        self._failed = False
        self._closed = False
        header = {
            conv.HEADER_KEY: frames.BINARY_VERSION if self.binary else conv.SPOOL_VERSION,
            "stream": stream,
            "run_id": spool.run_id,
            "file_id": self.file_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node": spool.node,
            "started_ns": time.time_ns(),
            "argv": list(sys.argv[:16]),
        }
        if self.binary:
            header["encoding"] = encoding
        self._write_now((_dumps(header) + "\n").encode("utf-8"), 0)

    @property
    def records(self) -> int:
        """Records this stream's files hold (the native writer adds what it wrote with ``+=``)."""
        return self._written + (self._text._written if self._text is not None else 0)

    @records.setter
    def records(self, value: int) -> None:
        # only the native writer's tally is added from outside: it wrote JSON lines (a binary stream's text file)
        target = self._text_stream() if self.binary else self
        target._written += value - self.records

    @property
    def _fd(self) -> int | None:
        """The JSON-lines file descriptor, for a native writer appending lines of its own."""
        return self._text_stream()._file_fd if self.binary else self._file_fd

    def _text_stream(self) -> "SpoolStream":
        if self._text is None:
            with self._io_lock:
                if self._text is None:
                    self._text = SpoolStream(self.spool, self.stream, JSON, io_lock=self._io_lock)
        return self._text

    def pending(self) -> bool:
        """Whether records wait for a flush."""
        return bool(self._queue) or (self._text is not None and bool(self._text._queue))

    def write(self, record: dict[str, Any]) -> None:
        """Buffer one record; it reaches the OS within one flush interval. Never raises."""
        if self.binary:
            self._append((record, None))
            return
        try:
            line = _dumps(record) + "\n"
        except (TypeError, ValueError):
            self._drop(1, "a record could not be encoded as JSON")
            return
        self.write_line(line)

    def write_row(self, fields: tuple[str, ...], values: tuple[Any, ...]) -> None:
        """Buffer one record given as field names and values; it is encoded at the next flush, in a batch,
        off the caller's path (the flusher thread). For hot paths: the caller builds no dict and encodes
        no JSON. ``values`` must not change after the call. Never raises."""
        self._append((fields, values))

    def write_line(self, line: str) -> None:
        """Buffer one already-encoded JSON line (ending in a newline)."""
        self.write_lines(line, 1)

    def write_lines(self, text: str, count: int) -> None:
        """Buffer ``count`` already-encoded JSON lines at once (``text`` ends in a newline)."""
        if count:
            (self._text_stream() if self.binary else self)._append((text, count))

    def _append(self, item: tuple[Any, Any]) -> None:
        """Buffer a (fields, values) row, a (dict, None) record or (encoded text, how many records)."""
        if self._closed:
            self._drop(item[1] if type(item[0]) is str else 1, "the spool was already closed")
            return
        self._queue.append(item)
        self.spool.notify()

    def flush(self) -> None:
        # one writer at a time (the flusher thread, an exit hook), so chunks land in buffer order
        # and the footer is always the last line
        with self._io_lock:
            items = drain(self._queue)
            if items:
                if self._closed:  # buffered while close() ran: writing now would land after the footer
                    self._drop(len(items), "records arrived after the spool was closed")
                else:  # a binary stream writes a frame per FRAME_ROWS rows: each is whole or torn
                    step = FRAME_ROWS if self.binary else len(items)
                    for i in range(0, len(items), step):
                        self._write_items(items[i:i + step])
            if self._text is not None:
                self._text.flush()

    def _write_items(self, items: list[tuple[Any, Any]], *, first_try: bool = True) -> None:
        """Encode and write buffered items; a binary frame that did not fit on the disk is taken back and its
        rows written in two smaller frames, so a full disk keeps as many whole records as fit (as JSON lines do)."""
        data, count, bad = self._encode(items)
        if bad and first_try:  # a value converts the same way every time: a retried half drops no new rows
            self._drop(bad, "a record could not be encoded")
        if count and not self._write_now(data, count):
            half = len(items) // 2
            self._write_items(items[:half], first_try=False)
            self._write_items(items[half:], first_try=False)

    def _encode(self, items: list[tuple[Any, Any]]) -> tuple[bytes, int, int]:
        if not self.binary:
            text, count, bad = _join(items)
            return text.encode("utf-8"), count - bad, bad
        try:
            return arrow_rows.encode(conv.STREAMS[self.stream].fields, items)
        except Exception as exc:  # noqa: BLE001 - never raise from the flusher
            self.spool._report_drop_reason(f"cannot encode {self.stream} records: {exc}")
            return b"", 0, len(items)

    def close(self) -> None:
        """Flush and write the footer that marks a clean exit."""
        with self._io_lock:
            if self._closed:
                return
            self.flush()
            footer = _dumps({conv.FOOTER_KEY: time.time_ns(), "records": self._written, "dropped": self.dropped})
            self._write_now(frames.frame(frames.END, footer.encode()) if self.binary else (footer + "\n").encode(), 0)
            self._closed = True
            if self._file_fd is not None:
                try:
                    os.close(self._file_fd)
                except OSError:
                    pass
                self._file_fd = None
            if self._text is not None:
                self._text.close()

    def _write_now(self, encoded: bytes, count: int) -> bool:
        """Write encoded records; False when a binary frame of several records only partly fit (its torn part is
        cut off again: the caller writes them in smaller frames)."""
        if self._failed:
            self._drop(count, "")
            return True
        done = 0
        try:
            if self._file_fd is None:
                self.spool.run_dir.mkdir(parents=True, exist_ok=True)
                self._file_fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            view = memoryview(encoded)
            while done < len(encoded):
                done += os.write(self._file_fd, view[done:])
            self._written += count
        except OSError as exc:
            if self.binary and count > 1 and done and exc.errno in (errno.ENOSPC, errno.EFBIG) and self._cut_torn(done):
                return False
            # a short write (disk full) may have landed some whole records (JSON lines) before the error;
            # a binary frame is whole or torn
            landed = 0 if self.binary else min(count, encoded[:done].count(b"\n"))
            self._written += landed
            self._failed = True
            self._drop(count - landed, f"cannot write {self.path}: {exc.strerror or exc}")
        return True

    def _cut_torn(self, written: int) -> bool:
        """Cut the ``written`` bytes of a frame that did not fit off the end of the file again; whether it worked."""
        fd = self._file_fd
        if fd is None:
            return False
        try:
            os.ftruncate(fd, os.fstat(fd).st_size - written)
            return True
        except OSError:
            return False

    def _drop(self, count: int, reason: str) -> None:
        self.dropped += count
        self.spool._report_drop(self, count, reason)


class Spool:
    """All spool streams of one run in this process, and the timer that flushes them."""

    def __init__(
        self, run_dir: Path, run_id: str, node: str, *, flush_interval_ms: int = 200, encoding: str | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.node = node
        self.encoding = spool_encoding(encoding)
        self.flush_interval = flush_interval_ms / 1000.0
        self._streams: dict[str, SpoolStream] = {}
        self._lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        # a flush (its before_flush hooks move records held elsewhere into the streams) and the close
        # exclude each other: else a hook on the flusher thread could append after the last flush
        self._flush_lock = threading.RLock()
        self._tickers: list[Callable[[int], None]] = []
        self.tick_s = 0.0
        # With no ticker, the flusher sleeps after a flush until a record arrives (appends wake it): a
        # process whose records all go another way (torch capture's native writer thread) has no Python
        # thread waking up at all.
        self._idle = False
        self._wake = threading.Event()
        self._watched: list[collections.deque[Any]] = []  # queues besides the streams' whose items await a flush
        self._closed = False
        self._warned: set[str] = set()
        self.dropped = 0
        self.before_close: list[Callable[[], None]] = []
        self.before_flush: list[Callable[[], None]] = []
        self._exit_hook_pid = os.getpid()
        _LIVE_SPOOLS.add(self)
        atexit.register(self.close)

    def stream(self, name: str) -> SpoolStream:
        """The stream file of this process for ``name`` (created on first use)."""
        stream = self._streams.get(name)
        if stream is None:
            with self._lock:
                stream = self._streams.get(name)
                if stream is None:
                    stream = SpoolStream(self, name, self.encoding if name in BINARY_STREAMS else JSON)
                    self._streams[name] = stream
        return stream

    def write(self, stream: str, record: dict[str, Any]) -> None:
        self.stream(stream).write(record)

    def flush(self) -> None:
        """Write every buffered record to the OS; first, ``before_flush`` hooks move records held
        elsewhere (e.g. the native DDP hook's) into the buffers."""
        with self._flush_lock:
            for hook in list(self.before_flush):
                try:
                    hook()
                except Exception as exc:  # noqa: BLE001 - a source's failure must not stop the flush
                    self._report_drop_reason(f"collecting records before a flush failed: {exc}")
            for stream in list(self._streams.values()):
                stream.flush()

    def close(self) -> None:
        """Flush everything and write footers. Idempotent; runs at interpreter exit."""
        with self._flush_lock:  # waits for a flush under way on the flusher thread
            if self._closed:
                return
            for hook in list(self.before_close):
                try:
                    hook()
                except Exception as exc:  # a flush hook must not stop the footers
                    self._report_drop_reason(f"flushing before exit failed: {exc}")
            self._closed = True
            for stream in list(self._streams.values()):
                stream.close()
        self._wake.set()  # an idle flusher thread ends
        if self.dropped:
            print(
                f"tracekit: {self.dropped} record(s) of run {self.run_id} were dropped "
                f"(see the warning above); the program itself was not affected",
                file=sys.stderr,
            )

    def _register_mp_finalizer(self) -> None:
        mp_util = sys.modules.get("multiprocessing.util")
        if mp_util is not None:
            self._exit_hook_pid = os.getpid()
            mp_util.Finalize(None, self.close, exitpriority=0)

    def _ensure_flusher(self) -> None:
        if self._flusher is not None or self._closed:
            return
        with self._lock:
            if self._flusher is None:
                self._ensure_exit_hook()
                thread = threading.Thread(target=self._run_flusher, name="tracekit-spool", daemon=True)
                self._flusher = thread
                thread.start()

    def add_ticker(self, tick: Callable[[int], None], every_s: float) -> None:
        """Call ``tick(late_ns)`` on the flusher thread about every ``every_s`` seconds (each pause drawn
        from 0.5x..1.5x, so never phase-locked to a periodic stall; cut short when a flush is due).
        ``late_ns`` is how much later than asked the thread woke: a process starved of CPU wakes late.
        The flush still happens within its interval."""
        with self._lock:
            self._tickers.append(tick)
            self.tick_s = min(self.tick_s or every_s, every_s)
        self._wake.set()  # an idle flusher starts ticking
        self._ensure_flusher()

    def watch(self, queue: "collections.deque[Any]") -> None:
        """Treat ``queue`` (drained by a ``before_flush`` hook) as records waiting for a flush: an idle
        flusher checks it before it sleeps. Its producer calls :meth:`notify` after appending."""
        self._watched.append(queue)

    def notify(self) -> None:
        """Records wait (in a stream or a watched queue): start the flusher, or wake it if it idles."""
        if self._flusher is None:
            self._ensure_flusher()
        elif self._idle:
            self._wake.set()

    def remove_ticker(self, tick: Callable[[int], None]) -> None:
        with self._lock:
            if tick in self._tickers:
                self._tickers.remove(tick)
            if not self._tickers:
                self.tick_s = 0.0

    def _run_flusher(self) -> None:
        due = self._next_flush(time.monotonic_ns())
        while not self._closed:
            asleep = time.monotonic_ns()
            pause = due - asleep
            if self.tick_s:
                pause = min(pause, int(random.uniform(0.5, 1.5) * self.tick_s * 1e9))
            pause = max(pause, 0)
            time.sleep(pause / 1e9)  # cheaper than Event.wait; a close is noticed at the next wake-up
            if self._closed:
                return
            now = time.monotonic_ns()
            late = now - asleep - pause
            for tick in list(self._tickers):
                try:
                    tick(late)
                except Exception as exc:  # noqa: BLE001 - a ticker's failure must not stop the flushes
                    self._report_drop_reason(f"a periodic capture task failed: {exc}")
            if now >= due:
                self.flush()
                if not self._tickers:
                    self._idle_until_woken()
                due = self._next_flush(time.monotonic_ns())

    def _next_flush(self, now: int) -> int:
        """When the next flush is due: one interval from now, less a random 0 .. tick/2 when tickers sample
        scheduling lag, so no wake-up is phase-locked to a periodic stall (after a stop/continue cycle
        wakes this thread at the continue, a flush due exactly 200 ms later falls on a continue again)."""
        due = now + int(self.flush_interval * 1e9)
        if self.tick_s:
            due -= int(random.uniform(0.0, 0.5 * min(self.tick_s, self.flush_interval)) * 1e9)
        return due

    def _idle_until_woken(self) -> None:
        """Sleep until a record waits (or a ticker arrives, or the spool closes); then the next flush is
        at most one interval away. Checked after ``_idle`` is set, so an append racing with it wakes it."""
        self._wake.clear()
        self._idle = True
        try:
            if self._closed or any(stream.pending() for stream in list(self._streams.values())) or any(self._watched):
                return
            self._wake.wait(_IDLE_MAX_S)
        finally:
            self._idle = False

    def _ensure_exit_hook(self) -> None:
        """In a forked multiprocessing child, atexit does not run: register a finalizer there."""
        if self._exit_hook_pid == os.getpid():
            return
        self._exit_hook_pid = os.getpid()
        mp_util = sys.modules.get("multiprocessing.util")
        if mp_util is not None:
            mp_util.Finalize(None, self.close, exitpriority=0)

    def _report_drop_reason(self, reason: str) -> None:
        if reason not in self._warned:
            self._warned.add(reason)
            warnings.warn(f"tracekit: {reason}", CaptureWarning, stacklevel=2)

    def _report_drop(self, stream: SpoolStream, count: int, reason: str) -> None:
        self.dropped += count
        if reason and reason not in self._warned:
            self._warned.add(reason)
            warnings.warn(
                f"tracekit: dropping {stream.stream} records of run {self.run_id}: {reason}. "
                "The traced program keeps running; fix the spool directory (TRACEKIT_SPOOL_DIR) "
                "to capture again.",
                CaptureWarning,
                stacklevel=2,
            )

    def _after_fork_in_child(self) -> None:
        # The child starts its own files: the parent's buffer and file descriptors are the parent's.
        self._streams = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.RLock()
        self._flusher = None
        self._tickers = []
        self.tick_s = 0.0
        self._idle = False
        self._wake = threading.Event()
        self._closed = False
        self.dropped = 0
        self._warned = set()
        # A multiprocessing child exits through os._exit, so atexit never closes it. Its bootstrap
        # clears inherited finalizers, then runs after-fork hooks: register the finalizer from one.
        mp_util = sys.modules.get("multiprocessing.util")
        if mp_util is not None:
            mp_util.register_after_fork(self, Spool._register_mp_finalizer)


_LIVE_SPOOLS: "weakref.WeakSet[Spool]" = weakref.WeakSet()


def _reinit_after_fork() -> None:
    for spool in list(_LIVE_SPOOLS):
        spool._after_fork_in_child()


os.register_at_fork(after_in_child=_reinit_after_fork)


def new_id() -> str:
    """A new run (or call) id: 32 lowercase hex digits."""
    return uuid.uuid4().hex


def open_run_spool(
    *,
    spool_dir: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    run_name: str | None = None,
    node: str | None = None,
    flush_interval_ms: int = 200,
) -> Spool:
    """A spool for a run without the rest of ``tracekit.init`` (used by `SpoolSpanExporter` on a user's provider)."""
    run_id = run_id or os.environ.get("TRACEKIT_RUN_ID") or new_id()
    run_dir = spool_root(spool_dir) / run_id
    if not (run_dir / "run.json").exists():
        try:
            write_run_manifest(run_dir, {
                "run_id": run_id, "name": run_name or run_id[:8], "kind": "service",
                "started_ns": time.time_ns(), "attributes": {}, "pid": os.getpid(),
            })
        except OSError:
            pass  # the spool counts and warns when its own writes fail
    return Spool(run_dir, run_id, node or default_node(), flush_interval_ms=flush_interval_ms)
