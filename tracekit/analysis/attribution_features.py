"""Per-step features of a failed run for attribution: position, role, step signals, text cues, IDG back-trace.

Everything here is general: it reads the information-dependency graph (IDG), the step signals an
importer or capture stored with each step (``role``, ``judgment``, ``verdict``, ``exit_code``,
``error``, ``final_answer``) and plain text. No log format's keys appear here; a new system is
supported by an importer that emits those signals.

The **back-trace** (GraphTracer's idea) starts at the failure — the last step in error, else the
step that states the final answer, else the last step — and follows dependency edges backwards to
the earliest step that shows error evidence of its own, was not corrected later, and whose
information reaches the failure; erroneous steps downstream of it are its symptoms. Weak
``context`` edges (every message sees the one before it) are not followed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

__all__ = ["FEATURES", "RunFeatures", "run_features", "SCAN_CHARS"]

SCAN_CHARS = 4000
TRACE_MIN_CONFIDENCE = 0.35  # an edge at least this confident carries information for the back-trace
ORIGIN_SPREAD = 0.7  # answer tokens found in more than this share of steps are too common to trace

# the feature vector of a step, in this order (AttributionParams holds one weight per name)
FEATURES = (
    "pos_rel",            # position in the run, 0 (first) .. 1 (last)
    "first_worker",       # the first step of a worker (not task, orchestrator, tool or verifier)
    "worker_rank",        # 1 / (1 + how many worker steps came before it), for worker steps
    "agent_first",        # the first step of its agent
    "role_orchestrator",  # role signals (worker is the reference)
    "role_tool",
    "role_verifier",
    "error_status",       # the step ended in error (exception, error status)
    "error_text",         # its text reports an error (traceback, XxxError:, HTTP 4xx/5xx, time-out)
    "inability",          # refusal, apology, "I cannot", "no results"
    "hedging",            # assumptions, placeholders, made-up or approximate data
    "empty",              # produced no output
    "authored_failed_exec",  # a tool/code execution that consumed its output failed (exit code != 0)
    "judged_negative",    # a later step judged what it received from this one: no progress, loop, fail, "wrong"
    "judged_progress",    # a later step judged it as progress
    "accepts",            # it accepts the result (verdict pass) in a run that failed
    "final_answer",       # it states the final answer
    "answer_origin",      # share of the failing answer's content it first introduced
    "states_truth",       # it states the known ground truth
    "dependents",         # how many later steps used its output (log-scaled, relative to the run's busiest)
    "corrected",          # its error was corrected later (a retry with the same input succeeded)
    "dropped",            # its output reached no later step while a later step reports it missing
    "backtrace_root",     # the back-trace from the failure over recorded edges ends here
    "backtrace_symptom",  # an erroneous step explained by an earlier one along recorded edges
    "off_path",           # recorded edges show its output never reaches the failure
    "inferred_root",      # the same three over edges inferred from content reuse (weaker, fitted apart)
    "inferred_symptom",
    "inferred_off_path",
)

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
    r"insufficient)\b", re.I)
_HEDGING = re.compile(
    r"\b(assum(e|ed|ing|ption)|hypothetical(ly)?|placeholder|for (the sake of )?(example|illustration)|"
    r"dummy|mock|made[- ]up|simulat(e|ed|ing)|approximately|roughly|estimat(e|ed)|probably|likely|"
    r"might be|may be|seems? to|appears? to|i (think|believe|guess)|not sure|unclear|uncertain)\b", re.I)
_NEGATIVE_JUDGMENT = re.compile(
    r"\b(incorrect|wrong|mistaken?|erroneous|inaccurate|not correct|not accurate|irrelevant|unrelated|"
    r"not relevant|no (forward )?progress|not (making|made) progress|stuck|in a loop|looping|"
    r"contradict\w*|inconsistent|misinterpret\w*|misread|hallucinat\w*|fabricat\w*|"
    r"failed to|did not succeed|unsuccessful|not successful|dead end|not helpful|unhelpful)\b", re.I)
_NEGATION = re.compile(r"\b(not|no|never|isn't|aren't|wasn't|without|nor)\b[\w\s]{0,12}$")
_FINAL = re.compile(r"\b(final answer|the answer is)\s*[:：]?\s*(.{1,300})", re.I)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_WORDS = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")
_STOP = frozenset("the a an of to in on for and or is are was were be by with at from as that this it its "
                  "not no yes i we you they he she".split())
_UNSIGNALLED_ROLE = "worker"


@dataclass
class RunFeatures:
    """The feature rows of one run's steps (step order), with the evidence that explains each feature."""

    order: list[str]  # span ids in step order
    candidates: list[int]  # positions in `order` that may be blamed (not the task, not after the failure)
    rows: list[dict[str, float]]  # one per step: feature name -> value (missing = 0)
    reasons: list[dict[str, str]]  # one per step: feature name -> human reason
    failure: int  # position of the failure
    root: int | None  # position where the back-trace ended
    explained_by: dict[int, int] = field(default_factory=dict)  # symptom position -> root-cause position
    path: dict[int, list[int]] = field(default_factory=dict)  # position -> positions on its way to the failure
    inferred: bool = False  # the IDG's edges were inferred from content reuse
    roles: list[str] = field(default_factory=list)  # each step's role: task, orchestrator, worker, tool, verifier


def _norm_words(text: str) -> list[str]:
    return _WORDS.findall(_THOUSANDS.sub("", text.lower()))


def _contains(text: str, phrase: str) -> bool:
    """Whether `text` states `phrase` (all of its words, in order, as a contiguous run)."""
    t = _norm_words(phrase)
    if not t:
        return False
    words = _norm_words(text)
    n = len(t)
    return any(words[i:i + n] == t for i in range(len(words) - n + 1))


def _role(d: dict[str, Any]) -> str:
    role = d.get("signals", {}).get("role")
    if role:
        return str(role)
    if d.get("kind") in ("tool_result", "tool_call") or str(d.get("agent", "")).startswith("tool:"):
        return "tool"
    return _UNSIGNALLED_ROLE


def _negative_judgment(d: dict[str, Any]) -> str | None:
    signals = d.get("signals", {})
    if signals.get("judgment") in ("no_progress", "loop"):
        return "judged as looping" if signals["judgment"] == "loop" else "judged as making no progress"
    if signals.get("verdict") == "fail":
        return "a verifier's verdict: fail"
    if signals.get("judgment") or signals.get("verdict"):
        return None  # a structured judgment was given and it was not negative
    text = d["content"][:SCAN_CHARS]
    for m in _NEGATIVE_JUDGMENT.finditer(text):
        if not _NEGATION.search(text[max(0, m.start() - 24):m.start()].lower()):
            return f"\"{m.group(0)}\""
    return None


def _answer_of(d: dict[str, Any]) -> str:
    signalled = d.get("signals", {}).get("final_answer")
    if signalled:
        return str(signalled)
    text = " ".join([d["content"], *d.get("errors", [])])
    m = _FINAL.search(text)
    return m.group(2).split("\n")[0] if m else text[-600:]


def _answer_tokens(text: str) -> list[str]:
    return [w for w in dict.fromkeys(_norm_words(text))
            if w not in _STOP and (len(w) > 3 or (len(w) > 1 and any(ch.isdigit() for ch in w)))]


def _answer_origins(g: nx.DiGraph, order: list[str], fail: int, given: set[str]) -> dict[int, tuple[float, list[str]]]:
    """Which steps first stated what the failing answer says: {position: (share of the answer, tokens)}."""
    wanted: list[str] = []
    for j in range(fail, -1, -1):  # a closing turn that says nothing new ("TERMINATE"): the answer is earlier
        wanted = [t for t in _answer_tokens(_answer_of(g.nodes[order[j]])) if t not in given]
        if wanted:
            fail = j
            break
    if not wanted:
        return {}
    limit = max(3, int(len(order) * ORIGIN_SPREAD))
    first: dict[str, int] = {}
    count = dict.fromkeys(wanted, 0)
    for i, n in enumerate(order[:fail]):
        text = g.nodes[n]["content"][:SCAN_CHARS * 2]
        flat = text.lower().replace(",", "")
        if not any(t in flat for t in wanted):
            continue
        words = set(_norm_words(text))
        for t in wanted:
            if t in words:
                count[t] += 1
                first.setdefault(t, i)
    traced = [t for t in wanted if t in first and count[t] <= limit]
    numeric = [t for t in traced if any(ch.isdigit() for ch in t)]
    traced = numeric or traced  # figures are the most specific claims: trace them when there are any
    out: dict[int, tuple[float, list[str]]] = {}
    for t in traced:
        share, toks = out.get(first[t], (0.0, []))
        out[first[t]] = (share + 1.0 / len(traced), [*toks, t])
    return out


def _failure(g: nx.DiGraph, order: list[str]) -> int:
    nodes = g.nodes
    for pick in (lambda d: d["status"] == "error" or bool(d.get("errors")),
                 lambda d: bool(d.get("signals", {}).get("final_answer"))):
        hits = [i for i, n in enumerate(order) if pick(nodes[n])]
        if hits:
            return hits[-1]
    nonempty = [i for i, n in enumerate(order) if nodes[n]["content"].strip()]
    return nonempty[-1] if nonempty else len(order) - 1


def _carries(d: dict[str, Any]) -> bool:
    return d["relation"] != "context" and d["confidence"] >= TRACE_MIN_CONFIDENCE


def run_features(g: nx.DiGraph, *, ground_truth: str | None = None, question: str | None = None,
                 failure: str | None = None) -> RunFeatures:
    """The feature rows of every step of the run whose IDG is `g` (see `FEATURES`)."""
    order = sorted(g.nodes, key=lambda n: g.nodes[n]["step"])
    pos = {n: i for i, n in enumerate(order)}
    nodes = g.nodes
    count = len(order)
    fail = pos[failure] if failure is not None else _failure(g, order)
    roles = [_role(nodes[n]) for n in order]
    rows: list[dict[str, float]] = [{} for _ in order]
    reasons: list[dict[str, str]] = [{} for _ in order]

    def mark(i: int, name: str, value: float, reason: str) -> None:
        if value > rows[i].get(name, 0.0):
            rows[i][name] = value
            reasons[i][name] = reason

    candidates = [i for i in range(fail + 1) if roles[i] != "task"]
    seen_agents: set[str] = set()
    first_worker = next((i for i in candidates if roles[i] == "worker"), None)
    for i in candidates:
        d = nodes[order[i]]
        row = rows[i]
        row["pos_rel"] = i / max(1, count - 1)
        if d["agent"] not in seen_agents:
            seen_agents.add(d["agent"])
            row["agent_first"] = 1.0
        if roles[i] in ("orchestrator", "tool", "verifier"):
            row["role_" + roles[i]] = 1.0
    if first_worker is not None:
        mark(first_worker, "first_worker", 1.0, "the first step of a worker agent")
    for r, i in enumerate(i for i in candidates if roles[i] == "worker"):
        rows[i]["worker_rank"] = 1.0 / (1 + r)

    # own evidence
    given = set(_norm_words(question or ""))
    given |= {w for i, r in enumerate(roles) if r == "task" for w in _norm_words(nodes[order[i]]["content"][:SCAN_CHARS])}
    errorish = [False] * count
    for i, n in enumerate(order):
        d = nodes[n]
        text = d["content"][:SCAN_CHARS]
        signals = d.get("signals", {})
        if (d["status"] == "error" or d.get("errors")) and i != fail:  # the failure's own status is the observation
            mark(i, "error_status", 1.0, "exception: " + str((d.get("errors") or ["error status"])[0])[:160])
        exit_code = signals.get("exit_code")
        if isinstance(exit_code, int) and exit_code != 0:
            mark(i, "error_text", 1.0, f"execution failed (exit code {exit_code}): {str(signals.get('error', ''))[:120]}")
        elif (m := _EXCEPTION.search(text)) is not None:
            mark(i, "error_text", 1.0, f"error report: \"{m.group(0)}\"")
        elif roles[i] == "tool" and (m := _TOOL_ERROR.search(text)) is not None:
            mark(i, "error_text", 1.0, f"tool error: \"{m.group(0)}\"")
        if (m := _INABILITY.search(text)) is not None:
            mark(i, "inability", 1.0, f"inability or refusal: \"{m.group(0)}\"")
        if (m := _HEDGING.search(text)) is not None:
            mark(i, "hedging", 1.0, f"hedged or assumed content: \"{m.group(0)}\"")
        if not text.strip() and not d.get("errors") and i != fail:
            mark(i, "empty", 1.0, "produced no output (a dropped message?)")
        if signals.get("verdict") == "pass":
            mark(i, "accepts", 1.0, "accepted the result, yet the run failed")
        if signals.get("final_answer"):
            mark(i, "final_answer", 1.0, f"states the final answer: {str(signals['final_answer'])[:80]}")
        if ground_truth and roles[i] != "task" and _contains(text, ground_truth):
            mark(i, "states_truth", 1.0, "states the ground truth")
        errorish[i] = any(rows[i].get(k) for k in ("error_status", "error_text", "inability", "empty"))

    ins = {n: [(p, e) for p, e in g.pred[n].items() if pos[p] < pos[n]] for n in order}

    def source_of(i: int, *, skip_tools: bool = False) -> int | None:
        """The step whose output step i judged or executed: its latest predecessor of another agent."""
        n = order[i]
        preds = [pos[p] for p, _e in ins[n] if nodes[p]["agent"] != nodes[n]["agent"] and roles[pos[p]] != "task"
                 and not (skip_tools and roles[pos[p]] == "tool")]
        return max(preds) if preds else None

    for i, n in enumerate(order[: fail + 1]):
        d = nodes[n]
        signals = d.get("signals", {})
        exit_code = signals.get("exit_code")
        if isinstance(exit_code, int) and exit_code != 0 and (src := source_of(i, skip_tools=True)) is not None:
            mark(src, "authored_failed_exec", 1.0, f"the execution of its output failed at step {d['step']} "
                 f"(exit code {exit_code})")
        # the failure's own verdict is the observation, not evidence against the step it judged
        verdict = _negative_judgment(d) if roles[i] != "task" and i != fail else None
        if verdict is not None and (src := source_of(i)) is not None:
            mark(src, "judged_negative", 1.0, f"later judged by step {d['step']} ({d['agent']}): {verdict}")
        elif signals.get("judgment") == "progress" and (src := source_of(i)) is not None:
            mark(src, "judged_progress", 1.0, f"step {d['step']} judged it as progress")

    # dependents: later steps that used the output (information out-degree)
    outs = [sum(1 for s, e in g.succ[n].items() if pos[s] > i and _carries(e)) for i, n in enumerate(order)]
    busiest = max(outs) if outs else 0
    if busiest:
        import math

        for i in candidates:
            if outs[i]:
                rows[i]["dependents"] = math.log1p(outs[i]) / math.log1p(busiest)

    # the failing answer's content: the step that first stated it introduced it
    for i, (share, toks) in _answer_origins(g, order, fail, given).items():
        # the step that states the answer introduces it only when no earlier step did: that says nothing new
        if roles[i] != "task" and share >= 0.2 and i != fail and not rows[i].get("final_answer"):
            mark(i, "answer_origin", min(1.0, share * 2), "first stated what the failing answer repeats: "
                 + ", ".join(toks[:6]))

    # corrected: a failed step retried with the same input by the same agent, and the retry succeeded
    last_ok: dict[tuple[str, str], int] = {}
    for i in reversed(range(fail + 1)):
        d = nodes[order[i]]
        if not d.get("input"):
            continue
        key = (d["agent"], d["input"])
        if errorish[i] and key in last_ok:
            mark(i, "corrected", 1.0, f"recovered: retried with the same input at step "
                 f"{nodes[order[last_ok[key]]]['step']}, which succeeded")
        elif not errorish[i]:
            last_ok[key] = i

    inferred = bool(g.graph.get("inferred"))
    missing = _mark_dropped(g, order, fail, mark, rows) if not inferred else {}
    evidence = [(errorish[i] or any(rows[i].get(k) for k in ("authored_failed_exec", "judged_negative",
                                                            "answer_origin", "dropped", "accepts")))
                and not rows[i].get("corrected") and roles[i] != "task" for i in range(count)]
    root, explained_by, path = _backtrace(g, order, pos, fail, evidence, missing)
    how, prefix = ("inferred content-reuse edges", "inferred_") if inferred else ("recorded dependency edges", "")
    if root is not None:
        mark(root, prefix + ("root" if inferred else "backtrace_root"), 1.0, f"back-trace from the failure at step "
             f"{nodes[order[fail]]['step']} over {how} ends here")
    for i, src in explained_by.items():
        mark(i, prefix + ("symptom" if inferred else "backtrace_symptom"), 1.0, f"a symptom: its input came from "
             f"the erroneous step {nodes[order[src]]['step']} ({how})")
    for i in candidates:
        if i not in path:
            mark(i, prefix + "off_path", 1.0, f"its output does not reach the failure ({how})")
    return RunFeatures(order, candidates, rows, reasons, fail, root, explained_by, path, inferred, roles)


def _mark_dropped(g: nx.DiGraph, order: list[str], fail: int, mark: Any,
                  rows: list[dict[str, float]]) -> dict[int, list[int]]:
    """Steps whose output no later step received while a later step reports missing information they
    held: marked ``dropped``; returns the inferred ``missing`` edges as {complaining step: [lost steps]}."""
    nodes = g.nodes
    complaints = [i for i in range(fail + 1) if rows[i].get("inability")]
    missing: dict[int, list[int]] = {}
    if not complaints:
        return missing

    def words(i: int) -> set[str]:
        return {w for w in _norm_words(nodes[order[i]]["content"][:SCAN_CHARS]) if len(w) >= 5 and w not in _STOP}

    said = {m: words(m) for m in complaints}
    for i in range(complaints[-1]):
        n = order[i]
        if i == fail or not nodes[n]["content"].strip():
            continue
        if any(g.edges[n, s]["relation"] != "context" for s in g.successors(n)):
            continue
        held = words(i)
        for m in complaints:
            if m > i and held & said[m]:
                mark(i, "dropped", 1.0, f"its output reached no later step, and step {nodes[order[m]]['step']} "
                     "reports it missing (a dropped message?)")
                missing.setdefault(m, []).append(i)
                break
    return missing


def _backtrace(g: nx.DiGraph, order: list[str], pos: dict[str, int], fail: int, evidence: list[bool],
               missing: dict[int, list[int]]) -> tuple[int | None, dict[int, int], dict[int, list[int]]]:
    """(root position, {symptom: its root}, {position: path to the failure}) over information-carrying
    edges, plus the inferred `missing` edges from lost messages to the steps that reported them missing."""
    nodes = g.nodes

    def carriers(i: int) -> list[int]:
        found = [pos[p] for p, e in g.pred[order[i]].items() if pos[p] < i and _carries(e)]
        return found + missing.get(i, [])

    # explained: the earliest erroneous step feeding each step along carrying edges (one forward pass)
    source: list[int | None] = [None] * len(order)
    for i in range(fail + 1):
        best: int | None = None
        for j in carriers(i):
            origin = source[j] if source[j] is not None else (j if evidence[j] else None)
            if origin is not None and (best is None or origin < best):
                best = origin
        source[i] = best
    explained = {i: source[i] for i in range(fail + 1) if evidence[i] and source[i] is not None}
    # the back-trace: the failure's carrying ancestors, earliest erroneous one first
    seen, stack, nxt = {fail}, [fail], {fail: fail}
    while stack:
        i = stack.pop()
        for j in carriers(i):
            if j not in seen:
                seen.add(j)
                nxt[j] = i
                stack.append(j)
    upstream = sorted(j for j in seen if evidence[j])
    root = upstream[0] if upstream else (fail if evidence[fail] else None)
    paths: dict[int, list[int]] = {}
    for j in seen:
        walk, cur = [nodes[order[j]]["step"]], j
        while cur != fail and len(walk) < 64:
            cur = nxt[cur]
            walk.append(nodes[order[cur]]["step"])
        paths[j] = walk
    symptoms = {i: s for i, s in explained.items() if s is not None}
    if root is not None and root != fail:
        symptoms.setdefault(fail, root)  # where the failure surfaced is a symptom of the root cause
    return root, symptoms, paths
