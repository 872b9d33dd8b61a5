"""Root-cause attribution over the information-dependency graph: rank the steps that caused a failure.

Method (GraphTracer's idea, made offline and explainable):

1. **Failure.** The last step with error status (an exception, a failed check), else the final step
   (the answer of a run that failed).
2. **Own error evidence** of every step, from what the step itself shows: exceptions and error
   status, tool errors, refusals and inability, empty output where one was expected, claims later
   contradicted or corrected (a later step that used this one says it is wrong, irrelevant, not
   progressing…), and — when the run knows its ground truth — a final answer that disagrees with it.
   A step that states the ground truth is evidence against it being the culprit.
3. **Reach.** How strongly each step's output reaches the failure: the best product of edge
   confidences along an IDG path (observed and declared edges count fully, inferred ones by their
   confidence).
4. **Root cause or symptom.** Walking the IDG in step order, a step with evidence whose input came
   (along a strong path) from an earlier step with evidence is *explained* by it: a symptom. The
   earliest unexplained step with evidence that reaches the failure is the root cause.

Scores: ``evidence × reach × (1 − explained) × earliness``, where earliness mildly prefers the
first of several comparable errors (root causes precede their symptoms). A `Judge` may add
evidence to the top candidates (offline by default; `HttpJudge` talks to any OpenAI-compatible
endpoint configured by environment variables).
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import networkx as nx

from tracekit.errors import ConfigError, TracekitError

__all__ = [
    "Candidate", "Judge", "JudgeVerdict", "HttpJudge", "judge_from_env", "attribute", "attribute_run",
    "step_evidence", "EVIDENCE_THRESHOLD",
]

EVIDENCE_THRESHOLD = 1.0  # a step with at least this much own evidence counts as erroneous
STRONG_PATH = 0.35  # a path at least this confident makes an earlier error explain a later one
EARLINESS = 0.5
ORIGIN_SPREAD = 0.7  # answer tokens found in more than this share of steps are too common to trace
BACKTRACE = 0.5
SAME_AGENT = True
SCAN_CHARS = 4000

_EXCEPTION = re.compile(
    r"(traceback \(most recent call last\)|\b[A-Z]\w*(?:Error|Exception)\b:|\berrno\b|"
    r"(?:status(?: code)?|error|http)\s*[:=]?\s*[45]\d\d\b|\b[45]\d\d\s+(?:not found|forbidden|error|bad request|"
    r"internal server|service unavailable|gateway)|timed out|segmentation fault)", re.I)
_TOOL_ERROR = re.compile(r"\b(error|failed|failure|not found|invalid|denied|forbidden|unreachable|crash(ed)?)\b", re.I)
_INABILITY = re.compile(
    r"\b(unable to|cannot|can ?not|can't|could not|couldn't|was not able|were not able|not able to|"
    r"i'?m sorry|i apologi[sz]e|no (relevant )?(results?|information|data|matches)|not available|"
    r"did not (find|return|provide|contain)|does not (contain|provide|include|mention)|"
    r"doesn't (contain|provide|include)|no mention|not (been )?provided|not specified|unavailable|"
    r"insufficient|unclear|uncertain|not sure)\b", re.I)
_NEGATIVE_JUDGMENT = re.compile(
    r"\b(incorrect|wrong|mistaken?|erroneous|inaccurate|not correct|not accurate|irrelevant|unrelated|"
    r"not relevant|no (forward )?progress|not (making|made) progress|stuck|in a loop|looping|repeated(ly)?|"
    r"contradict\w*|inconsistent|misinterpret\w*|misread|hallucinat\w*|fabricat\w*|not what|"
    r"has not (yet )?(been )?(found|provided|identified|located|obtained)|failed to|did not succeed|"
    r"unsuccessful|not successful|dead end|not helpful|unhelpful)\b", re.I)
_STRUCTURED = re.compile(r"\"(\w+)\"\s*:\s*\{[^{}]{0,600}?\"answer\"\s*:\s*(true|false)", re.I | re.S)
_NEGATION = re.compile(r"\b(not|no|never|isn't|aren't|wasn't|without|nor)\b[\w\s]{0,12}$")
_FINAL = re.compile(r"\b(final answer|the answer is|in conclusion|to summari[sz]e)\b", re.I)
_NO_OUTPUT = "produced no output (a dropped message?)"
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_WORDS = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")


@dataclass
class Candidate:
    """One ranked root-cause candidate."""

    span_id: str
    agent: str
    step: int
    score: float
    role: str  # root_cause, symptom or candidate
    evidence: list[str] = field(default_factory=list)
    path: list[int] = field(default_factory=list)  # steps from this one to the failure
    explained_by: int | None = None  # the earlier erroneous step that explains a symptom

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class JudgeVerdict:
    erroneous: bool
    confidence: float
    reason: str


class Judge(Protocol):
    """A model-based second opinion on whether one step is erroneous, given the failure it led to."""

    def judge(self, step: dict[str, Any], failure: dict[str, Any], context: dict[str, Any]) -> JudgeVerdict | None: ...


class HttpJudge:
    """A `Judge` over an OpenAI-compatible ``/chat/completions`` endpoint.

    Configured by ``TRACEKIT_JUDGE_URL`` (base URL, e.g. ``http://127.0.0.1:8000/v1``),
    ``TRACEKIT_JUDGE_MODEL``, ``TRACEKIT_JUDGE_API_KEY`` (optional) and ``TRACEKIT_JUDGE_TIMEOUT``
    (seconds, default 30). The model is asked for ``{"erroneous": bool, "confidence": 0..1,
    "reason": "..."}``; an unreachable endpoint or an unreadable reply raises TracekitError.
    """

    def __init__(self, url: str, model: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"TRACEKIT_JUDGE_URL={url!r} is not an http(s) URL")
        self.url = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout

    def judge(self, step: dict[str, Any], failure: dict[str, Any], context: dict[str, Any]) -> JudgeVerdict | None:
        prompt = (
            "A multi-agent run failed. Decide whether the step below contains an error that could have caused "
            "the failure. Reply with JSON only: {\"erroneous\": true|false, \"confidence\": 0..1, \"reason\": \"...\"}.\n"
            f"Task: {context.get('question') or '(unknown)'}\n"
            f"Step {step['step']} by {step['agent']}:\n{step['content'][:3000]}\n"
            f"Failure at step {failure['step']} by {failure['agent']}:\n{failure['content'][:1500]}\n"
        )
        body = json.dumps({"model": self.model, "temperature": 0,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read())
            text = reply["choices"][0]["message"]["content"]
            match = re.search(r"\{.*\}", text, re.S)
            verdict = json.loads(match.group(0) if match else text)
            return JudgeVerdict(bool(verdict.get("erroneous")), float(verdict.get("confidence", 0.5)),
                                str(verdict.get("reason", ""))[:500])
        except (urllib.error.URLError, OSError) as exc:
            raise TracekitError(f"the judge at {self.url} is unreachable: {exc}") from None
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise TracekitError(f"the judge at {self.url} sent a reply that is not a verdict: {exc}") from None


def judge_from_env() -> HttpJudge | None:
    """An `HttpJudge` if ``TRACEKIT_JUDGE_URL`` is set, else None (offline)."""
    url = os.environ.get("TRACEKIT_JUDGE_URL", "").strip()
    if not url:
        return None
    model = os.environ.get("TRACEKIT_JUDGE_MODEL", "").strip()
    if not model:
        raise ConfigError("TRACEKIT_JUDGE_URL is set but TRACEKIT_JUDGE_MODEL is not: name the judge's model")
    try:
        timeout = float(os.environ.get("TRACEKIT_JUDGE_TIMEOUT", "30"))
    except ValueError:
        raise ConfigError("TRACEKIT_JUDGE_TIMEOUT must be a number of seconds") from None
    return HttpJudge(url, model, os.environ.get("TRACEKIT_JUDGE_API_KEY") or None, timeout)


# ---------------------------------------------------------------------------------------------
# evidence


def _norm_words(text: str) -> list[str]:
    return _WORDS.findall(_THOUSANDS.sub("", text.lower()))


def _contains_answer(text: str, truth: str) -> bool:
    """Whether `text` states `truth` (all of its words, in order, as a contiguous phrase)."""
    t = _norm_words(truth)
    if not t:
        return False
    words = _norm_words(text)
    n = len(t)
    return any(words[i:i + n] == t for i in range(len(words) - n + 1))


def step_evidence(data: dict[str, Any], *, is_last: bool = False, ground_truth: str | None = None) -> tuple[float, list[str]]:
    """A step's own error evidence: (weight, reasons). Judgments of *other* steps are added separately.

    >>> step_evidence({"content": "I was unable to open the file.", "status": "ok",
    ...                "errors": [], "kind": "step"})[1]
    ['inability or refusal: "unable to"']
    """
    text = (data.get("content") or "")[:SCAN_CHARS]
    weight, reasons = 0.0, []
    if data.get("status") == "error" or data.get("errors"):
        first = (data.get("errors") or ["error status"])[0]
        weight += 3.0
        reasons.append(f"exception: {first[:160]}")
    if (m := _EXCEPTION.search(text)) is not None:
        weight += 1.0
        reasons.append(f"error report: \"{m.group(0)}\"")
    elif data.get("kind") in ("tool_result", "tool_call") and (m := _TOOL_ERROR.search(text)) is not None:
        weight += 1.0
        reasons.append(f"tool error: \"{m.group(0)}\"")
    if (m := _INABILITY.search(text)) is not None:
        weight += 1.0
        reasons.append(f"inability or refusal: \"{m.group(0)}\"")
    if not text.strip() and not data.get("errors") and data.get("kind") in ("step", "tool_result", "message"):
        weight += 1.5
        reasons.append(_NO_OUTPUT)
    if ground_truth:
        if _contains_answer(text, ground_truth):
            weight -= 1.0
            reasons.append("states the ground truth")
        elif (is_last and text.strip()) or _FINAL.search(text):
            weight += 1.0 if is_last else 0.5
            reasons.append("answer disagrees with the ground truth")
    return weight, reasons


def _judgment(text: str) -> str | None:
    """Whether a step judges what it received as wrong, and how it says so.

    Structured self-assessments (JSON with boolean answers about progress or loops) are read as
    such; free text is matched against negative-judgment phrases that are not negated.
    """
    text = text[:SCAN_CHARS]
    structured = _STRUCTURED.findall(text) if '"answer"' in text else []
    if structured:
        for key, value in structured:
            key = key.lower()
            if "progress" in key and value == "false":
                return "judged as making no progress"
            if "loop" in key and value == "true":
                return "judged as looping"
        return None
    for m in _NEGATIVE_JUDGMENT.finditer(text):
        before = text[max(0, m.start() - 24):m.start()].lower()
        if not _NEGATION.search(before):
            return f"\"{m.group(0)}\""
    return None


# ---------------------------------------------------------------------------------------------
# attribution


def _failure_node(g: nx.DiGraph, order: list[str]) -> str:
    errors = [n for n in order if g.nodes[n]["status"] == "error"]
    return errors[-1] if errors else order[-1]


_ANSWER = re.compile(r"final answer\s*[:：]\s*(.{1,300})", re.I)
_STOP = frozenset("the a an of to in on for and or is are was were be by with at from as that this it its "
                  "not no yes i we you they he she".split())


def _answer_tokens(text: str) -> list[str]:
    m = _ANSWER.search(text)
    answer = m.group(1).split("\n")[0] if m else text[-600:]
    return [w for w in _norm_words(answer) if w not in _STOP and (len(w) > 3 or (len(w) > 1 and any(ch.isdigit() for ch in w)))]


def _answer_origins(g: nx.DiGraph, order: list[str], fail: str, task: str | None,
                    question: str | None) -> dict[str, tuple[float, list[str]]]:
    """Which steps first stated what the failing answer says: {step: (share of the answer, tokens)}.

    Tokens of the task or question are given, not introduced; tokens found in more than a quarter of
    the steps are too common to trace.
    """
    given = set(_norm_words(question or "")) | (set(_norm_words(g.nodes[task]["content"])) if task else set())
    failing = g.nodes[fail]
    wanted = [t for t in dict.fromkeys(_answer_tokens(" ".join([failing["content"], *failing["errors"]])))
              if t not in given]
    if not wanted:
        return {}
    limit = max(3, int(len(order) * ORIGIN_SPREAD))
    first: dict[str, str] = {}
    count: dict[str, int] = {t: 0 for t in wanted}
    for n in order:
        if n == fail:
            break
        text = g.nodes[n]["content"][:SCAN_CHARS * 2]
        flat = text.lower().replace(",", "")
        if not any(t in flat for t in wanted):
            continue
        words = set(_norm_words(text))
        for t in wanted:
            if t in words:
                count[t] += 1
                first.setdefault(t, n)
    traced = [t for t in wanted if t in first and count[t] <= limit]
    numeric = [t for t in traced if any(ch.isdigit() for ch in t)]
    traced = numeric or traced  # figures are the most specific claims: trace them when there are any
    out: dict[str, tuple[float, list[str]]] = {}
    for t in traced:
        share, toks = out.get(first[t], (0.0, []))
        out[first[t]] = (share + 1.0 / len(traced), [*toks, t])
    return out


def _retried(g: nx.DiGraph, order: list[str]) -> list[tuple[str, str]]:
    """(failed step, later successful retry) pairs: same agent, same recorded input, no error later."""
    last_ok: dict[tuple[str, str], str] = {}
    found = []
    for n in reversed(order):
        d = g.nodes[n]
        if not d.get("input"):
            continue
        key = (d["agent"], d["input"])
        failed = d["status"] == "error" or bool(_EXCEPTION.search(d["content"][:SCAN_CHARS])) or \
            (d["kind"] == "tool_result" and bool(_TOOL_ERROR.search(d["content"][:SCAN_CHARS])))
        if failed and key in last_ok:
            found.append((n, last_ok[key]))
        elif not failed:
            last_ok[key] = n
    return found


def _find_dropped(g: nx.DiGraph, order: list[str], fail: str) -> list[tuple[str, str]]:
    """Steps whose output no later step received, while a later step reports missing information
    about what that output held: (lost message, complaining step) pairs, to link as "missing"."""
    complaints = [m for m in order if _INABILITY.search(g.nodes[m]["content"][:SCAN_CHARS])]
    found: list[tuple[str, str]] = []
    if not complaints:
        return found
    pos = {n: i for i, n in enumerate(order)}

    def words(n: str) -> set[str]:
        return {w for w in _norm_words(g.nodes[n]["content"][:SCAN_CHARS]) if len(w) >= 5 and w not in _STOP}

    said = {m: words(m) for m in complaints}
    last_complaint = pos[complaints[-1]]
    for i, n in enumerate(order[:last_complaint]):
        if n == fail or not g.nodes[n]["content"].strip():
            continue
        if any(g.edges[n, s]["relation"] != "context" for s in g.successors(n)):
            continue
        held = words(n)
        for m in complaints:
            if pos[m] > i and held & said[m]:
                found.append((n, m))
                break
    return found


def _answer_node(g: nx.DiGraph, order: list[str], fail: str) -> str:
    """The step holding the failing answer: the failure itself, or, when it says nothing (an empty
    closing turn), the last step before it that said something."""
    data = g.nodes[fail]
    if data["content"].strip() or data["errors"]:
        return fail
    before = order[: order.index(fail)]
    return next((n for n in reversed(before) if g.nodes[n]["content"].strip()), fail)


def _task_node(g: nx.DiGraph, order: list[str], question: str | None) -> str | None:
    """The step that states the task (the run's question, as the first step): a given, not a candidate."""
    first = order[0]
    if g.in_degree(first) == 0 and question:
        head = " ".join(_norm_words(question)[:40])
        if head and head in " ".join(_norm_words(g.nodes[first]["content"][:SCAN_CHARS])):
            return first
    return None


def attribute(
    g: nx.DiGraph, *, ground_truth: str | None = None, failure: str | None = None, judge: Judge | None = None,
    context: dict[str, Any] | None = None, top: int = 10, failed: bool | None = None,
) -> list[Candidate]:
    """Ranked root-cause candidates (best first) for the failure of the run whose IDG is `g`.

    ``failed=False`` (a run that ended well and has no step in error) returns no candidates.

    >>> from tracekit.graph.idg import Step, build_idg
    >>> steps = [Step("a", "Search", 0, "population of X is 9,999 (made up)"),
    ...          Step("b", "Writer", 1, "Report: X has 9,999 people"),
    ...          Step("c", "Checker", 2, "The report is wrong: the figure is incorrect", status="error")]
    >>> links = [{"src_span_id": "a", "dst_span_id": "b", "provenance": "observed", "confidence": 1.0},
    ...          {"src_span_id": "b", "dst_span_id": "c", "provenance": "observed", "confidence": 1.0}]
    >>> [(c.agent, c.role) for c in attribute(build_idg(steps, links))][:1]
    [('Writer', 'root_cause')]
    """
    if g.number_of_nodes() == 0:
        raise TracekitError("the run has no agent steps to attribute")
    order = sorted(g.nodes, key=lambda n: g.nodes[n]["step"])
    if failed is False and failure is None and not any(g.nodes[n]["status"] == "error" for n in order):
        return []
    pos = {n: i for i, n in enumerate(order)}
    fail = failure or _failure_node(g, order)
    last = _answer_node(g, order, fail)
    task = _task_node(g, order, (context or {}).get("question"))
    nodes = g.nodes
    ins: dict[str, list[tuple[str, dict[str, Any]]]] = {n: list(g.pred[n].items()) for n in order}
    outs: dict[str, list[tuple[str, dict[str, Any]]]] = {n: list(g.succ[n].items()) for n in order}
    weight: dict[str, float] = {}
    reasons: dict[str, list[str]] = {}
    for n in order:
        w, r = step_evidence(g.nodes[n], is_last=(n == last), ground_truth=ground_truth)
        if n == fail and n != last and r and r[-1] == _NO_OUTPUT:
            w, r = w - 1.5, r[:-1]  # an empty closing turn is where the failure shows, not a lost message
        weight[n], reasons[n] = (w, r) if n != task else (0.0, [])
    # a failed call that was retried with the same input and then succeeded was recovered from
    for n, later in _retried(g, order):
        if weight[n] > 0:
            weight[n] *= 0.3
            reasons[n].append(f"recovered: retried with the same input at step {nodes[later]['step']}, "
                              "which succeeded")
    # claims later contradicted or corrected: a step judging what it received blames its sources,
    # most of all the latest step of another agent among them
    for n in order:
        verdict = _judgment(g.nodes[n]["content"])
        if verdict is None:
            continue
        preds = [(p, d) for p, d in ins[n] if nodes[p]["agent"] != nodes[n]["agent"] and p != task]
        if not preds:
            continue
        preds.sort(key=lambda pd: pos[pd[0]], reverse=True)
        for rank, (p, d) in enumerate(preds[:2]):
            share = 1.0 if rank == 0 else 0.25 * d["confidence"]
            if share < 0.15:
                continue
            weight[p] += 1.5 * share
            reasons[p].append(f"later contradicted by step {g.nodes[n]['step']} ({g.nodes[n]['agent']}): {verdict}")
    # the failing answer's content: the step that first stated it introduced it
    for n, (share, toks) in _answer_origins(g, order, last, task, (context or {}).get("question")).items():
        if n == task or share < 0.2:
            continue
        weight[n] += 1.5 * min(1.0, share * 2)
        reasons[n].append("first stated what the failing answer repeats: " + ", ".join(toks[:6]))
    if not g.graph.get("inferred"):
        for n, m in _find_dropped(g, order, fail):
            edge = {"relation": "missing", "provenance": "inferred", "confidence": 0.6}
            outs[n].append((m, edge))  # local to this attribution: the caller's graph stays as built
            ins[m].append((n, edge))
            weight[n] += 1.5
            reasons[n].append(f"its output reached no later step, and step {nodes[m]['step']} "
                              f"reports it missing (a dropped message?)")
    # an error inherited through a strong edge points back at where its content came from, unless
    # a recorded edge shows an earlier step with evidence of its own feeding it (that one explains it)
    if BACKTRACE > 0:
        carried = {n: 0.0 for n in order}
        for n in reversed(order):
            total = max(weight[n], 0.0) + carried[n]
            if total < EVIDENCE_THRESHOLD:
                continue
            strong = [(p, d) for p, d in ins[n] if p != task and pos[p] < pos[n]
                      and d["relation"] != "context" and d["confidence"] >= STRONG_PATH]
            if any(weight[p] >= EVIDENCE_THRESHOLD and d["provenance"] != "inferred" for p, d in strong):
                continue
            preds = [(d["confidence"], pos[p], p) for p, d in strong
                     if not SAME_AGENT or nodes[p]["agent"] == nodes[n]["agent"]]
            if not preds:
                continue
            conf, _, p = max(preds)
            if conf < STRONG_PATH:
                continue
            carried[p] += BACKTRACE * conf * total
        for n in order:
            if carried[n] > 0.3:
                weight[n] += carried[n]
                reasons[n].append(f"its output was built on by later erroneous steps ({carried[n]:.2f})")
    # reach: best path confidence from each node to the failure (edges point forward in time)
    reach = {n: 0.0 for n in order}
    nxt: dict[str, str | None] = {n: None for n in order}
    reach[fail] = 1.0
    for n in reversed(order[: pos[fail]]):
        best, via = 0.0, None
        for s_, d in outs[n]:
            if pos[s_] <= pos[fail]:
                value = d["confidence"] * reach[s_]
                if value > best:
                    best, via = value, s_
        reach[n], nxt[n] = best, via
    # explained: how strongly an earlier erroneous step feeds this one
    explained = {n: 0.0 for n in order}
    explainer: dict[str, str | None] = {n: None for n in order}
    for n in order:
        best, who = 0.0, None
        for p, d in ins[n]:
            if pos[p] >= pos[n]:
                continue
            conf = d["confidence"]
            own = conf if weight[p] >= EVIDENCE_THRESHOLD else 0.0
            inherited = conf * explained[p]
            value, src = (own, p) if own >= inherited else (inherited, explainer[p])
            if value > best:
                best, who = value, src
        explained[n], explainer[n] = best, who
    count = len(order)
    found: list[Candidate] = []
    for n in order[: pos[fail] + 1]:
        if n == task or reach[n] <= 0.0 or weight[n] <= 0.0:
            continue
        is_error = weight[n] >= EVIDENCE_THRESHOLD
        symptom = is_error and explained[n] >= STRONG_PATH
        earliness = 1.0 - EARLINESS * pos[n] / count
        score = weight[n] * (0.4 + 0.6 * reach[n]) * (1.0 - 0.7 * explained[n] if symptom else 1.0) * earliness
        path, cur = [g.nodes[n]["step"]], n
        while cur != fail and nxt[cur] is not None and len(path) < 64:
            cur = nxt[cur]  # type: ignore[assignment]
            path.append(g.nodes[cur]["step"])
        found.append(Candidate(
            span_id=n, agent=g.nodes[n]["agent"], step=g.nodes[n]["step"], score=round(score, 4),
            role="symptom" if symptom else "candidate", evidence=reasons[n], path=path,
            explained_by=g.nodes[explainer[n]]["step"] if symptom and explainer[n] else None,
        ))
    # with recorded dependencies a symptom ranks below the step that explains it (inferred edges
    # are too uncertain to override a symptom's own evidence: there it is only marked)
    by_id = {c.span_id: c for c in found} if not g.graph.get("inferred") else {}
    for c in found:  # in step order: an explainer is settled before its symptoms
        source = by_id.get(explainer[c.span_id] or "") if c.role == "symptom" else None
        if source is not None and c.score >= source.score:
            c.score = round(source.score * 0.9, 4)
    if not found:  # no evidence anywhere: the failure itself is all we can name
        found.append(Candidate(fail, g.nodes[fail]["agent"], g.nodes[fail]["step"], 0.0, "candidate",
                               ["the failing step; no earlier step shows error evidence"], [g.nodes[fail]["step"]]))
    found.sort(key=lambda c: (-c.score, c.step))
    if judge is not None:
        _apply_judge(g, found[:5], fail, judge, context or {})
        found.sort(key=lambda c: (-c.score, c.step))
    for c in found:
        if c.role != "symptom":
            c.role = "root_cause"
            break
    return found[:top]


def _apply_judge(g: nx.DiGraph, candidates: Sequence[Candidate], fail: str, judge: Judge,
                 context: dict[str, Any]) -> None:
    failure = {"step": g.nodes[fail]["step"], "agent": g.nodes[fail]["agent"], "content": g.nodes[fail]["content"]}
    for c in candidates:
        d = g.nodes[c.span_id]
        verdict = judge.judge({"step": d["step"], "agent": d["agent"], "content": d["content"]}, failure, context)
        if verdict is None:
            continue
        factor = 1.0 + verdict.confidence if verdict.erroneous else max(0.1, 1.0 - verdict.confidence)
        c.score = round(c.score * factor, 4)
        c.evidence.append(f"judge: {'erroneous' if verdict.erroneous else 'fine'} "
                          f"({verdict.confidence:.2f}): {verdict.reason}")


def load_idg(con: Any, run: str, *, infer: bool | str = "auto") -> nx.DiGraph:
    """The IDG of a stored run (id, prefix or name): its steps and links (recorded by capture, or
    derived from GenAI/OpenInference span attributes at ingest); edges are inferred when none were
    recorded. ``g.graph`` holds the run row."""
    from tracekit.graph.idg import build_idg, steps_from_spans
    from tracekit.store.agents import run_links, run_spans
    from tracekit.store.queries import get_run, resolve_run

    run_row = get_run(con, resolve_run(con, run))
    spans = run_spans(con, run_row["run_id"])
    steps = steps_from_spans(spans)
    if not steps:
        raise TracekitError(f"run {run_row['name']!r} has no agent steps (record them with tracekit.agent_step, "
                            "tracekit.message, GenAI/OpenInference spans, or `tracekit import whowhen`)")
    g = build_idg(steps, run_links(con, run_row["run_id"]), infer=infer)  # type: ignore[arg-type]
    g.graph["run"] = run_row
    return g


def attribute_run(con: Any, run_id: str, *, judge: Judge | None = None, store: bool = True,
                  infer: bool | str = "auto", top: int = 10) -> list[Candidate]:
    """Attribute one stored run: build its IDG, rank candidates, store them as findings."""
    from tracekit.store.findings import write_findings

    g = load_idg(con, run_id, infer=infer)
    attrs = g.graph["run"]["attributes"]
    found = attribute(g, ground_truth=attrs.get("ground_truth") or None, judge=judge, context=attrs, top=top,
                      failed=g.graph["run"]["status"] in ("error", "aborted"))
    if store:
        write_findings(con, g.graph["run"]["run_id"], "attribution", [
            {"kind": c.role, "subject": f"agent:{c.agent}/step:{c.step}", "score": c.score,
             "confidence": None, "first_step": c.step, **c.to_dict()} for c in found
        ])
    return found


def attribute_runs(db: Any, run: str | None, *, judge: Judge | None = None, top: int = 10) -> list[dict[str, Any]]:
    """Attribute one run (`run`) or, with ``run=None``, every run of kind agents; findings are stored.
    Returns ``[{"run_id", "name", "candidates"}]``."""
    from tracekit.store.agents import agent_run_ids
    from tracekit.store.db import connect
    from tracekit.store.queries import get_run, resolve_run

    with connect(db, create=False) as con:
        ids = [resolve_run(con, run)] if run is not None else agent_run_ids(con)
        out = []
        for run_id in ids:
            out.append({"run_id": run_id, "name": get_run(con, run_id)["name"],
                        "candidates": attribute_run(con, run_id, judge=judge, top=top)})
    return out
