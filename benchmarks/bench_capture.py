"""Caller's time per traced call: the lean span path against a raw OpenTelemetry SDK span and the floor, with the flusher's CPU beside it.

One process per spool encoding (JSON lines, binary Arrow frames) runs, interleaved round by round (the machine
is shared and noisy; medians are reported):

- floor: a bare ``time.perf_counter_ns()`` pair around the same one-line function (what any timing costs);
- raw SDK span: ``tracer.start_as_current_span`` on a TracerProvider with a BatchSpanProcessor configured as
  ``tracekit.init`` configures one for an exporter of yours, feeding an exporter that drops spans;
- lean path: ``@tracekit.trace`` after ``tracekit.init()`` (the spool is the only consumer), written to a
  real spool in a temp dir by the spool's flusher thread, whose CPU time per span is reported beside it;
- SDK path into the spool: the same decorator with the lean path off (what a user who adds an exporter gets).

    python benchmarks/bench_capture.py [--spans 20000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import final_line, median  # noqa: E402

MEASURE = r"""
import json, sys, time
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
import tracekit

class NoopExporter(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS
    def shutdown(self):
        pass

n, rounds = int(sys.argv[1]), int(sys.argv[2])
raw_provider = TracerProvider()
raw_provider.add_span_processor(BatchSpanProcessor(NoopExporter(), schedule_delay_millis=200,
                                                   max_queue_size=1 << 16, max_export_batch_size=4096))
raw_tracer = raw_provider.get_tracer("bench")
run = tracekit.init(run="bench-capture", ingest_at_exit=False)
assert run.lean is not None and run.lean.enabled

def raw_work(x):
    with raw_tracer.start_as_current_span("work"):
        return x + 1

@tracekit.trace
def work(x):
    return x + 1

def plain(x):
    return x + 1

def floor_us():
    clock = time.perf_counter_ns
    t0 = time.perf_counter()
    for i in range(n):
        a = clock(); plain(i); b = clock()
    return (time.perf_counter() - t0) / n * 1e6

def per_span_us(fn):
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n * 1e6

for fn in (raw_work, work):  # warm up (and the flusher's first batch: its lazy imports)
    per_span_us(fn)
run.spool.flush()
stream = run.spool.stream("spans")
clock = time.pthread_getcpuclockid(run.spool._flusher.ident)
floor, raw, lean, sdk = [], [], [], []
flusher_s = lean_spans = 0
for _ in range(rounds):
    floor.append(floor_us())
    raw.append(per_span_us(raw_work))
    before, cpu0 = stream.records, time.clock_gettime(clock)
    lean.append(per_span_us(work))
    deadline = time.monotonic() + 30
    while stream.records < before + n and time.monotonic() < deadline:  # the flusher writes them on its own
        time.sleep(0.005)
    flusher_s += time.clock_gettime(clock) - cpu0
    lean_spans += stream.records - before
    run.lean.enabled = False
    sdk.append(per_span_us(work))
    run.spool.flush()
    run.lean.enabled = True
med = lambda v: sorted(v)[len(v) // 2]
print(json.dumps({"floor_us": med(floor), "raw_us": med(raw), "lean_us": med(lean), "sdk_us": med(sdk),
                  "flusher_us": flusher_s / max(lean_spans, 1) * 1e6, "written": lean_spans, "expected": rounds * n}))
"""


def measure(encoding: str, spans: int, rounds: int) -> dict[str, float]:
    env = dict(os.environ, TRACEKIT_SPOOL_DIR=tempfile.mkdtemp(prefix="tk-bench-"), TRACEKIT_INGEST_AT_EXIT="0",
               TRACEKIT_SPOOL_FORMAT=encoding)
    env.pop("TRACEKIT_RUN_ID", None)
    done = subprocess.run([sys.executable, "-c", MEASURE, str(spans), str(rounds)], capture_output=True, text=True,
                          env=env, timeout=900)
    if done.returncode != 0:
        sys.exit(f"the {encoding} measurement failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    results = {encoding: measure(encoding, args.spans, args.rounds) for encoding in ("arrow", "json")}
    for encoding, r in results.items():
        assert r["written"] == r["expected"], r
        print(f"spool encoding {encoding} (median of {args.rounds} rounds x {args.spans} calls, caller's time):")
        print(f"  floor: perf_counter_ns() pair : {r['floor_us']:7.2f} us/call")
        print(f"  raw OpenTelemetry SDK span    : {r['raw_us']:7.2f} us/span")
        print(f"  @tracekit.trace, lean path    : {r['lean_us']:7.2f} us/span = {r['lean_us'] / r['raw_us']:.2f}x raw SDK "
              f"(target <= 0.3x), {r['lean_us'] / r['floor_us']:.1f}x the floor; "
              f"+ {r['flusher_us']:.2f} us/span of flusher CPU (encode and write)")
        print(f"  @tracekit.trace, SDK path     : {r['sdk_us']:7.2f} us/span = {r['sdk_us'] / r['raw_us']:.2f}x raw SDK")
    main_r = results["arrow"]
    final_line(name="capture_us_per_span", value=round(main_r["lean_us"], 3), unit="us/span",
               baseline="raw OpenTelemetry SDK span", baseline_value=round(main_r["raw_us"], 3),
               ratio=round(main_r["lean_us"] / main_r["raw_us"], 3), target_ratio=0.3,
               floor_us=round(main_r["floor_us"], 3), flusher_cpu_us=round(main_r["flusher_us"], 3),
               json_flusher_cpu_us=round(results["json"]["flusher_us"], 3),
               json_lean_us=round(results["json"]["lean_us"], 3), rounds=args.rounds, spans=args.spans)


if __name__ == "__main__":
    main()
