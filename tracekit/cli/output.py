"""The one output-format option every listing command shares (table, json, csv), and clean error exits."""

from __future__ import annotations

import csv
import datetime as dt
import enum
import json
import sys
from collections.abc import Sequence
from typing import Any

import typer


class Format(str, enum.Enum):
    table = "table"
    json = "json"
    csv = "csv"


FORMAT_OPTION = typer.Option(Format.table, "--format", "-f", help="Output format: table, json or csv.")
DB_OPTION = typer.Option(None, "--db", envvar="TRACEKIT_DB", help="The DuckDB store [default: ./tracekit.duckdb].")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


SHORT_ID = 12  # hex characters of an id in a table, as git abbreviates hashes (json and csv keep the full id)
_HEX = frozenset("0123456789abcdef")


def short_id(column: str, value: Any) -> Any:
    """The first 12 characters of a long hex id in an ``*_id`` column; any other value unchanged."""
    if (column.endswith("_id") and isinstance(value, str) and len(value) > SHORT_ID
            and _HEX.issuperset(value)):
        return value[:SHORT_ID]
    return value


def fmt_ns(ns: int | None) -> str:
    if ns is None:
        return ""
    return dt.datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


def emit(
    records: Sequence[dict[str, Any]], fmt: Format, *, columns: Sequence[str] | None = None,
    title: str | None = None, table_view: Sequence[dict[str, Any]] | None = None,
) -> None:
    """Print records as a rich table, one JSON array, or CSV with a header row.

    Tables show ids (``*_id`` columns) by their first 12 characters, which every command taking a run
    id accepts as a prefix; json and csv print them whole."""
    cols = list(columns or (records[0].keys() if records else []))
    if fmt is Format.json:
        out = [{k: _jsonable(v) for k, v in r.items()} for r in records]
        sys.stdout.write(json.dumps(out, default=str) + "\n")
        return
    if fmt is Format.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(cols)
        for r in records:
            writer.writerow([_cell(r.get(c)) for c in cols])
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    view = table_view if table_view is not None else records
    table = Table(title=title, show_lines=False)
    for c in cols:
        table.add_column(Text(str(c)), overflow="fold")
    for r in view:
        table.add_row(*[Text(_cell(short_id(c, r.get(c)))) for c in cols])  # data is text, never rich markup
    console = Console()
    console.print(table)
    if not records:
        console.print("(no rows)")


def emit_object(obj: dict[str, Any], fmt: Format) -> None:
    """Print one object: JSON as one object; table/csv as key/value rows."""
    if fmt is Format.json:
        sys.stdout.write(json.dumps(obj, default=_jsonable) + "\n")
        return
    emit([{"key": k, "value": v} for k, v in obj.items()], fmt, columns=["key", "value"])
