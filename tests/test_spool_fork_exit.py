"""Forked children leaving through os._exit keep their spans on both spool encodings."""

from __future__ import annotations

import json

import pytest
from foundation_helpers import clean_env, cli, query, run_py

from tracekit import frames

PROGRAM = """
import os, time, tracekit

@tracekit.trace(name="horse.job")
def job(i):
    return i * 2

run = tracekit.init(run="horses", flush_interval_ms=60000, ingest_at_exit=False)
{warm}
statuses, walls = [], []
for n in range(3):
    began = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the work horse: run the job, then leave at once (no atexit, no finalizers)
        for i in range(4):
            job(i)
        os._exit(n)
    statuses.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    walls.append(time.perf_counter() - began)
assert statuses == [0, 1, 2], statuses
print(run.run_id, max(walls))
"""


def has_footer(path) -> bool:
    data = path.read_bytes()
    if path.suffix == frames.SUFFIX:
        found = frames.scan(data, data.index(b"\n") + 1)
        return any(kind == frames.END for kind, _, _ in found.frames)
    return '"tracekit_end"' in data.decode()


@pytest.mark.parametrize("encoding, suffix", [("json", ".jsonl"), ("arrow", frames.SUFFIX)])
@pytest.mark.parametrize("warm", [False, True], ids=["parent-never-flushed", "parent-flushed"])
def test_forked_children_leaving_through_os_exit_keep_their_spans(tmp_path, encoding, suffix, warm):
    """The parent never flushed before forking (a child's exit flush is the first of its process), or did."""
    warm_code = 'with tracekit.span("parent"):\n    pass\nrun.spool.flush()' if warm else 'with tracekit.span("parent"):\n    pass'
    done = run_py(tmp_path, PROGRAM.format(warm=warm_code), env=clean_env(tmp_path, TRACEKIT_SPOOL_FORMAT=encoding))
    assert done.code == 0, done.err
    assert "Traceback" not in done.err
    run_id, _slowest = done.out.split()
    span_files = sorted((tmp_path / "spool" / run_id).glob("spans.*"))
    assert {f.suffix for f in span_files} == {suffix} and len(span_files) == 4
    assert sum(map(has_footer, span_files)) == 2  # the parent and the status-0 child: os._exit(1) reads as a crash
    assert cli(tmp_path, "ingest", "spool").code == 0
    db = tmp_path / "store.duckdb"
    assert dict(query(db, "SELECT name, count(*) FROM spans WHERE run_id = ? GROUP BY name", [run_id])) == {
        "parent": 1, "horse.job": 12}
    assert query(db, "SELECT count(DISTINCT pid) FROM spans WHERE name = 'horse.job'") == [(3,)]
    manifest = json.loads((tmp_path / "spool" / run_id / "run.json").read_text())
    assert manifest["run_id"] == run_id
