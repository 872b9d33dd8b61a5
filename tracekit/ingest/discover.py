"""Discovery: sort the paths given to ingest into spool runs (directories of spool files) and OTLP files."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tracekit import conventions as conv
from tracekit import frames
from tracekit.errors import TracekitError

OTLP_SUFFIXES = (".otlp.json", ".otlp.jsonl", ".otlp", ".pb", ".binpb", ".otlp.pb")


@dataclass
class Sources:
    spool_runs: dict[Path, list[Path]] = field(default_factory=dict)  # run dir -> its spool files (.jsonl, .tkb)
    otlp: list[Path] = field(default_factory=list)

    def count(self) -> int:
        return sum(len(v) for v in self.spool_runs.values()) + len(self.otlp)


def looks_like_spool(path: Path) -> bool:
    """Whether a file starts with a tracekit spool header."""
    try:
        with path.open("rb") as fh:
            return fh.read(len(conv.HEADER_KEY) + 3).startswith(b'{"' + conv.HEADER_KEY.encode())
    except OSError:
        return False


def discover(paths: Iterable[str | os.PathLike[str]]) -> Sources:
    """Sort the given files and directories into spool runs and OTLP files."""
    sources = Sources()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise TracekitError(f"{path} does not exist: give a spool directory, a spool file or an OTLP file")
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                if not file.is_file():
                    continue
                if file.name.endswith(OTLP_SUFFIXES):
                    sources.otlp.append(file)
                elif file.suffix in (".jsonl", frames.SUFFIX):
                    sources.spool_runs.setdefault(file.parent, []).append(file)
            for manifest in sorted(path.rglob("run.json")):
                sources.spool_runs.setdefault(manifest.parent, [])
        elif looks_like_spool(path) or (path.suffix in (".jsonl", frames.SUFFIX) and not path.name.endswith(OTLP_SUFFIXES)):
            sources.spool_runs.setdefault(path.parent, []).append(path)
        else:
            sources.otlp.append(path)
    return sources
