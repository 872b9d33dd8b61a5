"""The receiver's spool directory: each accepted batch becomes one file, durable before it is acknowledged.

Layout under the spool directory::

    traces/<ns>-<pid>-<seq>.otlp.pb | .otlp.json     trace batches waiting for ingest
    logs/<ns>-<pid>-<seq>.otlp-logs | .otlp-logs.json log batches (kept for the log-record importer)
    rejected/                                        batches ingest refused whole, with a .why file
    tmp/                                             files being written (never read)

A batch is written to ``tmp/``, fsynced, renamed into place and the directory fsynced, so once
`BatchSpool.write` returns the batch survives a killed server or a power cut. Trace batch names
sort in arrival order and end in suffixes `tracekit ingest` reads, so a spool left by a stopped
server can be loaded with ``tracekit ingest SPOOL/traces``. A full disk (or a spool over its size
limit) raises `SpoolFull`, which the front ends answer with "retry later".
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
import time
from pathlib import Path

from tracekit.errors import ConfigError
from tracekit.serve.batches import Batch, Encoding, Signal

__all__ = ["BatchSpool", "SpoolFull", "SUFFIXES"]

SUFFIXES = {
    (Signal.traces, Encoding.protobuf): ".otlp.pb",
    (Signal.traces, Encoding.json): ".otlp.json",
    (Signal.logs, Encoding.protobuf): ".otlp-logs",
    (Signal.logs, Encoding.json): ".otlp-logs.json",
}
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class SpoolFull(Exception):
    """The batch could not be made durable for lack of space: the sender should retry later."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BatchSpool:
    """Writes batches durably into one spool directory; safe to call from many threads."""

    def __init__(self, root: str | os.PathLike[str], *, max_pending_bytes: int | None = None) -> None:
        self.root = Path(root).absolute()
        self.max_pending_bytes = max_pending_bytes
        self.dirs = {sig: self.root / sig.value for sig in Signal}
        self.tmp = self.root / "tmp"
        self.rejected = self.root / "rejected"
        try:
            for path in (*self.dirs.values(), self.tmp, self.rejected):
                path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the spool directory {self.root}: {exc.strerror or exc}") from None
        for stale in self.tmp.iterdir():  # a batch half-written when a server died was never acknowledged
            stale.unlink(missing_ok=True)
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._pending_bytes = sum(p.stat().st_size for p in self.pending(Signal.traces))

    def write(self, batch: Batch) -> Path:
        """Make `batch` durable and return its file; SpoolFull when there is no room for it."""
        size = len(batch.body) if batch.signal is Signal.traces else 0  # logs wait for their importer
        with self._lock:
            if self.max_pending_bytes is not None and self._pending_bytes + size > self.max_pending_bytes:
                raise SpoolFull(f"the spool holds {self._pending_bytes} bytes not yet ingested "
                                f"(limit {self.max_pending_bytes})")
            self._pending_bytes += size
            name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._seq):08d}{SUFFIXES[batch.signal, batch.encoding]}"
        tmp = self.tmp / name
        final = self.dirs[batch.signal] / name
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(batch.body)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            with self._lock:
                self._pending_bytes -= size
            if exc.errno in _FULL_ERRNOS:
                raise SpoolFull(f"no space left in {self.root}") from None
            raise
        return final

    def pending(self, signal: Signal) -> list[Path]:
        """Batches of `signal` waiting for ingest, oldest first."""
        directory = self.dirs[signal]
        return sorted(p for p in directory.iterdir() if p.name.endswith(tuple(
            s for (sig, _enc), s in SUFFIXES.items() if sig is signal)))

    def done(self, paths: list[Path]) -> None:
        """Forget batches now in the store."""
        freed = 0
        for path in paths:
            try:
                freed += path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
        with self._lock:
            self._pending_bytes = max(0, self._pending_bytes - freed)

    def reject(self, path: Path, why: str) -> None:
        """Move a batch ingest refused whole aside, with the reason next to it."""
        try:
            size = path.stat().st_size
            path.rename(self.rejected / path.name)
            (self.rejected / f"{path.name}.why").write_text(why + "\n")
        except FileNotFoundError:
            return
        with self._lock:
            self._pending_bytes = max(0, self._pending_bytes - size)
