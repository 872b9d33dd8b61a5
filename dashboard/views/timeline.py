"""Timeline page: a Gantt of a run's spans by node (errors and faults highlighted, zoomable) and a span's tree."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import tkui

from tracekit.store.dashboard import (
    activity_bars, activity_bounds, bounds_of, find_spans, rank_last_activity, run_faults, run_nodes, span_detail,
    span_tree, timeline_density, timeline_spans,
)

BAR_LIMIT = 1500

st.title("Timeline")

with tkui.store() as con:
    run = tkui.pick_run(con)
    if run is None:
        st.stop()
    run_id = run["run_id"]
    nodes = run_nodes(con, run_id)
    bounds = bounds_of(nodes)
    activity = False  # a training run recorded without spans: draw its steps and collective calls instead
    if not bounds["spans"]:
        bounds = activity_bounds(con, run_id)
        activity = bool(bounds["spans"])
        if not activity:
            st.info("This run has no spans, steps or collectives (it may hold only faults: see its own page).")
            tkui.open_links(run, here="views/timeline.py")
            st.stop()
        st.caption("This run recorded no spans: the bars are its training steps (rank:N) and collective calls "
                   "(rank:N comm) per rank.")
    start, end = int(bounds["start_ns"]), int(max(bounds["end_ns"], bounds["start_ns"] + 1))
    total_ms = (end - start) / 1e6
    m = st.columns(4)
    m[0].metric("Steps and calls" if activity else "Spans", f"{bounds['spans']:,}")
    m[1].metric("Failed" if activity else "Error spans", f"{bounds['errors']:,}")
    m[2].metric("Nodes", bounds["nodes"])
    m[3].metric("Duration", f"{total_ms / 1000:.3f} s")

    if activity:
        nodes = [{"node": f"rank:{r['rank']}{suffix}"} for r in rank_last_activity(con, run_id) for suffix in ("", " comm")]
    c1, c2 = st.columns([2, 3])
    chosen_nodes = c1.multiselect("Nodes", [n["node"] for n in nodes], key="tl_nodes",
                                  help="Empty = all nodes. Nodes with errors are listed first.")
    window = c2.slider("Window (ms from run start)", 0.0, float(max(total_ms, 0.001)), (0.0, float(max(total_ms, 0.001))),
                       key="tl_window", help="Narrow the window to zoom in; the chart itself also zooms by dragging.")
    t0, t1 = start + int(window[0] * 1e6), start + int(window[1] * 1e6)
    bars = (activity_bars if activity else timeline_spans)(con, run_id, t0=t0, t1=t1, nodes=chosen_nodes, limit=BAR_LIMIT)
    faults = run_faults(con, run_id)
    shown_all = len(bars) < BAR_LIMIT
    density = [] if shown_all or activity else timeline_density(con, run_id, t0=t0, t1=t1, nodes=chosen_nodes)

    if density:
        dens = pd.DataFrame(density)
        dens["ms"] = (dens["bucket_ns"] - start) / 1e6
        st.caption(f"Too many spans to draw one by one in this window: the heatmap counts spans started per node "
                   f"over time (red marks buckets with errors); the bars below show the {BAR_LIMIT} most telling "
                   "spans (every error and faulted span first, then the longest). Narrow the window to see all.")
        heat = go.Figure(go.Heatmap(x=dens["ms"], y=dens["node"], z=dens["spans"], colorscale="Blues",
                                    colorbar={"title": "spans"}, hovertemplate="%{y} @ %{x:.1f} ms: %{z} spans<extra></extra>"))
        err = dens[dens["errors"] > 0]
        if len(err):
            heat.add_trace(go.Scatter(x=err["ms"], y=err["node"], mode="markers", name="errors",
                                      marker={"color": "#e45756", "symbol": "square-open", "size": 9},
                                      text=err["errors"], hovertemplate="%{y} @ %{x:.1f} ms: %{text} errors<extra></extra>"))
        heat.update_layout(height=max(220, 28 * dens["node"].nunique() + 90), margin={"l": 10, "r": 10, "t": 30, "b": 10},
                           xaxis_title="ms from run start", title="Span density by node")
        st.plotly_chart(heat, key="tl_density")

    if not bars:
        st.info("No spans in this window for these nodes: widen the window or clear the node filter.")
        st.stop()
    frame = pd.DataFrame(bars)
    frame["start_ms"] = (frame["start_ns"] - start) / 1e6
    frame["dur_ms"] = ((frame["end_ns"] - frame["start_ns"]) / 1e6).clip(lower=total_ms / 2000)
    frame["state"] = ["faulted" if f else ("error" if s == "error" else "ok") for f, s in zip(frame["faulted"], frame["status"])]
    fig = go.Figure()
    for state, label in (("ok", "span"), ("error", "error span"), ("faulted", "span hit by a fault")):
        part = frame[frame["state"] == state]
        if part.empty:
            continue
        fig.add_trace(go.Bar(
            y=part["node"], x=part["dur_ms"], base=part["start_ms"], orientation="h", name=label,
            marker={"color": tkui.STATUS_COLOR[state], "line": {"width": 0.5, "color": "white"}},
            customdata=part[["span_id", "name", "status_message"]].astype(object).fillna("").values,
            hovertemplate="%{customdata[1]}<br>%{y}<br>start %{base:.3f} ms, %{x:.3f} ms"
                          "<br>%{customdata[2]}<br>span %{customdata[0]}<extra></extra>",
        ))
    if faults:
        fr = pd.DataFrame(faults)
        fr["ms"] = (fr["ts_ns"] - start) / 1e6
        fr["row"] = fr["node"].fillna("faults")
        for injected, symbol, color, label in ((True, "x", "#d62728", "injected fault"), (False, "diamond-open", "#ff7f0e", "observed fault")):
            part = fr[fr["injected"] == injected]
            if part.empty:
                continue
            fig.add_trace(go.Scatter(x=part["ms"], y=part["row"], mode="markers", name=label,
                                     marker={"symbol": symbol, "size": 13, "color": color, "line": {"width": 2}},
                                     text=part["point"] + " · " + part["fault_type"],
                                     hovertemplate="%{text}<br>%{x:.3f} ms<extra>" + label + "</extra>"))
    rows_n = frame["node"].nunique() + (1 if faults else 0)
    fig.update_layout(barmode="overlay", height=max(260, 30 * rows_n + 120), xaxis_title="ms from run start",
                      margin={"l": 10, "r": 10, "t": 30, "b": 10}, legend={"orientation": "h", "y": 1.08},
                      yaxis={"categoryorder": "category descending"}, title=None)
    st.plotly_chart(fig, key="tl_gantt", on_select="rerun", selection_mode="points")
    st.caption(f"{len(frame):,} of {bounds['spans']:,} spans drawn. Drag on the chart to zoom, double-click to reset; "
               "click a bar to open it below.")
    if faults:
        with st.expander(f"Faults ({len(faults)})"):
            st.dataframe(pd.DataFrame(faults).drop(columns=["detail"]), hide_index=True, width="stretch")

    # --- the span tree of a selected span -------------------------------------------------------
    if activity:
        st.stop()
    st.subheader("Span")
    clicked = None
    selection = st.session_state.get("tl_gantt")
    if selection and selection.get("selection", {}).get("points"):
        point = selection["selection"]["points"][0]
        clicked = (point.get("customdata") or [None])[0]
    c1, c2 = st.columns([2, 1])
    text = c1.text_input("Find a span", key="tl_find", placeholder="name, node or span id prefix")
    errors_only = c2.checkbox("Errors only", key="tl_errors")
    candidates = find_spans(con, run_id, text=text.strip() or None, errors_only=errors_only)
    ids = [c["span_id"] for c in candidates]
    if clicked and clicked not in ids:
        ids.insert(0, clicked)
    if not ids:
        st.info("No span matches.")
        st.stop()
    by_id = {c["span_id"]: c for c in candidates}
    chosen = st.selectbox(
        "Span", ids, index=ids.index(clicked) if clicked in ids else 0, key="tl_span",
        format_func=lambda s: (f"{by_id[s]['name']} · {by_id[s]['node']} · {by_id[s]['status']} · "
                               f"{by_id[s]['duration_ms']:.3f} ms · {s[:8]}") if s in by_id else s,
    )
    detail = span_detail(con, run_id, chosen)
    tree = span_tree(con, run_id, chosen)

if detail is None:
    st.warning(f"span {chosen} not found in this run")
    st.stop()
left, right = st.columns([3, 2])
with left:
    st.markdown("**Span tree** (ancestors above, the selected span ▶ at depth 0, then its descendants)")
    tf = pd.DataFrame(tree)
    tf["span"] = ["    " * (d - int(tf["depth"].min())) + ("▶ " if s == chosen else "") + n
                  for d, s, n in zip(tf["depth"], tf["span_id"], tf["name"])]
    st.dataframe(tf[["span", "node", "status", "duration_ms", "depth", "span_id"]], hide_index=True, width="stretch",
                 column_config={"duration_ms": st.column_config.NumberColumn("duration (ms)", format="%.3f")})
with right:
    st.markdown(f"**{detail['name']}** on `{detail['node']}` — status `{detail['status']}`")
    if detail["status_message"]:
        st.text(detail["status_message"])
    st.markdown("Attributes")
    st.json(detail["attributes"], expanded=True)
    st.markdown(f"Events ({len(detail['events'])})")
    if detail["events"]:
        st.dataframe(pd.DataFrame([{"ms": (e["ts_ns"] - start) / 1e6, "name": e["name"],
                                    "attributes": tkui.short(e["attributes"], 300)} for e in detail["events"]]),
                     hide_index=True, width="stretch")
