"""The transport-independent core of `tracekit serve`: check the token, validate a request, spool it, count it.

Both front ends (OTLP/HTTP and OTLP/gRPC) hand every request to one `Receiver`; it answers with
the accepted `Batch` or raises `Rejected` / `SpoolFull`, which each front end turns into its
transport's OTLP error status. Counters here feed the progress line.
"""

from __future__ import annotations

import hmac
import ipaddress
import threading
import time
from dataclasses import dataclass

from tracekit.errors import ConfigError
from tracekit.serve.batches import DEFAULT_MAX_BYTES, Batch, Encoding, Rejected, Signal, decode_request
from tracekit.serve.spool import BatchSpool

__all__ = ["Receiver", "Stats", "is_loopback", "check_bind"]


def is_loopback(host: str) -> bool:
    """Whether `host` binds only this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """ConfigError unless binding `host` is allowed: another address than loopback needs a token."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"binding {host} exposes the receiver to the network: give a token with --token or "
            "TRACEKIT_SERVE_TOKEN (exporters send it with OTEL_EXPORTER_OTLP_HEADERS='Authorization=Bearer%20<token>')"
        )


@dataclass
class Stats:
    """What the receiver has seen so far (read by the progress line; updated under the receiver's lock)."""

    batches: int = 0
    spans: int = 0
    log_records: int = 0
    rejected: int = 0
    retry_later: int = 0
    unauthorized: int = 0
    last_error: str | None = None


class Receiver:
    """Validates and spools export requests; one instance serves both transports."""

    def __init__(self, spool: BatchSpool, *, token: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.spool = spool
        self.token = token or None
        self.max_bytes = max_bytes
        self.stats = Stats()
        self.started_ns = time.time_ns()
        self._lock = threading.Lock()

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` value carries the token (``Bearer <token>`` or the bare token)."""
        if self.token is None:
            return True
        value = (header or "").strip()
        if value[:7].lower() == "bearer ":
            value = value[7:].strip()
        ok = hmac.compare_digest(value.encode(), self.token.encode())
        if not ok:
            with self._lock:
                self.stats.unauthorized += 1
        return ok

    def accept(self, signal: Signal, body: bytes, encoding: Encoding, content_encoding: str | None = None) -> Batch:
        """Validate and durably spool one request body; Rejected or SpoolFull when it is not accepted."""
        from tracekit.serve.spool import SpoolFull

        try:
            batch = decode_request(signal, body, encoding, content_encoding=content_encoding, max_bytes=self.max_bytes)
            if batch.records:  # an empty export is acknowledged with nothing to keep
                self.spool.write(batch)
        except Rejected as exc:
            self.count_failure(exc.message, retry=False)
            raise
        except SpoolFull as exc:
            self.count_failure(str(exc), retry=True)
            raise
        with self._lock:
            self.stats.batches += 1
            if signal is Signal.traces:
                self.stats.spans += batch.records
            else:
                self.stats.log_records += batch.records
        return batch

    def count_failure(self, message: str, *, retry: bool) -> None:
        with self._lock:
            if retry:
                self.stats.retry_later += 1
            else:
                self.stats.rejected += 1
            self.stats.last_error = message
