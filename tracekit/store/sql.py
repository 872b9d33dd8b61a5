"""Small execution helpers shared by every store module."""

from __future__ import annotations

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
