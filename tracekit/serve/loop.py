"""The receiver's background work: ingest the spool into the store every interval, and print progress.

The store keeps one writer: this loop is it while `tracekit serve` runs (it opens the store only
for the length of one ingest, so readers get in between). Each cycle hands the pending trace
batches to the ingest pipeline's entry point; batches it loaded are deleted from the spool, those
it refused whole are moved to ``rejected/``. A batch loaded but not yet deleted when the server
dies is recognised on the next cycle (ingest remembers each file's content hash) and adds nothing.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tracekit.errors import TracekitError
from tracekit.serve.batches import Encoding, Signal
from tracekit.serve.spool import SUFFIXES
from tracekit.serve.receiver import Receiver

if TYPE_CHECKING:
    from tracekit.importers.otlp import LogEvent

__all__ = ["IngestLoop", "ingest_entry"]


def ingest_entry() -> Callable[..., Any]:
    """The ingest pipeline's one entry point (``tracekit.ingest.ingest_paths``; older trees: the store's)."""
    try:
        from tracekit.ingest import ingest_paths
    except ImportError:
        from tracekit.ingest import ingest_paths
    return ingest_paths


class IngestLoop:
    """Runs ingest cycles on a thread (or not, with ``ingest=False``) and prints a progress line."""

    def __init__(
        self, receiver: Receiver, db: str | None, *, ingest: bool = True, interval_s: float = 1.0,
        progress_s: float = 2.0, out: TextIO | None = sys.stderr, idle_s: float = 30.0,
    ) -> None:
        self.receiver = receiver
        self.spool = receiver.spool
        self.db = db
        self.ingest = ingest
        self.interval_s = interval_s
        self.progress_s = progress_s
        self.out = out
        self.ingested_spans = 0
        self.runs: set[str] = set()
        self.idle_s = idle_s
        self._last_batch: dict[str, float] = {}  # run id -> when spans last arrived for it (monotonic)
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tracekit-serve-ingest", daemon=True)
        self._last_print = (time.monotonic(), 0, 0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after one last cycle, so everything acknowledged so far is ingested (also when the stop came
        before the loop's thread had started: a signal right after start-up)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        elif self.ingest:
            self._drain(stopping=True)

    def run_once(self) -> int:
        """One ingest cycle over the pending trace batches; returns how many files it took."""
        from tracekit.serve.logs import attach_logs, read_logs

        files = self.spool.claim()
        logs = read_logs(self.spool.pending(Signal.logs))  # GenAI log records -> span events
        matched: set[tuple[Path, int]] = set()
        if not files:
            self._join_logs(logs, matched)
            return 0
        if logs and files[0].name.endswith(SUFFIXES[Signal.traces, Encoding.protobuf]):
            matched = attach_logs(files[0], logs)
        try:
            report = ingest_entry()(files, self.db)
        except TracekitError as exc:  # e.g. the store is locked by a reader or another writer: next cycle
            self._note_error(str(exc))
            return 0
        self._join_logs(logs, matched)
        rejected = dict(report.rejected)
        for path in files:
            if str(path) in rejected:
                self.spool.reject(path, rejected[str(path)])
        self.spool.done([p for p in files if str(p) not in rejected])
        self.ingested_spans += report.records
        self.runs.update(report.runs)
        now = time.monotonic()
        self._last_batch.update((run_id, now) for run_id in report.runs)
        self.settle(running=report.runs)
        return len(files)

    def _join_logs(self, logs: dict[Path, list[LogEvent]], matched: set[tuple[Path, int]]) -> None:
        """Log records whose span is stored (ingested in an earlier cycle, or from a JSON batch) join it
        in the store; log batches all of whose records found their span retire."""
        from tracekit.config import db_path
        from tracekit.ingest.live_runs import join_log_events
        from tracekit.serve.logs import retire_logs

        if not logs:
            return
        late = [(path, i, r) for path, records in logs.items() for i, r in enumerate(records)
                if r.span_id and (path, i) not in matched]
        if late and db_path(self.db).exists():
            try:
                found = join_log_events(self.db, [r for _p, _i, r in late])
            except TracekitError as exc:  # locked this instant: the next cycle tries again
                self._note_error(str(exc))
                return
            matched = matched | {(late[k][0], late[k][1]) for k in found}
        retire_logs(logs, matched, self.spool.dirs[Signal.logs] / "done")

    def settle(self, running: set[str] | frozenset[str] = frozenset(), *, everything: bool = False) -> None:
        """Runs that just got spans show `running`; runs idle for `idle_s` (or all, at stop) are settled."""
        from tracekit.ingest.live_runs import update_live_runs

        now = time.monotonic()
        idle = [r for r, t in self._last_batch.items() if everything or (now - t > self.idle_s and r not in running)]
        if not running and not idle:
            return
        try:
            update_live_runs(self.db, running, idle)
        except TracekitError as exc:  # locked by a reader this instant: the next cycle tries again
            self._note_error(str(exc))
            return
        for run_id in idle:
            self._last_batch.pop(run_id, None)

    def _note_error(self, message: str) -> None:
        if message != self.last_error and self.out is not None:
            print(f"serve: ingest waits: {message}", file=self.out, flush=True)
        self.last_error = message

    def _drain(self, stopping: bool) -> None:
        try:
            while self.run_once():
                pass  # a backlog (or the last cycle at stop): go on without waiting
            self.settle(everything=stopping)
        except Exception as exc:  # a bug in one cycle must not stop the receiver; say it, go on
            self._note_error(f"{type(exc).__name__}: {exc}")

    def _run(self) -> None:
        next_print = time.monotonic() + self.progress_s
        while True:
            stopping = self._stop.wait(self.interval_s)
            if self.ingest:
                self._drain(stopping)
            if time.monotonic() >= next_print or stopping:
                self.print_progress()
                next_print = time.monotonic() + self.progress_s
            if stopping:
                return

    def print_progress(self) -> None:
        if self.out is None:
            return
        stats = self.receiver.stats
        now = time.monotonic()
        then, spans_then, batches_then = self._last_print
        rate = (stats.spans - spans_then) / max(now - then, 1e-9)
        self._last_print = (now, stats.spans, stats.batches)
        if stats.batches == batches_then and then != now and stats.rejected == 0 and not self._stop.is_set():
            return  # nothing new: stay quiet
        pending = len(self.spool.pending(Signal.traces))
        parts = [f"received {stats.spans:,} spans ({rate:,.0f}/s) in {stats.batches:,} batches"]
        if stats.log_records:
            parts.append(f"{stats.log_records:,} log records")
        if self.ingest:
            parts.append(f"ingested {self.ingested_spans:,} spans into {len(self.runs)} run(s)")
        parts.append(f"{pending} batch(es) pending")
        if stats.rejected or stats.retry_later or stats.unauthorized:
            parts.append(f"refused {stats.rejected} malformed/oversized, {stats.unauthorized} unauthorized, "
                         f"{stats.retry_later} told to retry")
        print("serve: " + "; ".join(parts), file=self.out, flush=True)
