"""Agent steps and information edges from span attributes: tracekit's own, OpenTelemetry GenAI, OpenInference.

Works on stored span dicts (``span_id``, ``parent_id``, ``name``, ``status``, decoded ``attributes``),
so the same mapping serves spans captured live (e.g. by ``openinference-instrumentation-langchain``
on tracekit's provider) and spans read from OTLP files.

* **OpenTelemetry GenAI**: ``gen_ai.operation.name`` (``invoke_agent``, ``execute_tool``, ``chat``…),
  ``gen_ai.agent.name``, ``gen_ai.tool.name``, ``gen_ai.tool.call.id``, ``gen_ai.conversation.id``,
  ``gen_ai.input.messages`` / ``gen_ai.output.messages``, and the legacy ``gen_ai.system``,
  ``gen_ai.prompt`` / ``gen_ai.completion`` (also ``gen_ai.prompt.N.content``).
* **OpenInference**: ``openinference.span.kind`` (AGENT, CHAIN, TOOL, LLM…), ``agent.name``,
  ``input.value`` / ``output.value``, ``llm.input_messages.N.message.*``, ``graph.node.id`` /
  ``graph.node.parent_id``, ``tool_call.id`` and LangGraph's ``metadata.langgraph_node``.

Edges derived here: ``graph.node.parent_id`` (declared), a tool call id issued by one step and
answered by another (declared), and an earlier step's output text found in a later step's input
(observed: the value was seen flowing).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from tracekit import conventions as conv
from tracekit.conventions import (  # the GenAI, OpenInference and OpenLLMetry names this importer reads
    GENAI_OPERATION, GENAI_AGENT_NAME, GENAI_TOOL_NAME, GENAI_TOOL_CALL_ID, GENAI_CONVERSATION,
    GENAI_INPUT_MESSAGES, GENAI_OUTPUT_MESSAGES, GENAI_SYSTEM, GENAI_PROVIDER, GENAI_PROMPT,
    GENAI_COMPLETION, GENAI_AGENT_OPS, GENAI_TOOL_OPS, GENAI_MODEL_OPS, GENAI_EVENT_INPUT,
    GENAI_EVENT_OUTPUT, GENAI_EVENT_DETAILS, TRACELOOP_KIND, TRACELOOP_NAME, TRACELOOP_INPUT,
    TRACELOOP_OUTPUT, OI_KIND, OI_AGENT_NAME, OI_INPUT, OI_OUTPUT, OI_INPUT_MESSAGES, OI_OUTPUT_MESSAGES,
    OI_GRAPH_NODE_ID, OI_GRAPH_NODE_PARENT, OI_GRAPH_NODE_NAME, OI_TOOL_NAME, OI_TOOL_CALL_ID, OI_METADATA,
    LANGGRAPH_NODE,
)

__all__ = ["agent_step_of", "select_steps", "derive_links", "text_of", "content_from_events",
           "content_capture_hint"]


MIN_FLOW_TEXT = 16  # an output text shorter than this proves nothing by reappearing
MAX_FLOW_STEPS = 100_000


def _json(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _strings(value: Any, out: list[str], depth: int = 0) -> None:
    if depth > 12:
        return
    if isinstance(value, str):
        parsed = _json(value)
        if parsed is not value:
            _strings(parsed, out, depth + 1)
        elif value.strip():
            out.append(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key in ("type", "role", "id", "name", "additional_kwargs", "response_metadata", "usage_metadata",
                       "lc", "tool_call_id", "finish_reason") and not isinstance(item, (dict, list)):
                continue
            _strings(item, out, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _strings(item, out, depth + 1)


def text_of(value: Any) -> str:
    """The human text inside a value: JSON (messages, LangChain states) reduced to its string leaves."""
    if value is None:
        return ""
    out: list[str] = []
    _strings(value, out)
    return "\n".join(out)


def _indexed(attrs: dict[str, Any], prefix: str, field: str) -> str:
    """Join ``prefix.N.field`` values (flattened message lists) in N order."""
    found = []
    start = prefix + "."
    for key, value in attrs.items():
        if key.startswith(start) and key.endswith("." + field):
            middle = key[len(start):-len(field) - 1]
            head = middle.split(".", 1)[0]
            if head.isdigit():
                found.append((int(head), middle, str(value)))
    return "\n".join(v for _i, _m, v in sorted(found))


def _tool_calls_text(attrs: dict[str, Any]) -> str:
    """``name(arguments)`` of each tool call in a model's flattened output messages."""
    names = _indexed_any(attrs, OI_OUTPUT_MESSAGES, "tool_call.function.name")
    args = _indexed_any(attrs, OI_OUTPUT_MESSAGES, "tool_call.function.arguments")
    return "\n".join(f"call {n}({a})" for n, a in zip(names, args + [""] * len(names)))


def _indexed_any(attrs: dict[str, Any], prefix: str, suffix: str) -> list[str]:
    found = [(key, str(value)) for key, value in attrs.items() if key.startswith(prefix + ".") and key.endswith("." + suffix)]
    return [v for _k, v in sorted(found, key=lambda kv: [int(p) if p.isdigit() else 0 for p in kv[0].split(".")])]


def _metadata(attrs: dict[str, Any]) -> dict[str, Any]:
    meta = _json(attrs.get(OI_METADATA))
    return meta if isinstance(meta, dict) else {}


def content_from_events(events: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """GenAI message content that span events hold, as the span attributes this module reads
    (``gen_ai.input.messages`` / ``gen_ai.output.messages``, JSON text); empty when there is none.

    >>> lifted = content_from_events([("gen_ai.user.message", {"content": "What is 2+2?"}),
    ...                               ("gen_ai.choice", {"message": '{"content": "4"}'})])
    >>> text_of(lifted["gen_ai.input.messages"]), text_of(lifted["gen_ai.output.messages"])
    ('What is 2+2?', '4')
    """
    inputs: list[Any] = []
    outputs: list[Any] = []
    for name, attrs in events:
        if name == GENAI_EVENT_DETAILS:
            inputs += [attrs[GENAI_INPUT_MESSAGES]] if attrs.get(GENAI_INPUT_MESSAGES) else []
            outputs += [attrs[GENAI_OUTPUT_MESSAGES]] if attrs.get(GENAI_OUTPUT_MESSAGES) else []
            continue
        target = inputs if name in GENAI_EVENT_INPUT else outputs if name in GENAI_EVENT_OUTPUT else None
        if target is None:
            continue
        text = [v for k, v in attrs.items() if k in ("content", "message", "body", GENAI_PROMPT, GENAI_COMPLETION,
                                                      "gen_ai.event.content") and v not in (None, "")]
        target.extend(text)
    out: dict[str, str] = {}
    if inputs:
        out[GENAI_INPUT_MESSAGES] = json.dumps(inputs, default=str)
    if outputs:
        out[GENAI_OUTPUT_MESSAGES] = json.dumps(outputs, default=str)
    return out


_CAPTURE_SWITCHES = (  # (attribute prefix that names the instrumentation, how to turn its content capture on)
    ("traceloop.", "OpenLLMetry: set TRACELOOP_TRACE_CONTENT=true"),
    ("openinference.", "OpenInference: unset OPENINFERENCE_HIDE_INPUTS / OPENINFERENCE_HIDE_OUTPUTS "
                       "(and OPENINFERENCE_HIDE_INPUT_MESSAGES / _OUTPUT_MESSAGES)"),
    ("gen_ai.", "OpenTelemetry GenAI instrumentation: set OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true"),
)


def content_capture_hint(spans: Sequence[dict[str, Any]]) -> str | None:
    """A one-line warning when a run's agent steps carry no content at all (capture switched off),
    naming the switch of the instrumentation in use; None when some step has content.

    >>> content_capture_hint([{"name": "chat", "attributes": {"gen_ai.operation.name": "chat"}}])[:37]
    'agent steps carry no content (message'
    """
    steps = [(span, step) for span in spans if (step := agent_step_of(span)) is not None]
    if not steps or any(step["content"] or step["input"] for _span, step in steps):
        return None
    keys = {key for span, _step in steps for key in (span.get("attributes") or {})}
    how = [hint for prefix, hint in _CAPTURE_SWITCHES if any(k.startswith(prefix) for k in keys)]
    return ("agent steps carry no content (message text): content capture looks switched off, so text "
            "evidence and observed edges are missing; " + ("; ".join(how[:1]) or "turn on your "
            "instrumentation's message-content capture") + ", then record again")


def _traceloop_step(span: dict[str, Any], attrs: dict[str, Any]) -> dict[str, Any] | None:
    """An OpenLLMetry (``traceloop.*``) agent, task or tool span as an agent step."""
    kind = str(attrs.get(TRACELOOP_KIND) or "").lower()
    name = str(attrs.get(TRACELOOP_NAME) or span.get("name"))
    content, inp = text_of(attrs.get(TRACELOOP_OUTPUT)), text_of(attrs.get(TRACELOOP_INPUT))
    if kind == "tool":
        return {"agent": f"tool:{name}", "content": content, "input": inp, "kind": "tool_result", "role": "TOOL",
                "tool_call_id": ""}
    if kind in ("agent", "task"):
        return {"agent": name, "content": content, "input": inp, "kind": "step", "role": kind.upper(),
                "tool_call_id": ""}
    return None


def agent_step_of(span: dict[str, Any]) -> dict[str, Any] | None:
    """The agent step a span records (agent, content, input, kind, role, tool_call_id), or None.

    >>> agent_step_of({"name": "x", "attributes": {"gen_ai.operation.name": "invoke_agent",
    ...                "gen_ai.agent.name": "Critic", "gen_ai.completion": "looks fine"}})["agent"]
    'Critic'
    >>> agent_step_of({"name": "y", "attributes": {"http.method": "GET"}}) is None
    True
    """
    attrs = span.get("attributes") or {}
    if conv.AGENT in attrs:
        return {
            "agent": str(attrs[conv.AGENT]), "content": str(attrs.get(conv.CONTENT) or ""),
            "input": str(attrs.get(conv.INPUT) or ""), "kind": str(attrs.get(conv.STEP_KIND) or "step"),
            "role": str(attrs.get(conv.ROLE) or ""), "tool_call_id": str(attrs.get(conv.TOOL_CALL_ID) or ""),
            "tool": str(attrs.get(conv.TOOL) or ""),
        }
    op = attrs.get(GENAI_OPERATION)
    if op is not None:
        op = str(op)
        if op in GENAI_TOOL_OPS:
            agent = f"tool:{attrs.get(GENAI_TOOL_NAME) or span.get('name')}"
            kind = "tool_result"
        elif op in GENAI_AGENT_OPS:
            agent, kind = str(attrs.get(GENAI_AGENT_NAME) or span.get("name")), "step"
        else:
            agent = str(attrs.get(GENAI_AGENT_NAME) or attrs.get(GENAI_PROVIDER) or attrs.get(GENAI_SYSTEM) or "model")
            kind = "model"
        content = text_of(attrs.get(GENAI_OUTPUT_MESSAGES)) or str(attrs.get(GENAI_COMPLETION) or "") \
            or _indexed(attrs, GENAI_COMPLETION, "content") or text_of(attrs.get("gen_ai.tool.call.result"))
        inp = text_of(attrs.get(GENAI_INPUT_MESSAGES)) or str(attrs.get(GENAI_PROMPT) or "") \
            or _indexed(attrs, GENAI_PROMPT, "content") or text_of(attrs.get("gen_ai.tool.call.arguments"))
        return {"agent": agent, "content": content, "input": inp, "kind": kind, "role": op,
                "tool_call_id": str(attrs.get(GENAI_TOOL_CALL_ID) or ""), "conversation": attrs.get(GENAI_CONVERSATION)}
    oi_kind = attrs.get(OI_KIND)
    if oi_kind is None:
        return _traceloop_step(span, attrs) if TRACELOOP_KIND in attrs else None
    oi_kind = str(oi_kind).upper()
    meta = _metadata(attrs)
    if oi_kind == "LLM":
        content = _indexed(attrs, OI_OUTPUT_MESSAGES, "message.content") or _tool_calls_text(attrs) \
            or text_of(attrs.get(OI_OUTPUT))
        inp = _indexed(attrs, OI_INPUT_MESSAGES, "message.content") or text_of(attrs.get(OI_INPUT))
    else:
        content = text_of(attrs.get(OI_OUTPUT)) or _indexed(attrs, OI_OUTPUT_MESSAGES, "message.content")
        inp = text_of(attrs.get(OI_INPUT)) or _indexed(attrs, OI_INPUT_MESSAGES, "message.content")
    if oi_kind == "TOOL":
        return {"agent": f"tool:{attrs.get(OI_TOOL_NAME) or span.get('name')}", "content": content, "input": inp,
                "kind": "tool_result", "role": "TOOL",
                "tool_call_id": str(attrs.get(OI_TOOL_CALL_ID) or _answered_call(attrs.get(OI_OUTPUT)) or "")}
    agent = attrs.get(OI_AGENT_NAME) or attrs.get(OI_GRAPH_NODE_NAME)
    if agent is None and meta.get(LANGGRAPH_NODE) == span.get("name"):
        agent = meta[LANGGRAPH_NODE]  # a LangGraph node's own span
    if agent is None and oi_kind == "AGENT":
        agent = span.get("name")
    if agent is None:
        if oi_kind == "LLM":
            return {"agent": str(meta.get(LANGGRAPH_NODE) or span.get("name")), "content": content, "input": inp,
                    "kind": "model", "role": "LLM", "tool_call_id": ""}
        return None
    return {"agent": str(agent), "content": content, "input": inp, "kind": "step", "role": oi_kind,
            "tool_call_id": ""}


def _answered_call(output: Any) -> str | None:
    """The tool-call id a tool's output message answers (LangChain ToolMessage JSON)."""
    stack = [_json(output)]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("tool_call_id"), str):
                return item["tool_call_id"]
            stack.extend(v for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend(item)
    return None


def select_steps(spans: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The agent steps among spans, as (span, step info), in the spans' order.

    The finest acts are the steps: model calls and tool executions. An agent span (GenAI
    ``invoke_agent``, an OpenInference AGENT, a LangGraph node) that encloses such acts is their
    container and lends them its agent name; one that encloses none is a step itself. Spans recorded
    by tracekit's own API are always steps.
    """
    by_id = {s["span_id"]: s for s in spans}
    found = {s["span_id"]: agent_step_of(s) for s in spans}

    def ancestors(span: dict[str, Any]) -> Iterator[str]:
        parent = span.get("parent_id")
        for _ in range(64):
            if parent is None or parent not in by_id:
                return
            yield parent
            parent = by_id[parent].get("parent_id")

    containers: set[str] = set()
    owner: dict[str, str] = {}
    for span in spans:
        info = found[span["span_id"]]
        if info is None or info["kind"] not in ("model", "tool_result") or conv.AGENT in (span.get("attributes") or {}):
            continue
        for parent in ancestors(span):
            pinfo = found.get(parent)
            if pinfo is not None and pinfo["kind"] == "step" and conv.AGENT not in (by_id[parent].get("attributes") or {}):
                containers.add(parent)
                owner.setdefault(span["span_id"], pinfo["agent"])
    chosen = []
    for span in spans:
        info = found[span["span_id"]]
        if info is None or span["span_id"] in containers:
            continue
        if info["kind"] == "model" and span["span_id"] in owner:
            info = {**info, "agent": owner[span["span_id"]]}
        chosen.append((span, info))
    return chosen


def _tool_calls_issued(attrs: dict[str, Any]) -> set[str]:
    """Tool-call ids a span's output asked for (OpenInference flattened messages or GenAI output JSON)."""
    ids = {str(v) for k, v in attrs.items()
           if k.startswith(OI_OUTPUT_MESSAGES + ".") and k.endswith("tool_call.id")}
    out = _json(attrs.get(GENAI_OUTPUT_MESSAGES))
    stack = [out, _json(attrs.get(OI_OUTPUT))]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key in ("tool_calls",):
                for call in item.get(key) or []:
                    if isinstance(call, dict) and call.get("id"):
                        ids.add(str(call["id"]))
            if item.get("type") == "tool_call" and item.get("id"):
                ids.add(str(item["id"]))
            stack.extend(v for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend(item)
    return ids


def _lines(text: str) -> list[str]:
    return [ln for ln in (part.strip() for part in text.split("\n")) if len(ln) >= MIN_FLOW_TEXT]


def derive_links(spans: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Edges between the run's agent steps derived from span attributes (see the module docstring)."""
    selected = select_steps(spans)
    steps = [span for span, _info in selected]
    step_ids = {s["span_id"] for s in steps}
    by_id = {s["span_id"]: s for s in spans}
    links: list[dict[str, Any]] = []

    def link(src: str, dst: str, relation: str, provenance: str, confidence: float) -> None:
        if src != dst:
            links.append({"src_span_id": src, "dst_span_id": dst, "relation": relation,
                          "provenance": provenance, "confidence": confidence})

    def owning_step(span_id: str | None) -> str | None:
        for _ in range(64):
            if span_id is None or span_id not in by_id:
                return None
            if span_id in step_ids:
                return span_id
            span_id = by_id[span_id].get("parent_id")
        return None

    # graph.node.parent_id (declared)
    node_span = {}
    for s in spans:
        node_id = (s.get("attributes") or {}).get(OI_GRAPH_NODE_ID)
        if node_id is not None:
            node_span.setdefault(str(node_id), owning_step(s["span_id"]) or s["span_id"])
    for s in steps:
        parent = (s.get("attributes") or {}).get(OI_GRAPH_NODE_PARENT)
        if parent is not None and str(parent) in node_span:
            link(node_span[str(parent)], s["span_id"], "graph_parent", "declared", 1.0)
    # tool-call ids (declared): the step that issued the call -> the tool step answering it
    issued: dict[str, str] = {}
    for s in spans:
        owner = owning_step(s["span_id"])
        if owner is None:
            continue
        attrs = s.get("attributes") or {}
        for call_id in _tool_calls_issued(attrs):
            issued.setdefault(call_id, owner)
    for s, info in selected:
        call_id = info.get("tool_call_id")
        if call_id and str(call_id) in issued and info.get("kind") == "tool_result":
            link(issued[str(call_id)], s["span_id"], "tool_result", "declared", 1.0)
    # observed: a line of an earlier step's output among the lines of a later step's input
    # (messages keep their lines when passed on; set lookups keep this linear in the text)
    import heapq

    order = sorted(selected[:MAX_FLOW_STEPS], key=lambda si: (si[0].get("start_ns") or 0))
    finished: list[tuple[int, int, str, list[str]]] = []  # (end, seq, span id, output lines)
    producer: dict[str, str] = {}
    for seq, (s, info) in enumerate(order):
        start = s.get("start_ns") or 0
        while finished and finished[0][0] <= start:
            _end, _seq, src, lines = heapq.heappop(finished)
            for line in lines:
                producer[line] = src
        if conv.AGENT in (s.get("attributes") or {}):
            continue  # tracekit's own capture records its observed edges itself
        sources = {producer[line] for line in _lines(info.get("input") or "") if line in producer}
        for src in sorted(sources):
            link(src, s["span_id"], "consumes", "observed", 0.9)
        lines = _lines(info.get("content") or "")
        if lines:
            heapq.heappush(finished, (s.get("end_ns") or 0, seq, s["span_id"], lines))
    return links

