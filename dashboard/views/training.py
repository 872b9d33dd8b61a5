"""Training run page: rank × step heatmaps (step time, arrival skew, wait), the collective-anomaly
findings overlaid (the blamed rank or link stands out), per-rank step-time lines. Live: the snapshot
that `tracekit anomalies RUN --follow` publishes beside the store, re-read every 2 s (never the store:
the follower holds DuckDB's exclusive lock while it ingests)."""

from __future__ import annotations

import re

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import tkui

from tracekit.errors import TracekitError
from tracekit.store.dashboard import collective_matrix, rank_last_activity, run_findings, step_times, training_summary

BLAME = "#d62728"
_RANK = re.compile(r"^rank:(\d+)$")
_LINK = re.compile(r"^link:(\d+)-(\d+)$")


def blamed_ranks(findings: list[dict]) -> dict[int, str]:
    """rank -> the first finding naming it (a link names both of its ends)."""
    out: dict[int, str] = {}
    for f in findings:
        subject = f["subject"] or ""
        hit = _RANK.match(subject)
        ranks = [int(hit.group(1))] if hit else ([int(x) for x in _LINK.match(subject).groups()] if _LINK.match(subject) else [])
        for r in ranks:
            out.setdefault(r, f"{f['kind']} {subject}")
    return out


def heatmap(frame: pd.DataFrame, value: str, title: str, unit: str, blamed: dict[int, str], first_step: int | None) -> go.Figure:
    grid = frame.pivot_table(index="rank", columns="step", values=value, aggfunc="max").sort_index()
    labels = [f"⚠ rank {r}" if r in blamed else f"rank {r}" for r in grid.index]
    fig = go.Figure(go.Heatmap(z=grid.values, x=list(grid.columns), y=labels, colorscale="YlOrRd",
                               colorbar={"title": unit}, hovertemplate="%{y}, step %{x}: %{z:.2f} " + unit + "<extra></extra>"))
    for i, r in enumerate(grid.index):
        if r in blamed:
            fig.add_shape(type="rect", xref="paper", x0=0, x1=1, yref="y", y0=i - 0.5, y1=i + 0.5,
                          line={"color": BLAME, "width": 3})
    if first_step is not None:
        fig.add_vline(x=first_step, line={"color": BLAME, "dash": "dash"}, annotation_text="onset")
    fig.update_layout(title=title, height=max(240, 26 * len(labels) + 110), xaxis_title="step",
                      margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      yaxis={"autorange": "reversed", "tickfont": {"size": 12}})
    return fig


def live_findings(con, run_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    """The collective-anomaly analysis run now on a run that has no stored findings (not stored: read-only)."""
    try:
        from tracekit.analysis.collectives import detect_run
    except ImportError:
        return []
    try:
        found = detect_run(con, run_id, store=False)
    except TracekitError as exc:
        st.warning(f"collective-anomaly analysis: {exc}")
        return []
    return [{"analysis": "collectives", "kind": f.get("kind"), "subject": f.get("subject"), "score": f.get("score"),
             "rank_order": i, "first_step": f.get("first_step"), "confidence": f.get("confidence"), "detail": f}
            for i, f in enumerate(found)]


def live_step_chart(steps: list[dict], blamed: dict[int, str]) -> go.Figure:
    """Step time per rank over the follower's last window (rank -1: the median of all ranks)."""
    fig = go.Figure()
    for r, part in pd.DataFrame(steps).groupby("rank"):
        hot = r in blamed
        name = "median of all ranks" if r == -1 else f"{'⚠ ' if hot else ''}rank {r}"
        fig.add_trace(go.Scatter(x=part["step"], y=part["step_ms"], mode="lines", name=name,
                                 line={"color": BLAME if hot else None, "width": 4 if hot else 1.5,
                                       "dash": "dot" if r == -1 else None}))
    fig.update_layout(height=340, xaxis_title="step", yaxis_title="ms", margin={"l": 10, "r": 10, "t": 20, "b": 10})
    return fig


def live_view() -> None:
    """The live snapshot of a followed run, re-read every 2 s; no store connection at all."""
    import time

    from tracekit.follow import read_snapshots

    snapshots = read_snapshots(tkui.db_path())
    if not snapshots:
        st.info("No followed run yet. Start the follower beside the job (it is the store's one writer): "
                "`tracekit anomalies RUN --follow` — this view shows what it publishes.")
        return
    wanted = st.query_params.get("run")
    labels = {s["run_id"]: f"{s.get('ref') or s['run_id'][:12]} ({s['run_id'][:12]}, {s.get('status')})"
              for s in snapshots}
    ids = list(labels)
    index = next((i for i, r in enumerate(ids) if wanted and (r.startswith(wanted) or snapshots[i].get("ref") == wanted)), 0)
    run_id = st.selectbox("Followed run", ids, index=index, format_func=labels.get, key="tr_live_run")

    @st.fragment(run_every=2.0)
    def panel() -> None:
        snap = next((s for s in read_snapshots(tkui.db_path()) if s["run_id"] == run_id), None)
        if snap is None:
            st.warning("The snapshot of this run is gone.")
            return
        age = max(0.0, (time.time_ns() - int(snap.get("updated_ns", 0))) / 1e9)
        status = snap.get("status", "?")
        m = st.columns(4)
        m[0].metric("Follower", status)
        m[1].metric("Last poll", f"{age:.0f} s ago")
        m[2].metric("Findings", len(snap.get("findings", [])))
        m[3].metric("Window", f"{snap.get('window_steps')} steps")
        if status in ("waiting", "running") and age > max(10.0, 5 * float(snap.get("interval_s") or 1)):
            st.warning(f"The follower has not polled for {age:.0f} s: is `tracekit anomalies {snap.get('ref')} "
                       "--follow` still running?")
        findings = snap.get("findings", [])
        if findings:
            top = findings[0]
            st.error(f"Blamed: **{top['subject']}** — {top['kind']} from step {top.get('first_step')} "
                     f"(confidence {float(top.get('confidence') or 0):.2f})")
            st.dataframe(pd.DataFrame([{"#": i + 1, "kind": f["kind"], "subject": f["subject"],
                                        "first step": f.get("first_step"), "confidence": f.get("confidence"),
                                        "summary": tkui.short(f.get("summary") or "", 300)}
                                       for i, f in enumerate(findings)]),
                         hide_index=True, width="stretch", key="tr_live_findings")
        elif status == "ended":
            st.success("The run ended and no anomaly was found.")
        else:
            st.success("No anomaly so far.")
        pending = snap.get("pending", [])
        if pending:
            st.caption("Seen but not yet confirmed: " + ", ".join(f"{p['kind']} {p['subject']}" for p in pending))
        if snap.get("steps"):
            st.plotly_chart(live_step_chart(snap["steps"], blamed_ranks(findings)), key="tr_live_lines")
        if status in ("ended", "stopped"):
            st.caption(f"The follower has {status}: the stored run (live off) shows the whole run.")

    panel()


st.title("Training run")
if st.toggle("Live", key="tr_live", value=st.query_params.get("live") == "1",
             help="Show what `tracekit anomalies RUN --follow` publishes while the job runs, re-read every 2 s."):
    live_view()
    st.stop()

with tkui.store() as con:
    run = tkui.pick_run(con, kind="training")
    if run is None:
        st.stop()
    run_id = run["run_id"]
    summary = training_summary(con, run_id)
    findings, source = run_findings(con, run_id, analysis="collectives"), "stored"
    if not findings:
        findings, source = live_findings(con, run_id), "computed now"
    steps = step_times(con, run_id)
    colls = collective_matrix(con, run_id)
    last = rank_last_activity(con, run_id)

tkui.open_links(run, here="views/training.py")
if run["kind"] != "training":
    st.info(f"This is a {run['kind']} run, not a training job: its own page (linked above) shows it best.")
m = st.columns(5)
m[0].metric("Ranks", max(summary["step_ranks"], summary["collective_ranks"]))
m[1].metric("Steps", "" if summary["last_step"] is None else summary["last_step"] - summary["first_step"] + 1)
m[2].metric("Collective calls", f"{summary['collectives']:,}")
m[3].metric("Failed collectives", summary["failed_collectives"])
m[4].metric("Status", run["status"])

blamed = blamed_ranks(findings)
first_step = next((f["first_step"] for f in findings if f["first_step"] is not None), None)
st.subheader("Findings")
if findings:
    top = findings[0]
    when = f" from step {top['first_step']}" if top["first_step"] is not None else ""
    st.error(f"Blamed: **{top['subject']}** — {top['kind']}{when} (score {top['score']:.2f}, {top['analysis']})"
             if top["score"] is not None else f"Blamed: **{top['subject']}** — {top['kind']}{when} ({top['analysis']})")
    table = pd.DataFrame([{"#": f["rank_order"] + 1, "kind": f["kind"], "subject": f["subject"], "score": f["score"],
                           "first step": f["first_step"], "confidence": f["confidence"], "analysis": f["analysis"],
                           "summary": tkui.short(f["detail"].get("summary") or "", 300),
                           "evidence": tkui.evidence_text(f["detail"])} for f in findings])
    st.dataframe(table, hide_index=True, width="stretch", key="tr_findings")
    if source != "stored":
        st.caption("Findings computed now by the collective-anomaly analysis (none were stored for this run: "
                   f"`tracekit analyze {run_id[:12]}` stores them).")
else:
    st.success("No anomaly: the collective-anomaly analysis blames no rank or link in this run.")

if not steps and not colls:
    st.info("This run recorded no training steps or collectives (record it under `tracekit record` with torch "
            "hooks on, or call `tracekit.torch.instrument()`).")
    st.stop()

tabs = st.tabs(["Step time", "Arrival skew", "Wait time"])
if steps:
    sf = pd.DataFrame(steps)
    tabs[0].plotly_chart(heatmap(sf, "step_ms", "Step time per rank", "ms", blamed, first_step), key="tr_heat_step")
else:
    tabs[0].info("No step records.")
if colls:
    cf = pd.DataFrame(colls)
    tabs[1].plotly_chart(heatmap(cf, "skew_ms", "Collective arrival skew (ms after the first rank to arrive)", "ms",
                                 blamed, first_step), key="tr_heat_skew")
    tabs[2].plotly_chart(heatmap(cf, "wait_ms", "Time waiting inside collectives per step", "ms", blamed, first_step),
                         key="tr_heat_wait")
else:
    tabs[1].info("No collective records.")
    tabs[2].info("No collective records.")

if steps:
    st.subheader("Step time per rank")
    fig = go.Figure()
    for r, part in sf.groupby("rank"):
        hot = r in blamed
        fig.add_trace(go.Scatter(x=part["step"], y=part["step_ms"], mode="lines", name=f"{'⚠ ' if hot else ''}rank {r}",
                                 line={"color": BLAME if hot else None, "width": 4 if hot else 1.5},
                                 opacity=1.0 if hot or not blamed else 0.55))
    if first_step is not None:
        fig.add_vline(x=first_step, line={"color": BLAME, "dash": "dash"}, annotation_text="onset")
    fig.update_layout(height=340, xaxis_title="step", yaxis_title="ms", margin={"l": 10, "r": 10, "t": 20, "b": 10})
    st.plotly_chart(fig, key="tr_lines")

if last:
    with st.expander("Last activity per rank (hangs and crashes stop early)"):
        st.dataframe(pd.DataFrame(last), hide_index=True, width="stretch")
