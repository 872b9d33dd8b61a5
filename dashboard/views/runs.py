"""Runs page: every run with kind, status, duration, span and error counts, its stored findings count and top finding; filters; links."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st
import tkui

from tracekit.analysis import applicable
from tracekit.store.dashboard import run_facets, runs_table

st.title("Runs")

with tkui.store() as con:
    facets = run_facets(con)
    c1, c2, c3, c4 = st.columns([2, 2, 3, 1.3])
    kinds = c1.multiselect("Kind", facets["kinds"], key="f_kind")
    statuses = c2.multiselect("Status", facets["statuses"], key="f_status")
    search = c3.text_input("Name or id", key="f_search", placeholder="filter by name or run id prefix")
    failing = c4.checkbox("Failing only", key="f_failing", help="Runs with error spans, or that ended in error")
    runs = runs_table(con, kinds=kinds, statuses=statuses, search=search.strip() or None, with_errors=failing)

if not runs:
    st.info("No runs match." if (kinds or statuses or search or failing) else
            "This store has no runs yet: `tracekit record -- CMD` or `tracekit ingest SPOOL_DIR` adds some.")
    st.stop()

frame = pd.DataFrame(runs)
frame["started"] = [tkui.to_datetime(ns) for ns in frame["started_ns"]]
frame["open"] = [tkui.run_url(r) for r in runs]
m1, m2, m3, m4 = st.columns(4)
m1.metric("Runs", len(frame))
m2.metric("Failed runs", int(frame["status"].isin(["error", "aborted"]).sum()))
m3.metric("Spans", f"{int(frame['spans'].sum()):,}")
m4.metric("Runs with findings", int((frame["findings"] > 0).sum()))

st.dataframe(
    frame[["open", "name", "kind", "status", "started", "duration_s", "spans", "errors", "nodes",
           "injected_faults", "findings", "top_finding", "run_id"]],
    hide_index=True, width="stretch", key="runs_table",
    column_config={
        "open": st.column_config.LinkColumn("open", display_text="open ↗", width="small"),
        "started": st.column_config.DatetimeColumn("started", format="YYYY-MM-DD HH:mm:ss"),
        "duration_s": st.column_config.NumberColumn("duration (s)", format="%.2f"),
        "injected_faults": st.column_config.NumberColumn("injected faults"),
        "findings": st.column_config.NumberColumn("findings", help="stored by `tracekit analyze`"),
        "top_finding": st.column_config.TextColumn("top finding", width="medium"),
    },
)

st.subheader("Open a run")
labels = {r["run_id"]: tkui.run_label(r) for r in runs}
chosen = st.selectbox("Run", list(labels), format_func=labels.get, key="open_run", label_visibility="collapsed")
run = next(r for r in runs if r["run_id"] == chosen)
if run["top_finding"]:
    st.markdown(f"**Top finding:** `{run['top_finding']}` ({run['findings']} stored)")
elif applicable(run["kind"]):
    st.caption(f"No findings stored for this run: `tracekit analyze {run['run_id'][:12]}` runs "
               + ", ".join(a.name for a in applicable(run["kind"])) + " and stores them.")
tkui.open_links(run)

if len(frame) > 1:
    fig = px.scatter(frame, x="started", y="duration_s", color="status", symbol="kind", size=frame["spans"].clip(lower=1) ** 0.5,
                     hover_data=["name", "run_id", "spans", "errors", "top_finding"],
                     color_discrete_map={"ok": "#4c78a8", "error": "#e45756", "aborted": "#b279a2", "running": "#72b7b2"},
                     title="Runs over time (size = spans)")
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    st.plotly_chart(fig, key="runs_chart")
