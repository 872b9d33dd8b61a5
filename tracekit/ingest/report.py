"""What one ingest did: files and records loaded, runs touched, and what was quarantined, torn or rejected."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Quarantined:
    """A record that could not be loaded: where it was, its id (if it had one) and why."""

    source: str
    line: int | None
    record_id: str | None
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "line": self.line, "record_id": self.record_id, "error": self.error}


@dataclass
class IngestReport:
    """What one ingest did; `rejected` files were left out whole."""

    files: int = 0
    unchanged_files: int = 0
    records: int = 0
    runs: set[str] = field(default_factory=set)
    quarantined: list[Quarantined] = field(default_factory=list)
    torn: list[tuple[str, int]] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "unchanged_files": self.unchanged_files,
            "records": self.records,
            "runs": sorted(self.runs),
            "quarantined": [q.to_dict() for q in self.quarantined],
            "torn": [{"source": s, "bytes": n} for s, n in self.torn],
            "rejected": [{"source": s, "error": e} for s, e in self.rejected],
        }
