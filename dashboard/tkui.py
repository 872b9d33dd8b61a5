"""Helpers every dashboard page shares: the read-only store connection, the run picker, formatting."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import duckdb
import streamlit as st

from tracekit.config import db_path  # noqa: F401  (pages read the store path through tkui)
from tracekit.errors import TracekitError
from tracekit.store.db import connect

# The page that shows each kind of run best (every run also has a Timeline).
KIND_PAGE = {"training": "views/training.py", "agents": "views/agents.py", "campaign": "views/campaign.py"}
PAGE_URL = {"views/runs.py": "runs", "views/timeline.py": "timeline", "views/training.py": "training",
            "views/agents.py": "agents", "views/campaign.py": "campaign", "views/sql.py": "sql"}
STATUS_COLOR = {"ok": "#4c78a8", "unset": "#9ecae9", "error": "#e45756", "faulted": "#f58518"}


_render = threading.local()  # one connection per page render (each render runs in its own thread)


@contextmanager
def store() -> Iterator[duckdb.DuckDBPyConnection]:
    """The read-only, sandboxed connection of this page render: opened on first use, shared by every
    query of the render, closed by app.py when the render ends (so ingest can run between renders).
    A missing or locked store stops the page with the reason."""
    con = getattr(_render, "con", None)
    if con is None:
        try:
            con = connect(db_path(), read_only=True)
        except TracekitError as exc:
            st.error(str(exc))
            st.stop()
        _render.con = con
    yield con


def close_store() -> None:
    """Close this render's connection, if one was opened."""
    con = getattr(_render, "con", None)
    _render.con = None
    if con is not None:
        con.close()


def fmt_ns(ns: int | None) -> str:
    if ns is None:
        return ""
    return dt.datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


def to_datetime(ns: int | None) -> dt.datetime | None:
    return None if ns is None else dt.datetime.fromtimestamp(ns / 1e9)


def run_label(run: dict[str, Any]) -> str:
    return f"{run['name'] or run['run_id'][:12]} · {run['kind']} · {run['status']} · {run['run_id'][:8]}"


def pick_run(con: duckdb.DuckDBPyConnection, *, kind: str | None = None, key: str = "run") -> dict[str, Any] | None:
    """The run this page shows: `?run=` from the URL (id, prefix or name) if given, else a picker of
    runs (of `kind` when given). The choice is written back to the URL so it can be shared."""
    from tracekit.store.dashboard import run_choices
    from tracekit.store.queries import get_run, resolve_run

    choices = run_choices(con, kind=kind)
    wanted = st.query_params.get("run")
    if wanted:
        try:
            run_id = resolve_run(con, wanted)
        except TracekitError as exc:
            st.warning(str(exc))
            run_id = None
        if run_id and all(c["run_id"] != run_id for c in choices):
            run = get_run(con, run_id)  # asked for by URL though not in the list (another kind, or old)
            choices = [{k: run[k] for k in ("run_id", "name", "kind", "status")}, *choices]
    else:
        run_id = None
    if not choices:
        what = f"{kind} runs" if kind else "runs"
        st.info(f"No {what} in this store yet. Record one with `tracekit record -- CMD` or "
                "`tracekit ingest SPOOL_DIR`, then reload.")
        return None
    ids = [c["run_id"] for c in choices]
    index = ids.index(run_id) if run_id in ids else 0
    by_id = {c["run_id"]: c for c in choices}
    chosen = st.selectbox("Run", ids, index=index, format_func=lambda r: run_label(by_id[r]), key=key)
    if st.query_params.get("run") != chosen:
        st.query_params["run"] = chosen
    return by_id[chosen]


def open_links(run: dict[str, Any], here: str = "") -> None:
    """Links from a run to its pages (its kind's page and the timeline), but not to the page `here`."""
    cols = st.columns(3)
    page = KIND_PAGE.get(run["kind"])
    if page and page != here:
        cols[0].page_link(page, label=f"Open {run['kind']} page", icon=":material/arrow_forward:", query_params={"run": run["run_id"]})
    if here != "views/timeline.py":
        cols[1].page_link("views/timeline.py", label="Open timeline", icon=":material/timeline:", query_params={"run": run["run_id"]})


def run_url(run: dict[str, Any]) -> str:
    """A relative link to the run's page (for link columns in tables)."""
    return f"./{PAGE_URL[KIND_PAGE.get(run['kind'], 'views/timeline.py')]}?run={run['run_id']}"


def evidence_text(detail: dict[str, Any], n: int = 240) -> str:
    """A finding's evidence as one readable line: `key=value` pairs (nested values as compact JSON)."""
    ev = detail.get("evidence", detail.get("reason", detail.get("summary")))
    if isinstance(ev, dict):
        ev = ", ".join(f"{k}={v if isinstance(v, (str, int, float)) else json.dumps(v, default=str)}" for k, v in ev.items())
    elif isinstance(ev, list):
        ev = "; ".join(str(e) for e in ev)
    return short(ev or "", n)


def short(text: Any, n: int = 120) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= n else s[: n - 1] + "…"
