"""Microseconds per span: `@tracekit.trace` against a raw OpenTelemetry SDK span, same provider settings, no-op exporter.

Both sides use a TracerProvider with a BatchSpanProcessor configured exactly as `tracekit.init` configures
one for an exporter of yours (200 ms schedule, 65,536-span queue, 4,096-span batches) feeding an exporter
that drops spans. Runs are interleaved (raw, traced, raw, traced, ...) and the median per-span time of each
side is compared. Then, in a process of its own, `tracekit.init`'s default path: spans queued by
its SpoolSpanProcessor and written to a real spool by the spool's flusher; reported are the caller's
time per span and the flusher thread's CPU per span (encoding and writing, off the caller's path).

    python benchmarks/bench_capture.py [--spans 20000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import final_line, median  # noqa: E402

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult  # noqa: E402


class NoopExporter(SpanExporter):
    def export(self, spans):  # type: ignore[no-untyped-def]
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def processor() -> BatchSpanProcessor:
    return BatchSpanProcessor(NoopExporter(), schedule_delay_millis=200, max_queue_size=1 << 16,
                              max_export_batch_size=4096)


DEFAULT_PATH = """
import json, sys, threading, time
import tracekit

run = tracekit.init(run="bench-capture-default", ingest_at_exit=False)

@tracekit.trace
def work(x):
    return x + 1

n, rounds = int(sys.argv[1]), int(sys.argv[2])
for i in range(n):  # warm up
    work(i)
run.spool.flush()
flusher = run.spool._flusher
clock = time.pthread_getcpuclockid(flusher.ident)
per_span, spans = [], 0
cpu0 = time.clock_gettime(clock)
for _ in range(rounds):
    t0 = time.perf_counter()
    for i in range(n):
        work(i)
    per_span.append((time.perf_counter() - t0) / n * 1e6)
    spans += n
deadline = time.monotonic() + 30
stream = run.spool.stream("spans")
while stream.records < spans + n and time.monotonic() < deadline:  # the flusher writes them on its own
    time.sleep(0.01)
print(json.dumps({"caller_us": sorted(per_span)[len(per_span) // 2],
                  "flusher_us": (time.clock_gettime(clock) - cpu0) / spans * 1e6, "written": stream.records}))
"""


def default_path(spans: int, rounds: int) -> dict[str, float]:
    """tracekit.init's own span path, measured in a process of its own (a real spool in a temp dir)."""
    import json
    import subprocess

    env = dict(os.environ, TRACEKIT_SPOOL_DIR=tempfile.mkdtemp(prefix="tk-bench-"), TRACEKIT_INGEST_AT_EXIT="0")
    done = subprocess.run([sys.executable, "-c", DEFAULT_PATH, str(spans), str(rounds)], capture_output=True,
                          text=True, env=env, timeout=600)
    if done.returncode != 0:
        sys.exit(f"the default-path measurement failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    raw_provider = TracerProvider()
    raw_provider.add_span_processor(processor())
    raw_tracer = raw_provider.get_tracer("bench")

    def raw_work(x: int) -> int:
        with raw_tracer.start_as_current_span("work"):
            return x + 1

    os.environ["TRACEKIT_SPOOL_DIR"] = tempfile.mkdtemp(prefix="tk-bench-")
    import tracekit

    tracekit.init(run="bench-capture", ingest_at_exit=False, span_exporter=NoopExporter())

    @tracekit.trace
    def work(x: int) -> int:
        return x + 1

    def per_span_us(fn) -> float:  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        for i in range(args.spans):
            fn(i)
        return (time.perf_counter() - t0) / args.spans * 1e6

    for fn in (raw_work, work):  # warm up both paths
        per_span_us(fn)
    raw, traced = [], []
    for _ in range(args.rounds):
        raw.append(per_span_us(raw_work))
        traced.append(per_span_us(work))
    raw_us, traced_us = median(raw), median(traced)
    ratio = traced_us / raw_us
    print(f"raw OpenTelemetry SDK span : {raw_us:7.2f} us/span (median of {args.rounds} x {args.spans})")
    print(f"@tracekit.trace            : {traced_us:7.2f} us/span")
    print(f"ratio                      : {ratio:.3f}x (target <= 1.2x)")
    own = default_path(args.spans, args.rounds)
    print(f"tracekit.init default path : {own['caller_us']:7.2f} us/span in the caller (SpoolSpanProcessor), "
          f"+ {own['flusher_us']:.2f} us/span of CPU on the spool's flusher (encode and write to a real spool)")
    final_line(name="capture_us_per_span", value=round(traced_us, 3), unit="us/span",
               baseline="raw OpenTelemetry SDK span", baseline_value=round(raw_us, 3), ratio=round(ratio, 3),
               target_ratio=1.2, default_path_caller_us=round(own["caller_us"], 3),
               default_path_flusher_cpu_us=round(own["flusher_us"], 3))


if __name__ == "__main__":
    main()
