"""Loading Who&When logs: each parsed log (``tracekit.importers.whowhen``) replaces its run in the store.

Owned with the Who&When importer (engineer E, issue #16): the importer parses, this module loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from tracekit.errors import TracekitError
from tracekit.importers.whowhen import load_log, log_files

__all__ = ["import_whowhen", "ImportReport"]


@dataclass
class ImportReport:
    runs: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"runs": len(self.runs), "steps": sum(r["steps"] for r in self.runs),
                "imported": self.runs, "skipped": self.skipped}


def import_whowhen(directory: str | os.PathLike[str], db: str | os.PathLike[str] | None = None) -> ImportReport:
    """Import every log under `directory` into the store (one run per log; idempotent)."""
    from tracekit.store.agents import replace_run
    from tracekit.store.db import connect

    report = ImportReport()
    files = log_files(directory)
    con = connect(db)
    try:
        for path in files:
            try:
                run, spans = load_log(path)
            except TracekitError as exc:
                report.skipped.append({"file": str(path), "error": str(exc)})
                continue
            replace_run(con, run, spans)
            report.runs.append({"run_id": run["run_id"], "name": run["name"], "steps": len(spans)})
    finally:
        con.close()
    return report
