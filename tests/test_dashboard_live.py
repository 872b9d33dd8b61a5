"""The training page's live view: what a real `tracekit anomalies RUN --follow` publishes, rendered by AppTest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard_stores import write_training_run
from foundation_helpers import REPO, clean_env

from tracekit.capture.spool import write_run_manifest
from tracekit.follow import read_snapshots, snapshot_path

APP = REPO / "dashboard" / "app.py"


def follower(tmp: Path, name: str, db: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tracekit", "anomalies", name, "--follow", "--format", "json",
                             "--spool", str(tmp / "spool"), "--db", str(db), "--interval", "0.3"],
                            cwd=tmp, env=clean_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def live_page(db: Path, monkeypatch: pytest.MonkeyPatch, run: str | None = None) -> AppTest:
    monkeypatch.setenv("TRACEKIT_DB", str(db))
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.query_params["live"] = "1"
    if run:
        at.query_params["run"] = run
    at.switch_page("views/training.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def errors(at: AppTest) -> list[str]:
    return [str(e.value) for e in at.error]


def hold_write_lock(db: Path) -> subprocess.Popen:
    """Another process holding the store's write lock (as the follower does while it ingests)."""
    code = "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep(120)"
    holder = subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_live_view_shows_a_running_jobs_finding_while_the_follower_writes_the_store(tmp_path, monkeypatch) -> None:
    db = tmp_path / "t.duckdb"
    run_id = write_training_run(tmp_path / "spool", "live-straggler", slow_rank=2, steps=40)
    # the job is still running: its manifest has no end yet and its recorder (this process) is alive
    write_run_manifest(tmp_path / "spool" / run_id, {"run_id": run_id, "name": "live-straggler", "kind": "training",
                                                     "started_ns": 1, "attributes": {"world_size": 4},
                                                     "pid": os.getpid()})
    empty = live_page(db, monkeypatch)
    assert any("--follow" in str(i.value) for i in empty.info)  # no follower yet: how to start one

    proc = follower(tmp_path, "live-straggler", db)
    try:
        deadline = time.monotonic() + 120
        snap: dict = {}
        while time.monotonic() < deadline and not snap.get("findings"):
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            snaps = read_snapshots(db)
            snap = snaps[0] if snaps else {}
            time.sleep(0.3)
        assert snap.get("status") == "running" and snap["run_id"] == run_id
        assert (snap["findings"][0]["kind"], snap["findings"][0]["subject"]) == ("straggler", "rank:2")
        assert snapshot_path(db, run_id).exists()
        # the page reads the snapshot, not the store: it renders while the follower is running
        at = live_page(db, monkeypatch, run="live-straggler")
        assert errors(at) and "rank:2" in errors(at)[0] and "straggler" in errors(at)[0]
        status = {m.label: m.value for m in at.metric}
        assert status["Follower"] == "running" and status["Findings"] == "1"
        chart = at.get("plotly_chart")[0].proto.spec
        assert "⚠ rank 2" in chart and "rank 0" in chart
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert [json.loads(line)["subject"] for line in out.splitlines()] == ["rank:2"]
    assert read_snapshots(db)[0]["status"] == "stopped"


def test_live_view_renders_while_another_process_holds_the_stores_write_lock(tmp_path, monkeypatch) -> None:
    db = tmp_path / "t.duckdb"
    write_training_run(tmp_path / "spool", "ended-straggler", slow_rank=1, steps=30)
    proc = follower(tmp_path, "ended-straggler", db)
    out, err = proc.communicate(timeout=120)  # an ended run: one ingest, the full detection, then it stops
    assert proc.returncode == 0, err[-2000:]
    assert json.loads(out.splitlines()[0])["subject"] == "rank:1"
    holder = hold_write_lock(db)
    try:
        at = live_page(db, monkeypatch)
        assert errors(at) and "rank:1" in errors(at)[0]
        assert {m.label: m.value for m in at.metric}["Follower"] == "ended"
        # live off, the page needs the store: the lock is named rather than a traceback
        monkeypatch.setenv("TRACEKIT_DB", str(db))
        stored = AppTest.from_file(str(APP), default_timeout=120)
        stored.switch_page("views/training.py")
        stored.run()
        assert not stored.exception
        assert any("lock" in e.lower() for e in errors(stored)), errors(stored)
    finally:
        holder.kill()
        holder.wait()
    at = live_page(db, monkeypatch)  # the same page, a new snapshot after the follower's next poll
    snap = json.loads(snapshot_path(db, read_snapshots(db)[0]["run_id"]).read_text())
    snap["findings"].append({"kind": "hang", "subject": "rank:3", "first_step": 29, "confidence": 0.5, "summary": "x"})
    snap["updated_ns"] = time.time_ns()
    snapshot_path(db, snap["run_id"]).write_text(json.dumps(snap))
    at.run()
    assert {m.label: m.value for m in at.metric}["Findings"] == "2"
    assert "hang" in at.dataframe[0].value["kind"].tolist()
