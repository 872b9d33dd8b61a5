"""Crash-safe spool with real processes: many writers, SIGKILL mid-stream, fork, unwritable and full disks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from foundation_helpers import clean_env, cli, query, run_py

pytestmark = pytest.mark.slow


@pytest.fixture(params=["json", "arrow"])
def encoding(request):
    """Every crash-safety test runs on both spool encodings: JSON lines and binary Arrow frames."""
    return request.param

FANOUT_PROGRAM = """
import subprocess, sys
import tracekit

run = tracekit.init(run="fanout", ingest_at_exit=False)
CHILD = '''
import threading, tracekit
tracekit.init()

@tracekit.trace
def work(t, i):
    return t * i

def thread(t):
    for i in range({n}):
        work(t, i)

threads = [threading.Thread(target=thread, args=(t,)) for t in range(4)]
for th in threads: th.start()
for th in threads: th.join()
'''
procs = [subprocess.Popen([sys.executable, "-c", CHILD.format(n={n})]) for _ in range(8)]
codes = [p.wait() for p in procs]
assert codes == [0] * 8, codes
print(run.run_id)
"""


def test_eight_processes_by_four_threads_lose_nothing(tmp_path, encoding):
    per_thread = 250
    done = run_py(tmp_path, FANOUT_PROGRAM.replace("{n}", str(per_thread)).replace("{{n}}", "{n}"),
                  env=clean_env(tmp_path, TRACEKIT_SPOOL_FORMAT=encoding))
    assert done.code == 0, done.err
    run_id = done.out.strip()
    ingested = cli(tmp_path, "ingest", "spool", "--format", "json")
    assert ingested.code == 0, ingested.err
    assert json.loads(ingested.out)["records"] == 8 * 4 * per_thread
    db = tmp_path / "store.duckdb"
    assert query(db, "SELECT count(*), count(DISTINCT span_id), count(DISTINCT pid) FROM spans WHERE run_id = ?",
                 [run_id]) == [(8 * 4 * per_thread, 8 * 4 * per_thread, 8)]
    assert query(db, "SELECT status FROM runs WHERE run_id = ?", [run_id]) == [("ok",)]


KILLED_PROGRAM = """
import time, tracekit

run = tracekit.init(run="killed", flush_interval_ms=50, ingest_at_exit=False)
stream = run.spool.stream("spans")
for i in range(300):
    with tracekit.span("step", i=i):
        pass
while stream.records < 300:  # wait until the OS has every one of them (no timing guess)
    time.sleep(0.01)
print("flushed", stream.records, run.run_id, flush=True)
i = 300
while True:  # keep writing until killed
    with tracekit.span("step", i=i):
        pass
    i += 1
"""


def test_sigkill_mid_stream_keeps_every_flushed_record_and_marks_the_run_aborted(tmp_path, encoding):
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(KILLED_PROGRAM))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path,
                            env=clean_env(tmp_path, TRACEKIT_SPOOL_FORMAT=encoding),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().split()
        assert line[:1] == ["flushed"], proc.stderr.read()
        flushed, run_id = int(line[1]), line[2]
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    ingested = cli(tmp_path, "ingest", "spool", "--format", "json")
    assert ingested.code == 0, ingested.err
    db = tmp_path / "store.duckdb"
    loaded = {r[0] for r in query(db, "SELECT (attributes->>'i')::INT FROM spans WHERE run_id = ?", [run_id])}
    assert flushed >= 300 and set(range(300)) <= loaded
    assert len(loaded) >= flushed  # every record the OS had before the kill is in the store
    runs = json.loads(cli(tmp_path, "runs", "--format", "json").out)
    assert [(r["run_id"], r["name"], r["status"]) for r in runs] == [(run_id, "killed", "aborted")]


FORK_PROGRAM = """
import multiprocessing, os, sys, tracekit

run = tracekit.init(run="forked", flush_interval_ms=60000, ingest_at_exit=False)
for i in range(10):
    with tracekit.span("parent", i=i):
        pass
# the parent's spans are still buffered (60 s flush interval) when it forks

def mp_child():
    for i in range(5):
        with tracekit.span("mp-child", i=i):
            pass

pid = os.fork()
if pid == 0:
    for i in range(5):
        with tracekit.span("fork-child", i=i):
            pass
    sys.exit(0)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0
proc = multiprocessing.get_context("fork").Process(target=mp_child)
proc.start()
proc.join()
assert proc.exitcode == 0
print(run.run_id)
"""


def test_fork_children_write_their_own_files_and_do_not_duplicate_the_parents_buffer(tmp_path, encoding):
    done = run_py(tmp_path, FORK_PROGRAM, env=clean_env(tmp_path, TRACEKIT_SPOOL_FORMAT=encoding))
    assert done.code == 0, done.err
    run_id = done.out.strip()
    assert cli(tmp_path, "ingest", "spool").code == 0
    db = tmp_path / "store.duckdb"
    rows = dict(query(db, "SELECT name, count(*) FROM spans WHERE run_id = ? GROUP BY name", [run_id]))
    assert rows == {"parent": 10, "fork-child": 5, "mp-child": 5}
    assert query(db, "SELECT count(DISTINCT span_id), count(DISTINCT pid) FROM spans") == [(20, 3)]
    assert query(db, "SELECT count(DISTINCT pid), bool_and(ended_ns IS NOT NULL) FROM spool_files") == [(3, True)]


DROPPING_PROGRAM = """
import resource, signal, sys, tracekit

if {limit}:  # a full disk: writes beyond {limit} bytes fail with EFBIG, as ENOSPC would
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
tracekit.init(run="dropping", flush_interval_ms=20, ingest_at_exit=False)

@tracekit.trace
def work(i):
    return i * 2

total = sum(work(i) for i in range(3000))
print("result", total)
"""


def test_unwritable_spool_directory_keeps_the_program_running(tmp_path, encoding):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = clean_env(tmp_path, TRACEKIT_SPOOL_DIR=str(blocker / "spool"), TRACEKIT_SPOOL_FORMAT=encoding)  # mkdir fails, even as root
    done = run_py(tmp_path, DROPPING_PROGRAM.replace("{limit}", "0"), env=env)
    assert done.code == 0, done.err
    assert done.out.split() == ["result", str(sum(i * 2 for i in range(3000)))]
    assert "Traceback" not in done.err
    assert "dropping spans records of run" in done.err and "Not a directory" in done.err
    assert "3000 record(s) of run" in done.err and "were dropped" in done.err


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs (a real ENOSPC), when this test may mount one (root in a permissive container)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if os.geteuid() != 0 or subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the RLIMIT_FSIZE variant covers a full disk")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


@pytest.mark.parametrize("how", ["file-size-limit", "tmpfs"])
def test_full_disk_keeps_the_program_running_and_what_was_written_loads(tmp_path, how, request, encoding):
    if how == "tmpfs":
        small = request.getfixturevalue("small_tmpfs")
        env = clean_env(tmp_path, TRACEKIT_SPOOL_DIR=str(small / "spool"), TRACEKIT_SPOOL_FORMAT=encoding)
        done = run_py(tmp_path, DROPPING_PROGRAM.replace("{limit}", "0"), env=env)
        reason, spool = "No space left on device", small / "spool"
    else:  # writes beyond 40 kB (a binary spool's whole frames: 300 kB) fail with EFBIG
        limit = "40000" if encoding == "json" else "300000"
        done = run_py(tmp_path, DROPPING_PROGRAM.replace("{limit}", limit),
                      env=clean_env(tmp_path, TRACEKIT_SPOOL_FORMAT=encoding))
        reason, spool = "File too large", tmp_path / "spool"
    assert done.code == 0, done.err
    assert done.out.split() == ["result", str(sum(i * 2 for i in range(3000)))]
    assert "Traceback" not in done.err
    assert reason in done.err and "were dropped" in done.err, done.err
    dropped = int(done.err.split(" record(s) of run")[0].rsplit(None, 1)[-1])
    assert 0 < dropped < 3000
    ingested = cli(tmp_path, "ingest", str(spool), "--format", "json")
    assert ingested.code == 0, ingested.err
    report = json.loads(ingested.out)
    # every span is either in the store or counted as dropped (a short write is not double-counted)
    assert report["records"] > 0 and report["records"] + dropped == 3000
    assert query(tmp_path / "store.duckdb", "SELECT count(*) FROM spans") == [(report["records"],)]
