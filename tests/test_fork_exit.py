"""Forked children that leave through os._exit (RQ's work horse, pre-fork workers) keep their spans."""

from __future__ import annotations

from foundation_helpers import clean_env, cli, query, run_py

FORK_EXIT_PROGRAM = """
import os, sys, tracekit

@tracekit.trace(name="horse.job")
def job(i):
    return i * 2

run = tracekit.init(run="horses", flush_interval_ms=60000, ingest_at_exit=False)
with tracekit.span("parent"):
    pass
statuses = []
for n in range(3):
    pid = os.fork()
    if pid == 0:  # the work horse: run the job, then leave at once, as RQ's horse does
        for i in range(4):
            job(i)
        os._exit(n)  # no atexit, no finalizers; its spans sit in a buffer flushed every 60 s
    statuses.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
assert statuses == [0, 1, 2], statuses  # the exit status is the child's own
print(run.run_id)
"""


def test_spans_of_a_forked_child_leaving_through_os_exit_arrive(tmp_path):
    done = run_py(tmp_path, FORK_EXIT_PROGRAM, env=clean_env(tmp_path))
    assert done.code == 0, done.err
    assert "Traceback" not in done.err
    run_id = done.out.strip()
    assert cli(tmp_path, "ingest", "spool").code == 0
    db = tmp_path / "store.duckdb"
    rows = dict(query(db, "SELECT name, count(*) FROM spans WHERE run_id = ? GROUP BY name", [run_id]))
    assert rows == {"parent": 1, "horse.job": 12}
    assert query(db, "SELECT count(DISTINCT pid) FROM spans WHERE name = 'horse.job'") == [(3,)]
    # status 0 is a clean exit (footer); os._exit(1) / (2) only flushed, so they still read as processes
    # that died (a rank's os._exit(13) is a crash, not a clean exit)
    # (the footers themselves are checked per spool encoding in test_spool_fork_exit.py)
    ended = query(db, "SELECT count(*) FILTER (WHERE ended_ns IS NOT NULL), count(*) FROM spool_files "
                      "WHERE run_id = ? AND stream = 'spans'", [run_id])
    assert ended == [(2, 4)]  # the parent and the status-0 child closed theirs


def test_os_exit_without_capture_is_the_plain_one(tmp_path):
    done = run_py(tmp_path, "import os, tracekit\nprint(os._exit.__module__)\n", env=clean_env(tmp_path))
    assert done.code == 0, done.err
    assert done.out.strip() in {"posix", "os", "nt"}  # nothing is wrapped until capture starts


FORKED_TASKS_PROGRAM = """
import os, tracekit

@tracekit.trace(name="horse.job")
def job(i):
    return i

codes = []
for n in range(3):  # a fork-per-task server: the parent never runs the job itself
    pid = os.fork()
    if pid == 0:
        try:
            job(n)
        except RuntimeError:
            os._exit(1)
        os._exit(0)
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(codes)
"""


def test_a_fault_fires_once_across_forked_tasks_not_once_per_fork(tmp_path):
    """`raise` at the first call of horse.job: the first task's call, not every forked task's first call."""
    plan = '{"mode": "inject", "point": "horse.job", "fault": "raise", "exception": "RuntimeError"}'
    done = run_py(tmp_path, FORKED_TASKS_PROGRAM, env=clean_env(tmp_path, TRACEKIT_INJECT=plan))
    assert done.code == 0, done.err
    assert done.out.strip() == "[1, 0, 0]"
    second = plan.replace('"fault"', '"occurrence": 2, "fault"')
    done = run_py(tmp_path, FORKED_TASKS_PROGRAM.replace("range(3)", "range(4)"),
                  env=clean_env(tmp_path, TRACEKIT_INJECT=second))
    assert done.out.strip() == "[0, 1, 0, 0]", done.err
