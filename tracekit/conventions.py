"""Every attribute name and spool-format constant tracekit writes or reads: the one shared leaf of the package.

Capture, importers, ingest, store, analyses and the dashboard refer to these constants, never to string
literals, so a renamed convention changes in exactly one file. This module imports nothing of tracekit
and nothing heavy (no pyarrow): user processes import it at start-up.

The record streams a spool file can hold are declared here as plain field lists (``STREAMS``); ingest
builds their Arrow schemas from them, and the native writer's record layouts are generated from them,
so a new field is added in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- tracekit's own span / resource attributes --------------------------------------------------
NODE = "tracekit.node"  # span or resource attribute: the node a span is blamed on
RUN_ID = "tracekit.run_id"  # resource attribute: the run the spans belong to
RUN_NAME = "tracekit.run_name"  # resource attribute: the run's human name
RUN_KIND = "tracekit.run_kind"  # resource attribute: training, agents, service or campaign

# agent capture (tracekit.agent_step, message, tool_call, tool_result)
AGENT = "tracekit.agent"
STEP = "tracekit.agent.step"
CONTENT = "tracekit.agent.content"
INPUT = "tracekit.agent.input"
ROLE = "tracekit.agent.role"
STEP_KIND = "tracekit.agent.kind"  # step, message, tool_call, tool_result
TOOL = "tracekit.agent.tool"
TOOL_CALL_ID = "tracekit.agent.tool_call_id"
# general step signals an importer or capture derives from what its format says (the attribution
# method reads only these, the IDG and plain text): role is task|orchestrator|worker|tool|verifier;
# judgment is progress|no_progress|loop (an orchestrator's view of the step it received); verdict
# is pass|fail (a verifier's); exit_code/error describe a tool or code execution; final_answer is
# the answer a step states
SIGNAL_ROLE = "tracekit.agent.signal.role"
SIGNAL_JUDGMENT = "tracekit.agent.signal.judgment"
SIGNAL_VERDICT = "tracekit.agent.signal.verdict"
SIGNAL_EXIT_CODE = "tracekit.agent.signal.exit_code"
SIGNAL_ERROR = "tracekit.agent.signal.error"
SIGNAL_FINAL_ANSWER = "tracekit.agent.signal.final_answer"
SIGNALS = (SIGNAL_ROLE, SIGNAL_JUDGMENT, SIGNAL_VERDICT, SIGNAL_EXIT_CODE, SIGNAL_ERROR, SIGNAL_FINAL_ANSWER)
RUN_ATTR_KEYS = ("question", "ground_truth", "final_answer", "mistake_agent", "mistake_step", "mistake_reason")

# fault injection
INJECTED = "tracekit.injected"
RETURN = "tracekit.return"

# --- OpenTelemetry resource semantic conventions -------------------------------------------------
SERVICE_NAME = "service.name"
PROCESS_PID = "process.pid"
HOST_NAME = "host.name"

# which span attribute makes spans one run, in order of preference (OpenInference / OTel session,
# OTel GenAI conversation); "trace" = the trace id, "file" = the whole OTLP file (TRACEKIT_RUN_BY)
SESSION_ID = "session.id"
GEN_AI_CONVERSATION_ID = "gen_ai.conversation.id"
RUN_BY_TRACE = "trace"
RUN_BY_FILE = "file"
RUN_BY_FILES = (SESSION_ID, GEN_AI_CONVERSATION_ID, RUN_BY_FILE)  # `tracekit ingest` of OTLP files
RUN_BY_ENDPOINT = (SESSION_ID, GEN_AI_CONVERSATION_ID, RUN_BY_TRACE)  # `tracekit serve`

# how an OTLP span link is stored in the links table
OTEL_LINK_RELATION = "otel.link"
OTEL_LINK_PROVENANCE = "declared"

# node of a span whose resource names no service
UNKNOWN_SERVICE = "unknown_service"

# --- foreign conventions the importers read (OTel GenAI, OpenInference, OpenLLMetry) ---------------
# OpenTelemetry GenAI semantic conventions
GENAI_OPERATION = "gen_ai.operation.name"
GENAI_AGENT_NAME = "gen_ai.agent.name"
GENAI_TOOL_NAME = "gen_ai.tool.name"
GENAI_TOOL_CALL_ID = "gen_ai.tool.call.id"
GENAI_CONVERSATION = "gen_ai.conversation.id"
GENAI_INPUT_MESSAGES = "gen_ai.input.messages"
GENAI_OUTPUT_MESSAGES = "gen_ai.output.messages"
GENAI_SYSTEM = "gen_ai.system"  # legacy
GENAI_PROVIDER = "gen_ai.provider.name"
GENAI_PROMPT = "gen_ai.prompt"  # legacy
GENAI_COMPLETION = "gen_ai.completion"  # legacy
GENAI_AGENT_OPS = ("invoke_agent", "create_agent")
GENAI_TOOL_OPS = ("execute_tool",)
GENAI_MODEL_OPS = ("chat", "text_completion", "generate_content", "embeddings")

# GenAI events (span events; OTLP log records carry the same): their names and where their text is
GENAI_EVENT_INPUT = ("gen_ai.system.message", "gen_ai.user.message", "gen_ai.assistant.message",
                     "gen_ai.tool.message", "gen_ai.content.prompt")
GENAI_EVENT_OUTPUT = ("gen_ai.choice", "gen_ai.content.completion")
GENAI_EVENT_DETAILS = "gen_ai.client.inference.operation.details"

# OpenLLMetry (traceloop) conventions
TRACELOOP_KIND = "traceloop.span.kind"  # workflow, task, agent, tool
TRACELOOP_NAME = "traceloop.entity.name"
TRACELOOP_INPUT = "traceloop.entity.input"
TRACELOOP_OUTPUT = "traceloop.entity.output"

# OpenInference semantic conventions
OI_KIND = "openinference.span.kind"
OI_AGENT_NAME = "agent.name"
OI_INPUT = "input.value"
OI_OUTPUT = "output.value"
OI_INPUT_MESSAGES = "llm.input_messages"
OI_OUTPUT_MESSAGES = "llm.output_messages"
OI_GRAPH_NODE_ID = "graph.node.id"
OI_GRAPH_NODE_PARENT = "graph.node.parent_id"
OI_GRAPH_NODE_NAME = "graph.node.name"
OI_TOOL_NAME = "tool.name"
OI_TOOL_CALL_ID = "tool_call.id"
OI_METADATA = "metadata"
LANGGRAPH_NODE = "langgraph_node"

# --- spool files ----------------------------------------------------------------------------------
SPOOL_VERSION = 2  # 2: every stream is flat (span events have a stream of their own); 1: events nested
READABLE_VERSIONS = (1, 2)
HEADER_KEY = "tracekit_spool"
FOOTER_KEY = "tracekit_end"

# field types a stream may declare; ingest maps each to an Arrow type
FIELD_TYPES = ("string", "int32", "int64", "float64", "bool", "events")


@dataclass(frozen=True)
class Stream:
    """One record stream of a spool file: its fields (name, type) in order, and where it loads.

    A stream's fields are the table's columns minus ``run_id`` (taken from the file header) and,
    where ``with_pid``, ``pid``. Spool format 1 nested a span's events inside its record (the
    ``events``-typed field); format 2 keeps every stream flat.
    """

    name: str
    table: str
    fields: tuple[tuple[str, str], ...]
    required: tuple[str, ...]
    id_field: str | None = None  # names a record in quarantine reports
    with_pid: bool = True

    def field_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fields)


STREAMS: dict[str, Stream] = {}


def _register(stream: Stream) -> Stream:
    STREAMS[stream.name] = stream
    return stream


SPANS = _register(Stream(
    "spans", "span_rows",  # read through the `spans` view (tracekit.store.segments)
    (("trace_id", "string"), ("span_id", "string"), ("parent_id", "string"), ("name", "string"),
     ("node", "string"), ("kind", "string"), ("start_ns", "int64"), ("end_ns", "int64"),
     ("status", "string"), ("status_message", "string"), ("attributes", "string"),
     ("events", "events")),  # format 1 only: format 2 writes the events stream
    required=("trace_id", "span_id", "name", "start_ns", "end_ns"),
    id_field="span_id",
))
EVENTS = _register(Stream(  # span events (exceptions, retries, log lines); format 2 onwards
    "events", "events",
    (("span_id", "string"), ("ts_ns", "int64"), ("name", "string"), ("attributes", "string")),
    required=("span_id", "ts_ns", "name"),
    id_field="span_id",
    with_pid=False,
))
LINKS = _register(Stream(
    "links", "links",
    (("src_span_id", "string"), ("dst_span_id", "string"), ("relation", "string"),
     ("provenance", "string"), ("confidence", "float64"), ("attributes", "string")),
    required=("src_span_id", "dst_span_id", "provenance"),
    with_pid=False,
))
COLLECTIVES = _register(Stream(
    "collectives", "collectives",
    (("rank", "int32"), ("world_size", "int32"), ("process_group", "string"), ("seq", "int64"),
     ("op", "string"), ("bytes", "int64"), ("dtype", "string"), ("enter_ns", "int64"),
     ("exit_ns", "int64"), ("step", "int64"), ("ok", "bool"),
     # p2p peer, async work handle, who issued it, local check, failure
     ("peer", "int32"), ("async_op", "bool"), ("source", "string"), ("nonfinite", "bool"),
     ("error", "string")),
    required=("rank", "seq", "op", "enter_ns"),
))
STEPS = _register(Stream(
    "steps", "steps",
    (("rank", "int32"), ("step", "int64"), ("start_ns", "int64"), ("end_ns", "int64"),
     ("loss", "float64"), ("grad_norm", "float64"), ("nonfinite", "bool")),
    required=("rank", "step", "start_ns"),
))
PROBES = _register(Stream(  # active pairwise link probes (C4-style), measured by the receiver
    "probes", "probes",
    (("rank", "int32"), ("world_size", "int32"), ("round", "int64"), ("src", "int32"),
     ("dst", "int32"), ("bytes", "int64"), ("ts_ns", "int64"), ("dur_ns", "int64"), ("step", "int64")),
    required=("rank", "round", "src", "dst", "dur_ns"),
))
HEARTBEATS = _register(Stream(  # a rank's liveness and in-flight collective, written by a background thread
    "heartbeats", "heartbeats",
    (("rank", "int32"), ("ts_ns", "int64"), ("step", "int64"), ("last_seq", "int64"),
     ("inflight_op", "string"), ("inflight_seq", "int64"), ("inflight_since_ns", "int64"),
     ("state", "string"), ("sched_lag_ns", "int64"), ("lag_step", "int64")),
    required=("rank", "ts_ns"),
))
WORKER_EXITS = _register(Stream(  # a torchrun worker's exit as its launcher saw it (under `tracekit record`)
    "worker_exits", "worker_exits",
    (("rank", "int32"), ("local_rank", "int32"), ("worker_pid", "int64"), ("exit_code", "int32"),
     ("signal", "int32"), ("ts_ns", "int64"), ("host", "string")),
    required=("rank", "ts_ns"),
))
FAULTS = _register(Stream(
    "faults", "faults",
    (("campaign", "string"), ("test", "string"), ("point", "string"), ("fault_type", "string"),
     ("injected", "bool"), ("ts_ns", "int64"), ("span_id", "string"), ("detail", "string")),
    required=("point", "fault_type", "injected", "ts_ns"),
    with_pid=False,
))
INJECT_POINTS = _register(Stream(
    "inject_points", "campaign_points",
    (("point", "string"), ("parent", "string"), ("kind", "string"), ("returns", "string"),
     ("raises", "string")),
    required=("point", "kind"),
))
