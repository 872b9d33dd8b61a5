"""Loading Flight Recorder dumps (``tracekit.importers.flight_recorder``): one file per rank -> one training run."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracekit.capture.multihost import run_id_from_text
from tracekit.errors import TracekitError
from tracekit.importers.flight_recorder import SOURCE, dump_records, read_dump

__all__ = ["import_flight_recorder", "FlightRecorderImport"]


@dataclass
class FlightRecorderImport:
    run_id: str
    name: str
    ranks: list[int]
    rows: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "name": self.name, "ranks": self.ranks, "rows": self.rows}


def import_flight_recorder(paths: Sequence[str | os.PathLike[str]], db: str | os.PathLike[str] | None = None, *,
                           name: str | None = None) -> FlightRecorderImport:
    """Import the dumps (one file per rank; a directory: every file in it) as one training run.

    The run id follows from the files (their paths and first entry), so importing the same dumps again
    replaces the run instead of adding a second one. Raises TracekitError for a file that is not a dump,
    or two files of one rank.
    """
    from tracekit.store.db import connect
    from tracekit.store.imported import replace_training_run

    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise TracekitError(f"{path} does not exist: give Flight Recorder dump files (one per rank)")
        files += sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")) if path.is_dir() else [path]
    if not files:
        raise TracekitError("no Flight Recorder dump files given")
    dumps = [read_dump(f) for f in files]
    by_rank: dict[int, Path] = {}
    for d in dumps:
        if d.rank in by_rank:
            raise TracekitError(f"{d.path} and {by_rank[d.rank]} are both dumps of rank {d.rank}: import one per rank")
        by_rank[d.rank] = d.path
    world = max([d.world_size() or 0 for d in dumps] + [max(by_rank) + 1])
    records: dict[str, list[dict[str, Any]]] = {"collectives": [], "heartbeats": []}
    for d in dumps:
        for stream, rows in dump_records(d, world).items():
            records[stream] += rows
    enters = [r["enter_ns"] for r in records["collectives"]]
    ident = "|".join(str(f.resolve()) for f in sorted(files)) + f"|{min(enters, default=0)}"
    run_id = run_id_from_text(f"{SOURCE}:{ident}")
    name = name or f"flight-recorder-{files[0].parent.name or 'dumps'}"
    inflight = any(r["ok"] is None for r in records["collectives"])
    beats = [r["ts_ns"] for r in records["heartbeats"]]
    run = {"run_id": run_id, "name": name, "kind": "training", "started_ns": min(enters, default=None),
           "ended_ns": max(beats + enters, default=None), "status": "error" if inflight else "ok",
           "attributes": {"source": SOURCE, "files": [str(f) for f in files],
                          "versions": sorted({d.version for d in dumps}), "world_size": world}}
    con = connect(db)
    try:
        rows = replace_training_run(con, run, records)
    finally:
        con.close()
    return FlightRecorderImport(run_id, name, sorted(by_rank), rows)
