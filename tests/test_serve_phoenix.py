"""Findings back out to Phoenix: `tracekit export RUN --to phoenix URL` against a real local Phoenix server.

The server (``python -m phoenix.server.main serve``, the ``arize-phoenix`` package) runs offline on
free ports with its SQLite database in a temporary working directory; the test is skipped when the
package is missing or the server does not come up.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundation_helpers import assert_one_line_error, cli
from test_serve_content import genai_run
from tracekit.ingest import ingest_paths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("phoenix.server.main", reason="arize-phoenix is not installed")
    work = tmp_path_factory.mktemp("phoenix")
    port = _free_port()
    env = {**os.environ, "PHOENIX_WORKING_DIR": str(work), "PHOENIX_PORT": str(port), "PHOENIX_HOST": "127.0.0.1",
           "PHOENIX_GRPC_PORT": str(_free_port()), "PHOENIX_TELEMETRY_ENABLED": "false"}
    log = (work / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "phoenix.server.main", "serve"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # it migrates its database and builds its app first (~40 s here)
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip("the Phoenix server did not start: " + (work / "server.log").read_text()[-500:])
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _annotations(url: str, span_ids: list[str]) -> list[dict]:
    query = urllib.parse.urlencode([("span_ids", s) for s in span_ids] + [("limit", "100")])
    with urllib.request.urlopen(f"{url}/v1/projects/default/span_annotations?{query}", timeout=30) as r:
        return json.loads(r.read())["data"]


def test_root_cause_and_symptom_labels_reach_phoenix_as_span_annotations(phoenix: str, tmp_path: Path) -> None:
    db = tmp_path / "store.duckdb"
    ingest_paths([genai_run(tmp_path / "run.otlp.pb", content=True)], db)
    attributed = cli(tmp_path, "attribute", "s-True", "--db", str(db), "--format", "json")
    assert attributed.code == 0, attributed.err
    found = json.loads(attributed.out)
    labelled = {c["span_id"]: c["role"] for c in found if c["role"] in ("root_cause", "symptom")}
    assert "root_cause" in labelled.values()
    # Phoenix does not hold the run's spans yet: they are sent first, then annotated
    first = cli(tmp_path, "export", "s-True", "--to", "phoenix", phoenix, "--db", str(db))
    assert first.code == 0, first.err
    assert f"posted {len(labelled)} span annotation(s)" in first.out and "after sending the run's spans" in first.out
    got = _annotations(phoenix, list(labelled))
    assert {a["span_id"]: a["result"]["label"] for a in got} == labelled
    root = next(a for a in got if a["result"]["label"] == "root_cause")
    assert root["name"] == "tracekit" and root["annotator_kind"] == "CODE" and "agent " in root["result"]["explanation"]
    # posting again updates the same annotations (and needs no spans sent)
    again = cli(tmp_path, "export", "s-True", "--to", "phoenix", phoenix, "--db", str(db))
    assert again.code == 0 and "after sending" not in again.out, again.err
    assert len(_annotations(phoenix, list(labelled))) == len(labelled)


def test_bad_destinations_are_one_line_errors(tmp_path: Path) -> None:
    db = tmp_path / "store.duckdb"
    ingest_paths([genai_run(tmp_path / "run.otlp.pb", content=True)], db)
    assert cli(tmp_path, "attribute", "s-True", "--db", str(db)).code == 0
    assert_one_line_error(cli(tmp_path, "export", "s-True", "--to", "jaeger", "http://x", "--db", str(db)))
    assert_one_line_error(cli(tmp_path, "export", "s-True", "--db", str(db)))  # neither --format/-o nor --to
    closed = f"http://127.0.0.1:{_free_port()}"
    done = cli(tmp_path, "export", "s-True", "--to", "phoenix", closed, "--db", str(db))
    assert_one_line_error(done)
    assert "cannot reach Phoenix" in done.err
