"""The dashboard in a real browser: `tracekit dashboard` as a subprocess, headless Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dashboard_stores import BASE_NS, ingest, write_training_run
from foundation_helpers import clean_env

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() and not shutil.which("chromium"),
                                reason="chromium is not installed (install.sh installs it: apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the dashboard exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(url + "_stcore/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("the dashboard did not answer its health check in time")


def test_runs_and_training_pages_in_chromium(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from tracekit.store.db import connect
    from tracekit.analysis import REGISTRY

    db = tmp_path / "store.duckdb"
    write_training_run(tmp_path / "spool", "ddp-healthy")
    faulty = write_training_run(tmp_path / "spool", "ddp-straggler", slow_rank=2, base_ns=BASE_NS + 10**12)
    ingest(tmp_path / "spool", db)
    analysed = False
    if "collectives" in REGISTRY:
        try:
            module, func = REGISTRY["collectives"].entry_point.split(":")
            detect = getattr(__import__(module, fromlist=[func]), func)
        except (ImportError, AttributeError):
            detect = None
        if detect is not None:
            with connect(db) as con:
                detect(con, faulty)
            analysed = True

    port = _free_port()
    env = clean_env(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "tracekit", "dashboard", "--db", str(db), "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        first = proc.stdout.readline() if proc.stdout else ""
        url = f"http://127.0.0.1:{port}/"
        assert url in first, first
        _wait_healthy(url, proc)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url + "runs", wait_until="domcontentloaded")
            page.get_by_role("heading", name="Runs").wait_for(timeout=60_000)
            page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=60_000)
            page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
            assert page.get_by_text("Open training page").count() >= 1
            page.screenshot(path=str(tmp_path / "runs.png"), full_page=True)

            # the runs page links into the newest run's page: the straggling job's training page
            # (followed by its address: Streamlit keeps the link's container `inert` for Playwright's click)
            href = page.get_by_role("link", name="Open training page").first.get_attribute("href") or ""
            assert href.endswith(f"training?run={faulty}"), href
            page.goto(href if href.startswith("http") else url + href.lstrip("/"), wait_until="domcontentloaded")
            page.get_by_role("heading", name="Training run").wait_for(timeout=60_000)
            page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
            page.locator(".js-plotly-plot .heatmaplayer").first.wait_for(timeout=60_000)
            if analysed:
                page.get_by_text("Blamed:").first.wait_for(timeout=30_000)
                assert "rank:2" in page.get_by_text("Blamed:").first.inner_text()
            page.screenshot(path=str(tmp_path / "training.png"), full_page=True)
            browser.close()
        assert (tmp_path / "runs.png").stat().st_size > 10_000
        assert (tmp_path / "training.png").stat().st_size > 10_000
        print(f"screenshots: {tmp_path / 'runs.png'} {tmp_path / 'training.png'}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
