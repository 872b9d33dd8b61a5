"""Reads for the collective-anomaly analysis: one run's collectives, steps, probes, heartbeats and rank exits as Arrow."""

from __future__ import annotations

import struct
from itertools import accumulate
from typing import TYPE_CHECKING, Any, cast

import duckdb
import pyarrow as pa

if TYPE_CHECKING:
    import polars as pl

# A collective interrupted at SIGTERM is written once, as failed; the detectors compare only completed
# ones across ranks, so no de-duplication pass is needed here (it costs seconds on 8 M rows).
_COLLECTIVES_SQL = """
SELECT rank, world_size, process_group, seq, op, bytes, enter_ns, exit_ns, step, ok, peer, source, nonfinite, error
FROM collectives
WHERE run_id = $run
"""

_STEPS_SQL = """
SELECT rank, step, start_ns, end_ns, loss, grad_norm, nonfinite FROM steps WHERE run_id = $run
"""

_PROBES_SQL = """
SELECT rank, world_size, round, src, dst, bytes, ts_ns, dur_ns, step FROM probes WHERE run_id = $run
"""

_HEARTBEATS_SQL = """
SELECT rank, ts_ns, step, last_seq, inflight_op, inflight_seq, inflight_since_ns, state, sched_lag_ns, lag_step
FROM heartbeats WHERE run_id = $run
"""

# One row per rank: did every spool file of its process end with a footer (a clean exit)?
_RANK_EXITS_SQL = """
SELECT TRY_CAST(split_part(node, ':', 2) AS INTEGER) AS rank,
       bool_and(ended_ns IS NOT NULL) AS clean_exit,
       max(ended_ns) AS ended_ns, min(started_ns) AS started_ns, any_value(host) AS host
FROM spool_files
WHERE run_id = $run AND starts_with(node, 'rank:')
GROUP BY 1
"""

# Read live, a spool file without its footer is still being written -- or its process died: the two look
# alike until later records (beats) or the launcher's exit record tell them apart. So a live read knows a
# rank's clean exit only once every file of it has its footer: NULL until then, never False (which, read
# after the run, means "died without closing its files" and decides a missing rank's crash at once).
_LIVE_RANK_EXITS_SQL = f"""
SELECT rank, CASE WHEN clean_exit THEN true END AS clean_exit, ended_ns, started_ns, host
FROM ({_RANK_EXITS_SQL})
"""

_WORKER_EXITS_SQL = """
SELECT rank, local_rank, worker_pid, exit_code, signal, ts_ns, host FROM worker_exits WHERE run_id = $run
"""


def _arrow(con: duckdb.DuckDBPyConnection, sql: str, run_id: str) -> pa.Table:
    cursor = con.cursor()  # a fresh cursor: the caller's connection may hold an unfinished result
    try:
        return cursor.sql(sql, params={"run": run_id}).to_arrow_table()
    finally:
        cursor.close()


# Text columns with a few values per run cross into Python as codes into those values (dictionary-encoded
# Arrow columns): 8 M process groups, ops and sources as Arrow strings, then as polars string views, cost
# more than all the numeric columns together; `to_polars` hands the codes to polars as enums. A column
# that is null throughout (error, or peer, in a run without failures or point-to-point calls) or one value
# throughout (world_size; often the process group) is not read at all. Which columns those are is found
# without a pass over the rows: the first row's values, then for each column whether any row differs from
# them (`EXISTS`, which stops at the first such row, and for a column one value throughout DuckDB answers
# from its per-row-group min/max without reading it: ~10 ms for 8 M rows, where counts and min/max of
# every column took a scan of 0.1-0.2 s).
_CODED = ("process_group", "op", "source", "error")
_MAX_CODES = 256  # more distinct values than this: the column is read as text
# 64-bit counters whose values fit 32 bits in any real run (sequence numbers, steps, message sizes) cross
# as 32-bit integers when every value of the run fits (two more EXISTS each, answered from min/max): 8 M
# rows are 96 MB less to write into fresh memory. A run with one value out of range reads that column as
# stored. (Ranks in 16 bits, 16 MB less, measured no faster.)
_NARROWED = {"seq": "INTEGER", "step": "INTEGER", "bytes": "INTEGER"}
_RANGE = {"INTEGER": (-(2**31), 2**31 - 1)}


def _any_row(rest: str, test: str) -> str:
    """SQL: whether any row of ``FROM{rest}`` (`` table WHERE condition``) passes ``test`` (stops at the first)."""
    source, condition = rest.split("WHERE", 1)
    return f"EXISTS (SELECT 1 FROM{source}WHERE ({condition.strip()}) AND {test})"


def _fixed(cursor: duckdb.DuckDBPyConnection, columns: list[str], rest: str,
           params: dict[str, Any]) -> tuple[int, pa.Table, set[str]]:
    """(rows, the first row (typed, empty when no rows), the columns null or one value throughout) of
    ``SELECT columns FROM{rest}`` (``rest``: `` table WHERE condition``)."""
    first = cursor.sql(f"SELECT (SELECT count(*) FROM{rest}) AS tk_rows, {', '.join(columns)} FROM{rest} LIMIT 1",
                       params=params).to_arrow_table()
    rows = first.column("tk_rows")[0].as_py() if first.num_rows else 0
    first = first.drop_columns(["tk_rows"])
    if not rows:
        return 0, first, set(columns)
    values = first.to_pylist()[0]
    probes, bound = [], dict(params)
    for i, c in enumerate(columns):
        if values[c] is None:
            probes.append(_any_row(rest, f"{c} IS NOT NULL"))
        else:  # two tests, not one IS DISTINCT FROM: each is one DuckDB can check against a row group's min/max
            bound[f"tk_{i}"] = values[c]
            probes.append(f"{_any_row(rest, f'{c} <> $tk_{i}')} OR {_any_row(rest, f'{c} IS NULL')}")
    varies = cursor.sql("SELECT " + ", ".join(probes), params=bound).fetchall()[0]
    return rows, first, {c for c, v in zip(columns, varies) if not v}


def _coded(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any], coded: tuple[str, ...]) -> pa.Table:
    """The result of ``sql`` (``SELECT col, col, ... FROM ... WHERE ...``: plain column names) with the ``coded``
    columns dictionary-encoded and the columns null or one value throughout made here, not read."""
    head, rest = sql.split("FROM", 1)
    columns = [c.strip() for c in head.strip().removeprefix("SELECT").split(",")]
    cursor = con.cursor()
    try:
        rows, first, fixed = _fixed(cursor, columns, rest, params)
        narrow = _fitting(cursor, [c for c in columns if c in _NARROWED and c not in fixed], rest, params)
        varied = [c for c in columns if c in coded and c not in fixed]
        values: dict[str, pa.Array] = {}
        if varied:  # the values of the coded columns that vary (few, or the column is read as text)
            found = cursor.sql("SELECT " + ", ".join(f"list_sort(list(DISTINCT {c}) FILTER (WHERE {c} IS NOT NULL)) AS {c}"
                                                     for c in varied) + f" FROM{rest}", params=params).to_arrow_table()
            values = {c: v for c in varied if len(v := _first_list(found.column(c))) <= _MAX_CODES}
        select = [f"CAST(list_position($tk_{c}, {c}) - 1 AS {_code_type(values[c])[0]}) AS {c}" if c in values
                  else f"CAST({c} AS {_NARROWED[c]}) AS {c}" if c in narrow else c
                  for c in columns if c not in fixed]
        table = cursor.sql(f"SELECT {', '.join(select)} FROM{rest}",
                           params={**params, **{f"tk_{c}": v.to_pylist() for c, v in values.items()}}).to_arrow_table() \
            if select else pa.table({"tk_none": pa.nulls(rows)}).drop_columns(["tk_none"])  # no columns, `rows` rows
    finally:
        cursor.close()
    for i, c in enumerate(columns):
        if c in fixed:  # null or one value throughout: one run of its value (run-end encoded), nothing repeated
            table = table.add_column(i, c, pa.chunked_array([_one_run(first.column(c).combine_chunks(), rows)]))
        elif c in values:
            table = table.set_column(i, c, _dictionary(table.column(i), values[c]))
    return table


def _fitting(cursor: duckdb.DuckDBPyConnection, columns: list[str], rest: str, params: dict[str, Any]) -> set[str]:
    """Of ``columns``, those with no value of the rows of ``FROM{rest}`` outside their narrower type's range."""
    if not columns:
        return set()
    probes = [_any_row(rest, f"{c} {op} {bound}") for c in columns for op, bound in zip("<>", _RANGE[_NARROWED[c]])]
    out = cursor.sql("SELECT " + ", ".join(probes), params=params).fetchall()[0]
    return {c for i, c in enumerate(columns) if not (out[2 * i] or out[2 * i + 1])}


# Built from buffers: pyarrow's constructors from Python values (pa.array, pa.scalar, RunEndEncodedArray.from_arrays)
# import pandas where it is installed, 0.3 s of a load that is otherwise 0.3 s.
def _one_run(first: pa.Array, rows: int) -> pa.Array:
    """``rows`` times the value of ``first`` (its first row; null when it has none), run-end encoded."""
    value = first.slice(0, 1) if len(first) else pa.nulls(1, first.type)
    ends = pa.Array.from_buffers(pa.int32(), 1 if rows else 0, [None, pa.py_buffer(struct.pack("=i", rows))])
    return pa.Array.from_buffers(pa.run_end_encoded(pa.int32(), first.type), rows, [None],
                                 children=[ends, value if rows else value.slice(0, 0)])


def _first_list(column: pa.ChunkedArray) -> pa.Array:
    """The values of the list in the first row (a list column's `flatten` imports pyarrow.compute: 80 ms)."""
    lists = column.chunk(0)
    return lists.values.slice(lists.offsets[0].as_py(), lists.offsets[1].as_py() - lists.offsets[0].as_py())


def _code_type(dictionary: pa.Array) -> tuple[str, pa.DataType]:
    """The narrowest unsigned integer (SQL, Arrow) for codes into ``dictionary``: 1 byte a row, not 4, for up to
    256 values (8 M rows: 25 MB less to write, and in a fresh process every new page costs). Unsigned, as polars
    stores an enum's codes, so :func:`to_polars` hands them over as they are."""
    return ("UTINYINT", pa.uint8()) if len(dictionary) <= 256 else ("USMALLINT", pa.uint16())


def _dictionary(codes: pa.ChunkedArray, dictionary: pa.Array) -> pa.ChunkedArray:
    return pa.chunked_array([pa.DictionaryArray.from_arrays(chunk, dictionary) for chunk in codes.chunks],
                            pa.dictionary(_code_type(dictionary)[1], pa.string()))


def to_polars(table: pa.Table) -> "pl.DataFrame":
    """A polars frame of one of these tables: dictionary-encoded text columns become polars enums (their codes
    handed over as they are, 1 byte a row; decoding 8 M rows into strings took 0.1 s a column, a cast of
    polars' categoricals twice that, a gather of the codes into the enum 0.04 s in a fresh process), a
    column of one value (run-end encoded) a polars literal that is only spread out where used. Enums compare
    with plain strings (a value not among them is simply unequal); ``.cast(pl.String)`` first where string
    functions are needed.

    The columns keep DuckDB's chunks (one per row group) and the decoded ones are cut alike: adding a
    literal with `with_columns`, or reordering columns of unequal chunking, copies every column into one
    chunk (300 MB for 8 M rows, 0.1-0.2 s); a `select` of literals and columns does not."""
    import polars as pl

    runs = [fld.name for fld in table.schema if pa.types.is_run_end_encoded(fld.type)]
    # their one values as a one-row frame (polars converts a table without pyarrow.compute, an array with it: 80 ms)
    ones = cast("pl.DataFrame", pl.from_arrow(pa.Table.from_arrays(
        [_first_value(table.column(name)) for name in runs], names=runs)))
    plain = [i for i, fld in enumerate(table.schema) if fld.name not in runs]
    if not plain:  # nothing to spread a literal over
        return pl.DataFrame([pl.repeat(ones[name][0], table.num_rows, dtype=ones.schema[name], eager=True).alias(name)
                             for name in runs])
    columns = [table.column(i) for i in plain]
    names = [table.field(i).name for i in plain]
    coded = {name: (c.chunks[0].dictionary if c.num_chunks else pa.nulls(0, pa.string())).to_pylist()
             for name, c in zip(names, columns) if pa.types.is_dictionary(c.type)}
    # a coded column crosses as polars' own Arrow form of an enum (its codes, untouched); where this polars
    # stores an enum's codes in another width, as plain codes that a gather below turns into the enum
    crossing = [_crossing(name, column, coded.get(name)) for name, column in zip(names, columns)]
    frame = cast("pl.DataFrame", pl.from_arrow(pa.Table.from_arrays(
        [column for column, _ in crossing], schema=pa.schema([field for _, field in crossing]))))
    gathered = [name for name, values in coded.items() if frame.schema[name] != pl.Enum(values)]
    if gathered:  # (another polars) the codes, gathered into the enum's values
        chunks = [len(c) for c in columns[0].chunks]
        codes = cast("pl.DataFrame", pl.from_arrow(pa.Table.from_arrays(
            [_codes(columns[names.index(name)]) for name in gathered], names=gathered)))
        frame = frame.with_columns(
            _like_chunks(pl.Series(name, coded[name], pl.Enum(coded[name])).gather(codes[name]), chunks)
            for name in gathered)
    return frame.select(pl.lit(ones[f.name][0], ones.schema[f.name]).alias(f.name) if f.name in runs else pl.col(f.name)
                        for f in table.schema)


def _codes(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A dictionary-encoded column's codes."""
    return pa.chunked_array([c.indices for c in column.chunks], column.type.index_type)


def _crossing(name: str, column: pa.ChunkedArray, values: list[str] | None) -> tuple[pa.ChunkedArray, pa.Field]:
    """How a column crosses into polars: as it is; or, coded (``values``), with the dictionary type and metadata
    polars itself exports for an enum of ``values``, which its import turns back into that enum (2-4x faster
    than a gather of the codes, in fresh memory), or as plain codes where this polars's enum codes differ."""
    if values is None:
        return column, pa.field(name, column.type)
    import polars as pl

    codes = _codes(column)
    own = pl.Series(name, values, pl.Enum(values)).to_frame().to_arrow()  # (built from buffers: no pandas import)
    field = own.schema.field(0)
    if not pa.types.is_dictionary(field.type) or field.type.index_type != codes.type:
        return codes, pa.field(name, codes.type)
    dictionary = own.column(0).chunk(0).dictionary
    return pa.chunked_array([pa.DictionaryArray.from_arrays(c, dictionary, ordered=field.type.ordered)
                             for c in codes.chunks], field.type), field


def _like_chunks(series: "pl.Series", lengths: list[int]) -> "pl.Series":
    """``series`` cut (without a copy) into chunks of ``lengths``: the other columns' chunks, one per DuckDB row
    group. A frame whose columns are chunked alike is filtered chunk by chunk; one whose columns are not is
    copied into one chunk at every filter (the detectors filter the collectives many times)."""
    import polars as pl

    if len(lengths) < 2:
        return series
    starts = accumulate(lengths[:-1], initial=0)
    return pl.concat([series.slice(start, n) for start, n in zip(starts, lengths)], rechunk=False)


def _first_value(column: pa.ChunkedArray) -> pa.Array:
    """A run-end encoded column's value (null when it has no rows), as an array of one."""
    if column.num_chunks and len(column.chunks[0].values):
        return column.chunks[0].values.slice(0, 1)
    return pa.nulls(1, column.type.value_type)


def collectives_table(con: duckdb.DuckDBPyConnection, run_id: str) -> pa.Table:
    """A run's collectives; process group, op and source dictionary-encoded (see :func:`to_polars`)."""
    return _coded(con, _COLLECTIVES_SQL, {"run": run_id}, _CODED)


def steps_table(con: duckdb.DuckDBPyConnection, run_id: str) -> pa.Table:
    return _arrow(con, _STEPS_SQL, run_id)


def probes_table(con: duckdb.DuckDBPyConnection, run_id: str) -> pa.Table:
    return _arrow(con, _PROBES_SQL, run_id)


def heartbeats_table(con: duckdb.DuckDBPyConnection, run_id: str) -> pa.Table:
    return _arrow(con, _HEARTBEATS_SQL, run_id)


def rank_exits_table(con: duckdb.DuckDBPyConnection, run_id: str, *, live: bool = False) -> pa.Table:
    """One row per rank: whether every spool file of its process ended with a footer. `live` (the run is
    still running): NULL instead of False while a file has none (`_LIVE_RANK_EXITS_SQL`)."""
    return _arrow(con, _LIVE_RANK_EXITS_SQL if live else _RANK_EXITS_SQL, run_id)


def worker_exits_table(con: duckdb.DuckDBPyConnection, run_id: str) -> pa.Table:
    return _arrow(con, _WORKER_EXITS_SQL, run_id)


def run_exit_code(con: duckdb.DuckDBPyConnection, run_id: str) -> int | None:
    row = con.execute(
        "SELECT TRY_CAST(json_extract(attributes, '$.exit_code') AS INTEGER) FROM runs WHERE run_id = ?", [run_id]
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])
