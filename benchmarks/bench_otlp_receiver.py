"""Spans/s `tracekit serve` accepts from N concurrent real OTLP exporter processes, against the same processes exporting to a no-op exporter.

Three measurements, each on one `tracekit serve` (HTTP and gRPC, ingesting into a fresh store):

1. **Exporter processes** (the question: is the receiver ever the bottleneck?). N = 1..4 processes
   each create spans with the OpenTelemetry SDK and export them through the stock
   ``opentelemetry-exporter-otlp-proto-http`` / ``-grpc`` exporter (BatchSpanProcessor, 512-span
   batches, a queue large enough that nothing is dropped), configured only by
   ``OTEL_EXPORTER_OTLP_ENDPOINT``. The same processes run again with a no-op exporter (the SDK
   alone), and with the same stock exporter pointed at a null OTLP sink (answers every export at
   once, keeps nothing: the exporter's own encoding and transport). Rate = spans / wall time from
   the first process's start of work to the last one's flush. serve / sink near 1 means the
   receiver did not slow the exporters down.
2. **Receiver capacity**: pre-encoded 512-span requests posted as fast as K client processes can
   (no SDK work in the clients), so the receiver's own ceiling shows.
3. **Latency**: a span is force-flushed by an exporter; time until a read-only store connection
   finds it — once idle, once under sustained load (``--steady-rate`` spans/s in 512-span requests
   of ``--steady-traces`` traces each: serve makes one run per trace, so thousands of small runs).

    python benchmarks/bench_otlp_receiver.py [--spans 20000] [--max-procs 4] [--latency-samples 5]
        [--steady-rate 5000] [--steady-traces 50] [--latency-only]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import final_line, median  # noqa: E402

BATCH = 512


# ---------------------------------------------------------------------------------------------
# child processes


def child_exporter(protocol: str, spans: int) -> None:
    """Create `spans` spans (a root and children, a few attributes) and export them; print timing JSON."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    elif protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    else:
        class OTLPSpanExporter(SpanExporter):  # type: ignore[no-redef]
            def export(self, batch):  # type: ignore[no-untyped-def]
                return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(), max_queue_size=spans + BATCH, max_export_batch_size=BATCH, schedule_delay_millis=100))
    tracer = provider.get_tracer("bench")
    t0 = time.time()
    done = 0
    while done < spans:
        with tracer.start_as_current_span("agent.step", attributes={"step": done, "agent": "planner"}):
            for _ in range(min(9, spans - done - 1)):
                with tracer.start_as_current_span("llm.call", attributes={"tokens": 120, "model": "m"}):
                    pass
                done += 1
        done += 1
    provider.force_flush(timeout_millis=120_000)
    t1 = time.time()
    provider.shutdown()
    print(json.dumps({"start": t0, "end": t1, "spans": done}))


def child_blaster(protocol: str, endpoint: str, requests: int) -> None:
    """Post one pre-encoded 512-span request `requests` times, as fast as possible."""
    body = encoded_request(BATCH)
    t0 = time.time()
    if protocol == "http":
        import http.client

        host, port = endpoint.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        for _ in range(requests):
            conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
            response = conn.getresponse()
            response.read()
            assert response.status == 200, response.status
    else:
        import grpc

        channel = grpc.insecure_channel(endpoint.removeprefix("http://"))
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        for _ in range(requests):
            export(body, timeout=60)
    print(json.dumps({"start": t0, "end": time.time(), "spans": requests * BATCH}))


def encoded_request(n: int, traces: int = 1) -> bytes:
    """`n` spans in `traces` traces (serve makes one run per trace: many traces = many small runs)."""
    import random

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    rng = random.Random()
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "blaster"
    scope = rs.scope_spans.add()
    trace_ids = [rng.randbytes(16) for _ in range(traces)]
    for i in range(n):
        sp = scope.spans.add(name="llm.call", trace_id=trace_ids[i % traces], span_id=rng.randbytes(8),
                             start_time_unix_nano=time.time_ns(), end_time_unix_nano=time.time_ns() + 1000)
        sp.attributes.add(key="tokens").value.int_value = i
    return request.SerializeToString()


def child_steady(endpoint: str, rate: float, seconds: float, traces: int) -> None:
    """Post 512-span requests of `traces` new traces each at `rate` spans/s for `seconds` (sustained load)."""
    import http.client

    host, port = endpoint.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    t0 = time.time()
    sent = 0
    while time.time() - t0 < seconds:
        conn.request("POST", "/v1/traces", encoded_request(BATCH, traces), {"Content-Type": "application/x-protobuf"})
        response = conn.getresponse()
        response.read()
        sent += BATCH
        time.sleep(max(0.0, t0 + sent / rate - time.time()))
    print(json.dumps({"start": t0, "end": time.time(), "spans": sent}))


def child_sink() -> None:
    """A null OTLP receiver (HTTP and gRPC on free ports): acknowledges every export, keeps nothing."""
    import socket

    import grpc
    import uvicorn
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def export(request):  # type: ignore[no-untyped-def]
        await request.body()
        return Response(b"", media_type="application/x-protobuf")

    grpc_server = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(8))
    grpc_server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(
            lambda body, ctx: ExportTraceServiceResponse(),
            response_serializer=ExportTraceServiceResponse.SerializeToString)}),))
    grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(json.dumps({"http": sock.getsockname()[1], "grpc": grpc_port}), flush=True)
    uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/v1/traces", export, methods=["POST"])]),
                                  log_level="warning", http="h11", lifespan="off")).run(sockets=[sock])


def child_latency(protocol: str, marker: str) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    with provider.get_tracer("bench").start_as_current_span(marker):
        pass
    provider.force_flush()
    print(json.dumps({"flushed": time.time()}))
    provider.shutdown()


# ---------------------------------------------------------------------------------------------
# the harness


def start_server(tmp: Path) -> tuple[subprocess.Popen[str], int, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracekit", "serve", "--http-port", "0", "--grpc-port", "0",
         "--spool", str(tmp / "spool"), "--db", str(tmp / "store.duckdb"), "--interval", "0.5"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    if "OTLP/HTTP on" not in line:
        raise SystemExit(f"server did not start: {line}")
    ports = [int(p.split(" ")[0].rstrip(";")) for p in line.split("127.0.0.1:")[1:]]
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    return proc, ports[0], ports[1]


def run_children(argv_list: list[list[str]], env: dict[str, str]) -> float:
    """Run the children at once; returns spans/s over the span from first start to last end."""
    procs = [subprocess.Popen([sys.executable, __file__, *argv], env=env, stdout=subprocess.PIPE, text=True)
             for argv in argv_list]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"child {proc.args} failed")
        results.append(json.loads(out.strip().splitlines()[-1]))
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return sum(r["spans"] for r in results) / wall


def store_has(db: Path, marker: str) -> bool:
    from tracekit.errors import StoreError
    from tracekit.store.db import connect

    try:
        with connect(db, read_only=True) as con:
            return bool(con.execute("SELECT count(*) FROM spans WHERE name = ?", [marker]).fetchall()[0][0])
    except StoreError:  # the ingest loop holds the write lock this instant
        return False


def measure_latency(tmp: Path, endpoints: dict[str, str], samples: int) -> list[float]:
    """Seconds from an exporter's flush of one span until a read-only store connection finds it."""
    latencies = []
    for i in range(samples):
        protocol = "http" if i % 2 == 0 else "grpc"
        marker = f"latency-marker-{i}-{time.time_ns()}"
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoints[protocol]}
        out = subprocess.run([sys.executable, __file__, "--latency", protocol, marker], env=env,
                             capture_output=True, text=True, timeout=120, check=True).stdout
        flushed = json.loads(out.strip().splitlines()[-1])["flushed"]
        while not store_has(tmp / "store.duckdb", marker):
            if time.time() - flushed > 30:
                raise SystemExit("a flushed span was not queryable within 30 s")
            time.sleep(0.02)
        latencies.append(time.time() - flushed)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spans", type=int, default=20_000, help="spans per exporter process")
    parser.add_argument("--max-procs", type=int, default=4)
    parser.add_argument("--blast-requests", type=int, default=100, help="512-span requests per capacity client")
    parser.add_argument("--latency-samples", type=int, default=5)
    parser.add_argument("--steady-rate", type=float, default=5000, help="spans/s of sustained load during the "
                        "second latency measurement (0: skip it)")
    parser.add_argument("--steady-traces", type=int, default=50, help="traces (runs) per 512-span request of that load")
    parser.add_argument("--latency-only", action="store_true", help="skip the exporter and capacity phases")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-otlp-"))
    proc, http_port, grpc_port = start_server(tmp)
    endpoints = {"http": f"http://127.0.0.1:{http_port}", "grpc": f"http://127.0.0.1:{grpc_port}"}
    sink = subprocess.Popen([sys.executable, __file__, "--sink"], stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None
    sink_ports = json.loads(sink.stdout.readline())
    sinks = {"http": f"http://127.0.0.1:{sink_ports['http']}", "grpc": f"http://127.0.0.1:{sink_ports['grpc']}"}
    figures: dict[str, object] = {}
    try:
        for n in range(1, 0 if args.latency_only else args.max_procs + 1):
            noop = run_children([["--child", "noop", str(args.spans)]] * n, dict(os.environ))
            figures[f"noop_n{n}"] = round(noop)
            for protocol, endpoint in endpoints.items():
                env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
                rate = run_children([["--child", protocol, str(args.spans)]] * n, env)
                env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sinks[protocol]
                null = run_children([["--child", protocol, str(args.spans)]] * n, env)
                figures[f"{protocol}_n{n}"] = round(rate)
                figures[f"{protocol}_sink_n{n}"] = round(null)
                print(f"{protocol:4} N={n}: serve {rate:8,.0f} spans/s | same exporters to a null sink {null:8,.0f} "
                      f"(serve/sink {rate / null:.2f}) | no-op exporter {noop:8,.0f} (serve/no-op {rate / noop:.2f})",
                      flush=True)
        for protocol, endpoint in ({} if args.latency_only else endpoints).items():
            for k in (1, 2):
                rate = run_children([["--blast", protocol, endpoint, str(args.blast_requests)]] * k, dict(os.environ))
                figures[f"capacity_{protocol}_k{k}"] = round(rate)
                print(f"receiver capacity, {protocol}, {k} pre-encoded client(s): {rate:9,.0f} spans/s", flush=True)
        drain_from = time.time()
        while any(any((tmp / "spool" / d).glob("*.otlp.pb")) for d in ("traces", "merged")):
            time.sleep(0.2)  # the ingest loop works off the backlog the load phases left
        figures["backlog_drain_s"] = round(time.time() - drain_from, 1)
        print(f"backlog ingested {figures['backlog_drain_s']} s after the load phases ended", flush=True)
        latencies = measure_latency(tmp, endpoints, args.latency_samples)
        figures["latency_median_s"] = round(median(latencies), 3)
        figures["latency_max_s"] = round(max(latencies), 3)
        print(f"flush -> queryable (idle): median {median(latencies):.2f} s, max {max(latencies):.2f} s", flush=True)
        if args.steady_rate:
            # sustained load of many small traces (one run each) while the samples are taken
            seconds = 6.0 + 4.0 * args.latency_samples
            steady = subprocess.Popen([sys.executable, __file__, "--steady", endpoints["http"], str(args.steady_rate),
                                       str(seconds), str(args.steady_traces)], stdout=subprocess.PIPE, text=True)
            time.sleep(5.0)  # let the load settle in
            latencies = measure_latency(tmp, endpoints, args.latency_samples)
            sent = json.loads(steady.communicate(timeout=600)[0].strip().splitlines()[-1])
            rate = sent["spans"] / (sent["end"] - sent["start"])
            figures.update(steady_spans_per_s=round(rate), steady_traces_per_request=args.steady_traces,
                           steady_latency_median_s=round(median(latencies), 3),
                           steady_latency_max_s=round(max(latencies), 3))
            print(f"flush -> queryable under {rate:,.0f} spans/s in {args.steady_traces} traces per 512-span request: "
                  f"median {median(latencies):.2f} s, max {max(latencies):.2f} s", flush=True)
    finally:
        sink.kill()
        sink.wait()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    final_line(benchmark="otlp_receiver", spans_per_process=args.spans, **figures)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_exporter(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--blast":
        child_blaster(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--sink":
        child_sink()
    elif len(sys.argv) > 1 and sys.argv[1] == "--steady":
        child_steady(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--latency":
        child_latency(sys.argv[2], sys.argv[3])
    else:
        main()
