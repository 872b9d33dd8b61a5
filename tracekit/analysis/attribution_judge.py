"""An optional model judge for attribution: any OpenAI-compatible chat-completions endpoint, via the `openai` package.

The judge sees only the graph-restricted context of the top candidates — the task, the failure,
each candidate step and the steps it depends on (its IDG predecessors) — never the whole log. It
answers one structured JSON verdict per candidate (``{"verdicts": [{"step", "erroneous",
"confidence", "reason"}]}``); the verdict multiplies the candidate's score by
``exp(±judge_weight × confidence)``. Configuration (`judge_from_env`): ``TRACEKIT_JUDGE_BASE_URL``
(or ``TRACEKIT_JUDGE_URL``, else ``OPENAI_BASE_URL``), ``TRACEKIT_JUDGE_MODEL`` (else
``OPENAI_MODEL``), ``TRACEKIT_JUDGE_API_KEY`` (else ``OPENAI_API_KEY``), ``TRACEKIT_JUDGE_TIMEOUT``
(seconds, default 30). Local servers (vLLM, Ollama, llama.cpp) work the same. Time-outs and rate
limits (429) are retried by the client with back-off, then reported as one clear error; a reply that
is not a verdict is asked for once more, then ignored (the offline ranking stands, and says so).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import networkx as nx

from tracekit.errors import ConfigError, TracekitError

__all__ = ["Judge", "JudgeVerdict", "OpenAIJudge", "judge_from_env", "apply_judge", "judge_context"]

TOP_CANDIDATES = 3
STEP_CHARS = 1500
DEPENDENCY_CHARS = 600
MAX_DEPENDENCIES = 3

_SYSTEM = ("You audit failed multi-agent runs. Given the failure and a few candidate steps with the steps they "
           "depended on, decide for each candidate whether it contains the decisive error that caused the failure. "
           "Reply with JSON only: {\"verdicts\": [{\"step\": <int>, \"erroneous\": true|false, "
           "\"confidence\": <0..1>, \"reason\": \"<one sentence>\"}]}")


@dataclass(frozen=True)
class JudgeVerdict:
    """A model's verdict on one step."""

    step: int
    erroneous: bool
    confidence: float
    reason: str


class Judge(Protocol):
    """A second opinion on candidate steps, given their graph-restricted context."""

    def verdicts(self, context: dict[str, Any]) -> list[JudgeVerdict] | None: ...


def judge_context(g: nx.DiGraph, failure: str, candidates: Sequence[str], question: str | None) -> dict[str, Any]:
    """What the judge is shown: the task, the failure, each candidate and the steps it depends on."""
    def brief(n: str, limit: int) -> dict[str, Any]:
        d = g.nodes[n]
        return {"step": d["step"], "agent": d["agent"], "content": d["content"][:limit]}

    out = []
    for n in candidates:
        preds = sorted(g.pred[n].items(), key=lambda pe: -pe[1]["confidence"])
        deps = [p for p, e in preds if e["relation"] != "context"][:MAX_DEPENDENCIES] or [p for p, _e in preds][:1]
        out.append({**brief(n, STEP_CHARS), "depends_on": [brief(p, DEPENDENCY_CHARS) for p in deps]})
    return {"task": (question or "")[:2000], "failure": brief(failure, STEP_CHARS), "candidates": out}


def parse_verdicts(text: str) -> list[JudgeVerdict]:
    """The verdicts in a reply (JSON, possibly wrapped in prose or a code fence); ValueError if none.

    >>> parse_verdicts('ok: {"verdicts": [{"step": 3, "erroneous": true, "confidence": 0.8, "reason": "x"}]}')
    [JudgeVerdict(step=3, erroneous=True, confidence=0.8, reason='x')]
    """
    match = re.search(r"\{.*\}", text, re.S)
    data = json.loads(match.group(0) if match else text)
    items = data.get("verdicts") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise ValueError("no 'verdicts' list")
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("step"), int) \
                or not isinstance(item.get("erroneous"), bool):
            raise ValueError(f"not a verdict: {item!r}"[:200])
        conf = float(item.get("confidence", 0.5))
        out.append(JudgeVerdict(item["step"], item["erroneous"], min(1.0, max(0.0, conf)),
                                str(item.get("reason", ""))[:300]))
    return out


class OpenAIJudge:
    """A `Judge` over an OpenAI-compatible chat-completions endpoint (the `openai` client)."""

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = 30.0, max_retries: int = 2) -> None:
        try:
            from openai import OpenAI
        except ModuleNotFoundError:
            raise TracekitError("--judge needs the openai package: pip install 'tracekit[judge]'") from None
        if base_url is not None and not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"the judge's base URL {base_url!r} is not an http(s) URL")
        self.model = model
        self.base_url = base_url or "https://api.openai.com/v1"
        self.client = OpenAI(base_url=base_url, api_key=api_key or "unused", timeout=timeout, max_retries=max_retries)

    def verdicts(self, context: dict[str, Any]) -> list[JudgeVerdict] | None:
        import openai

        messages = [{"role": "system", "content": _SYSTEM},
                    {"role": "user", "content": json.dumps(context, ensure_ascii=False)}]
        for attempt in range(2):
            try:
                reply = self.client.chat.completions.create(model=self.model, messages=messages, temperature=0)
            except openai.RateLimitError:
                raise TracekitError(f"the judge at {self.base_url} is rate-limiting (HTTP 429) after retries; "
                                    "try again later") from None
            except openai.APITimeoutError:
                raise TracekitError(f"the judge at {self.base_url} timed out "
                                    "(raise TRACEKIT_JUDGE_TIMEOUT)") from None
            except openai.APIConnectionError as exc:
                raise TracekitError(f"the judge at {self.base_url} is unreachable: {exc}") from None
            except openai.APIStatusError as exc:
                raise TracekitError(f"the judge at {self.base_url} answered HTTP {exc.status_code}: "
                                    f"{str(exc.message)[:200]}") from None
            text = (reply.choices[0].message.content or "") if reply.choices else ""
            try:
                return parse_verdicts(text)
            except (ValueError, TypeError):
                if attempt == 0:
                    messages = [*messages, {"role": "assistant", "content": text[:2000]},
                                {"role": "user", "content": "That was not the JSON asked for. Reply with the JSON only."}]
        return None


def judge_from_env() -> OpenAIJudge:
    """The judge the environment configures; ConfigError naming the variables when none is."""
    env = os.environ
    base_url = (env.get("TRACEKIT_JUDGE_BASE_URL") or env.get("TRACEKIT_JUDGE_URL")
                or env.get("OPENAI_BASE_URL") or "").strip() or None
    api_key = (env.get("TRACEKIT_JUDGE_API_KEY") or env.get("OPENAI_API_KEY") or "").strip() or None
    model = (env.get("TRACEKIT_JUDGE_MODEL") or env.get("OPENAI_MODEL") or "").strip()
    if base_url is None and api_key is None:
        raise ConfigError("no judge configured: set TRACEKIT_JUDGE_BASE_URL (an OpenAI-compatible /v1 URL) "
                          "or OPENAI_API_KEY, and TRACEKIT_JUDGE_MODEL")
    if not model:
        raise ConfigError("name the judge's model: set TRACEKIT_JUDGE_MODEL (or OPENAI_MODEL)")
    try:
        timeout = float(env.get("TRACEKIT_JUDGE_TIMEOUT", "30"))
    except ValueError:
        raise ConfigError("TRACEKIT_JUDGE_TIMEOUT must be a number of seconds") from None
    return OpenAIJudge(model, base_url=base_url, api_key=api_key, timeout=timeout)


def apply_judge(g: nx.DiGraph, feats: Any, found: list[Any], judge: Judge, context: dict[str, Any],
                weight: float = 1.0) -> None:
    """Ask `judge` about the top candidates and fold its verdicts into their scores (in place)."""
    top = found[:TOP_CANDIDATES]
    shown = judge_context(g, feats.order[feats.failure], [c.span_id for c in top], context.get("question"))
    verdicts = judge.verdicts(shown)
    if verdicts is None:
        for c in top:
            c.evidence.append("judge: no readable verdict; the offline ranking stands")
        return
    by_step = {v.step: v for v in verdicts}
    for c in top:
        v = by_step.get(c.step)
        if v is None:
            continue
        c.score = round(c.score * math.exp((1 if v.erroneous else -1) * weight * v.confidence), 4)
        c.evidence.append(f"judge: {'erroneous' if v.erroneous else 'fine'} ({v.confidence:.2f}): {v.reason}")
