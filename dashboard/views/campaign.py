"""Campaign page: the fault-propagation graph with cycles highlighted, each edge's evidence runs, and a
profile run beside an injection run."""

from __future__ import annotations

import math

import networkx as nx
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import tkui

from tracekit.errors import TracekitError
from tracekit.store.dashboard import run_campaign_id, run_faults, run_findings, span_profile, timeline_spans

CYCLE = "#d62728"
KIND_COLOR = {"E": "#4c78a8", "S+": "#54a24b"}


def cycle_pairs(report: dict) -> set[tuple[str, str]]:
    pairs = set()
    for cyc in report["cycles"]:
        for a, b in zip(cyc, cyc[1:] + cyc[:1]):
            pairs.add((a, b))
    return pairs


def propagation_figure(report: dict) -> go.Figure:
    g = nx.DiGraph()
    for e in report["edges"]:
        g.add_edge(e["src"], e["dst"], kind=e["kind"])
    in_cycle = cycle_pairs(report)
    cyclic_nodes = {n for pair in in_cycle for n in pair}
    pos = nx.kamada_kawai_layout(g) if 2 < len(g) <= 200 else nx.circular_layout(g)
    fig = go.Figure()
    for (u, v), d in ((k, g.edges[k]) for k in g.edges):
        hot = (u, v) in in_cycle
        (x0, y0), (x1, y1) = pos[u], pos[v]
        fig.add_annotation(x=x1, y=y1, ax=x0, ay=y0, xref="x", yref="y", axref="x", ayref="y", showarrow=True,
                           arrowhead=3, arrowsize=1.4, standoff=14, startstandoff=10,
                           arrowwidth=4 if hot else 1.6, arrowcolor=CYCLE if hot else KIND_COLOR.get(d["kind"], "#888"))
        fig.add_trace(go.Scatter(x=[(x0 + x1) / 2], y=[(y0 + y1) / 2], mode="markers", marker={"size": 6, "opacity": 0},
                                 hovertext=f"{u} → {v} ({d['kind']}{', in a cycle' if hot else ''})", hoverinfo="text",
                                 showlegend=False))
    names = list(g.nodes)
    fig.add_trace(go.Scatter(
        x=[pos[n][0] for n in names], y=[pos[n][1] for n in names], mode="markers+text", text=names,
        textposition="top center", hoverinfo="text", showlegend=False,
        marker={"size": [22 if n in cyclic_nodes else 15 for n in names],
                "color": [CYCLE if n in cyclic_nodes else ("#f58518" if n.startswith("workload:") else "#72b7b2") for n in names],
                "line": {"width": 2, "color": "white"}},
    ))
    for label, color in (("E edge (new behaviour)", KIND_COLOR["E"]), ("S+ edge (more of the same)", KIND_COLOR["S+"]),
                         ("in a cycle", CYCLE)):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line={"color": color, "width": 3}, name=label))
    fig.update_layout(height=520, margin={"l": 10, "r": 10, "t": 20, "b": 10}, legend={"orientation": "h"},
                      xaxis={"visible": False}, yaxis={"visible": False}, plot_bgcolor="white")
    return fig


@st.cache_data(show_spinner="Running fault causality analysis…", max_entries=16)
def campaign_report(db: str, campaign_id: str, version: str) -> dict:
    """The causality report of one campaign (cached per store and campaign state)."""
    from tracekit.analysis.causality import analyze_campaign

    with tkui.store() as con:
        return analyze_campaign(con, campaign_id)


def mini_gantt(con, run_id: str, key: str) -> None:  # type: ignore[no-untyped-def]
    bars = timeline_spans(con, run_id, limit=400)
    if not bars:
        st.caption("no spans")
        return
    f = pd.DataFrame(bars)
    t0 = f["start_ns"].min()
    f["start_ms"], f["dur_ms"] = (f["start_ns"] - t0) / 1e6, ((f["end_ns"] - f["start_ns"]) / 1e6).clip(lower=0.05)
    f["state"] = ["faulted" if x else ("error" if s == "error" else "ok") for x, s in zip(f["faulted"], f["status"])]
    fig = go.Figure()
    for state in ("ok", "error", "faulted"):
        part = f[f["state"] == state]
        if len(part):
            fig.add_trace(go.Bar(y=part["name"], x=part["dur_ms"], base=part["start_ms"], orientation="h", name=state,
                                 marker={"color": tkui.STATUS_COLOR[state]}, hovertext=part["status_message"].fillna("")))
    fig.update_layout(barmode="overlay", height=max(220, 22 * f["name"].nunique() + 80), xaxis_title="ms",
                      margin={"l": 10, "r": 10, "t": 10, "b": 10}, showlegend=False)
    st.plotly_chart(fig, key=key)


st.title("Campaign")

try:
    from tracekit.store.campaigns import campaign_runs, list_campaigns, resolve_campaign
except ImportError:  # the campaign runner is not installed in this tracekit
    st.info("This tracekit has no fault-injection campaigns.")
    st.stop()

with tkui.store() as con:
    campaigns = list_campaigns(con)
    wanted = st.query_params.get("campaign")
    if not wanted and st.query_params.get("run"):
        wanted = run_campaign_id(con, st.query_params["run"])
    if wanted:
        try:
            wanted = resolve_campaign(con, wanted)
        except TracekitError as exc:
            st.warning(str(exc))
            wanted = None
if not campaigns:
    st.info("No campaigns in this store: `tracekit campaign run CAMPAIGN.toml` runs one.")
    st.stop()
ids = [c["campaign_id"] for c in campaigns]
by_id = {c["campaign_id"]: c for c in campaigns}
cid = st.selectbox("Campaign", ids, index=ids.index(wanted) if wanted in ids else 0, key="cp_campaign",
                   format_func=lambda c: f"{by_id[c]['name']} · {by_id[c]['status']} · {by_id[c]['runs']} runs · {c[:8]}")
if st.query_params.get("campaign") != cid:
    st.query_params["campaign"] = cid
camp = by_id[cid]
try:
    report = campaign_report(str(tkui.db_path().absolute()), cid, f"{camp['status']}:{camp['ended_ns']}:{camp['runs']}")
except TracekitError as exc:
    st.error(str(exc))
    st.stop()

m = st.columns(5)
m[0].metric("Runs", camp["runs"])
m[1].metric("Experiments", len(report["experiments"]))
m[2].metric("Propagation edges", len(report["edges"]))
m[3].metric("Chains", len(report["chains"]))
m[4].metric("Cycles", len(report["cycles"]))

if report["cycles"]:
    st.error(f"**{len(report['cycles'])} self-sustaining cascade(s)** (cycles: each fault causes the next, the last "
             "causes the first):\n" + "\n".join(f"- `{' → '.join(c + c[:1])}`" for c in report["cycles"]))
else:
    st.success("No cycles: no self-sustaining cascade found in this campaign.")
if report["chains"]:
    st.warning(f"**{len(report['chains'])} chain(s)** stitched across injections:\n"
               + "\n".join(f"- `{' → '.join(c)}`" for c in report["chains"]))

if report["edges"]:
    st.subheader("Fault-propagation graph")
    st.plotly_chart(propagation_figure(report), key="cp_graph")
    st.caption("An edge a → b: injecting fault a made b happen in every injection run and in no profile run (E), "
               "or made it happen significantly more often (S+). Red: edges on a cycle.")

    st.subheader("Edges and their evidence runs")
    in_cycle = cycle_pairs(report)
    edges = pd.DataFrame([{"edge": i, "src": e["src"], "dst": e["dst"], "kind": e["kind"],
                           "in cycle": (e["src"], e["dst"]) in in_cycle, "test": e["test"],
                           "evidence runs": len(e["evidence_runs"]), "profile runs": len(e["profile_runs"]),
                           "p": e["p_value"], "signature": f"{e['signature']['op']} {e['signature']['outcome']}"
                                                      f" (in {e['signature']['parent']})"}
                          for i, e in enumerate(report["edges"])])
    st.dataframe(edges, hide_index=True, width="stretch", key="cp_edges")
    pick = st.selectbox("Edge", list(edges["edge"]), key="cp_edge",
                        format_func=lambda i: f"{report['edges'][i]['src']} → {report['edges'][i]['dst']} "
                                              f"({report['edges'][i]['kind']}, {report['edges'][i]['test']})")
    edge = report["edges"][pick]
else:
    st.info("No propagation edges yet: the campaign found no fault that another fault causes.")
    edge = None

with tkui.store() as con:
    stored = run_findings(con, cid, analysis="causality")
if stored:
    st.subheader("Stored findings")
    st.dataframe(pd.DataFrame([{"#": f["rank_order"] + 1, "kind": f["kind"], "cascade": f["subject"], "score": f["score"]}
                               for f in stored]), hide_index=True, width="stretch", key="cp_findings")
    st.caption("The campaign's `causality` findings, as stored by `tracekit campaign run` or `tracekit analyze`.")
else:
    st.caption("No causality findings stored for this campaign yet: `tracekit analyze --all --analysis causality` "
               "stores them.")

st.subheader("Profile run vs injection run")
if edge is not None:
    profile_ids, inject_ids = edge["profile_runs"], edge["evidence_runs"]
else:
    inject_ids = [r for e in report["experiments"] for r in e["fired_runs"]]
    with tkui.store() as con:
        profile_ids = [r["run_id"] for r in campaign_runs(con, [cid]) if r["attributes"].get("mode") == "profile"]
if not profile_ids or not inject_ids:
    st.info("Pick an edge with both profile and injection runs to compare them.")
    st.stop()
c1, c2 = st.columns(2)
prof = c1.selectbox("Profile run", profile_ids, key="cp_prof", format_func=lambda r: r[:12])
inj = c2.selectbox("Injection run (evidence)", inject_ids, key="cp_inj", format_func=lambda r: r[:12])
c1.page_link("views/timeline.py", label="profile run timeline", icon=":material/timeline:", query_params={"run": prof})
c2.page_link("views/timeline.py", label="injection run timeline", icon=":material/timeline:", query_params={"run": inj})
with tkui.store() as con:
    prof_rows = span_profile(con, [prof, inj])
    faults = {r: run_faults(con, r, limit=200) for r in (prof, inj)}
    with c1:
        mini_gantt(con, prof, "cp_gantt_prof")
    with c2:
        mini_gantt(con, inj, "cp_gantt_inj")
for col, r, label in ((c1, prof, "profile"), (c2, inj, "injection")):
    with col:
        if faults[r]:
            st.dataframe(pd.DataFrame(faults[r])[["point", "fault_type", "injected", "node"]], hide_index=True,
                         width="stretch", key=f"cp_faults_{label}")
        else:
            st.caption(f"no faults in the {label} run")
if prof_rows:
    pf = pd.DataFrame(prof_rows)
    pf["run"] = pf["run_id"].map({prof: "profile", inj: "injection"})
    side = pf.pivot_table(index=["name", "status"], columns="run", values="n", aggfunc="sum", fill_value=0).reset_index()
    for col in ("profile", "injection"):
        if col not in side:
            side[col] = 0
    side["change"] = side["injection"] - side["profile"]
    side = side.sort_values("change", key=lambda s: -s.abs())
    st.markdown("**Spans per operation and outcome** (largest changes first)")
    st.dataframe(side[["name", "status", "profile", "injection", "change"]], hide_index=True, width="stretch",
                 key="cp_side")
if edge is not None:
    p_text = f"; p = {edge['p_value']:.3g}" if isinstance(edge.get("p_value"), float) and not math.isnan(edge["p_value"]) else ""
    st.caption(f"Edge evidence: injection runs {', '.join(r[:8] for r in inject_ids)} against profile runs "
               f"{', '.join(r[:8] for r in profile_ids)}{p_text}.")
