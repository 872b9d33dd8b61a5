"""Process-wide capture setup: `tracekit.init`, the current run, the OpenTelemetry provider, and what happens at exit."""

from __future__ import annotations

import atexit
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracekit.capture.spool import CaptureWarning, Spool, new_id, open_run_spool, write_run_manifest
from tracekit.config import Settings, env_flag

__all__ = ["Run", "init", "current_run", "shutdown", "open_run_spool", "init_from_env", "new_id"]


@dataclass
class Run:
    """The run this process records into."""

    run_id: str
    name: str
    kind: str
    node: str
    run_dir: Path
    db: Path
    owner: bool
    spool: Spool
    pid: int = field(default_factory=os.getpid)
    started_ns: int = field(default_factory=time.time_ns)
    provider: Any = None
    tracer: Any = None
    lean: Any = None  # the lean span path (capture/lean.py), while the spool is the only consumer of spans
    ingest_at_exit: bool = True
    attributes: dict[str, Any] = field(default_factory=dict)

    def manifest(self, **extra: Any) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "name": self.name,
            "kind": self.kind,
            "started_ns": self.started_ns,
            "attributes": self.attributes,
            "pid": self.pid,
            "argv": list(sys.argv[:32]),
            **extra,
        }


_current: Run | None = None


def current_run() -> Run | None:
    """The run this process records into, or None before `init` (and outside `tracekit record`)."""
    return _current


def init(
    run: str | None = None,
    *,
    kind: str | None = None,
    node: str | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    db: str | os.PathLike[str] | None = None,
    flush_interval_ms: int | None = None,
    ingest_at_exit: bool | None = None,
    attributes: dict[str, Any] | None = None,
    span_exporter: Any = None,
) -> Run:
    """Start (or join) a run and route every span of this process into its spool.

    Parameters
    ----------
    run : the run's name (``tracekit runs`` accepts it wherever it accepts the id).
    kind : training, agents, service or campaign.
    node : the node spans are blamed on by default (``rank:N`` in a torch worker).
    spool_dir, db, flush_interval_ms, ingest_at_exit : see ``tracekit.config``.
    span_exporter : an OpenTelemetry ``SpanExporter`` to send spans to instead of the run's spool
        (the lean streams — collectives, steps, links — still go to the spool).

    The process that starts a run owns it: at exit it marks the run ended and ingests the spool
    into the store. Child processes inherit ``TRACEKIT_RUN_ID`` and join the same run.
    Calling ``init`` again in the same process returns the current run.
    """
    global _current
    if _current is not None and _current.pid == os.getpid():
        return _current
    settings = Settings.resolve(
        run=run, kind=kind, node=node, spool_dir=spool_dir, db=db,
        flush_interval_ms=flush_interval_ms, ingest_at_exit=ingest_at_exit, attributes=attributes,
    )
    owner = settings.run_id is None
    run_id = settings.run_id or new_id()
    run_dir = settings.spool_root / run_id
    spool = Spool(run_dir, run_id, settings.node, flush_interval_ms=settings.flush_interval_ms)
    state = Run(
        run_id=run_id, name=settings.run_name, kind=settings.run_kind, node=settings.node,
        run_dir=run_dir, db=settings.db, owner=owner, spool=spool,
        ingest_at_exit=settings.ingest_at_exit, attributes=settings.attributes,
    )
    if env_flag("TRACEKIT_DISABLED", False):
        # capture is off: no provider, no files, no current run (decorators fall back to the
        # global OpenTelemetry provider, a no-op unless the program set one)
        state.ingest_at_exit = False
        return state
    if owner:
        try:
            write_run_manifest(run_dir, state.manifest())
        except OSError as exc:
            spool._report_drop_reason(f"cannot write {run_dir / 'run.json'}: {exc.strerror or exc}")
    os.environ.update({
        "TRACEKIT_RUN_ID": run_id,
        "TRACEKIT_RUN_NAME": state.name,
        "TRACEKIT_RUN_KIND": state.kind,
        "TRACEKIT_SPOOL_DIR": str(settings.spool_root),
        "TRACEKIT_DB": str(settings.db.absolute()),
    })
    _install_provider(state, settings.flush_interval_ms, span_exporter)
    _current = state
    _flush_at_os_exit()
    if owner:
        atexit.register(_finish_owned_run, state)
    return state


def _install_provider(state: Run, interval_ms: int, span_exporter: Any = None) -> None:
    from opentelemetry import trace as otel_trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    from tracekit import conventions as conv
    from tracekit.capture.otel import SpoolSpanExporter, SpoolSpanProcessor

    provider = otel_trace.get_tracer_provider()
    ours = not isinstance(provider, TracerProvider)
    if ours:
        # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES are honoured (Resource.create reads them); the run
        # name is an attribute of its own and names the service only when the user's settings do not
        ids = {conv.RUN_ID: state.run_id, conv.RUN_NAME: state.name, conv.NODE: state.node}
        resource = Resource.create(ids)
        if os.environ.get("OTEL_SERVICE_NAME") is None and "service.name=" not in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):
            resource = Resource.create({conv.SERVICE_NAME: state.name, **ids})
        provider = _spool_provider_class()(resource=resource)
        otel_trace.set_tracer_provider(provider)
    if span_exporter is None:
        # spans are exported from the spool's own flusher: no second timer thread in the process
        processor = SpoolSpanProcessor(SpoolSpanExporter(state.spool, node=state.node))
        provider.add_span_processor(processor)
        if ours and not os.environ.get("OTEL_TRACES_SAMPLER") and not env_flag("TRACEKIT_NO_LEAN", False):
            # the spool is the only consumer: tracekit's own spans skip the SDK (see capture/lean.py)
            from tracekit.capture.lean import LeanTracer

            state.lean = LeanTracer(state.spool, state.node)
            provider.lean = state.lean  # type: ignore[attr-defined]
    else:  # an exporter of the user's (it may block on the network): on a thread of its own
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(
            span_exporter, schedule_delay_millis=interval_ms, max_queue_size=1 << 16,
            max_export_batch_size=4096,
        ))
    if ours and span_exporter is None:
        _add_otlp_exporter(provider, interval_ms)
    state.provider = provider
    state.tracer = provider.get_tracer("tracekit")
    state.spool.before_close.append(provider.force_flush)


def _add_otlp_exporter(provider: Any, interval_ms: int) -> None:
    """With OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT set, also send the spans there through the standard
    OTLP exporter (protocol from OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL, default http/protobuf), so
    tracekit sits beside an existing backend. A missing exporter package is reported, never raised."""
    env = os.environ
    if not (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return
    if "none" in env.get("OTEL_TRACES_EXPORTER", "").lower():
        return
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    try:
        if protocol.strip().lower() == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=interval_ms))
    except Exception as exc:  # capture never raises into user code: say why the spans go to the spool only
        import sys

        print(f"tracekit: OTEL_EXPORTER_OTLP_* is set but spans are not exported there ({exc}); install "
              f"opentelemetry-exporter-otlp-proto-{'grpc' if protocol == 'grpc' else 'http'}", file=sys.stderr)


_PROVIDER_CLASS: Any = None


def _spool_provider_class() -> Any:
    """A TracerProvider that turns the lean span path off as soon as a processor other than the spool's
    is added (a user's exporter must see tracekit's spans too)."""
    global _PROVIDER_CLASS
    if _PROVIDER_CLASS is None:
        from opentelemetry.sdk.trace import TracerProvider

        from tracekit.capture.otel import SpoolSpanProcessor

        class SpoolTracerProvider(TracerProvider):
            lean: Any = None

            def add_span_processor(self, span_processor: Any) -> None:
                if not isinstance(span_processor, SpoolSpanProcessor) and self.lean is not None:
                    self.lean.enabled = False
                super().add_span_processor(span_processor)

        _PROVIDER_CLASS = SpoolTracerProvider
    return _PROVIDER_CLASS


_real_os_exit: Any = None


def _flush_at_os_exit() -> None:
    """Make ``os._exit`` write this process's buffered records first (installed once, when capture starts).

    A forked child that leaves through ``os._exit`` — RQ's work horse, a pre-fork server's worker,
    any ``fork`` + ``_exit`` — runs no atexit handler and no finalizer: without this its buffered
    spans and faults never reach the spool. Status 0 closes the spool (flush + the footers of a clean
    exit); any other status only flushes, so the files still read as a process that died (a rank's
    ``os._exit(13)`` is a crash, not a clean exit). Best effort, never raises; the process exits with
    its status either way."""
    global _real_os_exit
    if _real_os_exit is not None:
        return
    _real_os_exit = os._exit

    def _exit(status: int) -> Any:
        try:
            state = _current
            if state is not None and isinstance(status, int):  # else the real one raises and the process goes on
                if status == 0:
                    state.spool.close()  # flush + footers; idempotent (a multiprocessing child closed it already)
                else:
                    state.spool.flush()
        except BaseException:  # noqa: BLE001 - capture never stops a process from exiting
            pass
        finally:
            _real_os_exit(status)

    _exit.__doc__ = _real_os_exit.__doc__
    os._exit = _exit


def init_from_env() -> Run | None:
    """Start capture when ``tracekit record`` asked for it (TRACEKIT_RECORD=1). Never raises."""
    if not env_flag("TRACEKIT_RECORD", False) or env_flag("TRACEKIT_DISABLED", False):
        return None
    try:
        return init()
    except Exception as exc:  # capture must never stop the recorded program
        import warnings

        warnings.warn(f"tracekit: capture is off for this process: {exc}", CaptureWarning, stacklevel=2)
        return None


def shutdown() -> None:
    """Flush and close this process's capture now (also runs automatically at exit)."""
    state = _current
    if state is None or state.pid != os.getpid():
        return
    if state.owner:
        _finish_owned_run(state)
    else:
        state.spool.close()


def _finish_owned_run(state: Run) -> None:
    if state.pid != os.getpid() or getattr(state, "_finished", False):
        return
    state._finished = True  # type: ignore[attr-defined]
    state.spool.close()
    try:
        write_run_manifest(state.run_dir, state.manifest(ended_ns=time.time_ns()))
    except OSError:
        return
    if not state.ingest_at_exit:
        return
    try:
        from tracekit.ingest import ingest_paths

        report = ingest_paths([state.run_dir], db=state.db)
        print(
            f"tracekit: run {state.name!r} ({state.run_id[:12]}) -> {state.db}: "
            f"{report.records} records ingested",
            file=sys.stderr,
        )
    except Exception as exc:  # noqa: BLE001 - exiting program must not fail because of us
        print(
            f"tracekit: run {state.name!r} was spooled to {state.run_dir} but not ingested ({exc}); "
            f"run: tracekit ingest {state.run_dir}",
            file=sys.stderr,
        )
