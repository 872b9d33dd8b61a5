"""The wheel as a user gets it: built from the tree, installed into fresh venvs (no extras, then each extra);
every command's --help and one real command per venv; a missing extra is one line naming it.

The venvs install offline from a wheelhouse (``$TRACEKIT_WHEELHOUSE``, default
``~/.cache/tracekit/wheelhouse``) that install.sh fills; whatever it lacks is downloaded into it once.
Two venvs install at a time, without compiling bytecode. torch comes from the pinned CPU wheel
(constraints.txt), never a CUDA build.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from foundation_helpers import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EXTRAS = ("torch", "ray", "dashboard", "serve", "judge")  # every user-facing extra (dev aside)
TARGETS = ("core", *EXTRAS)
WHEELHOUSE = Path(os.environ.get("TRACEKIT_WHEELHOUSE") or Path.home() / ".cache" / "tracekit" / "wheelhouse")
CONSTRAINTS = REPO / "constraints.txt"


def test_the_wheel_lists_every_package_of_the_tree() -> None:
    """The package list is explicit (dashboard/ ships as tracekit/dashboard): a new subpackage must join it."""
    declared = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {".".join(d.relative_to(REPO).parts) for d in (REPO / "tracekit").rglob("*")
               if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))} | {"tracekit"}
    on_disk |= {"tracekit." + ".".join(d.relative_to(REPO).parts) for d in (REPO / "dashboard").rglob("*")
                if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))} | {"tracekit.dashboard"}
    assert declared == on_disk
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"tracekit.dashboard": "dashboard"}


def test_every_extra_is_in_dev_and_named_by_the_cli() -> None:
    from tracekit.cli.extras import EXTRA_OF

    extras = PYPROJECT["project"]["optional-dependencies"]
    assert set(extras) == {*EXTRAS, "dev"}
    assert f"tracekit[{','.join(EXTRAS)}]" in extras["dev"]
    assert set(EXTRA_OF.values()) == set(EXTRAS)


# --- the built wheel in fresh venvs ----------------------------------------------------------------


@dataclass
class Venv:
    target: str
    root: Path
    work: Path

    def env(self, **extra: str) -> dict[str, str]:
        """No PYTHONPATH (the source tree must not leak in) and no inherited TRACEKIT_* settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACEKIT_", "PYTHON", "VIRTUAL_ENV"))}
        env.update(PATH=f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(self.root),
                   TRACEKIT_DB=str(self.work / "store.duckdb"), TRACEKIT_SPOOL_DIR=str(self.work / "spool"))
        env.update(extra)
        return env

    def run(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), cwd=self.work, env=self.env(**env), capture_output=True, text=True,
                              timeout=timeout)

    def tracekit(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.root / "bin" / "tracekit"), *args, **kw)  # type: ignore[arg-type]

    def python(self, code: str, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.root / "bin" / "python"), "-c", textwrap.dedent(code), *args, **kw)  # type: ignore[arg-type]


_download_lock = threading.Lock()


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env, timeout=900)


def _install(target: str, wheel_dir: Path, root: Path) -> Venv:
    venv = root / target
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    requirement = "tracekit" if target == "core" else f"tracekit[{target}]"
    offline = ["--python", str(venv / "bin" / "python"), "install", "-q", "--no-compile", "--no-index",
               "--find-links", str(wheel_dir), "--find-links", str(WHEELHOUSE), "-c", str(CONSTRAINTS), requirement]
    done = _pip(*offline)
    if done.returncode != 0:  # the wheelhouse lacks a requirement: fetch it once, then install offline again
        with _download_lock:
            got = _pip("download", "-q", "-d", str(WHEELHOUSE), "--find-links", str(wheel_dir), "-c", str(CONSTRAINTS),
                       requirement)
            assert got.returncode == 0, got.stderr[-3000:]
            for stale in WHEELHOUSE.glob("tracekit-*.whl"):  # only the wheel just built may be installed
                stale.unlink()
        done = _pip(*offline)
    assert done.returncode == 0, (target, done.stderr[-3000:])
    work = root / f"{target}-work"
    work.mkdir()
    return Venv(target, venv, work)


@pytest.fixture(scope="module")
def venvs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Venv]]]:
    """The wheel built once; a fresh venv per selected target, installed two at a time in the background,
    so the first targets' checks run while the later venvs install."""
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"  # build from a copy: the build writes build/ and *.egg-info next to the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so", "build")
    for name in ("tracekit", "dashboard"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    wheel_dir = root / "dist"
    built = _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir), str(src))
    assert built.returncode == 0, built.stderr[-3000:]
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    selected = [t for t in TARGETS if any(getattr(item, "callspec", None) is not None
                                          and item.callspec.params.get("target") == t
                                          and item.module is request.module for item in request.session.items)]
    with ThreadPoolExecutor(2) as pool:
        yield {t: pool.submit(_install, t, wheel_dir, root) for t in selected}


HELP_DRIVER = """
import json, sys
from typer.main import get_command
from typer.testing import CliRunner
from tracekit.cli import app

def paths(cmd, prefix=()):
    subs = getattr(cmd, "commands", None)
    if not subs:
        yield prefix
        return
    for name, sub in subs.items():
        yield from paths(sub, prefix + (name,))

runner = CliRunner()
out = {}
for path in paths(get_command(app)):
    result = runner.invoke(app, [*path, "--help"])
    out[" ".join(path)] = [result.exit_code, "Usage:" in result.output, repr(result.exception)[:200]]
print(json.dumps(out))
"""

CORE_COMMANDS = {"runs", "spans", "sql", "ingest", "export", "record", "version", "anomalies", "attribute", "idg",
                 "analyze", "import whowhen", "eval whowhen", "campaign run", "campaign report", "campaign list",
                 "dashboard", "serve"}

TRACED = """
import tracekit

@tracekit.trace(node="service:db")
def query(i):
    if i == 2:
        raise RuntimeError("db timeout")

for i in range(4):
    try:
        query(i)
    except RuntimeError:
        pass
"""


def _ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, (done.args, done.stdout[-2000:], done.stderr[-2000:])
    return done


def _missing_extra(done: subprocess.CompletedProcess[str], extra: str) -> None:
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1, (done.returncode, done.stderr)
    assert f"pip install 'tracekit[{extra}]'" in lines[0] and "Traceback" not in done.stderr


def _record_demo(v: Venv) -> str:
    (v.work / "demo.py").write_text(textwrap.dedent(TRACED))
    done = _ok(v.tracekit("record", "--run", "demo", "--", "python", "demo.py"))
    return done.stdout.strip().splitlines()[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # the server answers
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"nothing answered at {url}")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def check_core(v: Venv) -> None:
    run_id = _record_demo(v)
    runs = json.loads(_ok(v.tracekit("runs", "--format", "json")).stdout)
    assert [(r["run_id"], r["name"], r["spans"], r["errors"]) for r in runs] == [(run_id, "demo", 4, 1)]
    assert run_id[:12] in _ok(v.tracekit("runs", COLUMNS="200")).stdout  # a table shows the short id ...
    spans = json.loads(_ok(v.tracekit("spans", run_id[:12], "--errors", "--format", "json")).stdout)  # ... taken back
    assert [s["status_message"] for s in spans] == ["RuntimeError: db timeout"]
    assert json.loads(_ok(v.tracekit("anomalies", run_id[:12], "--format", "json")).stdout) == []  # polars, numpy
    campaign = _campaign(v)
    local = json.loads(_ok(v.tracekit("campaign", "run", str(campaign), "--format", "json", timeout=300)).stdout)
    assert local["runs"] >= 4  # scipy (the three-phase budget, fault causality) is core
    _ok(v.tracekit("campaign", "report", "packaging", "--format", "json"))
    _missing_extra(v.tracekit("dashboard", "--port", "0"), "dashboard")
    _missing_extra(v.tracekit("serve", "--http-port", str(_free_port()), "--grpc-port", "-1"), "serve")
    _missing_extra(v.tracekit("attribute", "--all", "--judge", TRACEKIT_JUDGE_BASE_URL="http://127.0.0.1:9/v1",
                              TRACEKIT_JUDGE_MODEL="m"), "judge")
    _missing_extra(v.tracekit("campaign", "run", str(campaign), "--executor", "ray"), "ray")


ONE_RANK_JOB = """
import os
import torch
import torch.distributed as dist

os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PORT"])
dist.init_process_group("gloo", rank=0, world_size=1)
t = torch.ones(4)
for _ in range(3):
    dist.all_reduce(t)
dist.destroy_process_group()
"""


def check_torch(v: Venv) -> None:
    (v.work / "job.py").write_text(textwrap.dedent(ONE_RANK_JOB))
    done = _ok(v.tracekit("record", "--run", "one-rank", "--kind", "training", "--", "python", "job.py",
                          PORT=str(_free_port()), TRACEKIT_NATIVE="0", timeout=300))
    run_id = done.stdout.strip().splitlines()[-1]
    count = json.loads(_ok(v.tracekit("sql", "SELECT count(*) AS n FROM collectives WHERE op = 'all_reduce'",
                                      "--format", "json")).stdout)
    assert count[0]["n"] >= 3
    _ok(v.tracekit("anomalies", run_id[:12], "--format", "json"))


def check_dashboard(v: Venv) -> None:
    _record_demo(v)
    app = _ok(v.python("from tracekit.cli.dashboard import app_path; print(app_path())")).stdout.strip()
    assert Path(app).is_relative_to(v.root), app  # found in the installed package, not the source tree
    rendered = v.python(f"""
        from streamlit.testing.v1 import AppTest
        at = AppTest.from_file({app!r}, default_timeout=120).run()
        assert not at.exception, at.exception
        print("rendered", [h.value for h in at.header] + [t.value for t in at.title])
    """)
    assert _ok(rendered).stdout.startswith("rendered"), rendered.stdout
    port = _free_port()
    proc = subprocess.Popen([str(v.root / "bin" / "tracekit"), "dashboard", "--port", str(port)], cwd=v.work,
                            env=v.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc)
    finally:
        _stop(proc)


def check_serve(v: Venv) -> None:
    port = _free_port()
    proc = subprocess.Popen([str(v.root / "bin" / "tracekit"), "serve", "--http-port", str(port), "--grpc-port", "-1",
                             "--interval", "0.2"], cwd=v.work, env=v.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/", proc)
        doc = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "js"}}]},
                                  "scopeSpans": [{"spans": [{
                                      "traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331",
                                      "name": "GET /cart", "kind": 2, "startTimeUnixNano": "1700000000000000000",
                                      "endTimeUnixNano": "1700000000500000000"}]}]}]}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/traces", data=json.dumps(doc).encode(),
                                         method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 200
    finally:
        _stop(proc)
    spans = json.loads(_ok(v.tracekit("sql", "SELECT name FROM spans", "--format", "json")).stdout)
    assert spans == [{"name": "GET /cart"}]


def check_judge(v: Venv) -> None:
    done = _ok(v.tracekit("attribute", "--all", "--judge", TRACEKIT_JUDGE_BASE_URL="http://127.0.0.1:9/v1",
                          TRACEKIT_JUDGE_MODEL="m", **{"TRACEKIT_DB": str(_empty_store(v))}))
    assert "no failed agent runs" in done.stdout


def _empty_store(v: Venv) -> Path:
    db = v.work / "empty.duckdb"
    _ok(v.python(f"from tracekit.store.db import connect; connect({str(db)!r}).close()"))
    return db


CAMPAIGN = """
[campaign]
name = "packaging"
root = "."
budget = 4
profile_repeats = 2
injection_repeats = 2
timeout_s = 60

[[workload]]
name = "retry"
target = "tiny_retry.app:main"

[faults]
types = ["raise"]
exception = "RuntimeError"
"""


def _campaign(v: Venv) -> Path:
    """A three-run campaign over the tiny retry fixture, in the venv's work directory."""
    shutil.copytree(REPO / "fixtures" / "tiny_retry", v.work / "tiny_retry",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (v.work / "c.toml").write_text(CAMPAIGN)
    return v.work / "c.toml"


def check_ray(v: Venv) -> None:
    done = _ok(v.tracekit("campaign", "run", str(_campaign(v)), "--executor", "ray", "--budget", "4", "--format", "json",
                          timeout=300, RAY_DISABLE_USAGE_STATS="1"))
    assert json.loads(done.stdout)["runs"] >= 4


def _help_cpu_s(v: Venv) -> float:
    """CPU time (user + system) of one `tracekit --help` in the venv."""
    proc = subprocess.Popen([str(v.root / "bin" / "tracekit"), "--help"], cwd=v.work, env=v.env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0
    return usage.ru_utime + usage.ru_stime


CHECKS = {"core": check_core, "torch": check_torch, "dashboard": check_dashboard, "serve": check_serve,
          "judge": check_judge, "ray": check_ray}


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_every_command_has_help_and_one_real_command_works(venvs: dict[str, Future[Venv]], target: str) -> None:
    v = venvs[target].result()
    _ok(v.tracekit("--help"))  # the first run writes the bytecode that pip (run with --no-compile here) would have
    help_s = min(_help_cpu_s(v) for _ in range(3))  # CPU seconds: the suite shares 2 cores with whatever else runs
    assert help_s < 1.0, f"tracekit --help took {help_s:.2f} s of CPU"
    assert _ok(v.tracekit("--version")).stdout.strip() == f"tracekit {PYPROJECT_VERSION}"
    helps = json.loads(_ok(v.python(HELP_DRIVER)).stdout)
    assert CORE_COMMANDS <= set(helps), sorted(helps)
    assert {name: r for name, r in helps.items() if r[:2] != [0, True]} == {}
    CHECKS[target](v)


PYPROJECT_VERSION = __import__("tracekit").__version__
