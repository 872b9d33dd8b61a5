"""The `tracekit` command: thin glue over the library. Each command group lives in its own module.

Domain errors become one clear line and exit code 2 here, in exactly one place.
Nothing heavy (duckdb, pyarrow, torch, streamlit, polars) is imported until a command runs.
"""

from __future__ import annotations

import sys

from tracekit.cli.root import app
from tracekit.errors import TracekitError

# Each module registers its commands on `app` when imported.
from tracekit.cli import core  # noqa: F401

for _optional in ("training", "agents", "campaign", "dashboard", "serve", "analyze"):
    try:
        __import__(f"tracekit.cli.{_optional}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"tracekit.cli.{_optional}":
            raise


def main() -> None:
    try:
        app()
    except TracekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except ModuleNotFoundError as exc:  # a command of an optional extra that is not installed
        from tracekit.cli.extras import for_missing_module

        missing = for_missing_module(exc)
        if missing is None:
            raise
        print(f"error: {missing}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # an output path that cannot be written, a file that vanished
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        duckdb = sys.modules.get("duckdb")
        if duckdb is None or not isinstance(exc, duckdb.Error):
            raise
        # the store opened but a read failed mid-way: a damaged (e.g. truncated) DuckDB file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"error: the store could not be read ({first}); it may be damaged: move it aside "
              "and re-ingest the spool directories", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
