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
