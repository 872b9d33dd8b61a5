"""Opening the DuckDB store: one writer (ingest, analyses storing findings), any number of read-only readers.

DuckDB lets one process open a store for writing. A second writer waits for the lock (bounded by
``lock_timeout``, TRACEKIT_LOCK_TIMEOUT, 30 s by default), saying once on stderr whom it waits for,
then gives up with a StoreError; readers fail at once with the same clear message.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import duckdb

from tracekit.config import db_path, lock_timeout_s
from tracekit.errors import StoreError
from tracekit.store.schema import LATEST, current_version, migrate
from tracekit.store.segments import configure as configure_segments


def _is_locked(exc: Exception) -> bool:
    return "lock" in str(exc).lower()


def _holder(exc: Exception) -> str:
    """Who holds the lock, as DuckDB names it: ``process 123 (python3)``, or ``another process``."""
    pid = re.search(r"PID (\d+)", str(exc))
    if not pid:
        return "another process"
    program = re.search(r"lock is held in (\S+)", str(exc))
    return f"process {pid.group(1)}" + (f" ({Path(program.group(1)).name})" if program else "")


def _explain(path: Path, exc: Exception, waited_s: float | None = None) -> StoreError:
    text = str(exc)
    if _is_locked(exc):
        pid = re.search(r"PID (\d+)", text)
        who = f" (process {pid.group(1)})" if pid else ""
        waited = f" (waited {waited_s:g} s; TRACEKIT_LOCK_TIMEOUT sets how long)" if waited_s else ""
        return StoreError(
            f"the store {path} is locked by another process{who}{waited}: wait for it to finish "
            "(an ingest, a recording or the dashboard), or use another --db"
        )
    if "not a valid" in text.lower() or "corrupt" in text.lower() or "invalid" in text.lower():
        return StoreError(
            f"{path} is not a readable DuckDB store (corrupt or another kind of file): "
            "move it aside and re-ingest the spool directories"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return StoreError(f"cannot open the store {path}: {first}")


def _open(store: Path, *, read_only: bool, lock_timeout: float) -> duckdb.DuckDBPyConnection:
    """duckdb.connect; a writer waits (up to `lock_timeout` s, polling with back-off) for another process's lock."""
    deadline: float | None = None
    pause = 0.05
    while True:
        try:
            return duckdb.connect(str(store), read_only=read_only)
        except (duckdb.Error, OSError) as exc:
            if read_only or lock_timeout <= 0 or not _is_locked(exc):
                raise _explain(store, exc) from None
            now = time.monotonic()
            if deadline is None:
                deadline = now + lock_timeout
                print(f"tracekit: waiting for the store lock held by {_holder(exc)} on {store} "
                      f"(up to {lock_timeout:g} s)", file=sys.stderr, flush=True)
            if now >= deadline:
                raise _explain(store, exc, waited_s=lock_timeout) from None
            time.sleep(min(pause, deadline - now))
            pause = min(pause * 2, 0.5)


def _missing_migrations(con: duckdb.DuckDBPyConnection) -> bool:
    from tracekit.store.schema import MIGRATIONS

    applied = {int(r[0]) for r in con.execute("SELECT version FROM schema_migrations").fetchall()}
    return any(m.version not in applied for m in MIGRATIONS)


def connect(
    path: str | os.PathLike[str] | None = None, *, read_only: bool = False, sandbox: bool = True,
    create: bool = True, lock_timeout: float | None = None,
) -> duckdb.DuckDBPyConnection:
    """Open the store. Writers get the schema migrated; sandboxed readers cannot touch other files.

    A writer finding the store locked by another process retries for up to ``lock_timeout``
    seconds (default: TRACEKIT_LOCK_TIMEOUT, 30), printing one line to stderr while it waits.

    A writer with ``create=False`` (an analysis storing findings on existing runs) refuses to make
    a new, empty store where none exists.

    Raises
    ------
    StoreError
        The file is missing (for a reader, or a writer with create=False), locked, corrupt, or of
        a newer schema.
    """
    store = db_path(path)
    if (read_only or not create) and not store.exists():
        raise StoreError(
            f"no tracekit store at {store}: record a run (tracekit record -- CMD) or "
            "`tracekit ingest SPOOL_DIR` first, or point --db / TRACEKIT_DB at your store"
        )
    if not read_only:
        store.parent.mkdir(parents=True, exist_ok=True)
    con = _open(store, read_only=read_only, lock_timeout=lock_timeout_s() if lock_timeout is None else lock_timeout)
    try:
        if read_only:
            version = current_version(con)
            if version == 0:
                raise StoreError(f"{store} is a DuckDB file but not a tracekit store")
            if version > LATEST:
                raise StoreError(
                    f"the store {store} has schema version {version}, newer than this tracekit "
                    f"understands ({LATEST}): upgrade tracekit"
                )
            if _missing_migrations(con):  # an older store: bring it up to date once, then read
                con.close()
                connect(store).close()
                return connect(store, read_only=True, sandbox=sandbox)
            configure_segments(con, store, sandbox=sandbox, writer=False)
            if sandbox:
                con.execute("SET enable_external_access = false")
                con.execute("SET lock_configuration = true")
        else:
            migrate(con)
            configure_segments(con, store, sandbox=False, writer=True)
    except StoreError:
        con.close()
        raise
    except duckdb.Error as exc:
        con.close()
        raise _explain(store, exc) from None
    return con
