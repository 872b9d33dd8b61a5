"""OTLP import: spans made by the real OpenTelemetry SDK, encoded by the real OTLP encoders, ingested as a run."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToJson
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from foundation_helpers import assert_one_line_error, cli, counts, query
from tracekit import conventions as conv
from tracekit.importers.otlp import read_otlp
from tracekit.ingest import ingest_paths


def make_spans(resource_attrs: dict[str, object] | None = None):
    """A small real trace: a server root, a client child with events, an error child, a linked span."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "orders", **(resource_attrs or {})}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test.scope", "1.2.3")
    with tracer.start_as_current_span("GET /orders", kind=SpanKind.SERVER,
                                      attributes={"http.status_code": 500, "ratio": 0.25, "ok": False,
                                                  "tags": ["a", "b"], "ids": [1, 2, 3]}) as root:
        with tracer.start_as_current_span("db.query", kind=SpanKind.CLIENT,
                                          attributes={"db.statement": "SELECT 1", conv.NODE: "service:db"}) as q:
            q.add_event("retry", {"attempt": 2})
            q.set_status(Status(StatusCode.OK))
        try:
            with tracer.start_as_current_span("charge") as charge:
                raise ValueError("card declined")
        except ValueError:
            pass
        root.set_status(Status(StatusCode.ERROR, "downstream failed"))
    with tracer.start_as_current_span("audit", links=[Link(charge.get_span_context(), {"why": "follows"})]):
        pass
    provider.shutdown()
    return memory.get_finished_spans()


def hexify(doc: dict) -> dict:
    """MessageToJson writes ids as base64 (proto3 mapping); OTLP/JSON writes them as hex."""
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for sp in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in sp:
                        sp[key] = base64.b64decode(sp[key]).hex()
                for lk in sp.get("links", []):
                    lk["traceId"] = base64.b64decode(lk["traceId"]).hex()
                    lk["spanId"] = base64.b64decode(lk["spanId"]).hex()
    return doc


def write_encoded(spans, path: Path, encoding: str) -> Path:
    request = encode_spans(spans)
    if encoding == "pb":
        path.write_bytes(request.SerializeToString())
    elif encoding == "json-base64":
        path.write_text(MessageToJson(request))
    elif encoding == "json-hex":
        path.write_text(json.dumps(hexify(json.loads(MessageToJson(request)))))
    elif encoding == "jsonl":  # the collector's file exporter: one request per line
        doc = hexify(json.loads(MessageToJson(request)))
        path.write_text(json.dumps(doc) + "\n" + json.dumps(doc) + "\n")
    return path


@pytest.mark.parametrize("encoding", ["pb", "json-base64", "json-hex"])
def test_round_trip_from_the_real_sdk_and_encoders(tmp_path, encoding):
    spans = make_spans()
    suffix = ".otlp.pb" if encoding == "pb" else ".otlp.json"
    path = write_encoded(spans, tmp_path / f"checkout{suffix}", encoding)
    db = tmp_path / "store.duckdb"

    report = ingest_paths([path], db)

    assert report.rejected == [] and report.quarantined == []
    assert report.records == len(spans) == 4
    (run_id,) = report.runs
    got = {r[0]: r for r in query(db, """
        SELECT span_id, trace_id, parent_id, name, kind, status, status_message, attributes::VARCHAR, node,
               start_ns, end_ns, run_id FROM spans""")}
    for sp in spans:
        row = got[format(sp.context.span_id, "016x")]
        assert row[1] == format(sp.context.trace_id, "032x")
        assert row[2] == (format(sp.parent.span_id, "016x") if sp.parent else None)
        assert row[3] == sp.name
        assert row[4] == sp.kind.name.lower()
        assert row[5] == sp.status.status_code.name.lower()
        assert row[6] == sp.status.description
        expected_attrs = {k: list(v) if isinstance(v, tuple) else v for k, v in sp.attributes.items()}
        node = expected_attrs.pop(conv.NODE, "service:orders")
        assert json.loads(row[7]) == expected_attrs
        assert row[8] == node
        assert (row[9], row[10]) == (sp.start_time, sp.end_time)
        assert row[11] == run_id
    events = query(db, "SELECT span_id, name, ts_ns, attributes::VARCHAR FROM events ORDER BY ts_ns")
    expected_events = sorted(
        (format(sp.context.span_id, "016x"), ev.name, ev.timestamp, dict(ev.attributes))
        for sp in spans for ev in sp.events
    )
    assert sorted((s, n, t, json.loads(a)) for s, n, t, a in events) == expected_events
    assert {e[1] for e in events} == {"retry", "exception"}
    # the OTel span link is kept as a declared dependency edge
    charge = next(s for s in spans if s.name == "charge")
    audit = next(s for s in spans if s.name == "audit")
    assert query(db, "SELECT src_span_id, dst_span_id, provenance FROM links") == [
        (format(charge.context.span_id, "016x"), format(audit.context.span_id, "016x"), "declared")]
    # the run is named after the file, and an error at the root makes it an error run
    assert query(db, "SELECT name, kind, status FROM runs") == [("checkout", "service", "error")]


def test_gzipped_files_load_and_a_damaged_gzip_is_rejected(tmp_path):
    import gzip

    raw = write_encoded(make_spans(), tmp_path / "x.otlp.pb", "pb").read_bytes()
    packed = gzip.compress(raw)
    (tmp_path / "good.otlp.pb.gz").write_bytes(packed)
    (tmp_path / "cut.otlp.pb.gz").write_bytes(packed[: len(packed) // 2])
    report = ingest_paths([tmp_path / "good.otlp.pb.gz", tmp_path / "cut.otlp.pb.gz"], tmp_path / "store.duckdb")
    assert report.records == 4
    assert [s for s, _ in report.rejected] == [str(tmp_path / "cut.otlp.pb.gz")]
    assert "gzip" in report.rejected[0][1]


def test_json_lines_file_and_torn_last_line(tmp_path):
    spans = make_spans()
    path = write_encoded(spans, tmp_path / "collector.otlp.jsonl", "jsonl")
    with path.open("a") as fh:
        fh.write('{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "ab')  # killed mid-line
    report = ingest_paths([path], tmp_path / "store.duckdb")
    assert report.rejected == []
    assert report.records == 2 * len(spans)
    assert report.torn and report.torn[0][0] == str(path)


def test_resource_run_id_names_the_run_and_reingest_adds_nothing(tmp_path):
    spans = make_spans({conv.RUN_ID: "feedc0de" * 4, conv.NODE: "host:worker-1"})
    path = write_encoded(spans, tmp_path / "a.otlp.pb", "pb")
    copy = tmp_path / "same-content.otlp.pb"
    copy.write_bytes(path.read_bytes())
    db = tmp_path / "store.duckdb"

    first = ingest_paths([path], db)
    before = counts(db)
    again = ingest_paths([path, copy], db)

    assert first.runs == {"feedc0de" * 4}
    assert query(db, "SELECT run_id, name FROM runs") == [("feedc0de" * 4, "orders")]
    # a span's own tracekit.node wins over the resource's
    assert dict(query(db, "SELECT name, node FROM spans")) == {
        "GET /orders": "host:worker-1", "db.query": "service:db", "charge": "host:worker-1",
        "audit": "host:worker-1"}
    assert again.records == 0 and again.unchanged_files == 2
    assert counts(db) == before


def test_bad_span_is_quarantined_with_its_id_and_the_rest_loads(tmp_path):
    doc = hexify(json.loads(MessageToJson(encode_spans(make_spans()))))
    spans = doc["resourceSpans"][0]["scopeSpans"][0]["spans"]
    spans[0]["startTimeUnixNano"] = "yesterday"
    bad_id = spans[0]["spanId"]
    spans[1]["traceId"] = "xyz"
    spans[2]["endTimeUnixNano"] = str(1 << 64)  # does not fit int64: quarantined, not an Arrow crash
    path = tmp_path / "partly-bad.otlp.json"
    path.write_text(json.dumps(doc))
    db = tmp_path / "store.duckdb"

    report = ingest_paths([path], db)

    assert report.records == 1
    assert [q.record_id for q in report.quarantined][0] == bad_id
    assert "startTimeUnixNano" in report.quarantined[0].error
    assert "traceId" in report.quarantined[1].error
    (raw,) = query(db, "SELECT raw FROM quarantine WHERE record_id = ?", [bad_id])[0]
    assert json.loads(raw)["startTimeUnixNano"] == "yesterday"
    assert "int64" in report.quarantined[2].error
    assert query(db, "SELECT count(*) FROM spans") == [(1,)]


def _bad_files(tmp: Path) -> dict[str, Path]:
    good_pb = encode_spans(make_spans()).SerializeToString()
    good_json = MessageToJson(encode_spans(make_spans()))
    files = {
        "truncated protobuf": good_pb[: len(good_pb) // 2],
        "truncated json": good_json[: len(good_json) // 2].encode(),
        "json that is not OTLP": b'{"hello": "world"}',
        "plain text": b"hello world, this is not a trace\n",
        "random bytes": bytes(range(256)) * 4,
        "protobuf bytes that decode to empty entries": b"\x0a\x00\x0a\x02\x12\x00",
        "empty": b"",
        "json with a bad structure": b'{"resourceSpans": [{"scopeSpans": "nope"}]}',
    }
    out = {}
    for i, (what, data) in enumerate(files.items()):
        path = tmp / f"bad{i}.otlp.{'pb' if 'protobuf' in what or 'bytes' in what else 'json'}"
        path.write_bytes(data)
        out[what] = path
    return out


def test_unreadable_otlp_files_are_rejected_whole(tmp_path):
    db = tmp_path / "store.duckdb"
    good = write_encoded(make_spans(), tmp_path / "good.otlp.pb", "pb")
    ingest_paths([good], db)
    before = counts(db)
    for what, path in _bad_files(tmp_path).items():
        report = ingest_paths([path], db)
        assert report.records == 0, what
        assert len(report.rejected) == 1 and report.rejected[0][0] == str(path), what
        message = report.rejected[0][1]
        assert str(path) in message and "nothing was loaded" in message, (what, message)
        assert counts(db) == before, what


def test_cli_rejects_a_garbage_otlp_file_with_exit_2(tmp_path):
    good = write_encoded(make_spans(), tmp_path / "good.otlp.json", "json-hex")
    garbage = tmp_path / "garbage.pb"
    garbage.write_bytes(b"\x0a\xff\xff\xff\xff\x0f" + b"x" * 40)
    done = cli(tmp_path, "ingest", str(good), str(garbage), "--format", "json")
    assert done.code == 2, done
    assert "Traceback" not in done.err
    report = json.loads(done.out)
    assert report["records"] == 4 and report["rejected"][0]["source"] == str(garbage)
    assert "neither OTLP JSON nor OTLP protobuf" in done.err


def test_read_otlp_gives_reusable_resource_records(tmp_path):
    path = write_encoded(make_spans({"tracekit.run_kind": "agents"}), tmp_path / "x.otlp.pb", "pb")
    otlp = read_otlp(path)
    assert otlp.encoding == "protobuf" and otlp.span_count == 4
    (resource,) = otlp.resources
    assert resource.service_name == "orders"
    charge = next(s for s in resource.spans if s.name == "charge")
    assert charge.scope_name == "test.scope" and charge.scope_version == "1.2.3"
    assert charge.status == "error" and [e.name for e in charge.events] == ["exception"]
    assert charge.events[0].attributes["exception.type"] == "ValueError"


def test_capture_reads_node_and_run_id_by_the_one_convention():
    from tracekit.capture.otel import span_record

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({conv.NODE: "service:billing"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("charge", attributes={conv.RUN_ID: "r" * 32, "amount": 3}):
        pass
    with tracer.start_as_current_span("refund", attributes={conv.NODE: "agent:Refunder"}):
        pass
    charge, refund = (span_record(s, "fallback") for s in memory.get_finished_spans())
    assert charge["node"] == "service:billing" and json.loads(charge["attributes"]) == {"amount": 3}
    assert refund["node"] == "agent:Refunder" and json.loads(refund["attributes"]) == {}


def test_a_directory_holding_spool_and_otlp_files_loads_both(tmp_path):
    from tracekit.capture.spool import Spool

    spool = Spool(tmp_path / "mixed" / "run1", "run1" + "0" * 28, "rank:0", flush_interval_ms=60000)
    spool.stream("spans").write({"trace_id": "ab" * 16, "span_id": "cd" * 8, "name": "from-spool",
                                 "start_ns": 10, "end_ns": 20})
    spool.close()
    write_encoded(make_spans(), tmp_path / "mixed" / "exported.otlp.json", "json-hex")
    report = ingest_paths([tmp_path / "mixed"], tmp_path / "store.duckdb")
    assert report.rejected == [] and report.records == 1 + 4
    assert len(report.runs) == 2


def test_the_same_spans_in_another_encoding_are_not_loaded_twice_into_a_named_run(tmp_path):
    """Guards against duplicate spans when a run's spans arrive as both .pb and .json (different hashes)."""
    spans = make_spans({conv.RUN_ID: "beef" * 8})
    db = tmp_path / "store.duckdb"
    first = ingest_paths([write_encoded(spans, tmp_path / "a.otlp.pb", "pb")], db)
    second = ingest_paths([write_encoded(spans, tmp_path / "a.otlp.json", "json-hex")], db)
    assert (first.records, second.records) == (4, 0)
    assert query(db, "SELECT count(*), count(DISTINCT span_id) FROM spans") == [(4, 4)]
    assert query(db, "SELECT count(*) FROM links") == [(1,)] and query(db, "SELECT count(*) FROM events") == [(2,)]


def test_docstring_examples_run():
    import doctest

    import tracekit.importers.otlp as otlp

    assert doctest.testmod(otlp).failed == 0


def test_spec_style_json_uppercase_hex_numeric_times_and_snake_case_fields(tmp_path):
    """The OTLP/JSON spec example's quirks: uppercase hex ids, numeric int64 times, enums as numbers;
    and proto3's alternative spellings: original field names and enum names."""
    camel = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
             "scopeSpans": [{"scope": {"name": "my.library", "version": "1.0.0"}, "spans": [{
                 "traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "EEE19B7EC3C1B174",
                 "parentSpanId": "EEE19B7EC3C1B173", "name": "I'm a server span",
                 "startTimeUnixNano": 1544712660000000000, "endTimeUnixNano": 1544712661000000000, "kind": 2,
                 "attributes": [{"key": "my.span.attr", "value": {"stringValue": "some value"}},
                                {"key": "nested", "value": {"kvlistValue": {"values": [
                                    {"key": "n", "value": {"intValue": "7"}},
                                    {"key": "xs", "value": {"arrayValue": {"values": [{"doubleValue": 1.5},
                                                                                       {"boolValue": True}]}}}]}}}]}]}]}]}
    snake = {"resource_spans": [{"scope_spans": [{"spans": [{
        "trace_id": "5b8efff798038103d269b633813fc60d", "span_id": "eee19b7ec3c1b175", "name": "snake",
        "start_time_unix_nano": "1544712660000000000", "end_time_unix_nano": "1544712661000000000",
        "kind": "SPAN_KIND_CLIENT", "status": {"code": "STATUS_CODE_OK"}}]}]}]}
    (tmp_path / "camel.json").write_text(json.dumps(camel))
    (tmp_path / "snake.json").write_text(json.dumps(snake))
    db = tmp_path / "store.duckdb"
    report = ingest_paths([tmp_path / "camel.json", tmp_path / "snake.json"], db)
    assert report.rejected == [] and report.quarantined == [] and report.records == 2
    rows = query(db, "SELECT trace_id, span_id, parent_id, kind, status, node, attributes::VARCHAR, start_ns "
                     "FROM spans ORDER BY span_id")
    assert rows[0][:6] == ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", "eee19b7ec3c1b173",
                           "server", "unset", "service:my.service")
    assert json.loads(rows[0][6]) == {"my.span.attr": "some value", "nested": {"n": 7, "xs": [1.5, True]}}
    assert rows[0][7] == 1544712660000000000
    assert rows[1][3:6] == ("client", "ok", "service:unknown_service")
    assert sorted(r[0] for r in query(db, "SELECT name FROM runs")) == ["camel", "snake"]


def test_a_batch_of_many_traces_loads_as_many_runs_at_once_without_duplicates(tmp_path, monkeypatch):
    """One run per trace (serve's rule): all runs of a file load together; a later batch repeating
    some traces adds none of their spans again, extends a trace that goes on, and settles status and times."""
    from opentelemetry import trace as otel_trace

    monkeypatch.setenv("TRACEKIT_RUN_BY", "trace")
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "chat"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    roots = []
    for i in range(120):
        with tracer.start_as_current_span(f"turn {i}") as root:
            with tracer.start_as_current_span("llm.call"):
                pass
            if i % 7 == 0:
                root.set_status(Status(StatusCode.ERROR, "failed"))
        roots.append(root)
    first_batch = list(memory.get_finished_spans())
    memory.clear()
    with tracer.start_as_current_span("late tool call", context=otel_trace.set_span_in_context(roots[0])):
        pass
    late = list(memory.get_finished_spans())
    provider.shutdown()
    db = tmp_path / "store.duckdb"
    one = ingest_paths([write_encoded(first_batch[: 2 * 90], tmp_path / "a.otlp.pb", "pb")], db)
    assert (one.records, len(one.runs)) == (180, 90)
    # traces 60..119 again (60..89 already stored), in another encoding, plus a span continuing trace 0
    two = ingest_paths([write_encoded(first_batch[2 * 60:] + late, tmp_path / "b.otlp.json", "json-hex")], db)
    assert (two.records, len(two.runs)) == (2 * 30 + 1, 61)
    assert query(db, "SELECT count(*), count(DISTINCT (run_id, span_id)), count(DISTINCT run_id) FROM spans") == \
        [(241, 241, 120)]
    trace0 = format(roots[0].get_span_context().trace_id, "032x")
    assert query(db, "SELECT count(*) FROM spans WHERE run_id = ?", [trace0]) == [(3,)]
    assert query(db, "SELECT any_value(r.ended_ns) = max(s.end_ns), any_value(r.started_ns) = min(s.start_ns), "
                     "any_value(r.name) FROM runs r JOIN spans s USING (run_id) WHERE run_id = ?", [trace0]) == \
        [(True, True, f"turn 0 {trace0[:8]}")]
    errors = {format(r.get_span_context().trace_id, "032x") for i, r in enumerate(roots) if i % 7 == 0}
    statuses = dict(query(db, "SELECT run_id, status FROM runs"))
    assert len(statuses) == 120 and {r for r, s in statuses.items() if s == "error"} == errors
    assert set(statuses.values()) == {"ok", "error"}
