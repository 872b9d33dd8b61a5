"""Capture API: @tracekit.trace on every kind of function, tracekit.span, SpoolSpanExporter on a user's own provider."""

from __future__ import annotations

import json

import pytest

from foundation_helpers import clean_env, cli, query, run_py

DECORATED_PROGRAM = """
import asyncio, json
import tracekit

tracekit.init(run="decorators", node="service:app", flush_interval_ms=50)

@tracekit.trace
def inner():
    return "inner"

@tracekit.trace
def plain(x):
    inner()
    return x + 1

@tracekit.trace(name="custom-name", node="service:other", attributes={"team": "payments", "n": 3})
def with_args():
    return "ok"

@tracekit.trace
async def coro():
    await asyncio.sleep(0)
    inner()
    return 3

@tracekit.trace
def gen(n):
    for i in range(n):
        inner()
        yield i
    return "done"

@tracekit.trace
async def agen(n):
    for i in range(n):
        await asyncio.sleep(0)
        yield i

class Boom(Exception):
    pass

ERR = Boom("boom")

@tracekit.trace
def fails():
    raise ERR

@tracekit.trace
async def afails():
    raise ERR

@tracekit.trace
def gfails():
    yield 1
    raise ERR

@tracekit.trace
async def agfails():
    yield 1
    raise ERR

same = {}
def catch(label, fn):
    try:
        fn()
    except Boom as exc:
        same[label] = exc is ERR

results = {
    "plain": plain(1), "with_args": with_args(), "coro": asyncio.run(coro()),
    "gen": list(gen(2)),
    "names": [plain.__name__, coro.__name__, gen.__name__],
}
async def collect(ait):
    return [x async for x in ait]
results["agen"] = asyncio.run(collect(agen(3)))
catch("sync", fails)
catch("async", lambda: asyncio.run(afails()))
catch("gen", lambda: list(gfails()))
catch("agen", lambda: asyncio.run(collect(agfails())))
with tracekit.span("block", node="service:db", rows=10, table="orders", skip=None) as sp:
    sp.add_event("checkpoint", {"k": 1})
    plain(5)
results["same_exception_object"] = same
print(json.dumps(results))
"""


def test_decorators_spans_and_errors_end_to_end(tmp_path):
    done = run_py(tmp_path, DECORATED_PROGRAM)
    assert done.code == 0, done.err
    results = json.loads(done.out)
    assert results["plain"] == 2 and results["with_args"] == "ok" and results["coro"] == 3
    assert results["gen"] == [0, 1] and results["agen"] == [0, 1, 2]
    assert results["names"] == ["plain", "coro", "gen"]  # functools.wraps kept the identity
    # exceptions propagate unchanged: the very same object
    assert results["same_exception_object"] == {"sync": True, "async": True, "gen": True, "agen": True}
    assert "records ingested" in done.err  # the owning process ingested at exit

    db = tmp_path / "store.duckdb"
    (run_id,) = [r[0] for r in query(db, "SELECT run_id FROM runs WHERE name = 'decorators'")]
    spans = query(db, "SELECT span_id, parent_id, name, node, status, status_message, attributes::VARCHAR, run_id "
                      "FROM spans")
    by_name: dict[str, list[tuple]] = {}
    for row in spans:
        by_name.setdefault(row[2], []).append(row)
    # every span carries the run id and a node
    assert all(r[7] == run_id and r[3] for r in spans)
    assert {r[3] for r in by_name["plain"]} == {"service:app"}
    (custom,) = by_name["custom-name"]
    assert custom[3] == "service:other" and json.loads(custom[6]) == {"team": "payments", "n": 3}
    # nesting: inner's parent is the calling span, also inside generators and coroutines
    ids = {r[0]: r for r in spans}
    parents = sorted(ids[r[1]][2] for r in by_name["inner"])
    assert parents == ["coro", "gen", "gen", "plain", "plain"]
    assert len(by_name["gen"]) == 1 and len(by_name["agen"]) == 1
    # errors: status error, the message, an exception event; for each function kind
    for name in ("fails", "afails", "gfails", "agfails"):
        (row,) = by_name[name]
        assert row[4] == "error" and row[5] == "Boom: boom", row
        events = query(db, "SELECT name, attributes->>'exception.type', attributes->>'exception.message' "
                           "FROM events WHERE span_id = ?", [row[0]])
        assert [(n, t.rsplit(".", 1)[-1], m) for n, t, m in events] == [("exception", "Boom", "boom")], name
    assert all(r[4] != "error" for n in ("plain", "coro", "gen", "agen", "block") for r in by_name[n])
    # tracekit.span: node, attributes (None dropped), events, and child spans
    (block,) = by_name["block"]
    assert block[3] == "service:db" and json.loads(block[6]) == {"rows": 10, "table": "orders"}
    assert query(db, "SELECT name FROM events WHERE span_id = ?", [block[0]]) == [("checkpoint",)]
    assert any(r[1] == block[0] for r in by_name["plain"])
    # root spans failed (caught by the program, but failed): the run is marked error
    assert query(db, "SELECT status FROM runs WHERE run_id = ?", [run_id]) == [("error",)]


ONE_TIMER_PROGRAM = """
import json, threading, time
import tracekit

run = tracekit.init(run="one-timer", flush_interval_ms=50, ingest_at_exit=False)
for i in range(20):
    with tracekit.span("s", i=i):
        pass
stream = run.spool.stream("spans")
deadline = time.monotonic() + 20
while stream.records < 20 and time.monotonic() < deadline:  # no force_flush: the timer exports them
    time.sleep(0.01)
others = sorted(t.name for t in threading.enumerate() if t is not threading.main_thread())
print(json.dumps({"records": stream.records, "threads": others}))
"""


def test_spans_are_exported_by_the_spools_flusher_the_one_timer_thread(tmp_path):
    done = run_py(tmp_path, ONE_TIMER_PROGRAM)
    assert done.code == 0, done.err
    result = json.loads(done.out)
    assert result == {"records": 20, "threads": ["tracekit-spool"]}  # no span processor thread of its own


USER_PROVIDER_PROGRAM = """
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from tracekit import SpoolSpanExporter

provider = TracerProvider()
exporter = SpoolSpanExporter(run_name="mine", node="service:users-own")
provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60000))
tracer = provider.get_tracer("mine")
with tracer.start_as_current_span("outer"):
    for i in range(50):
        with tracer.start_as_current_span("work", attributes={"i": i, "tracekit.node": "rank:%d" % (i % 2)}):
            pass
        if i == 24:
            provider.force_flush()  # half is in the spool file, half still queued at exit
print(exporter.run_id)
# no provider.shutdown(): the SDK shuts the provider down at exit, which must flush and close the spool
"""


def test_spool_span_exporter_on_a_users_own_provider(tmp_path):
    done = run_py(tmp_path, USER_PROVIDER_PROGRAM)
    assert done.code == 0, done.err
    run_id = done.out.strip()
    ingested = cli(tmp_path, "ingest", "spool")
    assert ingested.code == 0, ingested.err
    db = tmp_path / "store.duckdb"
    # guards against the spool closing before the provider's exit flush (late spans dropped, run "aborted")
    assert query(db, "SELECT run_id, name, status FROM runs") == [(run_id, "mine", "ok")]
    assert "dropped" not in done.err
    assert dict(query(db, "SELECT node, count(*) FROM spans GROUP BY node")) == {
        "service:users-own": 1, "rank:0": 25, "rank:1": 25}
    # the node attribute became the column; it is not kept twice
    assert query(db, "SELECT count(*) FROM spans WHERE attributes->>'tracekit.node' IS NOT NULL") == [(0,)]


def test_tracekit_disabled_turns_capture_off(tmp_path):
    from foundation_helpers import clean_env

    program = """
    import tracekit
    run = tracekit.init(run="off")

    @tracekit.trace
    def work(i):
        return i

    print(sum(work(i) for i in range(100)), tracekit.current_run())
    """
    done = run_py(tmp_path, program, env=clean_env(tmp_path, TRACEKIT_DISABLED="1"))
    assert done.code == 0 and done.out.split() == ["4950", "None"], done.err
    assert not (tmp_path / "spool").exists() and not (tmp_path / "store.duckdb").exists()


# --- the lean span path (issue #20) ------------------------------------------------------------

BOTH_PATHS_PROGRAM = """
import asyncio, tracekit
from opentelemetry import trace

run = tracekit.init(run="paths", node="service:app", flush_interval_ms=50)
print("lean" if run.lean is not None and run.lean.enabled else "sdk")

@tracekit.trace(name="leaf", attributes={"team": "payments", "n": 3, "tags": ["a", "b"], "skip": None})
def leaf(i):
    trace.get_current_span().set_attribute("i", i)
    return i

@tracekit.trace(node="service:db")
def fails():
    raise KeyError("missing")

@tracekit.trace
def gen():
    yield leaf(1)
    yield leaf(2)

@tracekit.trace
async def coro():
    return leaf(3)

@tracekit.trace
def root():
    leaf(0)
    list(gen())
    asyncio.run(coro())
    with tracekit.span("block", node="rank:2", rows=10) as sp:
        sp.set_attribute("ratio", 0.5)
        sp.add_event("retry", {"attempt": 2})
        sp.set_status(trace.Status(trace.StatusCode.OK))
    try:
        fails()
    except KeyError:
        pass

root()
"""


def _comparable(db) -> tuple[list, list]:
    """Every stored span and event with ids replaced by the name of the span they point to, times by order checks."""
    spans = query(db, "SELECT span_id, parent_id, trace_id, name, node, kind, status, status_message, "
                      "CAST(attributes AS VARCHAR), start_ns, end_ns FROM spans ORDER BY start_ns")
    name_of = {s[0]: s[3] for s in spans}
    assert len({s[2] for s in spans}) == 1 and all(len(s[0]) == 16 and len(s[2]) == 32 for s in spans)
    assert all(s[9] <= s[10] for s in spans)
    rows = [(s[3], name_of.get(s[1]), *s[4:8], json.loads(s[8])) for s in spans]
    events = []
    for span_id, name, attrs in query(db, "SELECT span_id, name, CAST(attributes AS VARCHAR) FROM events ORDER BY ts_ns"):
        attrs = json.loads(attrs)
        stack = attrs.pop("exception.stacktrace", None)
        assert stack is None or stack.rstrip().endswith("KeyError: 'missing'")
        events.append((name_of[span_id], name, attrs))
    return rows, events


def test_lean_and_sdk_paths_store_the_same_records(tmp_path):
    """Field by field (ids and times aside, which differ by nature), the lean path stores what the SDK path does."""
    stored = {}
    for path, env in (("lean", {}), ("sdk", {"TRACEKIT_NO_LEAN": "1"})):
        work = tmp_path / path
        work.mkdir()
        done = run_py(work, BOTH_PATHS_PROGRAM, env=clean_env(work, **env))
        assert done.code == 0, done.err
        assert done.out.split()[0] == path
        stored[path] = _comparable(work / "store.duckdb")
    assert stored["lean"] == stored["sdk"]
    rows, events = stored["lean"]
    by_name = {r[0]: r for r in rows}
    assert [r[:2] for r in rows] == [("root", None), ("leaf", "root"), ("gen", "root"), ("leaf", "gen"), ("leaf", "gen"),
                                     ("coro", "root"), ("leaf", "coro"), ("block", "root"), ("fails", "root")]
    assert by_name["block"][2] == "rank:2" and by_name["fails"][2] == "service:db"
    assert rows[1][6] == {"team": "payments", "n": 3, "tags": ["a", "b"], "i": 0}
    assert by_name["fails"][4:6] == ("error", "KeyError: 'missing'") and by_name["block"][4] == "ok"
    assert ("block", "retry", {"attempt": 2}) in events
    assert ("fails", "exception", {"exception.type": "KeyError", "exception.message": "'missing'",
                                   "exception.escaped": "False"}) in events


NESTING_PROGRAM = """
import http.server, threading, json
import requests, tracekit
from opentelemetry import context, propagate, trace
from opentelemetry.instrumentation.requests import RequestsInstrumentor

run = tracekit.init(run="nesting", node="service:client", flush_interval_ms=50)
RequestsInstrumentor().instrument()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        token = context.attach(propagate.extract(dict(self.headers)))
        try:
            with tracekit.span("handler", node="service:server"):
                body = b"ok"
        finally:
            context.detach(token)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()

@tracekit.trace
def call_service():
    return requests.get(f"http://127.0.0.1:{server.server_port}/orders", timeout=10).text

with trace.get_tracer("other.instrumentation").start_as_current_span("sdk-outer"):
    assert call_service() == "ok"
server.shutdown()
print(json.dumps({"lean": run.lean is not None and run.lean.enabled}))
"""


def test_other_instrumentation_nests_under_and_around_lean_spans(tmp_path):
    """A real instrumentation (requests, over a local HTTP server): the SDK span of another instrumentation is the
    lean span's parent, the requests client span is its child, and the server's lean span (context propagated
    in the traceparent header) is the client span's child: one trace."""
    pytest.importorskip("opentelemetry.instrumentation.requests")
    done = run_py(tmp_path, NESTING_PROGRAM)
    assert done.code == 0, done.err
    assert json.loads(done.out.strip().splitlines()[-1]) == {"lean": True}
    spans = query(tmp_path / "store.duckdb", "SELECT span_id, parent_id, trace_id, name, kind FROM spans")
    by_name = {s[3]: s for s in spans}
    assert set(by_name) == {"sdk-outer", "call_service", "GET", "handler"}, spans
    assert by_name["sdk-outer"][1] is None
    assert by_name["call_service"][1] == by_name["sdk-outer"][0]
    assert by_name["GET"][1] == by_name["call_service"][0] and by_name["GET"][4] == "client"
    assert by_name["handler"][1] == by_name["GET"][0]
    assert len({s[2] for s in spans}) == 1


def test_adding_a_processor_turns_the_lean_path_off(tmp_path):
    """A user's processor added after init must see tracekit's spans: the decorator goes back to the SDK."""
    done = run_py(tmp_path, """
        import tracekit
        from opentelemetry import trace
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        run = tracekit.init(run="mixed", flush_interval_ms=50)
        @tracekit.trace
        def work():
            return 1
        work()
        memory = InMemorySpanExporter()
        trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(memory))
        work()
        print(run.lean.enabled, [s.name for s in memory.get_finished_spans()])
    """)
    assert done.code == 0, done.err
    assert done.out.strip().splitlines()[-1] == "False ['work']"
    assert query(tmp_path / "store.duckdb", "SELECT count(*) FROM spans") == [(2,)]
