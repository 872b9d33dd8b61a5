"""`tracekit record -- CMD`: capture in every Python process of a command (children too), exit code passthrough."""

from __future__ import annotations

import json
import re
import textwrap

from foundation_helpers import assert_one_line_error, cli, query

PARENT = """
import subprocess, sys
import tracekit  # no tracekit.init: `tracekit record` switched capture on

@tracekit.trace
def prepare():
    return subprocess.run([sys.executable, "child.py"]).returncode

@tracekit.trace
def fail():
    raise SystemExit(3)

assert prepare() == 0
fail()
"""

CHILD = """
import tracekit

@tracekit.trace(node="service:worker")
def work(i):
    return i

for i in range(4):
    work(i)
"""


def test_record_captures_child_processes_and_passes_the_exit_code_through(tmp_path):
    (tmp_path / "parent.py").write_text(textwrap.dedent(PARENT))
    (tmp_path / "child.py").write_text(textwrap.dedent(CHILD))
    done = cli(tmp_path, "record", "--run", "rec", "--", "python", "parent.py")
    assert done.code == 3, done.err
    run_id = done.out.strip().splitlines()[-1]
    assert re.fullmatch(r"[0-9a-f]{32}", run_id), done.out
    assert "Traceback" not in done.err.replace("SystemExit", "")
    db = tmp_path / "store.duckdb"
    assert query(db, "SELECT run_id, name, status, attributes->>'exit_code' FROM runs") == [(run_id, "rec", "error", "3")]
    spans = query(db, "SELECT name, node, pid FROM spans WHERE run_id = ? ORDER BY start_ns", [run_id])
    names = [s[0] for s in spans]
    assert sorted(names) == ["fail", "prepare", "work", "work", "work", "work"]
    assert {s[1] for s in spans if s[0] == "work"} == {"service:worker"}
    assert len({s[2] for s in spans}) == 2  # the child process was captured too
    runs = json.loads(cli(tmp_path, "runs", "--format", "json").out)
    assert [(r["name"], r["spans"]) for r in runs] == [("rec", 6)]


def test_record_with_a_missing_command_is_one_clear_line(tmp_path):
    done = cli(tmp_path, "record", "--", "no-such-command-tracekit-test")
    assert_one_line_error(done)
    assert "command not found" in done.err


def test_record_of_a_killed_command_exits_like_a_shell_would(tmp_path):
    program = "import os, signal, tracekit\nwith tracekit.span('before-kill'):\n    pass\nos.kill(os.getpid(), signal.SIGKILL)\n"
    (tmp_path / "killed.py").write_text(program)
    done = cli(tmp_path, "record", "--run", "killed", "--", "python", "killed.py")
    assert done.code == 128 + 9, done.err
    runs = json.loads(cli(tmp_path, "runs", "--format", "json").out)
    assert [(r["name"], r["status"]) for r in runs] == [("killed", "error")]


FINISH_TOGETHER = """
import sys, time, tracekit
start = float(sys.argv[1])
with tracekit.span("work", node="service:" + sys.argv[2]):
    pass
time.sleep(max(0.0, start - time.time()))  # both commands end at the same moment
sys.exit(int(sys.argv[2]))
"""


def test_two_records_finishing_together_on_one_store_both_pass_their_exit_code_and_are_ingested(tmp_path):
    """Guards the bug where the second of two `tracekit record` ending at once failed with "store is
    locked", exited 2 although its command succeeded, and its run was never ingested. The test also
    holds the store's write lock itself while both end, so each must wait for it."""
    import subprocess
    import sys
    import time

    import duckdb

    from foundation_helpers import clean_env

    from tracekit.store.db import connect

    (tmp_path / "job.py").write_text(textwrap.dedent(FINISH_TOGETHER))
    db = tmp_path / "store.duckdb"
    connect(db).close()
    start = time.time() + 4
    env = clean_env(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-m", "tracekit", "record", "--run", f"job{code}", "--",
                               sys.executable, "job.py", str(start), str(code)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for code in (0, 3)]
    holder = duckdb.connect(str(db))  # another writer holds the lock while both commands end
    time.sleep(max(0.0, start - time.time()) + 1.5)
    holder.close()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 3], outs
    assert all("not ingested" not in err for _, err in outs), outs
    assert sorted(query(db, "SELECT name, attributes->>'exit_code' FROM runs")) == [("job0", "0"), ("job3", "3")]
    assert len(query(db, "SELECT * FROM spans WHERE name = 'work'")) == 2


def test_a_failed_ingest_is_a_warning_naming_the_spool_and_the_exit_code_stands(tmp_path):
    (tmp_path / "store.duckdb").write_bytes(b"this is not a duckdb file" * 100)
    (tmp_path / "ok.py").write_text("import tracekit\nwith tracekit.span('kept'):\n    pass\n")
    done = cli(tmp_path, "record", "--run", "kept", "--", "python", "ok.py")
    assert done.code == 0, done.err
    run_id = done.out.strip().splitlines()[-1]
    [warning] = [ln for ln in done.err.splitlines() if "not ingested" in ln]
    spool = tmp_path / "spool" / run_id
    assert f"tracekit ingest {spool}" in warning and "Traceback" not in done.err
    (tmp_path / "store.duckdb").rename(tmp_path / "broken.duckdb")
    assert cli(tmp_path, "ingest", str(spool)).code == 0  # the spool was kept: ingesting later works
    assert query(tmp_path / "store.duckdb", "SELECT name FROM runs") == [("kept",)]
