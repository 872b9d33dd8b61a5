"""A real two-host job: two network namespaces (each its own hostname), one `tracekit record -- torchrun
--nnodes 2 --nproc-per-node 2` per host over c10d rendezvous, each host its own spool; ingest both ->
one run of 4 ranks whose fault on the second host is named, also with that host's clock shifted +-50 ms
(libfaketime)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "fixtures" / "ddp_job.py"
FAKETIME_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1")
STEPS, ONSET = "20", 8

pytestmark = [pytest.mark.slow, pytest.mark.netns]


def _launch_module():
    spec = importlib.util.spec_from_file_location("netns_launch", ROOT / "fixtures" / "netns_launch.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _unsupported() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    return _launch_module().can_use_netns()


def _faketime() -> str | None:
    return next((lib for lib in FAKETIME_LIBS if Path(lib).exists()), None)


def _env(tmp: Path, host: int, iface: str, shift_ms: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEKIT_")}
    env.update(TRACEKIT_SPOOL_DIR=str(tmp / f"host{host}" / "spool"), TRACEKIT_DB=str(tmp / f"host{host}.duckdb"),
               GLOO_SOCKET_IFNAME=iface, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    if shift_ms:
        lib = _faketime()
        assert lib is not None
        # every clock of the host moves alike (DONT_FAKE_MONOTONIC=1 makes Python 3.11's time.sleep fail
        # with EINVAL under libfaketime 0.9.10); a constant monotonic shift changes no timeout
        env.update(LD_PRELOAD=lib, FAKETIME=f"{shift_ms / 1000:+.3f}")
    return env


def run_two_hosts(tmp: Path, fault: str, fault_rank: int, *, shift_ms: int = 0, port: int = 29640,
                  steps: str = STEPS) -> tuple[list[int], list[str]]:
    """Run the fixture job on two emulated hosts (tkmh0, tkmh1); the fault and the clock shift on the second.
    Returns each host's `tracekit record` exit code and stderr."""
    topo = _launch_module().Topology(2)
    procs = []
    try:
        topo.build()
        hosts_file = tmp / "hosts"  # each emulated host resolves both hostnames (torchrun's rendezvous does)
        hosts_file.write_text("127.0.0.1 localhost\n" + "".join(f"{a} tkmh{i}\n" for i, a in enumerate(topo.addrs)))
        for host in range(2):
            job = [str(JOB), "--steps", steps, "--fault-step", str(ONSET), "--pg-timeout", "5", "--probe-every", "0"]
            if host == 1:
                job += ["--fault", fault, "--fault-rank", str(fault_rank)]
            torchrun = ["torchrun", "--nnodes", "2", "--nproc-per-node", "2", "--node-rank", str(host),
                        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{topo.addrs[0]}:{port}",
                        "--rdzv-id", f"tkmh-{tmp.name}", "--local-addr", topo.addrs[host], "--max-restarts", "0"]
            cmd = ["ip", "netns", "exec", topo.names[host], "unshare", "--uts", "--mount", "sh", "-c",
                   f'hostname tkmh{host} && mount --bind {hosts_file} /etc/hosts && exec "$@"', "sh",
                   sys.executable, "-m", "tracekit", "record", "--run", "twohost", "--", *torchrun, *job]
            procs.append(subprocess.Popen(cmd, cwd=tmp, env=_env(tmp, host, topo.ifaces[host], shift_ms if host else 0),
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=400) for p in procs]
        return [p.returncode for p in procs], [o[1] for o in outs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        topo.destroy()


def _tracekit(tmp: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEKIT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, "-m", "tracekit", *args], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def ingest_and_detect(tmp: Path) -> tuple[tuple, list[dict]]:
    db = str(tmp / "all.duckdb")
    # the second host first: ingest order does not matter
    _tracekit(tmp, "ingest", str(tmp / "host1" / "spool"), str(tmp / "host0" / "spool"), "--db", db)
    runs = json.loads(_tracekit(tmp, "runs", "--db", db, "--format", "json"))
    assert len(runs) == 1, runs
    import duckdb

    with duckdb.connect(db, read_only=True) as con:
        # ranks by their spool files (under libfaketime the shifted host's records reach the spool only at
        # exit: its timed waits never wake, see docs/training.md; a rank crashing there leaves no records)
        shape = con.execute("SELECT (SELECT count(DISTINCT node) FILTER (WHERE starts_with(node, 'rank:')) "
                            "FROM spool_files), min(world_size), max(world_size) FROM collectives").fetchone()
        kind = con.execute("SELECT kind FROM runs").fetchone()[0]
    assert kind == "training"
    found = json.loads(_tracekit(tmp, "anomalies", runs[0]["run_id"], "--db", db, "--format", "json"))
    return shape, found


@pytest.mark.skipif(_unsupported() is not None, reason=str(_unsupported()))
@pytest.mark.parametrize("shift_ms", [0, 50, -50])
@pytest.mark.parametrize("fault, kind", [("slow_rank", "straggler"), ("crash", "crash"), ("nan", "nonfinite")])
def test_fault_on_the_second_host_is_named_whatever_its_clock(tmp_path: Path, fault: str, kind: str,
                                                                shift_ms: int) -> None:
    if shift_ms and _faketime() is None:
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    codes, errs = run_two_hosts(tmp_path, fault, 3, shift_ms=shift_ms, port=29600 + (os.getpid() + shift_ms) % 300)
    if fault == "slow_rank" or fault == "nan":
        assert codes == [0, 0], errs[1][-3000:]
    else:
        assert codes[1] != 0
    shape, found = ingest_and_detect(tmp_path)
    assert shape == (4, 4, 4)
    assert found, errs
    top = found[0]
    assert (top["kind"], top["subject"]) == (kind, "rank:3"), found
    assert top["evidence"]["host"] == "tkmh1"
    offsets = top["evidence"]["clock_offsets_ms"]
    assert set(offsets) == {"tkmh0", "tkmh1"} and offsets["tkmh0"] == 0
    assert abs(offsets["tkmh1"] - shift_ms) < 10, offsets
    assert [f for f in found if f["kind"] in ("straggler", "throttle") and f["subject"] != "rank:3"] == []
