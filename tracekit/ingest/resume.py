"""Resume bookkeeping: what each spool file had loaded before, so ingesting again adds only what is new.

Each spool file (named by the ``file_id`` in its header) has a ``spool_files`` row saying how many
bytes and records were loaded and whether its footer was seen. A cleanly closed file never loaded
before can go whole to DuckDB's JSON reader; any other file is parsed from its loaded offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from tracekit import conventions as conv
from tracekit.ingest.spool import Closed, ParsedFile, peek_closed, peek_file_id
from tracekit.store.load import file_progress, known_file_ids
from tracekit.store.segments import Segment
from tracekit.store.streams import StreamSpec


@dataclass
class Prepared:
    """A spool file for the careful path: what was loaded of it before, then its parse (or why not)."""

    path: Path
    prior: tuple[int, int, int | None] | None  # (bytes loaded, records seen, end time)
    parsed: ParsedFile | None = None
    error: str | None = None
    segment: Segment | None = None  # its spans, already written as a Parquet segment (registered when loaded)
    flushed: Any = None  # a future of that segment's flush to disk: True, or False when it failed (file removed)

    def start(self) -> tuple[int, int]:
        """(byte offset, records before) to parse from."""
        return (self.prior[0], self.prior[1]) if self.prior else (0, 0)


def prepare(con: duckdb.DuckDBPyConnection, path: Path) -> Prepared:
    file_id = peek_file_id(path)
    return Prepared(path, file_progress(con, file_id) if file_id is not None else None)


def is_unchanged(item: Prepared) -> bool:
    """Nothing new since the last ingest: no records, and the end (if any) was already seen."""
    parsed, prior = item.parsed, item.prior
    return bool(
        prior and parsed is not None and parsed.table.num_rows == 0 and not parsed.quarantined
        and (prior[2] is not None or parsed.footer is None)
    )


def split_closed(con: duckdb.DuckDBPyConnection, paths: list[Path]) -> tuple[list[Closed], list[Path]]:
    """Split files into those the fast path loads (closed, never loaded before) and the rest."""
    peeked = {path: peek_closed(path) for path in paths}
    known = known_file_ids(con, [c.header["file_id"] for c in peeked.values() if c is not None])
    closed = [c for c in peeked.values() if c is not None and c.header["file_id"] not in known]
    rest = [path for path, c in peeked.items() if c is None or c.header["file_id"] in known]
    return closed, rest


def spool_file_row(
    path: Path, header: dict[str, Any], spec: StreamSpec, footer: dict[str, Any] | None,
    offset: int, records: int, torn: int,
) -> tuple[Any, ...]:
    """The ``spool_files`` row (``tracekit.store.load.SPOOL_FILE_COLUMNS``) saying how far a file was loaded."""
    return (
        header["file_id"], str(header["run_id"]), spec.name, str(path.absolute()),
        header.get("pid"), header.get("host"), header.get("node"), header.get("started_ns"),
        footer.get(conv.FOOTER_KEY) if footer else None, offset, records, torn,
    )
