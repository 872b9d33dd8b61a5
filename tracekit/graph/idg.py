"""Information-dependency graph (IDG): which earlier step outputs each agent step used.

Nodes are agent steps (span ids) with ``agent``, ``step`` (0-based position in the run), ``content``,
``status``, ``errors``, ``kind`` and ``signals`` (the general step signals an importer or capture
stored with the step: ``role``, ``judgment``, ``verdict``, ``exit_code``, ``error``, ``final_answer``). Every edge ``src -> dst`` (dst used src) carries ``relation``,
``provenance`` (``observed``, ``declared`` or ``inferred``) and ``confidence`` in [0, 1]; when
several reasons join the same pair the strongest provenance and the highest confidence are kept.

Runs with no recorded dependencies (imported logs) get inferred edges from what a step demonstrably
reuses: rare tokens, numbers, URLs, file names and quoted text first seen in an earlier step, and
an agent addressed by name (the next step of that agent consumed the addressing step). Every step
also gets a weak ``context`` edge from the step just before it: in a shared conversation every
agent sees the previous message.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import networkx as nx

from tracekit.conventions import SIGNALS

__all__ = ["Step", "build_idg", "steps_from_spans", "signals_of", "infer_edges", "to_json", "to_dot", "PROVENANCE_RANK"]

PROVENANCE_RANK = {"inferred": 0, "observed": 1, "declared": 2}
INFER_CHARS = 6000  # characters of each step scanned for inference (keeps 10k-step runs fast)
CONTEXT_CONFIDENCE = 0.2
ADDRESS_CONFIDENCE = 0.8

_URL = re.compile(r"https?://[^\s\)\]\"'<>|]+")
_FILE = re.compile(r"\b[\w\-]+\.(?:pdf|txt|py|csv|json|xlsx?|docx?|pptx?|png|jpe?g|gif|mp3|wav|mp4|html?|md|zip|xml|sh|pdb|jsonl)\b", re.I)
_NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?![\w])")
_QUOTED = re.compile(r"\"([^\"\n]{4,80})\"|'([^'\n]{4,80})'|“([^”\n]{4,80})”")
_WORD = re.compile(r"[A-Za-z][A-Za-z\-']{3,}")


@dataclass(frozen=True)
class Step:
    """One agent step, whatever recorded it (tracekit API, an importer, GenAI/OpenInference spans)."""

    span_id: str
    agent: str
    index: int
    content: str = ""
    input: str = ""
    kind: str = "step"
    status: str = "unset"
    errors: tuple[str, ...] = ()
    role: str = ""
    tool_call_id: str = ""
    signals: tuple[tuple[str, Any], ...] = ()  # (short name, value): role, judgment, verdict, exit_code, ...


def steps_from_spans(spans: Sequence[dict[str, Any]]) -> list[Step]:
    """The agent steps among a run's spans (start order), recognised by any supported convention."""
    from tracekit.importers.genai import select_steps

    steps: list[Step] = []
    for span, found in select_steps(spans):
        steps.append(Step(
            span_id=span["span_id"], agent=found["agent"], index=len(steps), content=found.get("content", ""),
            input=found.get("input", ""), kind=found.get("kind", "step"),
            status=span.get("status") or "unset",
            errors=_errors(span),
            role=found.get("role", ""), tool_call_id=found.get("tool_call_id", ""),
            signals=_signals(span, found),
        ))
    return steps


def _signals(span: dict[str, Any], found: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Stored signals, else what any span says: a tool execution's role and, from its status, its exit."""
    stored = dict(signals_of(span.get("attributes") or {}))
    if found.get("kind") == "tool_result":
        stored.setdefault("role", "tool")
        if span.get("status") == "error" and "exit_code" not in stored:
            stored["exit_code"] = 1
            stored.setdefault("error", (_errors(span) or ("error status",))[0][:300])
    return tuple(stored.items())


def signals_of(attributes: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The general step signals among a span's attributes, by short name.

    >>> signals_of({"tracekit.agent.signal.role": "tool", "tracekit.agent.signal.exit_code": 1, "x": 2})
    (('role', 'tool'), ('exit_code', 1))
    """
    return tuple((key.rsplit(".", 1)[1], attributes[key]) for key in SIGNALS if attributes.get(key) is not None)


def _errors(span: dict[str, Any]) -> tuple[str, ...]:
    errors = [str(e) for e in span.get("errors") or []]
    if not errors and span.get("status") == "error":
        message = str(span.get("status_message") or "error status").split("Traceback (most recent", 1)[0]
        errors.append(message.strip()[:500])
    return tuple(errors)


def _add_edge(g: nx.DiGraph, src: str, dst: str, relation: str, provenance: str, confidence: float) -> None:
    if src == dst or src not in g or dst not in g:
        return
    if g.nodes[src]["step"] > g.nodes[dst]["step"] and provenance == "inferred":
        return  # inferred edges only point forward in time
    old = g.get_edge_data(src, dst)
    if old is None:
        g.add_edge(src, dst, relation=relation, provenance=provenance, confidence=confidence)
        return
    if PROVENANCE_RANK[provenance] > PROVENANCE_RANK[old["provenance"]]:
        old.update(relation=relation, provenance=provenance)
    old["confidence"] = max(old["confidence"], confidence)


def _tokens(text: str, agents: Iterable[str]) -> set[str]:
    text = text[:INFER_CHARS]
    found: set[str] = set()
    found.update("u:" + u.rstrip(".,;") for u in _URL.findall(text))
    found.update("f:" + f.lower() for f in _FILE.findall(text))
    for n in _NUMBER.findall(text):
        digits = n.replace(",", "")
        if len(digits.replace(".", "")) >= 2:
            found.add("n:" + digits)
    for groups in _QUOTED.findall(text):
        q = next((g for g in groups if g), "")
        if q:
            found.add("q:" + q.strip().lower())
    stripped = _URL.sub(" ", text)
    found.update("w:" + w.lower() for w in _WORD.findall(stripped))
    names = {a.lower() for a in agents}
    return {t for t in found if t[2:] not in names}


def infer_edges(steps: Sequence[Step]) -> list[tuple[str, str, str, float]]:
    """Edges (src, dst, relation, confidence) inferred from reused content and agents addressed by name.

    A token that a step shares with earlier steps is credited to the latest earlier step holding it,
    weighted by its rarity in the run (inverse document frequency); a pair's confidence is
    ``1 - exp(-weight / 4)``. Words in more than a quarter of the steps carry no weight; figures, URLs,
    file names and quotes (which flow along chains of steps) in more than 60 % of them.

    >>> s = [Step("a", "A", 0, "the file report_2023.pdf is at https://x.org/r"),
    ...      Step("b", "B", 1, "nothing here"), Step("c", "C", 2, "reading report_2023.pdf")]
    >>> [(src, dst, rel) for src, dst, rel, _ in infer_edges(s) if rel == "reuses"]
    [('a', 'c', 'reuses')]
    """
    agents = sorted({s.agent for s in steps})
    toks = [_tokens("\n".join((s.content, s.input, *s.errors)), agents) for s in steps]
    n = max(len(steps), 1)
    df = Counter(t for ts in toks for t in ts)
    limit = max(2, n // 4)  # words in more than a quarter of the steps are too common to trace
    specific = max(3, math.ceil(n * 0.6))  # a figure, URL, file or quote may flow along a chain of steps
    edges: list[tuple[str, str, str, float]] = []
    last: dict[str, int] = {}
    for j, ts in enumerate(toks):
        weight: Counter[int] = Counter()
        for t in ts:
            i = last.get(t)
            if i is not None and df[t] <= (specific if t[0] in "ufnq" else limit):
                w = math.log(n / df[t]) + (1.5 if t[0] in "ufnq" else 0.0)
                weight[i] += w
            last[t] = j
        for i, w in weight.items():
            conf = 1.0 - math.exp(-w / 4.0)
            if conf >= 0.3:
                edges.append((steps[i].span_id, steps[j].span_id, "reuses", round(min(conf, 0.95), 3)))
    # an agent addressed by name: its next step consumed the addressing step
    patterns = {a: re.compile(r"(?<![\w])" + re.escape(a) + r"(?![\w])") for a in agents if len(a) >= 3}
    pending: dict[str, list[int]] = {}
    for j, s in enumerate(steps):
        for i in pending.pop(s.agent, []):
            edges.append((steps[i].span_id, s.span_id, "addressed", ADDRESS_CONFIDENCE))
        head = (s.role + " " + s.content[:INFER_CHARS])
        for a, pat in patterns.items():
            if a != s.agent and pat.search(head):
                pending.setdefault(a, []).append(j)
        for a in list(pending):
            pending[a] = pending[a][-3:]
    for j in range(1, len(steps)):
        edges.append((steps[j - 1].span_id, steps[j].span_id, "context", CONTEXT_CONFIDENCE))
    return edges


def build_idg(
    steps: Sequence[Step], links: Sequence[dict[str, Any]] = (), *,
    infer: bool | Literal["auto"] = "auto", derived: Sequence[dict[str, Any]] = (),
) -> nx.DiGraph:
    """The IDG of a run from its steps, its recorded links and links derived from span attributes.

    ``infer="auto"`` infers edges only when no observed or declared edge joins two steps.

    >>> g = build_idg([Step("a", "A", 0, "x"), Step("b", "B", 1, "y")],
    ...               [{"src_span_id": "a", "dst_span_id": "b", "provenance": "declared", "confidence": 1.0}])
    >>> g.edges["a", "b"]["provenance"]
    'declared'
    """
    g = nx.DiGraph()
    for s in steps:
        g.add_node(s.span_id, agent=s.agent, step=s.index, content=s.content, input=s.input, kind=s.kind,
                   status=s.status, errors=list(s.errors), role=s.role, signals=dict(s.signals))
    for link in [*links, *derived]:
        _add_edge(g, link["src_span_id"], link["dst_span_id"], link.get("relation") or "consumes",
                  link.get("provenance") or "observed", float(link.get("confidence") if link.get("confidence") is not None else 1.0))
    recorded = g.number_of_edges() > 0
    if infer is True or (infer == "auto" and not recorded):
        for src, dst, relation, conf in infer_edges(steps):
            _add_edge(g, src, dst, relation, "inferred", conf)
    g.graph["inferred"] = infer is True or (infer == "auto" and not recorded)
    return g


def to_json(g: nx.DiGraph) -> dict[str, Any]:
    """Nodes in step order and edges, as plain JSON-able data (contents cut to 300 characters)."""
    nodes = sorted(g.nodes(data=True), key=lambda nd: nd[1]["step"])
    return {
        "nodes": [{"id": n, "agent": d["agent"], "step": d["step"], "kind": d["kind"], "status": d["status"],
                   "content": d["content"][:300]} for n, d in nodes],
        "edges": [{"src": u, "dst": v, "src_step": g.nodes[u]["step"], "dst_step": g.nodes[v]["step"],
                   "relation": d["relation"], "provenance": d["provenance"], "confidence": d["confidence"]}
                  for u, v, d in sorted(g.edges(data=True), key=lambda e: (g.nodes[e[1]]["step"], g.nodes[e[0]]["step"]))],
    }


def to_dot(g: nx.DiGraph, *, min_confidence: float = 0.0) -> str:
    """Graphviz DOT text: one box per step (``#step agent``), edges styled by provenance."""
    style = {"observed": "solid", "declared": "bold", "inferred": "dashed"}

    def q(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["digraph idg {", "  rankdir=TB;", "  node [shape=box, fontname=Helvetica];"]
    for n, d in sorted(g.nodes(data=True), key=lambda nd: nd[1]["step"]):
        color = ', color=red' if d["status"] == "error" else ""
        label = q("#{} {}".format(d["step"], d["agent"]))
        lines.append(f"  {q(n)} [label={label}{color}];")
    for u, v, d in g.edges(data=True):
        if d["confidence"] < min_confidence:
            continue
        label = q("{} {:.2f}".format(d["relation"], d["confidence"]))
        lines.append(f"  {q(u)} -> {q(v)} [style={style[d['provenance']]}, label={label}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
