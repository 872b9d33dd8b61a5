"""Who&When importer: each failed multi-agent log becomes one run of kind "agents", each history entry a step span.

The benchmark (ICML 2025) labels each log with the responsible agent (``mistake_agent``) and the
decisive step (``mistake_step``, a 0-based index into ``history``). The agent of an entry is its
``role`` in the Hand-Crafted (Magentic-One) logs — ``"Orchestrator (thought)"`` is agent
``Orchestrator`` — and its ``name`` in the Algorithm-Generated ones. The question, the ground truth
and the labels are kept on the run's attributes. A pure parser: it reads files and touches no store
(``tracekit.ingest.whowhen`` loads what it returns; importing the same file again replaces its run).

What the format's conventions say about a step becomes general step signals (``tracekit.conventions``
``SIGNAL_*``), so the attribution method never reads a format's keys: the human/task message (and a
first entry that is only the question restated) is role ``task``; Magentic-One's ``Orchestrator (...)`` entries
are role ``orchestrator`` and its ledger's ``is_progress_being_made`` / ``is_in_loop`` answers become
a ``judgment`` (progress, no_progress, loop) while ``is_request_satisfied`` / "Request satisfied"
become a ``verdict`` pass; a terminal's ``exitcode: N`` output is role ``tool`` with ``exit_code``
and ``error``; "FINAL ANSWER: X" is ``final_answer``. ("TERMINATE" only ends a conversation: it is
no verdict.)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from tracekit.conventions import (
    AGENT, CONTENT, ROLE, SIGNAL_ERROR, SIGNAL_EXIT_CODE, SIGNAL_FINAL_ANSWER, SIGNAL_JUDGMENT, SIGNAL_ROLE,
    SIGNAL_VERDICT, STEP, STEP_KIND,
)
from tracekit.errors import TracekitError

__all__ = ["load_log", "log_files", "agent_of", "step_signals"]

BASE_NS = 1_700_000_000 * 10**9  # logs carry no times: steps are placed 1 ms apart from here
STEP_NS = 1_000_000
_QUALIFIER = re.compile(r"\s*\([^)]*\)\s*$")
_LEDGER = re.compile(r'"(is_progress_being_made|is_in_loop|is_request_satisfied)"\s*:\s*\{[^{}]{0,2000}?'
                     r'"answer"\s*:\s*(true|false)', re.S)
_EXITCODE = re.compile(r"^\s*exitcode:\s*(-?\d+)", re.I)
_ERROR_LINE = re.compile(r"^\s*(\w*(?:Error|Exception)\b.*|.*\b(?:error|failed)\b.*)$", re.M | re.I)
_FINAL = re.compile(r"FINAL ANSWER\s*[:：]\s*(.{1,300})")
_TERMINAL = re.compile(r"terminal|executor|code_?runner", re.I)
_WORDS = re.compile(r"[a-z0-9]+")


def agent_of(entry: dict[str, Any]) -> str:
    """The agent of one history entry: ``name`` if present, else ``role`` without its ``(...)`` qualifier."""
    name = entry.get("name")
    if isinstance(name, str) and name.strip():
        return name.strip()
    role = str(entry.get("role") or "unknown").strip()
    return _QUALIFIER.sub("", role) or role


def _only_restates(content: str, question: str) -> bool:
    """Whether a message is the question and little else (its first 30 words in order, few words added).

    An agent's message that restates the question and goes on with a plan or an answer of its own is
    a step like any other: what it adds may be the mistake.
    """
    asked = _WORDS.findall(question.lower())
    said = _WORDS.findall(content[:20000].lower())
    head = " ".join(asked[:30])
    return bool(head) and head in " ".join(said) and len(said) <= len(asked) + max(15, len(asked) // 5)


def _from_a_person(role: str, name: str) -> bool:
    """Whether an entry was written by the person asking (a human/user role with no agent name)."""
    return role.lower() == "human" or (role.lower() == "user" and not name)


def step_signals(entry: dict[str, Any], index: int, question: str = "") -> dict[str, Any]:
    """General step signals (``SIGNAL_*`` attribute -> value) of one history entry.

    >>> step_signals({"role": "Orchestrator (thought)",
    ...               "content": '{"is_in_loop": {"reason": "same query", "answer": true}}'}, 5)
    {'tracekit.agent.signal.role': 'orchestrator', 'tracekit.agent.signal.judgment': 'loop'}
    >>> step_signals({"name": "Computer_terminal", "role": "user",
    ...               "content": "exitcode: 1 (execution failed)\\nCode output: NameError: x"}, 2)[SIGNAL_EXIT_CODE]
    1
    """
    role = str(entry.get("role") or "")
    name = str(entry.get("name") or "")
    content = str(entry.get("content") or "")
    signals: dict[str, Any] = {}
    exit_code = _EXITCODE.match(content)
    if _from_a_person(role, name) or (index == 0 and question and _only_restates(content, question)):
        signals[SIGNAL_ROLE] = "task"
    elif role.startswith("Orchestrator"):
        signals[SIGNAL_ROLE] = "orchestrator"
    elif exit_code or _TERMINAL.search(name or role):
        signals[SIGNAL_ROLE] = "tool"
    else:
        signals[SIGNAL_ROLE] = "worker"
    if exit_code:
        signals[SIGNAL_EXIT_CODE] = int(exit_code.group(1))
        if signals[SIGNAL_EXIT_CODE] != 0:
            found = _ERROR_LINE.findall(content[exit_code.end():])
            signals[SIGNAL_ERROR] = (found[-1] if found else "execution failed").strip()[:300]
    ledger = {key: value == "true" for key, value in _LEDGER.findall(content[:20000])}
    if ledger.get("is_in_loop"):
        signals[SIGNAL_JUDGMENT] = "loop"
    elif ledger.get("is_progress_being_made") is False:
        signals[SIGNAL_JUDGMENT] = "no_progress"
    elif ledger.get("is_progress_being_made"):
        signals[SIGNAL_JUDGMENT] = "progress"
    if ledger.get("is_request_satisfied") or content.strip().lower().startswith("request satisfied"):
        signals[SIGNAL_VERDICT] = "pass"
    if (final := _FINAL.search(content)) is not None:
        signals[SIGNAL_FINAL_ANSWER] = final.group(1).split("\n")[0].strip()
    return signals


def _hex(text: str, n: int) -> str:
    return hashlib.blake2b(text.encode(), digest_size=n // 2).hexdigest()


def load_log(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One log file -> (run row, step span records). Raises TracekitError for a file that is not a log."""
    path = Path(path)
    try:
        log = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TracekitError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(log, dict) or not isinstance(log.get("history"), list):
        raise TracekitError(f"{path}: not a Who&When log (no 'history' list)")
    history = [h for h in log["history"] if isinstance(h, dict)]
    subset = path.parent.name
    key = f"whowhen:{subset}:{path.stem}:{log.get('question_ID', '')}"
    run_id = _hex(key, 32)
    trace_id = run_id
    spans = []
    question = str(log.get("question") or "")
    for i, entry in enumerate(history):
        agent = agent_of(entry)
        attrs = {
            AGENT: agent, STEP: i, STEP_KIND: "message",
            ROLE: str(entry.get("role") or ""), CONTENT: str(entry.get("content") or ""),
            **step_signals(entry, i, question),
        }
        spans.append({
            "trace_id": trace_id, "span_id": _hex(f"{key}:{i}", 16), "parent_id": None,
            "name": f"step {i}: {entry.get('role') or agent}", "node": f"agent:{agent}", "kind": "internal",
            "start_ns": BASE_NS + i * STEP_NS, "end_ns": BASE_NS + (i + 1) * STEP_NS - 1,
            "status": "unset", "status_message": None, "attributes": json.dumps(attrs, ensure_ascii=False),
        })
    attributes = {k: v for k, v in log.items() if k != "history" and isinstance(v, (str, int, float, bool))}
    attributes["source"] = "whowhen"
    attributes["subset"] = subset
    attributes["file"] = path.name
    if str(log.get("mistake_step", "")).strip().lstrip("-").isdigit():
        attributes["mistake_step"] = int(str(log["mistake_step"]).strip())
    run = {
        "run_id": run_id, "kind": "agents", "name": f"whowhen-{subset}-{path.stem}",
        "started_ns": BASE_NS, "ended_ns": BASE_NS + len(history) * STEP_NS, "status": "error",
        "attributes": attributes,
    }
    return run, spans


def log_files(directory: str | os.PathLike[str]) -> list[Path]:
    root = Path(directory)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise TracekitError(f"{root} does not exist: give a Who&When directory (e.g. Hand-Crafted) or a log file")
    files = sorted(root.rglob("*.json"), key=lambda p: (len(p.stem), p.stem))
    if not files:
        raise TracekitError(f"{root} holds no .json logs")
    return files
