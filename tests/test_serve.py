"""`tracekit serve`: real OTLP exporters in other processes, a SIGKILLed server, and bad requests."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("grpc")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc")

# An ordinary OpenTelemetry app: the SDK, a BatchSpanProcessor and the stock OTLP exporter, configured
# only by the OTEL_* environment. The one addition: with ACK_FILE set, a thin wrapper writes the span
# ids of every batch the exporter reported as exported (i.e. the server acknowledged) to that file.
APP = r'''
import os, sys, time
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.trace import Status, StatusCode

if sys.argv[1] == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
else:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
traces, children, pause = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
exporter = OTLPSpanExporter()
ack_path = os.environ.get("ACK_FILE")
if ack_path:
    class Acked:
        def __init__(self, inner):
            self.inner, self.out = inner, open(ack_path, "a")
        def export(self, spans):
            result = self.inner.export(spans)
            if result is SpanExportResult.SUCCESS:
                self.out.write("".join(format(s.context.span_id, "016x") + "\n" for s in spans))
                self.out.flush()
            return result
        def shutdown(self):
            self.inner.shutdown()
        def force_flush(self, timeout_millis=30000):
            return True
    exporter = Acked(exporter)
provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50, max_export_batch_size=100))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("shop")
# APP_SESSIONS="s1,s1,s2": the session of each trace, set on all its spans as OpenInference's
# using_session does (the attribute's name is APP_SESSION_KEY, default session.id)
sessions = [s for s in os.environ.get("APP_SESSIONS", "").split(",")]
key = os.environ.get("APP_SESSION_KEY", "session.id")
for t in range(traces):
    extra = {key: sessions[t]} if t < len(sessions) and sessions[t] else {}
    with tracer.start_as_current_span("checkout", attributes={"order.id": t, **extra}) as root:
        for c in range(children):
            with tracer.start_as_current_span("charge" if c == 0 else "db.query", attributes={"step": c, **extra}) as child:
                if t == 0 and c == 0:
                    child.set_status(Status(StatusCode.ERROR, "card declined"))
    if pause:
        time.sleep(pause)
provider.shutdown()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A `tracekit serve` subprocess; its stderr is collected by a thread."""

    proc: subprocess.Popen[str]
    http_port: int
    grpc_port: int
    spool: Path
    db: Path
    lines: list[str] = field(default_factory=list)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        return out


def start_server(tmp: Path, *args: str, http_port: int = 0, grpc_port: int = 0) -> Server:
    spool, db = tmp / "spool", tmp / "store.duckdb"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracekit", "serve", "--http-port", str(http_port), "--grpc-port", str(grpc_port),
         "--spool", str(spool), "--db", str(db), "--interval", "0.3", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    server = Server(proc, 0, 0, spool, db)
    ready = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        try:
            for line in proc.stderr:
                server.lines.append(line)
                if "OTLP/HTTP on" in line:
                    ports = [int(p.split(" ")[0].rstrip(";")) for p in line.split("127.0.0.1:")[1:]]
                    server.http_port, server.grpc_port = ports[0], ports[1]
                    ready.set()
        except ValueError:  # stop()'s communicate() closed the pipe under this reader
            return

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 30
    while not ready.wait(0.1):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("server did not start:\n" + "".join(server.lines))
    return server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path)
    yield srv
    if srv.proc.poll() is None:
        srv.proc.kill()
        srv.proc.wait()


def run_app(tmp: Path, protocol: str, endpoint: str, traces: int = 3, children: int = 2, pause: float = 0.0,
            **env: str) -> subprocess.CompletedProcess[str]:
    app = tmp / "app.py"
    app.write_text(APP)
    environ = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "shop", **env}
    environ.pop("TRACEKIT_RECORD", None)
    return subprocess.run([sys.executable, str(app), protocol, str(traces), str(children), str(pause)],
                          env=environ, capture_output=True, text=True, timeout=120)


def batches(directory: Path) -> list[Path]:
    """The spool's batch files in a directory (not the run-by marker serve writes there)."""
    return [p for p in directory.iterdir() if not p.name.startswith(".")]


def query(db: Path, sql: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
    from tracekit.store.db import connect

    with connect(db, read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def post(url: str, body: bytes, content_type: str | None = "application/x-protobuf",
         **headers: str) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, data=body, method="POST")
    if content_type:
        request.add_header("Content-Type", content_type)
    for key, value in headers.items():
        request.add_header(key.replace("_", "-"), value)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def export_request(n: int = 2, seed: int = 1) -> bytes:
    """A valid ExportTraceServiceRequest of `n` spans in one trace."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "handmade"
    scope = rs.scope_spans.add()
    for i in range(n):
        scope.spans.add(name=f"op{i}", trace_id=bytes([seed]) * 16, span_id=bytes([seed, i + 1]) * 4,
                        start_time_unix_nano=1_700_000_000_000_000_000 + i, end_time_unix_nano=1_700_000_001_000_000_000)
    return request.SerializeToString()


def rpc_status(body: bytes) -> tuple[int, str]:
    from google.rpc.status_pb2 import Status

    status = Status()
    status.ParseFromString(body)
    return status.code, status.message


# ---------------------------------------------------------------------------------------------
# unmodified apps


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unmodified_app_lands_in_the_store(server: Server, tmp_path: Path, protocol: str) -> None:
    endpoint = server.http if protocol == "http" else f"http://127.0.0.1:{server.grpc_port}"
    done = run_app(tmp_path, protocol, endpoint, traces=3, children=2, OTEL_EXPORTER_OTLP_COMPRESSION="gzip")
    assert done.returncode == 0, done.stderr
    summary = server.stop()
    assert "received 9 spans" in summary, summary
    rows = query(server.db, "SELECT trace_id, span_id, parent_id, name, node, status, status_message, attributes "
                            "FROM spans ORDER BY start_ns")
    assert len(rows) == 9
    by_id = {r[1]: r for r in rows}
    roots = [r for r in rows if r[2] is None]
    assert sorted(json.loads(r[7])["order.id"] for r in roots) == [0, 1, 2]
    for r in rows:
        assert r[4] == "service:shop"
        if r[2] is not None:  # every child hangs under a root of its own trace
            assert by_id[r[2]][3] == "checkout" and by_id[r[2]][0] == r[0]
    errors = [(r[3], r[6]) for r in rows if r[5] == "error"]
    assert errors == [("charge", "card declined")]
    # no session in the spans: one run per trace, named after its root span, however batches fell
    runs = query(server.db, "SELECT r.run_id, r.name, count(*), min(s.trace_id), max(s.trace_id) "
                            "FROM runs r JOIN spans s USING (run_id) GROUP BY ALL")
    assert len(runs) == 3
    for run_id, name, n, first_trace, last_trace in runs:
        assert n == 3 and first_trace == last_trace == run_id and name == f"checkout {run_id[:8]}"
    assert not batches(server.spool / "traces"), "ingested batches stay in the spool"


def test_ingest_of_a_serve_spool_forms_the_runs_serve_forms(tmp_path: Path) -> None:
    """The spool says how serve groups its files (one run per trace here), so `tracekit ingest` of it,
    with no TRACEKIT_RUN_BY, gives the same runs, and serve ingesting the same batches later adds nothing."""
    srv = start_server(tmp_path, "--no-ingest")
    try:
        done = run_app(tmp_path, "http", srv.http, traces=3, children=2)
        assert done.returncode == 0, done.stderr
    finally:
        srv.stop()
    spooled = sorted((srv.spool / "traces").glob("*.otlp.pb"))
    copies = tmp_path / "copies"
    copies.mkdir()
    for path in spooled:  # kept to hand to serve afterwards
        (copies / path.name).write_bytes(path.read_bytes())
    env = {k: v for k, v in os.environ.items() if k != "TRACEKIT_RUN_BY"}
    ingested = subprocess.run([sys.executable, "-m", "tracekit", "ingest", str(srv.spool / "traces"), "--db", str(srv.db)],
                              env=env, capture_output=True, text=True, timeout=120)
    assert ingested.returncode == 0, ingested.stderr
    sql = "SELECT r.run_id, count(*), count(DISTINCT s.trace_id), min(s.trace_id) FROM runs r JOIN spans s USING (run_id) GROUP BY ALL ORDER BY 1"
    runs = query(srv.db, sql)
    assert len(runs) == 3 and all(n == 3 and traces == 1 and run_id == trace for run_id, n, traces, trace in runs)
    # serve now receives the same batches (joined into one file: another content hash) into the same store
    for path in copies.iterdir():
        path.rename(srv.spool / "traces" / path.name)
    again = start_server(tmp_path)
    again.stop()
    assert not list((again.spool / "traces").glob("*.otlp.pb"))  # serve took them
    assert query(srv.db, sql) == runs and query(srv.db, "SELECT count(*) FROM spans") == [(9,)]


def test_json_over_http_and_logs(server: Server) -> None:
    doc = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "js"}}]},
                              "scopeSpans": [{"spans": [{
                                  "traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331",
                                  "name": "GET /cart", "kind": 2, "startTimeUnixNano": "1700000000000000000",
                                  "endTimeUnixNano": "1700000000500000000"}]}]}]}
    status, body, headers = post(server.http + "/v1/traces", gzip.compress(json.dumps(doc).encode()),
                                 "application/json", Content_Encoding="gzip")
    assert (status, json.loads(body)) == (200, {})
    logs = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"timeUnixNano": "1700000000100000000",
                                                              "eventName": "gen_ai.user.message",
                                                              "body": {"stringValue": "hi"}}]}]}]}
    status, body, _ = post(server.http + "/v1/logs", json.dumps(logs).encode(), "application/json")
    assert status == 200
    server.stop()
    assert query(server.db, "SELECT name, node FROM spans") == [("GET /cart", "service:js")]
    # a record naming no span has nothing to join: its batch is retired at once
    assert [p.name.endswith(".otlp-logs.json") for p in (server.spool / "logs" / "done").iterdir()] == [True]


# ---------------------------------------------------------------------------------------------
# bad input


def test_bad_requests_get_otlp_errors_and_the_server_keeps_serving(server: Server) -> None:
    url = server.http + "/v1/traces"
    good = export_request(3, seed=7)
    cases = {
        "garbage": (b"\xff\xfe this is not protobuf \x00\x01" * 10, "application/x-protobuf", {}, 400),
        "truncated": (good[: len(good) - 7], "application/x-protobuf", {}, 400),
        "wrong type": (good, "text/plain", {}, 415),
        "no type": (good, None, {}, 415),
        "bad json": (b'{"resourceSpans": [', "application/json", {}, 400),
        "json not otlp": (b'{"hello": 1}', "application/json", {}, 400),
        "bad gzip": (b"\x1f\x8b\x08\x00garbage", "application/x-protobuf", {"Content_Encoding": "gzip"}, 400),
        "unknown encoding": (good, "application/x-protobuf", {"Content_Encoding": "br"}, 415),
    }
    for what, (body, ctype, headers, expected) in cases.items():
        status, reply, _ = post(url, body, ctype, **headers)
        assert status == expected, what
        code, message = rpc_status(reply) if ctype != "application/json" else (json.loads(reply)["code"], "")
        assert code == 3, what  # google.rpc.Code INVALID_ARGUMENT
    # 100 MB: over the 64 MB default limit -> 413, and a gzip bomb that inflates past it too
    status, reply, _ = post(url, b"\x0a" * (100 << 20))
    assert status == 413 and rpc_status(reply)[0] == 8  # RESOURCE_EXHAUSTED
    status, _, _ = post(url, gzip.compress(b"\x00" * (70 << 20)), Content_Encoding="gzip")
    assert status == 413
    status, reply, _ = post(url, good)  # still serving
    assert status == 200
    server.stop()
    assert query(server.db, "SELECT count(*) FROM spans")[0][0] == 3  # only the good request
    assert not batches(server.spool / "tmp") and not batches(server.spool / "rejected")


def test_grpc_bad_input_and_oversize(tmp_path: Path) -> None:
    import grpc
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    srv = start_server(tmp_path, "--max-mb", "1")
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}",
                                        options=[("grpc.max_send_message_length", 64 << 20)])
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                     response_deserializer=ExportTraceServiceResponse.FromString)
        for body, code in ((b"\xff\xfe garbage", grpc.StatusCode.INVALID_ARGUMENT),
                           (b"\x0a" * (2 << 20), grpc.StatusCode.RESOURCE_EXHAUSTED)):
            with pytest.raises(grpc.RpcError) as err:
                export(body, timeout=30)
            assert err.value.code() == code
        assert isinstance(export(export_request(2, seed=9), timeout=30), ExportTraceServiceResponse)
        channel.close()
    finally:
        srv.stop()
    assert query(srv.db, "SELECT count(*) FROM spans")[0][0] == 2


def test_token_required_off_loopback_and_checked(tmp_path: Path) -> None:
    refused = subprocess.run([sys.executable, "-m", "tracekit", "serve", "--host", "0.0.0.0", "--http-port", "0",
                              "--grpc-port", "0", "--spool", str(tmp_path / "x")],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "token" in refused.stderr and "Traceback" not in refused.stderr
    srv = start_server(tmp_path, "--token", "s3cret")
    try:
        status, reply, _ = post(srv.http + "/v1/traces", export_request(), Authorization="Bearer wrong")
        assert status == 401 and rpc_status(reply)[0] == 16  # UNAUTHENTICATED
        status, _, _ = post(srv.http + "/v1/traces", export_request())
        assert status == 401
        for protocol, endpoint in (("http", srv.http), ("grpc", f"http://127.0.0.1:{srv.grpc_port}")):
            bad = run_app(tmp_path, protocol, endpoint, traces=1, children=0,
                          OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer%20nope")
            assert bad.returncode == 0
            ok = run_app(tmp_path, protocol, endpoint, traces=1, children=1,
                         OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer%20s3cret")
            assert ok.returncode == 0, ok.stderr
    finally:
        srv.stop()
    assert query(srv.db, "SELECT count(*) FROM spans")[0][0] == 4  # two apps x (root + child) with the token


def test_full_spool_answers_retry_later(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--no-ingest", "--max-spool-mb", "0.001")
    try:
        first = export_request(2, seed=3)
        assert post(srv.http + "/v1/traces", first)[0] == 200
        status, reply, headers = post(srv.http + "/v1/traces", export_request(50, seed=4))
        assert status == 503 and rpc_status(reply)[0] == 14 and "retry" in rpc_status(reply)[1]
        assert int(headers["retry-after"]) > 0
    finally:
        srv.stop()
    assert len(batches(srv.spool / "traces")) == 1


# ---------------------------------------------------------------------------------------------
# durability


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_sigkill_loses_nothing_acknowledged_and_retries_do_not_duplicate(tmp_path: Path, protocol: str) -> None:
    http_port, grpc_port = _free_port(), _free_port()
    srv = start_server(tmp_path, http_port=http_port, grpc_port=grpc_port)
    endpoint = srv.http if protocol == "http" else f"http://127.0.0.1:{grpc_port}"
    acks = tmp_path / "acked.txt"
    app = threading.Thread(target=lambda: setattr(app, "result", run_app(
        tmp_path, protocol, endpoint, traces=150, children=3, pause=0.01, ACK_FILE=str(acks))))
    app.start()
    deadline = time.monotonic() + 60
    while (not acks.exists() or len(acks.read_text().split()) < 100) and time.monotonic() < deadline:
        time.sleep(0.02)
    srv.proc.send_signal(signal.SIGKILL)  # mid-stream: the exporter is still sending
    srv.proc.wait()
    time.sleep(0.5)
    srv = start_server(tmp_path, http_port=http_port, grpc_port=grpc_port)  # same spool, same store
    app.join(timeout=120)
    assert app.result.returncode == 0, app.result.stderr  # type: ignore[attr-defined]
    srv.stop()
    acked = set(acks.read_text().split())
    stored = query(srv.db, "SELECT span_id, count(*) FROM spans GROUP BY span_id")
    assert all(n == 1 for _sid, n in stored), "a retried batch was stored twice"
    missing = acked - {sid for sid, _n in stored}
    assert not missing, f"{len(missing)} acknowledged spans are not in the store"
    assert len(acked) > 100


def test_joined_batches_survive_a_crash_mid_join(tmp_path: Path) -> None:
    from tracekit.serve.batches import Encoding, Signal, decode_request
    from tracekit.serve.spool import BatchSpool

    spool = BatchSpool(tmp_path / "sp")
    for seed in (1, 2, 3):
        spool.write(decode_request(Signal.traces, export_request(2, seed=seed), Encoding.protobuf))
    originals = spool.pending(Signal.traces)
    # a crash after the merged file was renamed into place but before the originals were removed
    merged = spool._join(originals)
    for seed, path in zip((1, 2, 3), originals):  # (put them back: _join removed them)
        path.write_bytes(export_request(2, seed=seed))
    again = BatchSpool(tmp_path / "sp")
    assert again.pending(Signal.traces) == [] and again.claim() == [merged]
    from tracekit.importers.otlp import read_otlp

    assert read_otlp(merged).span_count == 6
    # a crash before the merged file was in place: the join is undone, the originals stay
    (tmp_path / "sp" / "merged" / merged.name).unlink()
    (tmp_path / "sp" / "merged" / f"{merged.name}.parts").write_text("x\n")
    for seed, path in zip((1, 2, 3), originals):
        path.write_bytes(export_request(2, seed=seed))
    third = BatchSpool(tmp_path / "sp")
    assert len(third.pending(Signal.traces)) == 3 and not batches(tmp_path / "sp" / "merged")


# ---------------------------------------------------------------------------------------------
# runs from sessions and traces


def test_sessions_and_conversations_make_runs_and_a_later_conversation_extends_its_run(server: Server,
                                                                                      tmp_path: Path) -> None:
    done = run_app(tmp_path, "http", server.http, traces=4, children=1, APP_SESSIONS="s1,s1,s2,")
    assert done.returncode == 0, done.stderr
    done = run_app(tmp_path, "grpc", f"http://127.0.0.1:{server.grpc_port}", traces=1, children=1,
                   APP_SESSIONS="c9", APP_SESSION_KEY="gen_ai.conversation.id")
    assert done.returncode == 0, done.stderr
    done = run_app(tmp_path, "http", server.http, traces=1, children=1, APP_SESSIONS="s1")  # s1 goes on later
    assert done.returncode == 0, done.stderr
    server.stop()
    runs = dict(query(server.db, "SELECT r.name, count(*) FROM runs r JOIN spans s USING (run_id) GROUP BY ALL"))
    untraced = [name for name in runs if name.startswith("checkout ")]
    assert len(untraced) == 1 and runs.pop(untraced[0]) == 2  # the trace without a session: its own run
    assert runs == {"s1": 6, "s2": 2, "c9": 2}


def test_files_group_by_session_too(tmp_path: Path) -> None:
    from tracekit.ingest import ingest_paths

    def doc(trace: str, span: str, session: str | None) -> dict[str, object]:
        attrs = [{"key": "session.id", "value": {"stringValue": session}}] if session else []
        return {"traceId": trace * 16, "spanId": span * 8, "name": "step", "attributes": attrs,
                "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000001000000000"}

    for i, spans in enumerate(([doc("a1", "01", "chat-7"), doc("b2", "02", None)], [doc("c3", "03", "chat-7")])):
        (tmp_path / f"part{i}.otlp.json").write_text(json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}))
    ingest_paths([tmp_path / "part0.otlp.json", tmp_path / "part1.otlp.json"], tmp_path / "s.duckdb")
    runs = query(tmp_path / "s.duckdb", "SELECT r.name, count(*) FROM runs r JOIN spans s USING (run_id) "
                                        "GROUP BY ALL ORDER BY 1")
    assert runs == [("chat-7", 2), ("part0", 1)]  # a span without a session stays in its file's run


# ---------------------------------------------------------------------------------------------
# content wherever instrumentations put it


def test_content_from_genai_span_events_and_openllmetry_attributes(server: Server) -> None:
    from tracekit.importers.genai import agent_step_of, content_capture_hint

    def span(sid: str, name: str, attrs: dict[str, str], events: list[tuple[str, dict[str, str]]] = ()) -> dict:
        kv = lambda d: [{"key": k, "value": {"stringValue": v}} for k, v in d.items()]  # noqa: E731
        return {"traceId": "ab" * 16, "spanId": sid * 8, "name": name, "attributes": kv(attrs),
                "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000001000000000",
                "events": [{"timeUnixNano": "1700000000500000000", "name": n, "attributes": kv(a)} for n, a in events]}

    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [
        span("01", "chat gpt", {"gen_ai.operation.name": "chat", "gen_ai.agent.name": "Coder"},
             [("gen_ai.user.message", {"content": "write a sort function"}),
              ("gen_ai.choice", {"message": '{"role": "assistant", "content": "def sort(xs): return sorted(xs)"}'})]),
        span("02", "planner.agent", {"traceloop.span.kind": "agent", "traceloop.entity.name": "Planner",
                                     "traceloop.entity.input": '{"task": "plan the release"}',
                                     "traceloop.entity.output": '{"plan": "tag, build, publish"}'}),
    ]}]}]}
    assert post(server.http + "/v1/traces", json.dumps(doc).encode(), "application/json")[0] == 200
    server.stop()
    stored = {r[0]: {"name": r[0], "attributes": json.loads(r[1])} for r in query(server.db, "SELECT name, attributes FROM spans")}
    coder, planner = agent_step_of(stored["chat gpt"]), agent_step_of(stored["planner.agent"])
    assert (coder["agent"], coder["input"], coder["content"]) == ("Coder", "write a sort function",
                                                                  "def sort(xs): return sorted(xs)")
    assert (planner["agent"], planner["input"], planner["content"]) == ("Planner", "plan the release", "tag, build, publish")
    assert content_capture_hint(list(stored.values())) is None
    bare = [{"name": "planner.agent", "attributes": {"traceloop.span.kind": "agent", "traceloop.entity.name": "P"}}]
    assert "TRACELOOP_TRACE_CONTENT=true" in content_capture_hint(bare)


# ---------------------------------------------------------------------------------------------
# tracekit.init beside an existing OTLP backend


def test_init_honours_otel_env_and_also_exports_over_otlp(server: Server, tmp_path: Path) -> None:
    app = tmp_path / "init_app.py"
    app.write_text("import tracekit\n"
                   "tracekit.init(run='nightly')\n"
                   "with tracekit.span('load'):\n"
                   "    with tracekit.span('parse'):\n"
                   "        pass\n")
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": server.http, "OTEL_SERVICE_NAME": "billing",
           "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod", "TRACEKIT_DB": str(tmp_path / "own.duckdb"),
           "TRACEKIT_SPOOL_DIR": str(tmp_path / "own-spool")}
    for key in ("TRACEKIT_RUN_ID", "TRACEKIT_RECORD", "TRACEKIT_DISABLED"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, str(app)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    server.stop()
    # the same spans in tracekit's own store (run "nightly") and at the OTLP endpoint, under the same run id
    own = query(tmp_path / "own.duckdb", "SELECT r.run_id, r.name, s.name FROM runs r JOIN spans s USING (run_id) ORDER BY 3")
    sent = query(server.db, "SELECT r.run_id, s.name, r.attributes FROM runs r JOIN spans s USING (run_id) ORDER BY 2")
    assert [r[2] for r in own] == ["load", "parse"] and {r[1] for r in own} == {"nightly"}
    assert [r[1] for r in sent] == ["load", "parse"] and {r[0] for r in sent} == {own[0][0]}
    resource = json.loads(sent[0][2])["resources"][0]
    assert resource["service.name"] == "billing" and resource["deployment.environment"] == "prod"
    assert resource["tracekit.run_name"] == "nightly"


# ---------------------------------------------------------------------------------------------
# findings back out


def test_export_otlp_carries_spans_and_finding_spans_linked_to_what_they_blame(server: Server, tmp_path: Path) -> None:
    from tracekit.importers.otlp import read_otlp
    from tracekit.store.db import connect
    from tracekit.store.findings import write_findings

    source = tmp_path / "source.duckdb"
    body = export_request(3, seed=5)
    (tmp_path / "run.otlp.pb").write_bytes(body)
    from tracekit.ingest import ingest_paths

    (run_id,) = ingest_paths([tmp_path / "run.otlp.pb"], source).runs
    blamed = (bytes([5, 2]) * 4).hex()
    with connect(source) as con:
        write_findings(con, run_id, "attribution", [
            {"kind": "root_cause", "subject": "agent:Coder/step:1", "score": 0.9, "span_id": blamed},
            {"kind": "symptom", "subject": "service:handmade", "score": 0.4},
        ])
    cli = [sys.executable, "-m", "tracekit", "export", run_id, "--format", "otlp", "--db", str(source), "-o"]
    done = subprocess.run([*cli, str(tmp_path / "out.json")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    exported = read_otlp(tmp_path / "out.json")  # OTLP/JSON with hex ids reads back
    names = sorted(s.name for r in exported.resources for s in r.spans)
    assert names == ["op0", "op1", "op2", "tracekit.finding: root_cause agent:Coder/step:1",
                     "tracekit.finding: symptom service:handmade"]
    done = subprocess.run([*cli, server.http], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    server.stop()
    links = query(server.db, "SELECT l.src_span_id, s.name FROM links l JOIN spans s ON s.span_id = l.dst_span_id "
                             "ORDER BY 2, 1")
    root = [src for src, name in links if "root_cause" in name]
    symptom = [src for src, name in links if "symptom" in name]
    assert root == [blamed] and len(symptom) == 3  # a node subject blames that node's spans


def _poll(db: Path, sql: str, want: object, timeout: float = 30.0) -> object:
    """Query the store of a running server until the answer is `want` (the ingest loop locks it at times)."""
    from tracekit.errors import StoreError

    got: object = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = query(db, sql)
        except StoreError:
            got = "locked"
        if got == want:
            return got
        time.sleep(0.2)
    return got


def test_a_run_receiving_spans_is_running_then_settles(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--idle", "3")
    try:
        sql = "SELECT r.name, r.status, count(*) FROM runs r JOIN spans s USING (run_id) GROUP BY ALL ORDER BY 1"
        assert run_app(tmp_path, "http", srv.http, traces=1, children=1, APP_SESSIONS="live-1").returncode == 0
        assert _poll(srv.db, sql, [("live-1", "running", 2)]) == [("live-1", "running", 2)]
        assert _poll(srv.db, sql, [("live-1", "ok", 2)]) == [("live-1", "ok", 2)]  # idle for 3 s
        assert run_app(tmp_path, "grpc", f"http://127.0.0.1:{srv.grpc_port}", traces=1, children=2,
                       APP_SESSIONS="live-1").returncode == 0  # the conversation goes on
        assert _poll(srv.db, sql, [("live-1", "running", 5)]) == [("live-1", "running", 5)]
    finally:
        srv.stop()
    assert query(srv.db, sql) == [("live-1", "ok", 5)]  # stopping settles every run


def test_genai_log_records_become_the_content_of_their_spans(server: Server) -> None:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from tracekit.importers.genai import agent_step_of

    trace_id, span_id = bytes(range(1, 17)), bytes(range(1, 9))
    logs = ExportLogsServiceRequest()
    scope = logs.resource_logs.add().scope_logs.add()
    asked = scope.log_records.add(trace_id=trace_id, span_id=span_id, time_unix_nano=1_700_000_000_100_000_000,
                                  event_name="gen_ai.user.message")
    asked.body.kvlist_value.values.add(key="content").value.string_value = "draft a haiku about rain"
    answer = scope.log_records.add(trace_id=trace_id, span_id=span_id, time_unix_nano=1_700_000_000_200_000_000)
    answer.attributes.add(key="event.name").value.string_value = "gen_ai.choice"
    message = answer.body.kvlist_value.values.add(key="message").value.kvlist_value
    message.values.add(key="content").value.string_value = "soft rain on tin roofs"
    scope.log_records.add(trace_id=trace_id, span_id=bytes(8 * [9]), event_name="gen_ai.choice")  # another span
    assert post(server.http + "/v1/logs", logs.SerializeToString())[0] == 200
    spans = ExportTraceServiceRequest()
    span = spans.resource_spans.add().scope_spans.add().spans.add(
        trace_id=trace_id, span_id=span_id, name="chat", start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_001_000_000_000)
    span.attributes.add(key="gen_ai.operation.name").value.string_value = "chat"
    span.attributes.add(key="gen_ai.agent.name").value.string_value = "Poet"
    assert post(server.http + "/v1/traces", spans.SerializeToString())[0] == 200
    server.stop()
    (name, attrs), = query(server.db, "SELECT name, attributes FROM spans")
    step = agent_step_of({"name": name, "attributes": json.loads(attrs)})
    assert (step["agent"], step["input"], step["content"]) == ("Poet", "draft a haiku about rain", "soft rain on tin roofs")
    assert [r[0] for r in query(server.db, "SELECT name FROM events ORDER BY ts_ns")] == ["gen_ai.user.message", "gen_ai.choice"]
    # one record names a span not seen yet: its batch waits in logs/ (retired once all match, or after 120 s)
    assert len(list((server.spool / "logs").glob("*.otlp-logs"))) == 1


def test_json_log_records_join_spans_ingested_in_an_earlier_cycle_once(server: Server) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from tracekit.importers.genai import agent_step_of

    trace_id, span_id = bytes(range(1, 17)), bytes(range(1, 9))
    spans = ExportTraceServiceRequest()
    span = spans.resource_spans.add().scope_spans.add().spans.add(
        trace_id=trace_id, span_id=span_id, name="chat", start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_001_000_000_000)
    span.attributes.add(key="gen_ai.operation.name").value.string_value = "chat"
    span.attributes.add(key="gen_ai.agent.name").value.string_value = "Poet"
    assert post(server.http + "/v1/traces", spans.SerializeToString())[0] == 200
    assert _poll(server.db, "SELECT count(*) FROM spans", [(1,)]) == [(1,)]  # ingested: the cycle is over
    kv = lambda k, v: {"key": k, "value": {"stringValue": v}}  # noqa: E731
    logs = {"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"timeUnixNano": "1700000000100000000", "traceId": trace_id.hex(), "spanId": span_id.hex(),
         "eventName": "gen_ai.user.message", "body": {"kvlistValue": {"values": [kv("content", "a haiku on rain")]}}},
        {"timeUnixNano": "1700000000200000000", "traceId": trace_id.hex(), "spanId": span_id.hex(),
         "attributes": [kv("event.name", "gen_ai.choice")],
         "body": {"kvlistValue": {"values": [{"key": "message", "value": {"kvlistValue": {"values": [
             kv("content", "soft rain on tin roofs")]}}}]}}},
    ]}]}]}
    for _retry in range(2):  # an exporter retrying the batch adds nothing twice
        assert post(server.http + "/v1/logs", json.dumps(logs).encode(), "application/json")[0] == 200
        assert _poll(server.db, "SELECT count(*) FROM events", [(2,)]) == [(2,)]
    server.stop()
    (name, attrs), = query(server.db, "SELECT name, attributes FROM spans")
    step = agent_step_of({"name": name, "attributes": json.loads(attrs)})
    assert (step["agent"], step["input"], step["content"]) == ("Poet", "a haiku on rain", "soft rain on tin roofs")
    assert query(server.db, "SELECT name FROM events ORDER BY ts_ns") == [("gen_ai.user.message",), ("gen_ai.choice",)]
    assert not list((server.spool / "logs").glob("*.otlp-logs*")) and \
        len(list((server.spool / "logs" / "done").iterdir())) == 2  # every record found its span: retired


# LangGraph workflow (fixtures/agents_workflow.py) instrumented by OpenInference, exported by the stock
# OTLP/HTTP exporter: the receiving end must give `tracekit attribute` the same answer as recording does
LANGGRAPH_APP = r'''
import sys
sys.path.insert(0, sys.argv[1])
from agents_workflow import Workflow, instrument
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
instrumentor = instrument(provider)
Workflow("wrong_tool", 1).run()
instrumentor.uninstrument()
provider.shutdown()
'''


def test_openinference_langgraph_over_otlp_is_attributed(server: Server, tmp_path: Path) -> None:
    pytest.importorskip("openinference.instrumentation.langchain")
    repo = Path(__file__).resolve().parents[1]
    app = tmp_path / "lg_app.py"
    app.write_text(LANGGRAPH_APP)
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": server.http, "OTEL_SERVICE_NAME": "agents"}
    done = subprocess.run([sys.executable, str(app), str(repo / "fixtures")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    server.stop()
    (run_id, spans), = query(server.db, "SELECT run_id, count(*) FROM spans GROUP BY run_id")  # one trace, one run
    assert spans > 10
    ranked = subprocess.run([sys.executable, "-m", "tracekit", "attribute", run_id, "--db", str(server.db),
                             "--format", "json"], capture_output=True, text=True, timeout=300)
    assert ranked.returncode == 0, ranked.stderr
    top = json.loads(ranked.stdout)
    assert (top[0]["agent"], top[0]["role"]) == ("tool:lookup_population", "root_cause")
