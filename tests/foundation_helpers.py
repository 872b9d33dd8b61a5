"""Helpers shared by the foundation tests (issue 2): run tracekit's CLI and small Python programs as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Done:
    code: int
    out: str
    err: str


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """An environment with no inherited TRACEKIT_* settings: store and spool under `tmp`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEKIT_")}
    env.update({
        "TRACEKIT_DB": str(tmp / "store.duckdb"),
        "TRACEKIT_SPOOL_DIR": str(tmp / "spool"),
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    env.update(extra)
    return env


def cli(tmp: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Done:
    """Run `tracekit ARGS...` in a fresh interpreter, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "tracekit", *args], cwd=tmp, env=env or clean_env(tmp),
        capture_output=True, text=True, timeout=timeout,
    )
    return Done(proc.returncode, proc.stdout, proc.stderr)


def run_py(tmp: Path, code: str, *, env: dict[str, str] | None = None, timeout: float = 120) -> Done:
    """Run a small Python program (dedented) in a fresh interpreter with cwd `tmp`."""
    script = tmp / f"prog_{abs(hash(code)) % 10**8}.py"
    script.write_text(textwrap.dedent(code))
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp, env=env or clean_env(tmp),
        capture_output=True, text=True, timeout=timeout,
    )
    return Done(proc.returncode, proc.stdout, proc.stderr)


def counts(db: Path) -> dict[str, int]:
    """Row counts of the data tables (what "nothing partial" is checked against)."""
    if not db.exists():
        return {}
    with duckdb.connect(str(db), read_only=True) as con:
        return {
            t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("runs", "spans", "events", "links", "quarantine", "spool_files")
        }


def query(db: Path, sql: str, params: list | None = None) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def assert_one_line_error(done: Done) -> None:
    """The CLI's error contract: exit 2, one `error: ...` line, no traceback."""
    assert done.code == 2, (done.code, done.out, done.err)
    assert "Traceback" not in done.err, done.err
    lines = [ln for ln in done.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.err


def cli_here(tmp: Path, *args: str, **env: str) -> Done:
    """Run `tracekit ARGS...` inside this interpreter (same code path as the console script's `main`),
    for the many small calls where a fresh interpreter per call would only add start-up time."""
    import contextlib
    import io

    from tracekit.cli import main

    saved_env = dict(os.environ)
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        os.environ.clear()
        os.environ.update(clean_env(tmp, **env))
        os.chdir(tmp)
        sys.argv = ["tracekit", *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception:  # an escaped exception is what the CLI must never show: report it
                import traceback

                traceback.print_exc(file=err)
                code = 1
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    return Done(code, out.getvalue(), err.getvalue())


def spool_streams(root: Path, pattern: str = "*", key: str = "stream") -> dict[object, list[dict]]:
    """The spool files under ``root`` matching ``pattern`` (JSON lines or binary frames: either encoding),
    merged by a header field (``key``: the stream, or the pid): the first file's header, every record, then a
    footer summing the files' footers (left out when no file has one). A binary stream's records handed over as
    JSON text (the native writer's) are in a JSON-lines file beside it, so one stream may have two files."""
    import json

    from tracekit import frames
    from tracekit.ingest.spool import parse_spool_file

    merged: dict[object, list[dict]] = {}
    footers: dict[object, list[dict]] = {}
    for path in sorted(root.rglob(f"{pattern}")):
        if path.suffix == frames.SUFFIX:
            parsed = parse_spool_file(path, 0, 0)
            header, records, footer = parsed.header, parsed.table.to_pylist(), parsed.footer
        elif path.suffix == ".jsonl":
            lines = [json.loads(line) for line in path.read_text().splitlines()]
            footer = lines[-1] if len(lines) > 1 and "tracekit_end" in lines[-1] else None
            header, records = lines[0], lines[1:-1] if footer else lines[1:]
        else:
            continue
        merged.setdefault(header[key], [header]).extend(records)
        if footer:
            footers.setdefault(header[key], []).append(footer)
    for k, found in footers.items():
        merged[k].append({"tracekit_end": max(f["tracekit_end"] for f in found),
                          "records": sum(f["records"] for f in found), "dropped": sum(f.get("dropped", 0) for f in found)})
    return merged


def as_read_plainly(read: Any, plain: Any) -> Any:
    """The collectives analysis' frame ``read`` (tracekit.store.collectives) in the types of a plain read
    ``plain`` of the same rows, after checking how the two differ: text read as codes is an enum of its
    values, 64-bit counters whose values all fit are 32-bit; nothing else may differ."""
    import polars as pl

    assert read.columns == plain.columns
    for name, kind in read.schema.items():
        if kind != plain.schema[name]:
            assert (isinstance(kind, pl.Enum) and plain.schema[name] == pl.String) or \
                (kind == pl.Int32 and plain.schema[name] == pl.Int64 and name in ("seq", "step", "bytes")), (name, kind)
    return read.cast(dict(plain.schema))
