"""Small execution helpers shared by every store module."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import duckdb


def one(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> tuple[Any, ...] | None:
    """The first row of a query, with the result consumed fully.

    DuckDB 2 refuses further work on a connection (``register``, ...) while a result is only partly
    fetched, so never leave a ``fetchone()`` dangling.
    """
    cur = con.execute(sql, params) if params is not None else con.execute(sql)
    found = cur.fetchall()
    return found[0] if found else None


def literal(text: str) -> str:
    """A SQL string literal of `text` (for the places DuckDB takes no parameter: file lists, SET, DDL)."""
    return "'" + text.replace("'", "''") + "'"


def insert_rows(con: duckdb.DuckDBPyConnection, sql: str, rows: Sequence[Sequence[Any]], *, per_statement: int = 500) -> None:
    """``sql`` (``INSERT ... INTO table``, no ``VALUES``) with ``rows``: multi-row ``VALUES`` of parameters,
    ``per_statement`` rows each, where ``executemany`` runs a statement per row (~1 ms each)."""
    for start in range(0, len(rows), per_statement):
        chunk = rows[start:start + per_statement]
        row = "(" + ", ".join("?" * len(chunk[0])) + ")"
        con.execute(f"{sql} VALUES {', '.join([row] * len(chunk))}", [value for values in chunk for value in values])


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Run the block in one transaction: committed when it ends, rolled back (and re-raised) on an error."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except Exception:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


_scratch_db: duckdb.DuckDBPyConnection | None = None
_scratch_lock = threading.Lock()


def scratch() -> duckdb.DuckDBPyConnection:
    """A new connection to one in-memory database for checks on Arrow data (any thread; close it after use).
    Opening a fresh in-memory database costs ~20 ms each time; a cursor of a shared one costs nothing."""
    global _scratch_db
    with _scratch_lock:
        if _scratch_db is None:
            _scratch_db = duckdb.connect()
        return _scratch_db.cursor()
