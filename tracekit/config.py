"""Settings: every knob tracekit reads, from arguments or TRACEKIT_* environment variables, in one place.

| variable                    | default                | meaning                                                    |
|-----------------------------|------------------------|------------------------------------------------------------|
| TRACEKIT_DB                 | ./tracekit.duckdb      | the DuckDB store the CLI reads and `ingest` writes         |
| TRACEKIT_SPOOL_DIR          | ./.tracekit/spool      | where each run's per-process spool files go                |
| TRACEKIT_RUN_ID             | (new random id)        | join an existing run instead of starting one               |
| TRACEKIT_RUN_NAME           | script name            | human name of the run (`tracekit runs` accepts it)         |
| TRACEKIT_RUN_KIND           | service                | training, agents, service or campaign                      |
| TRACEKIT_NODE               | rank:$RANK / service:… | the node spans are blamed on unless a span names its own   |
| TRACEKIT_FLUSH_INTERVAL_MS  | 200                    | how often buffered records are written to the OS           |
| TRACEKIT_INGEST_AT_EXIT     | 1                      | the process that started a run ingests it when it exits    |
| TRACEKIT_RECORD             | (unset)                | set by `tracekit record`: capture starts in every process  |
| TRACEKIT_DISABLED           | (unset)                | 1 turns capture off entirely (decorators become no-ops)    |
| TRACEKIT_TORCH              | 1                      | under `record`, hook torch.distributed when it is imported |
| TRACEKIT_NATIVE             | 1                      | 0: record DDP buckets with the Python hook, not the C++ one |
| TRACEKIT_EXT_DIR            | ~/.cache/tracekit/ext  | where the native DDP hook is built and loaded from         |
| TRACEKIT_INJECT             | (unset)                | set by the campaign runner: this run's fault plan (JSON)   |
| TRACEKIT_JUDGE_URL          | (unset)                | OpenAI-compatible base URL of the model judge (`--judge`)  |
| TRACEKIT_JUDGE_MODEL        | (unset)                | the judge's model name (required with the URL)             |
| TRACEKIT_JUDGE_API_KEY      | (unset)                | the judge's API key, if the endpoint needs one             |
| TRACEKIT_JUDGE_TIMEOUT      | 30                     | seconds to wait for one judge reply                        |
| TRACEKIT_LOCK_TIMEOUT       | 30                     | seconds a writer waits for another writer's store lock     |
| TRACEKIT_JUDGE_BASE_URL     | (unset)                | OpenAI-compatible /v1 URL of the judge (else JUDGE_URL, OPENAI_BASE_URL) |
| TRACEKIT_INJECT_MODULES     | (unset)                | set by the campaign runner: modules whose functions are injection points (JSON) |
| TRACEKIT_SERVE_TOKEN        | (unset)                | `tracekit serve`: token exporters must send (required off loopback) |
| TRACEKIT_RUN_BY             | session.id,gen_ai.conversation.id,file | how OTLP spans are grouped into runs (attribute names, trace, file) |
| TRACEKIT_SPOOL_FORMAT       | arrow                  | spool encoding of spans, events, collectives, steps: arrow or json |
| TRACEKIT_NO_LEAN            | (unset)                | 1 keeps traced calls on the OpenTelemetry SDK path (no lean spans) |
| TRACEKIT_SEGMENT_MIN_ROWS   | 100000                 | spans a bulk load needs to be stored as Parquet segments (0: never) |
| TRACEKIT_SEGMENT_COMPRESSION| fast                   | segments: fast (random hex ids stored plain) or small (every column zstd) |
| TRACEKIT_FINDING            | (set by tracekit)      | `anomalies --follow --exec`: the finding (JSON) given to the command |
| TRACEKIT_FINDING_KIND       | (set by tracekit)      | `anomalies --follow --exec`: the finding's kind             |
| TRACEKIT_FINDING_SUBJECT    | (set by tracekit)      | `anomalies --follow --exec`: the finding's subject (e.g. rank:3) |
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tracekit.errors import ConfigError

DEFAULT_DB = "tracekit.duckdb"
DEFAULT_SPOOL_DIR = ".tracekit/spool"
RUN_KINDS = ("training", "agents", "service", "campaign")


def env_flag(name: str, default: bool) -> bool:
    """Read a boolean TRACEKIT_* variable (1/0, true/false, yes/no, on/off)."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean: use 1 or 0")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return value


def lock_timeout_s() -> int:
    """Seconds a store writer waits for another process's lock (TRACEKIT_LOCK_TIMEOUT, default 30; 0: fail at once)."""
    return env_int("TRACEKIT_LOCK_TIMEOUT", 30)


def segment_min_rows() -> int:
    """Spans a bulk load needs to be written as Parquet segments rather than inserted (0: never); see
    ``tracekit.store.segments``. Fewer, bigger segments keep reads fast."""
    return env_int("TRACEKIT_SEGMENT_MIN_ROWS", 100_000)


def segment_compression() -> str:
    """How span segments are compressed: ``fast`` (the default) stores random hex ids as they are and
    zstd-compresses the rest (structured ids too); ``small`` zstd-compresses every column. Zstd halves random
    hex ids (4 bits of entropy per 8-bit character) but costs a third of a segment write's CPU."""
    value = (os.environ.get("TRACEKIT_SEGMENT_COMPRESSION") or "fast").strip().lower()
    if value not in ("fast", "small"):
        raise ConfigError(f"TRACEKIT_SEGMENT_COMPRESSION={value!r} is not a segment compression: use fast or small")
    return value


def db_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The store path: the argument, else TRACEKIT_DB, else ./tracekit.duckdb."""
    return Path(explicit or os.environ.get("TRACEKIT_DB") or DEFAULT_DB)


def spool_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    return Path(explicit or os.environ.get("TRACEKIT_SPOOL_DIR") or DEFAULT_SPOOL_DIR).absolute()


def default_node() -> str:
    """`rank:N` inside a torch.distributed worker, else `service:<script name>`."""
    if node := os.environ.get("TRACEKIT_NODE"):
        return node
    if (rank := os.environ.get("RANK")) is not None and rank.isdigit():
        return f"rank:{rank}"
    return f"service:{script_name()}"


def script_name() -> str:
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "python"
    stem = Path(argv0).stem
    return stem if stem not in ("", "-c", "__main__") else "python"


@dataclass(frozen=True)
class Settings:
    """Resolved capture settings for one process."""

    run_name: str
    run_kind: str
    node: str
    spool_root: Path
    db: Path
    flush_interval_ms: int = 200
    ingest_at_exit: bool = True
    run_id: str | None = None
    attributes: dict[str, object] = field(default_factory=dict)

    @classmethod
    def resolve(
        cls,
        *,
        run: str | None = None,
        kind: str | None = None,
        node: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        db: str | os.PathLike[str] | None = None,
        flush_interval_ms: int | None = None,
        ingest_at_exit: bool | None = None,
        attributes: dict[str, object] | None = None,
    ) -> "Settings":
        """Arguments win over TRACEKIT_* variables, which win over defaults."""
        run_kind = kind or os.environ.get("TRACEKIT_RUN_KIND") or "service"
        if run_kind not in RUN_KINDS:
            raise ConfigError(f"run kind {run_kind!r} is not one of {', '.join(RUN_KINDS)}")
        interval = (
            flush_interval_ms
            if flush_interval_ms is not None
            else env_int("TRACEKIT_FLUSH_INTERVAL_MS", 200, minimum=1)
        )
        if interval < 1:
            raise ConfigError(f"flush interval {interval} ms must be at least 1 ms")
        return cls(
            run_name=os.environ.get("TRACEKIT_RUN_NAME") or run or script_name(),
            run_kind=run_kind,
            node=node or default_node(),
            spool_root=spool_root(spool_dir),
            db=db_path(db),
            flush_interval_ms=interval,
            ingest_at_exit=(
                ingest_at_exit
                if ingest_at_exit is not None
                else env_flag("TRACEKIT_INGEST_AT_EXIT", True)
            ),
            run_id=os.environ.get("TRACEKIT_RUN_ID") or None,
            attributes=dict(attributes or {}),
        )
