"""Content capture hint: runs whose agent steps carry no text say so in `attribute` and the dashboard, naming the switch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from foundation_helpers import REPO, cli
from tracekit.ingest import ingest_paths

SWITCH = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true"


def genai_run(path: Path, *, content: bool) -> Path:
    """A failed two-agent conversation as the OTel GenAI conventions record it, with or without message text
    (GenAI instrumentations leave the text out unless content capture is switched on)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "crew"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("genai")
    with tracer.start_as_current_span("conversation", attributes={"session.id": f"s-{content}"}) as root:
        for agent, said in (("Researcher", "the population is 9,999"), ("Writer", "report: population 9,999")):
            attrs = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent, "session.id": f"s-{content}"}
            if content:
                attrs["gen_ai.completion"] = said
            with tracer.start_as_current_span(f"invoke_agent {agent}", attributes=attrs):
                pass
        root.set_status(Status(StatusCode.ERROR, "wrong answer"))
    provider.shutdown()
    path.write_bytes(encode_spans(memory.get_finished_spans()).SerializeToString())
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("hint")
    db = tmp / "store.duckdb"
    ingest_paths([genai_run(tmp / "bare.otlp.pb", content=False), genai_run(tmp / "full.otlp.pb", content=True)], db)
    return db


def test_attribute_warns_when_steps_carry_no_content_and_names_the_switch(store: Path) -> None:
    bare = cli(store.parent, "attribute", "s-False", "--db", str(store), "--format", "json")
    assert bare.code == 0, bare.err
    assert "content capture looks switched off" in bare.err and SWITCH in bare.err
    assert json.loads(bare.out)  # stdout stays the candidates' JSON
    full = cli(store.parent, "attribute", "s-True", "--db", str(store))
    assert full.code == 0, full.err
    assert "content capture" not in full.err and "Writer" in full.out


def test_attribute_runs_carries_the_hint_per_run(store: Path) -> None:
    from tracekit.analysis.attribution import attribute_runs

    hints = {name: attribute_runs(store, name)[0]["content_hint"] for name in ("s-False", "s-True")}
    assert hints["s-True"] is None and SWITCH in hints["s-False"]


def test_dashboard_agents_page_warns_about_content_capture(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    from tracekit.store.db import connect
    from tracekit.store.queries import resolve_run

    with connect(store, create=False) as con:
        runs = {name: resolve_run(con, name) for name in ("s-False", "s-True")}
    warnings = {}
    for name, run_id in runs.items():
        monkeypatch.setenv("TRACEKIT_DB", str(store))
        at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=120)
        at.query_params["run"] = run_id
        at.switch_page("views/agents.py")
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        warnings[name] = " ".join(str(w.value) for w in at.warning)
    assert "content capture looks switched off" in warnings["s-False"] and SWITCH in warnings["s-False"]
    assert "content capture" not in warnings["s-True"]
