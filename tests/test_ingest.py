"""Ingest robustness: torn, garbage, wrong-version and bad-record spool files; idempotent and incremental loads;
corrupt and locked DuckDB files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from foundation_helpers import as_read_plainly, assert_one_line_error, clean_env, cli, cli_here, counts, query
from tracekit.capture.spool import Spool
from tracekit.ingest import ingest_paths


def span(i: int, **over: object) -> dict:
    record = {"trace_id": "ab" * 16, "span_id": f"{i + 1:016x}", "parent_id": None, "name": f"s{i}",
              "node": None, "kind": "internal", "start_ns": 1_000_000 + i, "end_ns": 2_000_000 + i,
              "status": "ok", "status_message": None, "attributes": json.dumps({"i": i})}
    record.update(over)
    return record


@pytest.fixture(autouse=True)
def _json_spool_by_default(monkeypatch):
    """These tests read and damage JSON-lines files by hand; tests of both encodings pass one explicitly."""
    monkeypatch.setenv("TRACEKIT_SPOOL_FORMAT", "json")


ENCODINGS = ["json", "arrow"]  # JSON lines (format 2) and binary Arrow frames (format 3)


def new_spool(root: Path, node: str = "rank:0", encoding: str = "json") -> Spool:
    run_id = uuid.uuid4().hex
    return Spool(root / run_id, run_id, node, flush_interval_ms=60000, encoding=encoding)


def write_spans(spool: Spool, start: int, n: int) -> Path:
    stream = spool.stream("spans")
    for i in range(start, start + n):
        stream.write(span(i))
    stream.flush()
    return stream.path


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_torn_last_record_is_skipped_reported_and_picked_up_once_complete(tmp_path, encoding):
    spool = new_spool(tmp_path / "spool", encoding=encoding)
    path = write_spans(spool, 0, 10)
    if encoding == "json":
        line = (json.dumps(span(10)) + "\n").encode()
    else:  # the next flush's frame, as the writer appends it
        size = path.stat().st_size
        write_spans(spool, 10, 1)
        line = path.read_bytes()[size:]
        os.truncate(path, size)
    with path.open("ab") as fh:
        fh.write(line[:25])  # the writer was killed (or is still writing) mid-record
    db = tmp_path / "store.duckdb"

    report = ingest_paths([spool.run_dir], db)
    assert report.records == 10 and report.torn == [(str(path), 25)] and not report.quarantined

    with path.open("ab") as fh:
        fh.write(line[25:])
    again = ingest_paths([spool.run_dir], db)
    assert again.records == 1 and again.torn == []
    assert query(db, "SELECT count(*), count(DISTINCT span_id) FROM spans") == [(11, 11)]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_idempotent_and_incremental_ingest_of_a_growing_file(tmp_path, encoding):
    spool = new_spool(tmp_path / "spool", encoding=encoding)
    db = tmp_path / "store.duckdb"
    write_spans(spool, 0, 5)
    assert ingest_paths([spool.run_dir], db).records == 5
    before = counts(db)
    same = ingest_paths([spool.run_dir], db)
    assert same.records == 0 and same.unchanged_files == 1 and counts(db) == before

    write_spans(spool, 5, 7)
    assert ingest_paths([spool.run_dir], db).records == 7
    spool.close()  # the footer: the process ended cleanly
    closing = ingest_paths([spool.run_dir], db)
    assert closing.records == 0
    assert query(db, "SELECT count(*), count(DISTINCT span_id) FROM spans") == [(12, 12)]
    assert query(db, "SELECT records, ended_ns IS NOT NULL FROM spool_files") == [(12, True)]
    assert ingest_paths([spool.run_dir], db).records == 0


def test_bad_records_are_quarantined_with_line_and_id(tmp_path):
    spool = new_spool(tmp_path / "spool")
    stream = spool.stream("spans")
    stream.write(span(0))
    stream.write_line("this is not json\n")
    stream.write(span(2, start_ns="yesterday"))
    stream.write(span(3, trace_id=None))
    stream.write(span(4))
    spool.close()
    db = tmp_path / "store.duckdb"

    report = ingest_paths([spool.run_dir], db)

    assert report.records == 2
    got = [(q.line, q.record_id) for q in report.quarantined]
    assert sorted(got, key=lambda x: x[0]) == [(3, None), (4, f"{3:016x}"), (5, f"{4:016x}")]
    assert any("start_ns" in q.error for q in report.quarantined)
    assert any("trace_id" in q.error for q in report.quarantined)
    rows = query(db, "SELECT line, record_id, raw FROM quarantine ORDER BY line")
    assert rows[0] == (3, None, "this is not json")
    assert query(db, "SELECT name FROM spans ORDER BY name") == [("s0",), ("s4",)]


def _bad_spool_files(run_dir: Path) -> dict[str, Path]:
    header = {"tracekit_spool": 1, "stream": "spans", "run_id": run_dir.name, "file_id": uuid.uuid4().hex,
              "pid": 1, "node": "rank:9"}
    body = "".join(json.dumps(span(100 + i)) + "\n" for i in range(3))
    files = {
        "garbage": bytes(range(256)) * 8,
        "wrong version": (json.dumps({**header, "tracekit_spool": 99}) + "\n" + body).encode(),
        "unknown stream": (json.dumps({**header, "stream": "nonsense", "file_id": "f2"}) + "\n" + body).encode(),
        "truncated header": json.dumps(header).encode()[:30],
        "header without run id": (json.dumps({**header, "run_id": None, "file_id": "f3"}) + "\n" + body).encode(),
        "json but not a spool": b'{"hello": "world"}\n{"a": 1}\n',
        "empty": b"",
    }
    out = {}
    for i, (what, data) in enumerate(files.items()):
        path = run_dir / f"spans.{1000 + i}.bad{i}.jsonl"
        path.write_bytes(data)
        out[what] = path
    return out


def test_rows_are_encoded_at_flush_in_order_and_an_unencodable_row_is_dropped_and_counted(tmp_path):
    spool = new_spool(tmp_path / "spool")
    stream = spool.stream("spans")
    fields = tuple(span(0))
    stream.write(span(0))
    stream.write_row(fields, tuple(span(1).values()))
    stream.write_row(fields, tuple(span(2, attributes=float("nan")).values()))  # NaN: valid for Python's json only
    circular: list = []
    circular.append(circular)
    with pytest.warns(RuntimeWarning, match="could not be encoded"):
        stream.write_row(fields, tuple(span(3, attributes=circular).values()))  # cannot be encoded at all
        stream.write_row(fields, tuple(span(4).values()))
        assert stream.path.read_text().count("\n") == 1  # only the header: rows wait for the flush
        spool.close()
    lines = [json.loads(line) for line in stream.path.read_text().splitlines()[1:-1]]
    assert [r["name"] for r in lines] == ["s0", "s1", "s2", "s4"]
    assert lines[1] == span(1)
    assert (stream.records, stream.dropped) == (4, 1)


def test_tickers_ride_on_the_flusher_thread_and_the_flush_keeps_its_interval(tmp_path):
    import threading
    import time

    spool = Spool(tmp_path / "spool" / ("t" * 32), "t" * 32, "rank:0", flush_interval_ms=300)
    stream = spool.stream("spans")
    calls: list[tuple[str, int]] = []

    def tick(late_ns: int) -> None:
        calls.append((threading.current_thread(), late_ns))

    def broken(late_ns: int) -> None:
        raise ValueError("boom")

    with pytest.warns(RuntimeWarning, match="a periodic capture task failed: boom"):
        spool.add_ticker(tick, 0.02)
        spool.add_ticker(broken, 0.02)
        stream.write(span(0))
        deadline = time.monotonic() + 20
        while stream.records < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        spool.remove_ticker(broken)
    assert stream.records == 1  # the failing ticker did not stop the flushes
    ticks = len(calls)
    assert ticks >= 3  # ~20 ms ticks inside a 300 ms flush interval, and the flush did not wait for more
    assert {thread for thread, _ in calls} == {spool._flusher}  # no thread of their own
    assert all(late > -1_000_000 for _, late in calls)  # lateness is measured against the pause asked for
    spool.remove_ticker(tick)
    assert spool.tick_s == 0.0
    time.sleep(0.1)
    assert len(calls) <= ticks + 1  # at most one tick already under way when it was removed
    spool.close()


def test_with_no_ticker_the_flusher_sleeps_until_a_record_arrives(tmp_path):
    """An idle flusher does not wake every interval (each wake-up costs ~0.1 ms of CPU); a record
    written to a stream, or queued where a before_flush hook collects it, wakes it within an interval."""
    import collections
    import time

    spool = Spool(tmp_path / "spool" / ("d" * 32), "d" * 32, "rank:0", flush_interval_ms=40)
    stream = spool.stream("spans")
    flushes = []
    original = spool.flush
    spool.flush = lambda: (flushes.append(time.monotonic()), original())[1]  # type: ignore[method-assign]
    stream.write(span(0))  # starts the flusher
    time.sleep(0.8)  # 20 flush intervals
    assert 1 <= len(flushes) <= 2 and spool._idle
    stream.write(span(1))
    time.sleep(0.3)
    assert [json.loads(line).get("name") for line in stream.path.read_text().splitlines()[1:]] == ["s0", "s1"]
    queued: collections.deque = collections.deque()  # a source like the span processor's queue
    spool.watch(queued)

    def collect() -> None:
        while queued:
            stream.write(queued.popleft())

    spool.before_flush.append(collect)
    queued.append(span(2))
    spool.notify()
    time.sleep(0.3)
    assert stream.path.read_text().count("\n") == 4 and not queued  # the header and three records
    assert len(flushes) <= 8
    spool.close()
    lines = [json.loads(line) for line in stream.path.read_text().splitlines()]
    assert [r.get("name") for r in lines[1:-1]] == ["s0", "s1", "s2"] and lines[-1]["records"] == 3


def test_a_close_waits_for_a_flush_under_way_so_what_its_hooks_collect_is_written(tmp_path):
    import threading
    import time

    spool = Spool(tmp_path / "spool" / ("c" * 32), "c" * 32, "rank:0", flush_interval_ms=20)
    stream = spool.stream("spans")
    collecting = threading.Event()

    def slow_source() -> None:  # like the span processor's export or the native hook's drain, but slow
        if threading.current_thread() is spool._flusher and not collecting.is_set():
            collecting.set()
            time.sleep(0.3)
            stream.write(span(7))

    spool.before_flush.append(slow_source)
    stream.write(span(0))  # starts the flusher
    assert collecting.wait(20)
    spool.close()  # on the main thread, while the flusher is inside the hook
    lines = [json.loads(line) for line in stream.path.read_text().splitlines()]
    assert [r.get("name") for r in lines[1:-1]] == ["s0", "s7"] and "tracekit_end" in lines[-1]
    assert (stream.records, stream.dropped) == (2, 0)


def test_unreadable_spool_files_are_rejected_whole_and_nothing_partial_loads(tmp_path):
    spool = new_spool(tmp_path / "spool")
    write_spans(spool, 0, 4)
    spool.close()
    db = tmp_path / "store.duckdb"
    ingest_paths([spool.run_dir], db)
    before = counts(db)
    messages = {}
    for what, path in _bad_spool_files(spool.run_dir).items():
        report = ingest_paths([path], db)
        assert report.records == 0 and [s for s, _ in report.rejected] == [str(path)], what
        messages[what] = report.rejected[0][1]
        assert counts(db) == before, what
    assert "version 99" in messages["wrong version"]
    assert "unknown record stream 'nonsense'" in messages["unknown stream"]
    assert all(str(p) in messages[w] for w, p in _bad_spool_files(spool.run_dir).items() if w in messages)
    # the whole directory: the good file is unchanged, every bad one is rejected, exit code 2 from the CLI
    done = cli(tmp_path, "ingest", str(spool.run_dir))
    assert done.code == 2 and "Traceback" not in done.err
    assert done.err.count("error: rejected whole file") == len(messages)
    assert counts(db) == before


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_store_gives_one_clear_line(tmp_path, damage):
    spool = new_spool(tmp_path / "spool")
    write_spans(spool, 0, 3)
    spool.close()
    db = tmp_path / "store.duckdb"
    if damage == "garbage":
        db.write_bytes(b"this is not a duckdb file " * 4000)
    else:
        ingest_paths([spool.run_dir], db)
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 3])
    for done in (cli(tmp_path, "runs"), cli_here(tmp_path, "ingest", str(spool.run_dir))):
        assert_one_line_error(done)
        assert "store" in done.err
    # a query may still succeed when it only reads pages that survived; it must never crash
    done = cli_here(tmp_path, "sql", "SELECT count(*) FROM spans")
    if damage == "garbage" or done.code:
        assert_one_line_error(done)


def test_locked_store_gives_one_clear_line(tmp_path):
    spool = new_spool(tmp_path / "spool")
    write_spans(spool, 0, 3)
    spool.close()
    db = tmp_path / "store.duckdb"
    ingest_paths([spool.run_dir], db)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('ready', flush=True); time.sleep(120)",
         str(db)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        no_wait = clean_env(tmp_path, TRACEKIT_LOCK_TIMEOUT="0")
        for args in (["ingest", str(spool.run_dir)], ["runs"]):
            done = cli(tmp_path, *args, env=no_wait)
            assert_one_line_error(done)
            assert "locked by another process" in done.err, done.err
        # a writer waits for the lock (bounded), says once whom it waits for, then fails clearly
        done = cli(tmp_path, "ingest", str(spool.run_dir), env=clean_env(tmp_path, TRACEKIT_LOCK_TIMEOUT="1"))
        assert done.code == 2 and "Traceback" not in done.err, done.err
        waiting, error = [ln for ln in done.err.splitlines() if ln.strip()]
        assert waiting.startswith(f"tracekit: waiting for the store lock held by process {holder.pid}"), waiting
        assert error.startswith("error: ") and "waited 1 s" in error and "locked by another process" in error
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_a_writer_waits_for_another_writers_lock_and_then_loads(tmp_path):
    """Guards the failure of two writers finishing together: the second used to fail at once with "locked"."""
    spool = new_spool(tmp_path / "spool")
    write_spans(spool, 0, 5)
    spool.close()
    db = tmp_path / "store.duckdb"
    holder = subprocess.Popen(  # a real writer (the store's own connect) holding the lock for 2 s
        [sys.executable, "-c",
         "import sys, time; from tracekit.store.db import connect; con = connect(sys.argv[1]); "
         "print('ready', flush=True); time.sleep(2); con.close(); print('released', flush=True)",
         str(db)],
        stdout=subprocess.PIPE, text=True, env=clean_env(tmp_path),
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        done = cli(tmp_path, "ingest", str(spool.run_dir), "--format", "json")
        assert holder.stdout.readline().strip() == "released"
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert done.code == 0, done.err
    assert json.loads(done.out)["records"] == 5
    assert f"waiting for the store lock held by process {holder.pid}" in done.err
    assert len([ln for ln in done.err.splitlines() if "waiting for the store lock" in ln]) == 1
    assert query(db, "SELECT count(*) FROM spans") == [(5,)]


def test_a_record_longer_than_a_parse_block_still_loads_whole():
    """Guards the small-block fast path: a 3 MB record straddles pyarrow's 1 MiB blocks."""
    import json as _json

    from tracekit.ingest.spool import parse_body
    from tracekit.store.streams import SPANS

    small = {"trace_id": "a" * 32, "span_id": "c" * 16, "name": "n", "start_ns": 1, "end_ns": 2, "attributes": "{}"}
    big = {**small, "span_id": "b" * 16, "attributes": _json.dumps({"big": "x" * 3_000_000})}
    body = ((_json.dumps(small) + "\n") * 2000 + _json.dumps(big) + "\n").encode()
    table, bad = parse_body(body, SPANS, "mem", 2)
    assert bad == []
    assert table.num_rows == 2001
    assert len(table.column("attributes")[2000].as_py()) > 3_000_000


# --- the fast path: cleanly closed files are loaded by DuckDB's JSON reader ----------------------


def _varied_records() -> list[dict]:
    """Records exercising every default and conversion the two load paths must agree on."""
    return [
        span(0),
        span(1, node="service:db", parent_id="00000000000000aa", status="error", status_message="boom ✗"),
        span(2, kind=None, status=None, attributes=None),  # defaults: internal, unset, {}
        span(3, attributes=json.dumps({"text": "naïve \"quoted\"\nline", "n": [1, 2.5, None]})),
        span(4, status_message=42),  # a number in a text field is kept as its JSON text by both paths
    ]


def _store_rows(db: Path) -> list[tuple]:
    return query(db, "SELECT trace_id, span_id, parent_id, name, node, kind, start_ns, end_ns, status, "
                     "status_message, CAST(attributes AS VARCHAR), pid FROM spans ORDER BY span_id")


def test_closed_and_killed_files_load_identically(tmp_path, monkeypatch):
    """The same records load the same through DuckDB's reader (file closed) and the careful path (no footer)."""
    import tracekit.ingest.pipeline as ingest

    spool = new_spool(tmp_path / "spool", node="rank:3")
    stream = spool.stream("spans")
    for record in _varied_records():
        stream.write(record)
    spool.stream("events").write({"span_id": f"{2:016x}", "ts_ns": 7, "name": "exception", "attributes": "{}"})
    spool.close()
    killed = tmp_path / "killed" / spool.run_dir.name
    killed.mkdir(parents=True)
    for path in spool.run_dir.glob("*.jsonl"):
        lines = path.read_bytes().splitlines(keepends=True)
        (killed / path.name).write_bytes(b"".join(lines[:-1]))  # no footer: as if the process was killed

    careful_calls = []
    real_parse = ingest._parse_prepared
    monkeypatch.setattr(ingest, "_parse_prepared", lambda item, *rest: careful_calls.append(item.path) or real_parse(item, *rest))
    fast = ingest_paths([spool.run_dir], tmp_path / "fast.duckdb")
    assert careful_calls == [], "a cleanly closed, valid file should not need the careful path"
    careful = ingest_paths([killed], tmp_path / "careful.duckdb")
    assert len(careful_calls) == 2

    assert fast.records == careful.records == 6 and not fast.quarantined and not careful.quarantined
    rows = _store_rows(tmp_path / "fast.duckdb")
    assert rows == _store_rows(tmp_path / "careful.duckdb")
    by_name = {r[3]: r for r in rows}
    assert by_name["s0"][4] == "rank:3" and by_name["s1"][4] == "service:db"  # header node is the default
    assert (by_name["s2"][5], by_name["s2"][8], by_name["s2"][10]) == ("internal", "unset", "{}")
    assert json.loads(by_name["s3"][10])["text"] == "naïve \"quoted\"\nline"
    assert by_name["s4"][9] == "42"
    assert {r[11] for r in rows} == {os.getpid()}  # the writer's pid, from the header
    for db in ("fast", "careful"):
        assert query(tmp_path / f"{db}.duckdb", "SELECT span_id, name FROM events") == [(f"{2:016x}", "exception")]


@pytest.mark.parametrize("bad_line", [
    "this is not json",
    json.dumps(span(9, start_ns="yesterday")),
    json.dumps(span(9, trace_id=None)),
    json.dumps({"tracekit_end": 1}),  # footer-like line mid-file: the fast path filters it, the count catches it
    json.dumps(span(9, attributes="{not json")),
])
def test_a_bad_record_in_a_closed_file_is_quarantined_and_nothing_else_is_lost(tmp_path, bad_line):
    spool = new_spool(tmp_path / "spool")
    stream = spool.stream("spans")
    stream.write(span(0))
    stream.write_line(bad_line + "\n")
    stream.write(span(2))
    spool.close()
    db = tmp_path / "store.duckdb"

    report = ingest_paths([spool.run_dir], db)

    assert report.records == 2 and [q.line for q in report.quarantined] == [3]
    assert query(db, "SELECT name FROM spans ORDER BY name") == [("s0",), ("s2",)]
    assert query(db, "SELECT line FROM quarantine") == [(3,)]
    again = ingest_paths([spool.run_dir], db)  # and the file is remembered whole: nothing is added twice
    assert again.records == 0 and counts(db)["spans"] == 2


def test_format_1_files_with_nested_span_events_still_load(tmp_path):
    run_dir = tmp_path / "spool" / ("c" * 32)
    run_dir.mkdir(parents=True)
    header = {"tracekit_spool": 1, "stream": "spans", "run_id": "c" * 32, "file_id": uuid.uuid4().hex,
              "pid": 11, "node": "rank:1"}
    record = span(0, events=[{"ts_ns": 5, "name": "exception", "attributes": "{}"}])
    (run_dir / "spans.11.old.jsonl").write_text(
        json.dumps(header) + "\n" + json.dumps(record) + "\n" + json.dumps({"tracekit_end": 9, "records": 1}) + "\n")
    db = tmp_path / "store.duckdb"

    report = ingest_paths([run_dir], db)

    assert report.records == 1 and not report.rejected
    assert query(db, "SELECT span_id, name, ts_ns FROM events") == [(f"{1:016x}", "exception", 5)]


@pytest.mark.parametrize("errors", ["none", "few", "many"])
def test_collectives_read_back_with_coded_text_columns_equal_the_stored_rows(tmp_path, errors):
    """The analysis reads text columns of few values as codes and does not read columns null or one value
    throughout: what it gets must equal a plain read, whatever the values look like."""
    import polars as pl
    import pyarrow as pa

    from tracekit.store import collectives as q
    from tracekit.store.db import connect

    n = 600
    error = {"none": [None] * n, "few": [None if i % 7 else "NCCL timeout" for i in range(n)],
             "many": [None if i % 2 else f"error {i}" for i in range(n)]}[errors]  # 300 values: read as text
    rows = pa.table({
        "rank": pa.array([i % 4 for i in range(n)], pa.int32()), "seq": pa.array(range(n), pa.int64()),
        "world_size": pa.array([4] * n, pa.int32()), "ok": [True] * n, "bytes": pa.array([64 << (i % 3) for i in range(n)]),
        "peer": pa.array([None] * n, pa.int32()),  # one value, one value, several values, null throughout: none read
        "process_group": ["default"] * n, "op": [("all_reduce", "broadcast", "it's")[i % 3] for i in range(n)],
        "source": [None if i % 5 == 0 else ("ddp", "call")[i % 2] for i in range(n)], "error": error,
    })
    con = connect(tmp_path / "store.duckdb")
    con.register("rows", rows)
    con.execute("INSERT INTO collectives BY NAME SELECT 'r1' AS run_id, * FROM rows")
    con.execute("INSERT INTO collectives BY NAME SELECT 'r2' AS run_id, * FROM rows WHERE rank = 0")
    plain = pl.from_arrow(con.sql(q._COLLECTIVES_SQL, params={"run": "r1"}).to_arrow_table())
    coded = q.collectives_table(con, "r1")
    frame = q.to_polars(coded)
    assert as_read_plainly(frame, plain).sort("seq").equals(plain.sort("seq"))
    assert pa.types.is_dictionary(coded.schema.field("op").type)  # the text really crossed as codes
    error_type = coded.schema.field("error").type  # null throughout: not read; few values: codes; many: text
    assert {"none": pa.types.is_run_end_encoded, "few": pa.types.is_dictionary, "many": pa.types.is_string}[errors](error_type)
    assert pa.types.is_run_end_encoded(coded.schema.field("world_size").type)  # one value throughout: not read
    assert q.to_polars(q.collectives_table(con, "nothing")).height == 0
    one = pl.from_arrow(con.sql(q._COLLECTIVES_SQL + " AND seq = 1", params={"run": "r1"}).to_arrow_table())
    assert q.to_polars(q._coded(con, q._COLLECTIVES_SQL + " AND seq = 1", {"run": "r1"}, q._CODED)).equals(one)
    con.close()


def test_many_quarantined_records_are_all_stored_with_their_lines_and_ids(tmp_path) -> None:
    """Bookkeeping rows go in as multi-row statements of at most 500 rows: every row across the boundaries
    is stored once, with its own values."""
    from tracekit.store.db import connect
    from tracekit.store.load import quarantine

    con = connect(tmp_path / "q.duckdb")
    rows = [("run", "spans.jsonl", i + 1, f"id-{i}", f"error {i}", None if i % 7 else f"{{raw {i}") for i in range(1_201)]
    quarantine(con, rows)
    stored = con.execute("SELECT run_id, source, line, record_id, error, raw FROM quarantine ORDER BY line").fetchall()
    con.close()
    assert stored == rows
