"""Span segments: big span loads stored as Parquet beside the store and read through the `spans` view.

Every test here compares against the native table (segments off) on the same spool, so a segment that
stored a value differently, lost a row or leaked a file fails."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import duckdb
import pytest

from foundation_helpers import assert_one_line_error, cli, clean_env, query
from tracekit.capture.spool import Spool
from tracekit.errors import ConfigError
from tracekit.ingest import ingest_paths
from tracekit.store import segments
from tracekit.store.db import connect

ROWS = ("SELECT run_id, trace_id, span_id, parent_id, name, node, kind, start_ns, end_ns, status, status_message, "
        "CAST(attributes AS VARCHAR), pid FROM spans ORDER BY run_id, span_id")


def span(i: int, **over: object) -> dict:
    record = {"trace_id": f"{i // 7:032x}", "span_id": f"{i + 1:016x}", "parent_id": f"{i:016x}" if i % 5 else None,
              "name": f"op{i % 4}", "node": None if i % 3 else "service:db", "kind": None if i % 6 == 0 else "server",
              "start_ns": 1_000_000 + i * 10, "end_ns": 1_000_500 + i * 10 + (i % 9),
              "status": "error" if i % 11 == 0 else None, "status_message": "boom ✗" if i % 11 == 0 else None,
              "attributes": None if i % 8 == 0 else json.dumps({"i": i, "text": "naïve \"q\"\n"})}
    record.update(over)
    return record


def spool_run(root: Path, n: int, *, node: str = "rank:2", records: list[dict] | None = None) -> Path:
    """A closed binary spool of one process: `n` spans (or `records`) and one span event."""
    run_id = uuid.uuid4().hex
    spool = Spool(root / run_id, run_id, node, flush_interval_ms=60000, encoding="arrow")
    stream = spool.stream("spans")
    for record in records if records is not None else [span(i) for i in range(n)]:
        stream.write(record)
    spool.stream("events").write({"span_id": f"{1:016x}", "ts_ns": 7, "name": "exception", "attributes": "{}"})
    spool.close()
    return spool.run_dir


def segment_rows(db: Path) -> list[tuple]:
    return query(db, "SELECT path, run_ids, rows FROM span_segments ORDER BY path")


@pytest.fixture
def small_segments(monkeypatch):
    monkeypatch.setenv("TRACEKIT_SEGMENT_MIN_ROWS", "50")


@pytest.mark.parametrize("compression", ["fast", "small"])
def test_segments_store_exactly_what_the_native_table_stores(tmp_path, monkeypatch, compression):
    run = spool_run(tmp_path / "spool", 300)
    monkeypatch.setenv("TRACEKIT_SEGMENT_MIN_ROWS", "0")
    native = ingest_paths([run], tmp_path / "native.duckdb")
    monkeypatch.setenv("TRACEKIT_SEGMENT_MIN_ROWS", "50")
    monkeypatch.setenv("TRACEKIT_SEGMENT_COMPRESSION", compression)
    seg = ingest_paths([run], tmp_path / "seg.duckdb")

    assert segment_rows(tmp_path / "native.duckdb") == []
    assert not segments.directory_of(tmp_path / "native.duckdb").exists()  # no empty sidecar without segments
    (path, run_ids, rows), = segment_rows(tmp_path / "seg.duckdb")  # one file of 300 spans: a segment of its own
    assert rows == 300 and run_ids == [run.name] and (tmp_path / path).is_file()
    assert query(tmp_path / "seg.duckdb", "SELECT count(*) FROM span_rows") == [(0,)]
    assert native.records == seg.records == 301 and not seg.quarantined
    got, want = query(tmp_path / "seg.duckdb", ROWS), query(tmp_path / "native.duckdb", ROWS)
    assert got == want and len(got) == 300
    by_id = {r[2]: r for r in got}
    assert by_id[f"{1:016x}"][5:7] == ("service:db", "internal") and by_id[f"{2:016x}"][5] == "rank:2"  # defaults
    assert by_id[f"{1:016x}"][11] == "{}" and by_id[f"{12:016x}"][9] == "error"
    # the run row computed from the segment's recorded bounds equals the one computed from the native rows
    runs = "SELECT started_ns, ended_ns, status, attributes FROM runs"
    assert query(tmp_path / "seg.duckdb", runs) == query(tmp_path / "native.duckdb", runs)
    assert query(tmp_path / "seg.duckdb", "SELECT typeof(attributes) FROM spans LIMIT 1") == [("JSON",)]


def test_a_batch_of_small_files_becomes_segments_of_several_runs_and_reads_like_rows(tmp_path, monkeypatch):
    runs = [spool_run(tmp_path / "spool", 40, node=f"rank:{k}") for k in range(3)]  # each below the threshold
    monkeypatch.setenv("TRACEKIT_SEGMENT_MIN_ROWS", "0")
    ingest_paths(runs, tmp_path / "native.duckdb")
    monkeypatch.setenv("TRACEKIT_SEGMENT_MIN_ROWS", "100")
    ingest_paths(runs, tmp_path / "seg.duckdb")  # one run per spool directory: 40 spans a load, all native
    assert segment_rows(tmp_path / "seg.duckdb") == []

    con = connect(tmp_path / "batch.duckdb")
    from tracekit.store.load import Part, load_tables
    from tracekit.store.streams import SPANS
    import pyarrow as pa

    parts = [Part(pa.Table.from_pylist([span(i + 40 * k) for i in range(40)], schema=SPANS.for_version(2).schema),
                  run_id=f"run{k}", pid=k, node=f"rank:{k}") for k in range(3)]
    with con:
        assert load_tables(con, SPANS.for_version(2), parts) == 120
    con.close()
    (_, run_ids, rows), = segment_rows(tmp_path / "batch.duckdb")
    assert run_ids == ["run0", "run1", "run2"] and rows == 120
    per_run = "SELECT run_id, count(*), min(pid), max(node) FROM spans GROUP BY 1 ORDER BY 1"
    assert query(tmp_path / "batch.duckdb", per_run) == [
        ("run0", 40, 0, "service:db"), ("run1", 40, 1, "service:db"), ("run2", 40, 2, "service:db")]
    con = connect(tmp_path / "batch.duckdb", read_only=True)
    # a segment shared by runs is scanned for one run's bounds: same answer as a scan of the view
    assert segments.run_bounds(con, "run1") == con.execute(
        "SELECT min(start_ns), max(end_ns), count(*) FILTER (WHERE parent_id IS NULL AND status = 'error') "
        "FROM spans WHERE run_id = 'run1'").fetchone()
    con.close()


def test_sandboxed_readers_read_segments_and_nothing_else(tmp_path, small_segments):
    outside = tmp_path / "outside.parquet"
    duckdb.sql(f"COPY (SELECT 1 AS secret) TO '{outside}' (FORMAT parquet)")
    run = spool_run(tmp_path / "spool", 120)
    ingest_paths([run], tmp_path / "s.duckdb")
    con = connect(tmp_path / "s.duckdb", read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM spans").fetchone() == (120,)
        for sql in (f"SELECT * FROM read_parquet('{outside}')", "SELECT * FROM read_csv('/etc/passwd')"):
            with pytest.raises(duckdb.PermissionException):
                con.execute(sql).fetchall()
    finally:
        con.close()


def test_a_moved_store_reads_its_segments_from_the_new_place(tmp_path, small_segments):
    run = spool_run(tmp_path / "spool", 120)
    ingest_paths([run], tmp_path / "a" / "s.duckdb")
    want = query(tmp_path / "a" / "s.duckdb", ROWS)  # plain DuckDB reads the view (absolute paths)
    (tmp_path / "b").mkdir()
    for name in ("s.duckdb", "s.duckdb.segments"):
        shutil.move(tmp_path / "a" / name, tmp_path / "b" / name)

    with pytest.raises(duckdb.IOException):  # plain DuckDB still names the old place ...
        query(tmp_path / "b" / "s.duckdb", ROWS)
    con = connect(tmp_path / "b" / "s.duckdb", read_only=True)  # ... a tracekit reader shadows the view
    assert con.execute(ROWS).fetchall() == want
    con.close()
    connect(tmp_path / "b" / "s.duckdb").close()  # a writer re-points the view for good
    assert query(tmp_path / "b" / "s.duckdb", ROWS) == want


def test_replacing_a_run_stored_in_a_segment_moves_it_into_rows_and_deletes_the_file(tmp_path, small_segments):
    from tracekit.store.agents import replace_run

    run = spool_run(tmp_path / "spool", 80)
    db = tmp_path / "s.duckdb"
    ingest_paths([run], db)
    (path, _, _), = segment_rows(db)
    con = connect(db)
    n = replace_run(con, {"run_id": run.name, "kind": "agents"}, [span(i) | {"node": "agent:x"} for i in range(3)])
    con.close()
    assert n == 3 and segment_rows(db) == [] and not (tmp_path / path).exists()
    assert query(db, "SELECT count(*), min(node) FROM spans") == [(3, "agent:x")]


def test_log_events_lift_content_into_a_span_stored_in_a_segment(tmp_path, small_segments):
    from tracekit.ingest.live_runs import join_log_events
    from tracekit.importers.otlp import LogEvent

    records = [span(i, attributes=json.dumps({"gen_ai.operation.name": "chat"}) if i == 3 else None)
               for i in range(60)]
    run = spool_run(tmp_path / "spool", 0, records=records)
    db = tmp_path / "s.duckdb"
    ingest_paths([run], db)
    assert query(db, "SELECT agent FROM span_segments") == [(True,)]
    event = LogEvent(span_id=f"{4:016x}", ts_ns=5, name="gen_ai.user.message",
                     attributes={"content": "hello"}, trace_id=None)
    assert join_log_events(db, [event]) == {0}
    assert segment_rows(db) == []  # the segment's rows became native rows, which could be changed
    attrs = json.loads(query(db, "SELECT CAST(attributes AS VARCHAR) FROM spans WHERE span_id = ?", [f"{4:016x}"])[0][0])
    assert attrs["gen_ai.operation.name"] == "chat" and "hello" in json.dumps(attrs)
    assert query(db, "SELECT count(*) FROM spans") == [(60,)]


def test_a_rolled_back_load_leaves_no_registered_segment_and_its_file_is_swept(tmp_path, small_segments):
    import pyarrow as pa

    from tracekit.store.load import Part, load_tables
    from tracekit.store.sql import transaction
    from tracekit.store.streams import SPANS

    db = tmp_path / "s.duckdb"
    con = connect(db)
    table = pa.Table.from_pylist([span(i) for i in range(60)], schema=SPANS.for_version(2).schema)
    with pytest.raises(RuntimeError):
        with transaction(con):
            load_tables(con, SPANS.for_version(2), [Part(table, "r1")])
            raise RuntimeError("a later statement of the load failed")
    assert con.execute("SELECT count(*) FROM spans").fetchone() == (0,)
    folder = segments.directory_of(db)
    orphans = list(folder.glob("spans-*.parquet"))
    assert len(orphans) == 1  # written before the rollback, not registered
    assert segments.sweep(con) == 0  # too young: may belong to a load still running
    assert segments.sweep(con, min_age_s=0) == 1 and not orphans[0].exists()
    con.close()


def test_a_segment_write_error_falls_back_to_the_native_insert(tmp_path, small_segments, monkeypatch):
    import pyarrow.parquet as pq

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)
    run = spool_run(tmp_path / "spool", 120)
    report = ingest_paths([run], tmp_path / "s.duckdb")
    assert report.records == 121 and not report.rejected
    assert segment_rows(tmp_path / "s.duckdb") == []
    assert query(tmp_path / "s.duckdb", "SELECT count(*) FROM span_rows") == [(120,)]


def test_a_segment_flush_error_falls_back_to_the_native_insert_and_removes_the_file(tmp_path, small_segments,
                                                                                    monkeypatch):
    """A spool file's segment is flushed to disk on the flusher thread; when that fails (the disk filled while
    the kernel wrote it back), the file is removed and its spans load natively: nothing is lost or registered."""
    import os

    real_fsync = os.fsync
    flushed: list[str] = []

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target.endswith(".parquet"):
            flushed.append(target)
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    runs = [spool_run(tmp_path / "spool", 120), spool_run(tmp_path / "spool", 90)]
    native = tmp_path / "native.duckdb"
    report = ingest_paths(runs, tmp_path / "s.duckdb")
    assert report.records == 212 and not report.rejected
    # each file's segment was flushed and failed (then its native fallback, itself a bulk load, tried once more)
    assert len(set(flushed)) >= 2 and not any(Path(p).exists() for p in flushed)
    assert segment_rows(tmp_path / "s.duckdb") == []
    assert list(segments.directory_of(tmp_path / "s.duckdb").glob("*.parquet")) == []
    monkeypatch.setenv("TRACEKIT_SEGMENT_MIN_ROWS", "0")
    ingest_paths(runs, native)
    assert query(tmp_path / "s.duckdb", ROWS) == query(native, ROWS) and len(query(native, ROWS)) == 210


@pytest.mark.parametrize("field, value, error", [("attributes", "{not json", "not valid JSON"),
                                                  ("name", None, "'name' is missing")])
def test_a_bad_record_in_a_binary_file_is_quarantined_with_its_id(tmp_path, small_segments, field, value, error):
    records = [span(i) for i in range(70)]
    records[5][field] = value
    run = spool_run(tmp_path / "spool", 0, records=records)
    report = ingest_paths([run], tmp_path / "s.duckdb")
    (bad,) = report.quarantined
    assert bad.record_id == f"{6:016x}" and bad.line == 6 and error in bad.error
    assert query(tmp_path / "s.duckdb", "SELECT count(*) FROM spans") == [(69,)]
    assert query(tmp_path / "s.duckdb", "SELECT record_id FROM quarantine") == [(f"{6:016x}",)]


@pytest.mark.parametrize("setting", [{"TRACEKIT_SEGMENT_MIN_ROWS": "many"},
                                     {"TRACEKIT_SEGMENT_MIN_ROWS": "10", "TRACEKIT_SEGMENT_COMPRESSION": "tiny"}])
def test_bad_segment_settings_are_clear_errors_before_anything_is_written(tmp_path, monkeypatch, setting):
    from tracekit import config

    run = spool_run(tmp_path / "spool", 120)
    done = cli(tmp_path, "ingest", str(run), "--db", str(tmp_path / "s.duckdb"), env=clean_env(tmp_path, **setting))
    assert_one_line_error(done)
    name, value = list(setting.items())[-1]
    assert name in done.err and value in done.err
    folder = segments.directory_of(tmp_path / "s.duckdb")
    assert not folder.exists() or not list(folder.iterdir())
    for key, val in setting.items():
        monkeypatch.setenv(key, val)
    with pytest.raises(ConfigError, match=name):
        config.segment_min_rows()
        config.segment_compression()


def test_fast_segments_store_random_ids_plain_and_structured_ids_compressed(tmp_path, small_segments):
    import random

    import pyarrow.parquet as pq

    rng = random.Random(3)
    records = [span(i, trace_id=f"{rng.getrandbits(128):032x}", span_id=f"{rng.getrandbits(64):016x}")
               for i in range(200)]  # OpenTelemetry's random ids; parent ids stay sequential here
    run = spool_run(tmp_path / "spool", 0, records=records)
    ingest_paths([run], tmp_path / "s.duckdb")
    (path, _, _), = segment_rows(tmp_path / "s.duckdb")
    meta = pq.ParquetFile(tmp_path / path).metadata.row_group(0)
    codec = {meta.column(i).path_in_schema: meta.column(i).compression for i in range(meta.num_columns)}
    assert codec["trace_id"] == codec["span_id"] == "UNCOMPRESSED"
    assert codec["parent_id"] == codec["attributes"] == "ZSTD"


def test_a_store_copied_without_its_segments_is_a_clear_error(tmp_path, small_segments):
    from tracekit.errors import StoreError

    run = spool_run(tmp_path / "spool", 120)
    ingest_paths([run], tmp_path / "a" / "s.duckdb")
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "s.duckdb", tmp_path / "b" / "s.duckdb")  # the file alone
    for read_only in (True, False):
        with pytest.raises(StoreError, match="without its segments directory"):
            connect(tmp_path / "b" / "s.duckdb", read_only=read_only)
    done = cli(tmp_path, "runs", "--db", str(tmp_path / "b" / "s.duckdb"))
    assert_one_line_error(done)
    assert "s.duckdb.segments" in done.err and "re-ingest" in done.err
    want = query(tmp_path / "a" / "s.duckdb", ROWS)
    shutil.copytree(tmp_path / "a" / "s.duckdb.segments", tmp_path / "b" / "s.duckdb.segments")
    shutil.rmtree(tmp_path / "a")  # the copy reads its own segments
    con = connect(tmp_path / "b" / "s.duckdb", read_only=True)
    assert con.execute(ROWS).fetchall() == want != []
    con.close()
