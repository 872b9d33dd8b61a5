"""Dashboard pages rendered with Streamlit's AppTest on stores built from fixtures through the real paths."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard_stores import BASE_NS, SCRIPT, ingest, whowhen_log, write_training_run
from foundation_helpers import REPO, assert_one_line_error, cli, clean_env

APP = REPO / "dashboard" / "app.py"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One store: a tiny fault-injection campaign (real runs), the LangGraph workflow fixture with a wrong
    tool result, a healthy and a straggling training job, a Who&When import; the collective-anomaly and
    attribution analyses stored as a user would run them."""
    from tracekit.analysis.attribution import attribute_run
    from tracekit.analysis.collectives import detect_run
    from tracekit.ingest.whowhen import import_whowhen
    from tracekit.store.db import connect

    tmp = tmp_path_factory.mktemp("dash")
    db = tmp / "store.duckdb"
    done = subprocess.run([sys.executable, "-m", "tracekit", "campaign", "run", str(REPO / "fixtures/campaigns/tiny.toml"),
                           "--db", str(db)], cwd=tmp, env=clean_env(tmp), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    sys.path.insert(0, str(REPO / "fixtures"))
    from agents_workflow import record_workflow

    langgraph = record_workflow("wrong_tool", 2, str(tmp / "spool"), name="lg-wrong-tool")["run_id"]
    healthy = write_training_run(tmp / "spool", "ddp-healthy")
    faulty = write_training_run(tmp / "spool", "ddp-straggler", slow_rank=2, base_ns=BASE_NS + 10**12)
    ingest(tmp / "spool", db)
    report = import_whowhen(whowhen_log(tmp / "whowhen" / "Hand-Crafted"), db)
    agents = report.runs[0]["run_id"]
    with connect(db) as con:
        detect_run(con, healthy)
        detect_run(con, faulty)
        attribute_run(con, agents)
        attribute_run(con, langgraph)
        campaign = con.execute("SELECT campaign_id FROM campaigns").fetchone()[0]
        campaign_run = con.execute("SELECT run_id FROM runs WHERE kind = 'campaign' AND status = 'error' LIMIT 1").fetchone()[0]
    return {"db": str(db), "healthy": healthy, "faulty": faulty, "agents": agents, "langgraph": langgraph,
            "campaign": campaign,
            "campaign_run": campaign_run}


def render(store: dict[str, str], monkeypatch: pytest.MonkeyPatch, page: str | None = None, run: str | None = None,
           **params: str) -> AppTest:
    monkeypatch.setenv("TRACEKIT_DB", store["db"])
    at = AppTest.from_file(str(APP), default_timeout=120)
    if run:
        at.query_params["run"] = run
    for k, v in params.items():
        at.query_params[k] = v
    if page:
        at.switch_page(f"views/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest, kind: str) -> list[str]:
    return [str(e.value) for e in at.get(kind)]


# Every page on every kind of run is rendered by the tests below (each checks no exception was raised);
# these are the combinations no other test covers.
@pytest.mark.parametrize("page,run_key", [("timeline", "agents"), ("training", "agents"), ("agents", "healthy")])
def test_pages_render_on_any_run(store, monkeypatch, page, run_key) -> None:
    at = render(store, monkeypatch, page, store[run_key])
    assert at.title and not at.error


def test_runs_page_lists_runs_with_top_finding_filters_and_links(store, monkeypatch) -> None:
    at = render(store, monkeypatch)
    frame = at.dataframe[0].value
    assert {store["healthy"], store["faulty"], store["agents"]} <= set(frame["run_id"])
    straggler = frame[frame["run_id"] == store["faulty"]].iloc[0]
    assert straggler["kind"] == "training" and straggler["spans"] == 360 and "rank:2" in straggler["top_finding"]
    assert straggler["open"] == f"./training?run={store['faulty']}"
    at.multiselect(key="f_kind").select("agents").run()
    assert set(at.dataframe[0].value["kind"]) == {"agents"}
    at.multiselect(key="f_kind").unselect("agents").run()
    at.text_input(key="f_search").input("straggler").run()
    assert list(at.dataframe[0].value["name"]) == ["ddp-straggler"]
    links = at.get("page_link")
    assert any("training" in str(link.proto.page) for link in links), [link.proto for link in links]


def test_timeline_highlights_injected_faults_and_shows_the_span_tree(store, monkeypatch) -> None:
    at = render(store, monkeypatch, "timeline", store["campaign_run"])
    gantt = at.get("plotly_chart")[0].proto.spec
    # the injected fault is a marker, the span it hit is set apart, the crash it caused is an observed fault
    assert '"injected fault"' in gantt and '"span hit by a fault"' in gantt and '"observed fault"' in gantt
    # the span picker lists errors first; the selected span shows its tree, attributes and status
    span = at.selectbox(key="tl_span")
    assert span.value
    tree = next(d.value for d in at.dataframe if "depth" in d.value.columns)
    assert span.value in set(tree["span_id"]) and (tree["depth"] == 0).sum() == 1
    assert any("status `error`" in m for m in texts(at, "markdown"))


def test_timeline_of_a_training_run_draws_every_rank(store, monkeypatch) -> None:
    at = render(store, monkeypatch, "timeline", store["faulty"])
    spec = at.get("plotly_chart")[0].proto.spec
    assert all(f'"rank:{r}"' in spec for r in range(4))
    assert "360 of 360 spans drawn" in " ".join(texts(at, "caption"))


def test_training_page_names_the_blamed_rank(store, monkeypatch) -> None:
    at = render(store, monkeypatch, "training", store["faulty"])
    blame = texts(at, "alert_error") or [e.value for e in at.error]
    assert blame and "rank:2" in blame[0] and "straggler" in blame[0]
    heat = [c.proto.spec for c in at.get("plotly_chart")]
    assert len(heat) == 4  # three heatmaps and the per-rank lines
    assert all("⚠ rank 2" in spec for spec in heat) and not any("⚠ rank 1" in spec for spec in heat)


def test_training_page_of_a_healthy_run_blames_nobody(store, monkeypatch) -> None:
    at = render(store, monkeypatch, "training", store["healthy"])
    assert not at.error
    assert any("No anomaly" in s.value for s in at.success)
    assert not any("⚠" in c.proto.spec for c in at.get("plotly_chart"))


def test_agent_page_lists_the_root_cause_first_and_shows_html_as_text(store, monkeypatch) -> None:
    at = render(store, monkeypatch, "agents", store["agents"])
    cands = at.dataframe[0].value
    assert cands.iloc[0]["role"] == "ROOT CAUSE" and cands.iloc[0]["agent"] == "WebSurfer" and cands.iloc[0]["step"] == 2
    assert "symptom" in set(cands["role"])
    assert "Root cause: **WebSurfer** at step **2**" in at.error[0].value
    # the root cause is selected by default; its message holding <script> is a plain text element
    assert any(SCRIPT in t for t in texts(at, "text"))
    assert not at.get("html")
    assert not any("<script>" in m for m in texts(at, "markdown") + texts(at, "caption"))
    graph = at.get("plotly_chart")[0].proto.spec
    assert "<script>" not in graph and "&lt;script&gt;" in graph  # hover text is escaped, not markup
    assert "ROOT CAUSE" in graph


def test_agent_page_on_the_langgraph_fixture_blames_the_tool_and_marks_the_checker_a_symptom(store, monkeypatch) -> None:
    at = render(store, monkeypatch, "agents", store["langgraph"])
    cands = at.dataframe[0].value
    assert (cands.iloc[0]["role"], cands.iloc[0]["agent"]) == ("ROOT CAUSE", "tool:lookup_population")
    assert dict(zip(cands["agent"], cands["role"]))["checker"] == "symptom"
    graph = at.get("plotly_chart")[0].proto.spec
    assert '"declared edge"' in graph and '"observed edge"' in graph and "supervisor" in graph
    # the selected step is the root cause by default and its content is shown as text
    assert "root_cause" in at.markdown[0].value and at.text and at.text[0].value.strip()


def test_no_page_can_render_raw_html() -> None:
    source = "\n".join(p.read_text() for p in (REPO / "dashboard").rglob("*.py"))
    assert not re.search(r"unsafe_allow_html|st\.html|components\.v1|st\.components", source)


def test_campaign_page_shows_chain_edges_and_side_by_side(store, monkeypatch) -> None:
    at = render(store, monkeypatch, "campaign", store["campaign_run"])
    assert at.selectbox(key="cp_campaign").value == store["campaign"]
    assert any("`tiny.valid:raise → tiny.request:raise → workload:retry:crash`" in w.value for w in at.warning)
    edges = at.dataframe[0].value
    assert len(edges) >= 2 and (edges["evidence runs"] >= 2).all()
    side = at.dataframe[-1].value
    assert {"profile", "injection", "change"} <= set(side.columns) and side["change"].abs().sum() > 0
    assert len(at.get("plotly_chart")) == 3  # graph and two timelines


def test_sql_page_answers_queries_and_cannot_touch_files(store, monkeypatch, tmp_path) -> None:
    at = render(store, monkeypatch, "sql")
    assert len(at.dataframe[0].value) > 0 and at.get("plotly_chart")
    at.text_area(key="sql_query").input("SELECT kind, count(*) AS n FROM runs GROUP BY kind ORDER BY kind").run()
    counts = dict(zip(at.dataframe[0].value["kind"], at.dataframe[0].value["n"]))
    assert counts["agents"] == 2 and counts["training"] == 2 and counts["campaign"] >= 6
    secret = tmp_path / "secret.csv"
    secret.write_text("a,b\n1,2\n")
    for query, why in ((f"SELECT * FROM read_csv('{secret}')", "Permission Error"), (f"SELECT * FROM '{secret}'", ""),
                       ("SELECT * FROM read_text('/etc/hostname')", "Permission Error")):
        at.text_area(key="sql_query").input(query).run()
        assert not at.exception
        assert at.error and "query failed" in at.error[0].value and why in at.error[0].value, query
        assert not at.dataframe
    out = tmp_path / "leak.csv"
    for query in (f"COPY (SELECT * FROM runs) TO '{out}'", "ATTACH ':memory:' AS m"):
        at.text_area(key="sql_query").input(query).run()
        assert at.error and "read-only" in at.error[0].value, query
    # a COPY after a harmless statement passes the first-word check; DuckDB's sandbox refuses it
    at.text_area(key="sql_query").input(f"SELECT 1; COPY runs TO '{out}'").run()
    assert at.error and "Permission Error" in at.error[0].value
    assert not out.exists()


def test_dashboard_command_help_and_missing_store(tmp_path) -> None:
    done = cli(tmp_path, "dashboard", "--help")
    assert done.code == 0 and "--db" in done.out and "--port" in done.out
    missing = cli(tmp_path, "dashboard", "--db", str(tmp_path / "nope.duckdb"), "--port", "0")
    assert_one_line_error(missing)
    assert "no tracekit store" in missing.err


def _streamlit_servers(port: int) -> list[int]:
    """Pids of live processes running Streamlit on `port` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = next((ln for ln in (entry / "status").read_text().splitlines() if ln.startswith("State:")), "")
        except OSError:
            continue
        if b"streamlit" in b" ".join(argv) and str(port).encode() in argv and "zombie" not in state:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_killing_the_dashboard_command_stops_its_server_and_frees_the_port(tmp_path, signum) -> None:
    """Guards the orphan seen before: `kill <pid of tracekit dashboard>` left the Streamlit child serving
    (a deleted store) on the port, and the next `tracekit dashboard` talked to it."""
    import os
    import signal
    import socket
    import time
    import urllib.request

    from tracekit.store.db import connect

    connect(tmp_path / "store.duckdb").close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tracekit", "dashboard", "--port", str(port)], cwd=tmp_path,
                            env=clean_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, "the dashboard did not come up"
                time.sleep(0.3)
        assert _streamlit_servers(port)
        os.kill(proc.pid, getattr(signal, signum))  # what a user's `kill <pid>` or Ctrl-C does
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.2)
    assert _streamlit_servers(port) == []
    with socket.socket() as s:  # the port is free again for the next server (which, as Streamlit does,
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # may reuse it past TIME_WAIT)
        s.bind(("127.0.0.1", port))
        s.listen()
