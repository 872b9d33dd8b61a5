"""Agent run page: the information-dependency graph (nodes coloured by agent, edges by provenance), the
root-cause candidates ranked with root cause and symptoms set apart, and a step's full content as plain text."""

from __future__ import annotations

import html

import pandas as pd
import plotly.colors
import plotly.graph_objects as go
import streamlit as st
import tkui

from tracekit.errors import TracekitError
from tracekit.store.dashboard import run_bounds, run_findings
from tracekit.store.queries import get_run

MAX_SPANS = 20_000  # an agent run larger than this is shown by its findings only
ROLE_STYLE = {"root_cause": ("#d62728", "ROOT CAUSE"), "symptom": ("#f58518", "symptom"), "candidate": ("#9d9d9d", "candidate")}
EDGE_STYLE = {"declared": ("#1f77b4", "solid", 2.6), "observed": ("#2ca02c", "solid", 2.0), "inferred": ("#8c8c8c", "dot", 1.3)}


def load_graph(con, run_id: str):  # type: ignore[no-untyped-def]
    """The run's IDG, built by tracekit.graph.idg from its stored spans and links."""
    from tracekit.graph.idg import build_idg, steps_from_spans
    from tracekit.importers.genai import content_capture_hint, derive_links
    from tracekit.store.agents import run_links, run_spans

    spans = run_spans(con, run_id)
    steps = steps_from_spans(spans)
    if not steps:
        return None
    g = build_idg(steps, run_links(con, run_id), derived=derive_links(spans))
    g.graph["content_hint"] = content_capture_hint(spans)  # steps without text: capture looks switched off
    return g


def candidates_of(con, run_id: str) -> tuple[list[dict], str]:  # type: ignore[no-untyped-def]
    """Stored attribution findings, else the attribution computed now (not stored: the store is read-only here)."""
    stored = run_findings(con, run_id, analysis="attribution")
    if stored:
        return [f["detail"] for f in stored], "stored findings"
    from tracekit.analysis.attribution import attribute_run

    return [c.to_dict() for c in attribute_run(con, run_id, store=False)], f"computed now (`tracekit analyze {run_id[:12]}` stores it)"


def idg_figure(g, roles: dict[str, str]) -> go.Figure:  # type: ignore[no-untyped-def]
    agents = sorted({d["agent"] for _n, d in g.nodes(data=True)})
    lane = {a: i for i, a in enumerate(agents)}
    palette = plotly.colors.qualitative.Plotly + plotly.colors.qualitative.Set2
    color = {a: palette[i % len(palette)] for i, a in enumerate(agents)}
    pos = {n: (d["step"], lane[d["agent"]]) for n, d in g.nodes(data=True)}
    fig = go.Figure()
    for prov, (col, dash, width) in EDGE_STYLE.items():
        xs: list[float | None] = []
        ys: list[float | None] = []
        for u, v, d in g.edges(data=True):
            if d["provenance"] != prov:
                continue
            (x0, y0), (x1, y1) = pos[u], pos[v]
            bend = 0.35 if y0 == y1 else 0.0
            xs += [x0, (x0 + x1) / 2, x1, None]
            ys += [y0, (y0 + y1) / 2 + bend, y1, None]
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"{prov} edge", hoverinfo="skip",
                                     line={"color": col, "dash": dash, "width": width, "shape": "spline"}, opacity=0.75))
    for agent in agents:
        nodes = [(n, d) for n, d in g.nodes(data=True) if d["agent"] == agent]
        fig.add_trace(go.Scatter(
            x=[d["step"] for _n, d in nodes], y=[lane[agent]] * len(nodes), mode="markers", name=html.escape(agent),
            customdata=[n for n, _d in nodes],
            hovertext=[html.escape(f"#{d['step']} {agent} [{roles.get(n, '')}] {d['content'][:160]}") for n, d in nodes],
            hoverinfo="text",
            marker={"size": [26 if roles.get(n) == "root_cause" else 20 if roles.get(n) == "symptom" else 15 for n, _d in nodes],
                    "color": color[agent], "symbol": ["x" if d["status"] == "error" else "circle" for _n, d in nodes],
                    "line": {"width": [5 if n in roles and roles[n] != "candidate" else 1 for n, _d in nodes],
                             "color": [ROLE_STYLE.get(roles.get(n, ""), ("white",))[0] for n, _d in nodes]}},
        ))
    for n, role in roles.items():
        if role in ("root_cause", "symptom") and n in pos:
            fig.add_annotation(x=pos[n][0], y=pos[n][1], text=ROLE_STYLE[role][1], showarrow=True, arrowhead=0, ay=-34,
                               font={"color": ROLE_STYLE[role][0], "size": 13 if role == "root_cause" else 11})
    fig.update_layout(height=max(300, 70 * len(agents) + 140), margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      xaxis={"title": "step", "zeroline": False}, legend={"orientation": "h", "y": -0.2},
                      yaxis={"tickvals": list(range(len(agents))), "ticktext": [html.escape(a) for a in agents],
                             "zeroline": False, "range": [-0.7, len(agents) - 0.3]}, plot_bgcolor="white")
    return fig


st.title("Agent run")

with tkui.store() as con:
    run = tkui.pick_run(con, kind="agents")
    if run is None:
        st.stop()
    run_id = run["run_id"]
    size = run_bounds(con, run_id)["spans"]
    try:
        g = load_graph(con, run_id) if size <= MAX_SPANS else None
        cands, source = candidates_of(con, run_id) if g is not None or run_findings(con, run_id, analysis="attribution") else ([], "")
    except TracekitError as exc:
        st.error(str(exc))
        st.stop()
    attrs = get_run(con, run_id)["attributes"]

tkui.open_links(run, here="views/agents.py")
if size > MAX_SPANS:
    st.warning(f"This run has {size:,} spans: too many to draw its dependency graph here; its stored findings follow.")
if g is not None and g.graph.get("content_hint"):
    st.warning(g.graph["content_hint"][0].upper() + g.graph["content_hint"][1:] + ".")
if g is not None and g.number_of_nodes() == 0:
    g = None

st.subheader("Root-cause candidates")
if cands:
    root = next((c for c in cands if c["role"] == "root_cause"), None)
    if root:
        st.error(f"Root cause: **{root['agent']}** at step **{root['step']}** (score {root['score']:.2f})")
    ctable = pd.DataFrame([{"#": i + 1, "role": ROLE_STYLE.get(c["role"], ("", c["role"]))[1], "agent": c["agent"],
                            "step": c["step"], "score": c["score"],
                            "explained by step": c.get("explained_by"), "evidence": "; ".join(c.get("evidence") or [])}
                           for i, c in enumerate(cands)])
    st.dataframe(ctable, hide_index=True, width="stretch", key="ag_candidates",
                 column_config={"score": st.column_config.ProgressColumn("score", min_value=0.0,
                                                                         max_value=max(1.0, float(ctable["score"].max())), format="%.3f")})
    st.caption(f"Attribution: {source}. A symptom is an erroneous step explained by an earlier one it depends on.")
    if attrs.get("mistake_agent") is not None:
        st.caption(f"Labelled answer (Who&When): agent {attrs.get('mistake_agent')}, step {attrs.get('mistake_step')}")
else:
    st.info("No attribution for this run (it has no agent steps).")

if g is None:
    st.stop()
roles = {c["span_id"]: c["role"] for c in cands if "span_id" in c}
st.subheader("Information-dependency graph")
st.plotly_chart(idg_figure(g, roles), key="ag_graph", on_select="rerun", selection_mode="points")
st.caption("One row per agent, steps left to right; an edge joins a step to a later step that used its output "
           "(blue: declared, green: observed, dotted grey: inferred). Click a step to read it below.")

st.subheader("Step")
order = sorted(g.nodes, key=lambda n: g.nodes[n]["step"])
clicked = None
sel = st.session_state.get("ag_graph")
if sel and sel.get("selection", {}).get("points"):
    clicked = sel["selection"]["points"][0].get("customdata")
default = clicked if clicked in order else (next((c["span_id"] for c in cands if c["role"] == "root_cause"), order[0]))
node = st.selectbox("Step", order, index=order.index(default) if default in order else 0, key="ag_step",
                    format_func=lambda n: f"#{g.nodes[n]['step']} {g.nodes[n]['agent']}"
                                          + (f" — {roles[n]}" if n in roles else ""))
d = g.nodes[node]
st.markdown(f"**#{d['step']}** · agent `{d['agent']}` · status `{d['status']}`" + (f" · **{roles[node]}**" if node in roles else ""))
with st.container(border=True):
    st.text(d["content"] or "(empty)")  # plain text: a message holding HTML or JavaScript is shown, never run
if d.get("input"):
    with st.expander("Input"):
        st.text(d["input"])
if d.get("errors"):
    st.markdown("Errors")
    for e in d["errors"]:
        st.text(e)
ins = [(u, g.edges[u, node]) for u in g.predecessors(node)]
outs = [(v, g.edges[node, v]) for v in g.successors(node)]
c1, c2 = st.columns(2)
c1.markdown("Used outputs of")
c1.dataframe(pd.DataFrame([{"step": g.nodes[u]["step"], "agent": g.nodes[u]["agent"], "relation": e["relation"],
                            "provenance": e["provenance"], "confidence": e["confidence"]} for u, e in ins]),
             hide_index=True, width="stretch")
c2.markdown("Used by")
c2.dataframe(pd.DataFrame([{"step": g.nodes[v]["step"], "agent": g.nodes[v]["agent"], "relation": e["relation"],
                            "provenance": e["provenance"], "confidence": e["confidence"]} for v, e in outs]),
             hide_index=True, width="stretch")
