"""The receiver's spool directory: each accepted batch becomes one file, durable before it is acknowledged.

Layout under the spool directory::

    traces/<ns>-<pid>-<seq>.otlp.pb | .otlp.json     trace batches waiting for ingest
    logs/<ns>-<pid>-<seq>.otlp-logs | .otlp-logs.json log batches (kept for the log-record importer)
    merged/<first>.otlp.pb + .parts                  protobuf trace batches joined for one ingest
    rejected/                                        batches ingest refused whole, with a .why file
    tmp/                                             files being written (never read)

A batch is written to ``tmp/``, fsynced, renamed into place and the directory fsynced, so once
`BatchSpool.write` returns the batch survives a killed server or a power cut. Trace batch names
sort in arrival order and end in suffixes `tracekit ingest` reads, so a spool left by a stopped
server can be loaded with ``tracekit ingest SPOOL/traces``. A full disk (or a spool over its size
limit) raises `SpoolFull`, which the front ends answer with "retry later".

Ingest costs a fixed amount per file, so `claim` joins pending protobuf batches into one file
(serialized protobuf messages concatenate into one message holding all their spans). The join is
crash-safe: the list of joined names (``.parts``) is written first, then the merged file is renamed
into place, then the originals are removed; a restart finishes or undoes a join half done.
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

    def __init__(self, root: str | os.PathLike[str], *, max_pending_bytes: int | None = None,
                 run_by: tuple[str, ...] | None = None) -> None:
        self.root = Path(root).absolute()
        self.max_pending_bytes = max_pending_bytes
        self.dirs = {sig: self.root / sig.value for sig in Signal}
        self.tmp = self.root / "tmp"
        self.rejected = self.root / "rejected"
        self.merged = self.root / "merged"
        try:
            for path in (*self.dirs.values(), self.tmp, self.rejected, self.merged):
                path.mkdir(parents=True, exist_ok=True)
            if run_by:  # `tracekit ingest` of these files then forms the runs this server forms
                from tracekit.importers.otlp_runs import write_run_by_marker

                for path in (self.dirs[Signal.traces], self.merged, self.rejected):
                    write_run_by_marker(path, run_by)
        except OSError as exc:
            raise ConfigError(f"cannot create the spool directory {self.root}: {exc.strerror or exc}") from None
        for stale in self.tmp.iterdir():  # a batch half-written when a server died was never acknowledged
            stale.unlink(missing_ok=True)
        self._recover_joins()
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._pending_bytes = sum(p.stat().st_size for p in (*self.pending(Signal.traces), *self.merged.glob("*.otlp.pb")))

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
            (path.parent / f"{path.name}.parts").unlink(missing_ok=True)
        with self._lock:
            self._pending_bytes = max(0, self._pending_bytes - freed)

    def reject(self, path: Path, why: str) -> None:
        """Move a batch ingest refused whole aside, with the reason next to it."""
        try:
            size = path.stat().st_size
            path.rename(self.rejected / path.name)
            (path.parent / f"{path.name}.parts").unlink(missing_ok=True)
            (self.rejected / f"{path.name}.why").write_text(why + "\n")
        except FileNotFoundError:
            return
        with self._lock:
            self._pending_bytes = max(0, self._pending_bytes - size)

    # -----------------------------------------------------------------------------------------
    # joining batches for ingest

    def claim(self, max_bytes: int = 16 << 20) -> list[Path]:
        """The trace files for the next ingest: earlier joins first, else pending protobuf batches
        (oldest first, up to `max_bytes`) joined into one file, plus pending JSON batches as they are."""
        earlier = sorted(self.merged.glob("*.otlp.pb"))
        if earlier:
            return earlier
        pending = self.pending(Signal.traces)
        json_files = [p for p in pending if not p.name.endswith(SUFFIXES[Signal.traces, Encoding.protobuf])]
        parts: list[Path] = []
        size = 0
        for path in pending:
            if path in json_files:
                continue
            nbytes = path.stat().st_size
            if parts and size + nbytes > max_bytes:
                break
            parts.append(path)
            size += nbytes
        if len(parts) < 2:
            return parts + json_files
        return [self._join(parts), *json_files]

    def _join(self, parts: list[Path]) -> Path:
        name = parts[0].name
        listing, merged, tmp = self.merged / f"{name}.parts", self.merged / name, self.tmp / name
        listing.write_text("".join(p.name + "\n" for p in parts))
        with tmp.open("wb") as out:
            for path in parts:
                out.write(path.read_bytes())
            out.flush()
            os.fsync(out.fileno())
        os.rename(tmp, merged)
        _fsync_dir(self.merged)
        for path in parts:
            path.unlink(missing_ok=True)
        _fsync_dir(self.dirs[Signal.traces])
        return merged

    def _recover_joins(self) -> None:
        """Finish a join whose merged file is in place (drop its originals), undo one that is not."""
        for listing in self.merged.glob("*.parts"):
            merged = self.merged / listing.name.removesuffix(".parts")
            if merged.exists():
                for name in listing.read_text().split():
                    (self.dirs[Signal.traces] / name).unlink(missing_ok=True)
            else:
                listing.unlink()
