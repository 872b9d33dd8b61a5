"""Reads for the collective-anomaly analysis: one run's collectives, steps, probes, heartbeats and rank exits as Arrow."""

from __future__ import annotations

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
# more than all the numeric columns together; `to_polars` rebuilds them with a gather of the codes. A column
# that is null throughout (error, or peer, in a run without failures or point-to-point calls) or one value
# throughout (world_size; often the process group) is not read at all: one pass of counts finds them.
_CODED = ("process_group", "op", "source", "error")
_MAX_CODES = 256  # more distinct values than this: the column is read as text


def _coded(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any], coded: tuple[str, ...]) -> pa.Table:
    """The result of ``sql`` (``SELECT col, col, ... FROM ...``: plain column names) with the ``coded``
    columns dictionary-encoded and the columns null or one value throughout made here, not read."""
    head, rest = sql.split("FROM", 1)
    columns = [c.strip() for c in head.strip().removeprefix("SELECT").split(",")]
    cursor = con.cursor()
    try:
        stats = cursor.sql(  # text: its distinct values (min and max of text cost more); numbers: min and max
            "SELECT count(*) AS tk_rows, " + ", ".join(
                f'count({c}) AS "{c}#n", ' + (f'list(DISTINCT {c}) FILTER (WHERE {c} IS NOT NULL) AS "{c}#v"'
                                              if c in coded else f'min({c}) AS "{c}#min", max({c}) AS "{c}#max"')
                for c in columns) + " FROM" + rest,
            params=params,
        ).to_arrow_table()
        row = stats.to_pylist()[0]
        rows = int(row["tk_rows"])
        values = {c: sorted(row[f"{c}#v"] or []) for c in coded if len(row[f"{c}#v"] or []) <= _MAX_CODES}
        fixed = {c for c in columns if not row[f"{c}#n"] or (row[f"{c}#n"] == rows and (
            len(values[c]) == 1 if c in values else c not in coded and row[f"{c}#min"] == row[f"{c}#max"]))}
        select = [c if c not in values else f"CAST(list_position($tk_{c}, {c}) - 1 AS INTEGER) AS {c}"
                  for c in columns if c not in fixed]
        table = cursor.sql(
            f"SELECT {', '.join(select)} FROM{rest}" if select else f"SELECT NULL AS tk_none FROM{rest}",
            params={**params, **{f"tk_{c}": v for c, v in values.items() if c not in fixed}},
        ).to_arrow_table()
    finally:
        cursor.close()
    if not select:
        table = table.drop_columns(["tk_none"])
    for i, c in enumerate(columns):
        if c in fixed:  # null or one value throughout: one run of its value (run-end encoded), nothing repeated
            value = pa.array(values[c][:1] or [None], pa.string()) if c in values else stats.column(f"{c}#min").chunk(0)
            ends = pa.array([rows] if rows else [], pa.int32())
            table = table.add_column(i, c, pa.chunked_array(
                [pa.RunEndEncodedArray.from_arrays(ends, value if rows else value.slice(0, 0))]))
        elif c in values:
            table = table.set_column(i, c, _dictionary(table.column(i), pa.array(values[c], pa.string())))
    return table


def _dictionary(codes: pa.ChunkedArray, dictionary: pa.Array) -> pa.ChunkedArray:
    return pa.chunked_array([pa.DictionaryArray.from_arrays(chunk, dictionary) for chunk in codes.chunks],
                            pa.dictionary(pa.int32(), pa.string()))


def to_polars(table: pa.Table) -> "pl.DataFrame":
    """A polars frame of one of these tables: dictionary-encoded text columns decoded by a gather of their
    codes into plain strings (a cast of polars' categoricals costs twice as much), a column of one value
    (run-end encoded) a polars literal that is only spread out where used."""
    import polars as pl

    decoded, constant = {}, {}
    for i, fld in enumerate(table.schema):
        column = table.column(i)
        if pa.types.is_dictionary(fld.type):
            dictionary = column.chunks[0].dictionary if column.num_chunks else pa.array([], pa.string())
            codes = pa.chunked_array([c.indices for c in column.chunks], pa.int32())
            decoded[fld.name] = pl.Series(fld.name, dictionary.to_pylist(), pl.String).gather(pl.from_arrow(codes))
        elif pa.types.is_run_end_encoded(fld.type):
            one = cast("pl.Series", pl.from_arrow(column.chunks[0].values if column.num_chunks else
                                                 pa.array([], fld.type.value_type)))
            constant[fld.name] = (one[0] if len(one) else None, one.dtype)
    plain = table.drop_columns(list(constant)) if constant else table
    for name in decoded:  # the codes stand in their place until the decoded column replaces them
        i = plain.schema.get_field_index(name)
        plain = plain.set_column(i, name, pa.chunked_array([c.indices for c in plain.column(i).chunks], pa.int32()))
    frame = cast("pl.DataFrame", pl.from_arrow(plain))
    if decoded:
        frame = frame.with_columns(list(decoded.values()))
    if constant:
        if frame.width:
            frame = frame.with_columns([pl.lit(v, dtype).alias(name) for name, (v, dtype) in constant.items()])
        else:  # nothing to spread a literal over
            frame = pl.DataFrame([pl.repeat(v, table.num_rows, dtype=dtype, eager=True).alias(name)
                                  for name, (v, dtype) in constant.items()])
        frame = frame.select(table.column_names)
    return frame


def collectives_table(con: duckdb.DuckDBPyConnection, run_id: str) -> pa.Table:
    """A run's collectives; process group, op and source dictionary-encoded (see :func:`to_polars`)."""
    return _coded(con, _COLLECTIVES_SQL, {"run": run_id}, _CODED)


def steps_table(con: duckdb.DuckDBPyConnection, run_id: str) -> pa.Table:
    return _arrow(con, _STEPS_SQL, run_id)


def probes_table(con: duckdb.DuckDBPyConnection, run_id: str) -> pa.Table:
    return _arrow(con, _PROBES_SQL, run_id)


def heartbeats_table(con: duckdb.DuckDBPyConnection, run_id: str) -> pa.Table:
    return _arrow(con, _HEARTBEATS_SQL, run_id)


def rank_exits_table(con: duckdb.DuckDBPyConnection, run_id: str) -> pa.Table:
    return _arrow(con, _RANK_EXITS_SQL, run_id)


def worker_exits_table(con: duckdb.DuckDBPyConnection, run_id: str) -> pa.Table:
    return _arrow(con, _WORKER_EXITS_SQL, run_id)


def run_exit_code(con: duckdb.DuckDBPyConnection, run_id: str) -> int | None:
    row = con.execute(
        "SELECT TRY_CAST(json_extract(attributes, '$.exit_code') AS INTEGER) FROM runs WHERE run_id = ?", [run_id]
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])
