"""OTLP files with OpenInference / GenAI agent spans: edges derived at ingest, then attributed."""

from __future__ import annotations

import json

from foundation_helpers import cli, query


def _attr(key, value):
    return {"key": key, "value": {"intValue": str(value)} if isinstance(value, int) else {"stringValue": value}}


def _span(span_id, name, start, attrs, status=None):
    span = {"traceId": "ab" * 16, "spanId": span_id, "name": name, "kind": 1,
            "startTimeUnixNano": str(start), "endTimeUnixNano": str(start + 1000),
            "attributes": [_attr(k, v) for k, v in attrs.items()]}
    if status:
        span["status"] = {"code": 2, "message": status}
    return span


def test_agent_edges_are_derived_at_ingest_and_attributed(tmp_path):
    spans = [
        _span("0000000000000001", "planner", 1_000, {
            "openinference.span.kind": "AGENT", "agent.name": "Planner", "graph.node.id": "plan",
            "output.value": "Look up the launch year of probe Kestrel-9 in the mission archive"}),
        _span("0000000000000002", "search", 10_000, {
            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "archive_search",
            "gen_ai.tool.call.id": "call_7",
            "gen_ai.prompt": "Look up the launch year of probe Kestrel-9 in the mission archive",
            "gen_ai.completion": "Kestrel-9 launched in 2031 according to the archive index"}),
        _span("0000000000000003", "writer", 20_000, {
            "openinference.span.kind": "AGENT", "agent.name": "Writer", "graph.node.id": "write",
            "graph.node.parent_id": "plan",
            "input.value": "Kestrel-9 launched in 2031 according to the archive index",
            "output.value": "FINAL ANSWER: 2031"}),
        _span("0000000000000004", "checker", 30_000, {
            "openinference.span.kind": "AGENT", "agent.name": "Checker", "graph.node.parent_id": "write",
            "input.value": "FINAL ANSWER: 2031"}, status="check failed: 2031 is wrong"),
    ]
    request = {"resourceSpans": [{"resource": {"attributes": [_attr("service.name", "probe-agents"),
                                                              _attr("tracekit.run_name", "otlp-agents")]},
                                  "scopeSpans": [{"scope": {"name": "test"}, "spans": spans}]}]}
    (tmp_path / "trace.otlp.json").write_text(json.dumps(request))
    for _ in range(2):  # ingesting again re-derives the same edges, not more
        done = cli(tmp_path, "ingest", "trace.otlp.json")
        assert done.code == 0, done.err
    links = query(tmp_path / "store.duckdb",
                  "SELECT src_span_id, dst_span_id, relation, provenance FROM links ORDER BY ALL")
    assert ("0000000000000001", "0000000000000002", "consumes", "observed") in links
    assert ("0000000000000001", "0000000000000003", "graph_parent", "declared") in links
    assert ("0000000000000002", "0000000000000003", "consumes", "observed") in links
    assert ("0000000000000003", "0000000000000004", "graph_parent", "declared") in links
    assert len(links) == len(set(links))
    run = query(tmp_path / "store.duckdb", "SELECT name FROM runs")[0][0]
    ranked = json.loads(cli(tmp_path, "attribute", run, "--format", "json").out)
    assert (ranked[0]["agent"], ranked[0]["role"]) == ("tool:archive_search", "root_cause")
