"""Opening the DuckDB store: one writer (ingest, analyses storing findings), any number of read-only readers."""

from __future__ import annotations

import os
import re
from pathlib import Path

import duckdb

from tracekit.config import db_path
from tracekit.errors import StoreError
from tracekit.store.schema import LATEST, current_version, migrate


def _explain(path: Path, exc: Exception) -> StoreError:
    text = str(exc)
    if "lock" in text.lower():
        pid = re.search(r"PID (\d+)", text)
        who = f" (process {pid.group(1)})" if pid else ""
        return StoreError(
            f"the store {path} is locked by another process{who}: wait for it to finish "
            "(an ingest, a recording or the dashboard), or use another --db"
        )
    if "not a valid" in text.lower() or "corrupt" in text.lower() or "invalid" in text.lower():
        return StoreError(
            f"{path} is not a readable DuckDB store (corrupt or another kind of file): "
            "move it aside and re-ingest the spool directories"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return StoreError(f"cannot open the store {path}: {first}")


def _missing_migrations(con: duckdb.DuckDBPyConnection) -> bool:
    from tracekit.store.schema import MIGRATIONS

    applied = {int(r[0]) for r in con.execute("SELECT version FROM schema_migrations").fetchall()}
    return any(m.version not in applied for m in MIGRATIONS)


def connect(
    path: str | os.PathLike[str] | None = None, *, read_only: bool = False, sandbox: bool = True,
    create: bool = True,
) -> duckdb.DuckDBPyConnection:
    """Open the store. Writers get the schema migrated; sandboxed readers cannot touch other files.

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
    try:
        con = duckdb.connect(str(store), read_only=read_only)
    except (duckdb.Error, OSError) as exc:
        raise _explain(store, exc) from None
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
            if sandbox:
                con.execute("SET enable_external_access = false")
                con.execute("SET lock_configuration = true")
        else:
            migrate(con)
    except StoreError:
        con.close()
        raise
    except duckdb.Error as exc:
        con.close()
        raise _explain(store, exc) from None
    return con
