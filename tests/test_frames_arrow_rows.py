"""The pure-Python Arrow IPC encoder of binary spool frames: what pyarrow reads back equals what pa.array builds."""

from __future__ import annotations

import math
import subprocess
import sys

import pyarrow as pa
import pytest

from tracekit import conventions as conv
from tracekit import frames
from tracekit.capture import arrow_rows
from tracekit.capture.spool import BINARY_STREAMS
from tracekit.store.streams import STREAMS as SPECS

TYPES = {"string": pa.string(), "int32": pa.int32(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}


def decode(data: bytes) -> pa.Table:
    """The one batch frame of ``data``, read by pyarrow and fully validated."""
    found = frames.scan(data, 0)
    assert found.torn == 0 and [kind for kind, _, _ in found.frames] == [frames.BATCH]
    _, begin, end = found.frames[0]
    table = pa.ipc.open_stream(pa.py_buffer(data[begin:end])).read_all()
    table.validate(full=True)
    return table


def reference(stream: str, records: list[dict]) -> pa.Table:
    """The same records built the way the encoder did before (``pa.array`` per column)."""
    flat = [(name, kind) for name, kind in conv.STREAMS[stream].fields if kind in TYPES]
    arrays = [pa.array([r.get(name) for r in records], type=TYPES[kind]) for name, kind in flat]
    return pa.Table.from_arrays(arrays, schema=pa.schema([(name, TYPES[kind]) for name, kind in flat]))


SPAN_ROWS = [
    {"trace_id": "ab" * 16, "span_id": "01", "parent_id": None, "name": "é 日本 🚀", "node": "", "kind": "internal",
     "start_ns": -(2**63), "end_ns": 2**63 - 1, "status": "ok", "status_message": None, "attributes": '{"a":1}'},
    {"trace_id": "cd" * 16, "span_id": "02", "parent_id": "01", "name": "", "node": None, "kind": None,
     "start_ns": 0, "end_ns": -1, "status": None, "status_message": "", "attributes": None},
]
COLLECTIVE_ROWS = [
    {"rank": r, "world_size": 2**31 - 1, "process_group": "pg" if r % 3 else None, "seq": -r, "op": "allreduce",
     "bytes": 10**r, "dtype": None, "enter_ns": 1_700_000_000_000_000_000 + r, "exit_ns": None if r % 2 else r,
     "step": r // 4, "ok": r % 2 == 0, "peer": None if r % 5 else -(2**31), "async_op": None if r % 7 else True,
     "source": "hook", "nonfinite": r == 9, "error": None}
    for r in range(19)  # not a multiple of 8: the bitmaps' last byte is partly used
]
STEP_ROWS = [
    {"rank": 0, "step": 1, "start_ns": 5, "end_ns": 9, "loss": 0.25, "grad_norm": None, "nonfinite": False},
    {"rank": 1, "step": 2, "start_ns": 6, "end_ns": 10, "loss": -1e300, "grad_norm": 3, "nonfinite": None},
]


@pytest.mark.parametrize("stream, records", [("spans", SPAN_ROWS), ("collectives", COLLECTIVE_ROWS), ("steps", STEP_ROWS)])
@pytest.mark.parametrize("shape", ["rows", "dicts"])
def test_decoded_frame_equals_the_pa_array_build_field_by_field(stream, records, shape):
    fields = conv.STREAMS[stream].fields
    if shape == "rows":
        names = tuple(records[0])
        items = [(names, tuple(r[n] for n in names)) for r in records]
    else:
        items = [(dict(r), None) for r in records]
    data, count, dropped = arrow_rows.encode(fields, items)
    assert (count, dropped) == (len(records), 0)
    got, want = decode(data), reference(stream, records)
    assert got.schema.equals(want.schema)
    for name in want.column_names:
        assert got.column(name).to_pylist() == want.column(name).to_pylist(), name
    assert got.equals(want)


def test_every_binary_stream_writes_the_schema_ingest_reads():
    """ingest takes a batch whose schema equals the stream's as is (no cast): the encoder writes exactly that."""
    for stream in BINARY_STREAMS:
        data, count, _ = arrow_rows.encode(conv.STREAMS[stream].fields, [({}, None)])
        assert count == 1
        assert decode(data).schema.equals(SPECS[stream].for_version(frames.BINARY_VERSION).schema), stream


def test_fields_a_row_does_not_name_are_null_and_row_shapes_group_into_batches():
    fields = conv.STREAMS["steps"].fields
    items = [(("rank", "step"), (i, i)) for i in range(9)] + [({"rank": 7, "loss": 1.5}, None)]
    table = decode(arrow_rows.encode(fields, items)[0])
    assert table.column("rank").to_pylist() == [*range(9), 7]
    assert table.column("loss").to_pylist() == [None] * 9 + [1.5]
    assert table.column("nonfinite").null_count == 10


class Scalar:
    """A one-element tensor or numpy scalar stand-in: has ``item()``."""

    def __init__(self, value):
        self.value = value

    def item(self):
        return self.value


def test_values_of_another_type_convert_as_json_lines_store_them_and_bad_rows_are_dropped():
    fields = conv.STREAMS["steps"].fields
    names = ("rank", "step", "loss", "nonfinite", "start_ns")
    items = [
        (names, (0, Scalar(3), Scalar(float("nan")), Scalar(True), 2.0)),  # kept: 3, null, True, 2
        (names, (1, True, 0.5, False, 1)),  # a bool in an integer field: dropped
        (names, (2, 1, 0.5, False, 1.5)),  # a fraction in an integer field: dropped
        (names, (3, 2**63, 0.5, False, 1)),  # an integer out of int64's range: dropped
        (names, (2**31, 1, 0.5, False, 1)),  # out of int32's range: dropped
        (names, (5, 1, 10**400, False, 1)),  # does not fit a float64: dropped
        (names, (6, 1, 0.5, 1, 1)),  # an int in a bool field: dropped
        (names, (7, 7, "x", False, 1)),  # text in a number field: dropped
        (names, (8, 8, 2, None, 8)),  # kept: an int in a float field
    ]
    data, count, dropped = arrow_rows.encode(fields, items)
    assert (count, dropped) == (2, 7)
    table = decode(data)
    assert table.column("rank").to_pylist() == [0, 8]
    assert table.column("step").to_pylist() == [3, 8]
    assert table.column("loss").to_pylist() == [None, 2.0]
    assert table.column("nonfinite").to_pylist() == [True, None]
    assert table.column("start_ns").to_pylist() == [2, 8]


def test_non_text_in_a_text_field_becomes_its_json_and_invalid_unicode_drops_the_row():
    fields = conv.STREAMS["spans"].fields
    names = ("span_id", "name", "attributes")
    items = [(names, ("01", 5, {"k": [1, "é"]})), (names, ("02", "bad \ud800", None)), (names, ("03", "ok", "{}"))]
    data, count, dropped = arrow_rows.encode(fields, items)
    assert (count, dropped) == (2, 1)
    table = decode(data)
    assert table.column("name").to_pylist() == ["5", "ok"]
    assert table.column("attributes").to_pylist() == ['{"k":[1,"é"]}', "{}"]


def test_nan_and_infinity_in_a_float_field_stay_what_they_were():
    data, _, _ = arrow_rows.encode(conv.STREAMS["steps"].fields, [(("rank", "loss"), (0, v)) for v in (math.nan, math.inf)])
    loss = decode(data).column("loss").to_pylist()
    assert math.isnan(loss[0]) and loss[1] == math.inf


@pytest.mark.parametrize("rows", [1, 7, 8, 9, 64, 2048])
def test_bitmaps_of_every_length_round_trip(rows):
    fields = conv.STREAMS["collectives"].fields
    names = ("rank", "seq", "op", "ok", "peer")
    items = [(names, (i, i, "x" * (i % 3), i % 3 == 0, None if i % 2 else i)) for i in range(rows)]
    table = decode(arrow_rows.encode(fields, items)[0])
    assert table.column("ok").to_pylist() == [i % 3 == 0 for i in range(rows)]
    assert table.column("peer").to_pylist() == [None if i % 2 else i for i in range(rows)]
    assert table.column("op").to_pylist() == ["x" * (i % 3) for i in range(rows)]


@pytest.mark.parametrize("rows", [1, 9, 3000])
def test_text_of_one_width_round_trips_at_every_length(rows):
    """Uniform-width text takes its offsets from a cached arithmetic sequence, grown past 2,048 rows."""
    fields = conv.STREAMS["collectives"].fields
    names = ("rank", "op", "dtype", "source", "error")
    items = [(names, (i, f"{i % 10}", "", "é" * 3, None if i % 2 else "x")) for i in range(rows)]
    table = decode(arrow_rows.encode(fields, items)[0])
    assert table.column("op").to_pylist() == [f"{i % 10}" for i in range(rows)]
    assert table.column("dtype").to_pylist() == [""] * rows
    assert table.column("source").to_pylist() == ["é" * 3] * rows
    assert table.column("error").to_pylist() == [None if i % 2 else "x" for i in range(rows)]


def test_no_row_left_gives_no_frame():
    assert arrow_rows.encode(conv.STREAMS["steps"].fields, [(("rank",), (True,))]) == (b"", 0, 1)


FIRST_FLUSH = """
import sys, tempfile, uuid
from tracekit.capture.spool import Spool
run = uuid.uuid4().hex
spool = Spool(__import__("pathlib").Path(tempfile.mkdtemp()) / run, run, "n", flush_interval_ms=60000, encoding="arrow")
spool.stream("spans").write_row(("trace_id", "span_id", "name", "start_ns", "end_ns"), ("ab", "cd", "x", 1, 2))
spool.stream("collectives").write_row(("rank", "seq", "op", "ok"), (0, 1, "allreduce", True))
spool.flush()
assert spool.stream("spans").records == 1 and spool.dropped == 0
print(sorted(m for m in ("pyarrow", "numpy", "pandas") if m in sys.modules))
"""


def test_a_binary_flush_imports_neither_pyarrow_nor_numpy_nor_pandas():
    """Guards the start-up cost: pyarrow's array constructors imported pandas (0.3-0.5 s at the first flush)."""
    done = subprocess.run([sys.executable, "-c", FIRST_FLUSH], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
