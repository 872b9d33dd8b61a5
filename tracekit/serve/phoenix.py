"""Findings back out to Phoenix: root-cause and symptom labels posted as span annotations (REST ``/v1/span_annotations``).

Phoenix keeps OpenTelemetry span ids, so a run whose app already exports to Phoenix gets its
labels on the very spans the team looks at. When Phoenix does not hold the run's spans (it answers
404), they are sent first as OTLP/HTTP (``/v1/traces``, with one span per finding, as
``export --format otlp`` writes them) and the annotations follow once Phoenix has stored them.
`annotations` is pure; `post_run_to_phoenix` reads the store and talks HTTP.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

from tracekit.errors import TracekitError
from tracekit.serve.otlp_out import blamed_span_ids, post_otlp, run_request

__all__ = ["LABELLED_KINDS", "ANNOTATION_NAME", "annotations", "post_run_to_phoenix"]

LABELLED_KINDS = ("root_cause", "symptom")  # the findings that become labels
ANNOTATION_NAME = "tracekit"  # one annotation per span: its label is the role, re-posting updates it


def annotations(run: dict[str, Any], spans: list[dict[str, Any]], findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Phoenix span annotations for the root-cause and symptom findings: label = the role, score, an
    explanation naming agent, step and evidence; one per blamed span, the best-ranked finding winning.

    >>> a = annotations({"run_id": "r1"}, [{"span_id": "ab" * 8, "node": "agent:Coder"}],
    ...                 [{"kind": "root_cause", "subject": "agent:Coder/step:3", "span_id": "ab" * 8, "score": 0.8,
    ...                   "agent": "Coder", "step": 3, "evidence": ["wrong constant"]}])
    >>> a[0]["result"]["label"], a[0]["span_id"], a[0]["result"]["explanation"]
    ('root_cause', 'abababababababab', 'root cause: agent Coder, step 3 (wrong constant)')
    """
    out: dict[str, dict[str, Any]] = {}
    known = {s["span_id"] for s in spans}
    for rank, finding in enumerate(findings, start=1):
        kind = str(finding.get("kind") or "")
        if kind not in LABELLED_KINDS:
            continue
        who = (f"agent {finding['agent']}, step {finding['step']}" if finding.get("agent") is not None
               else str(finding.get("subject") or ""))
        evidence = "; ".join(str(e) for e in finding.get("evidence") or [])[:400]
        explanation = f"{kind.replace('_', ' ')}: {who}" + (f" ({evidence})" if evidence else "")
        score = finding.get("score")
        for span_id in blamed_span_ids(finding, spans):
            if span_id in known and span_id not in out:
                out[span_id] = {
                    "span_id": span_id, "name": ANNOTATION_NAME, "annotator_kind": "CODE",
                    "result": {"label": kind, "score": float(score) if isinstance(score, (int, float)) else None,
                               "explanation": explanation},
                    "metadata": {"run_id": run["run_id"], "rank": rank, "analysis": finding.get("analysis"),
                                 "subject": finding.get("subject")},
                    "identifier": f"tracekit:{run['run_id']}",
                }
    return list(out.values())


def _post_json(url: str, body: dict[str, Any]) -> tuple[int, str]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    key = os.environ.get("PHOENIX_API_KEY")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        raise TracekitError(f"cannot reach Phoenix at {url}: {getattr(exc, 'reason', exc)}") from None


def post_run_to_phoenix(con: Any, run_id: str, url: str, *, wait_s: float = 30.0) -> tuple[int, bool]:
    """Post the run's root-cause and symptom labels to the Phoenix at `url` as span annotations, sending
    the run's spans first if Phoenix lacks them; returns (annotations, whether spans were sent).
    Raises TracekitError (one line) when Phoenix refuses or cannot be reached."""
    from tracekit.store.export import run_spans_with_events
    from tracekit.store.findings import read_findings
    from tracekit.store.queries import get_run

    base = url.rstrip("/")
    if base.endswith("/v1/span_annotations"):
        base = base[: -len("/v1/span_annotations")]
    run = get_run(con, run_id)
    spans = run_spans_with_events(con, run_id)
    findings = read_findings(con, run_id)
    body = {"data": annotations(run, spans, findings)}
    if not body["data"]:
        raise TracekitError(f"run {run['name']!r} has no root-cause or symptom findings to post "
                            "(run `tracekit attribute` or `tracekit analyze` first)")
    target = f"{base}/v1/span_annotations?sync=true"
    status, text = _post_json(target, body)
    sent = False
    if status == 404:  # Phoenix does not hold these spans: send them (and the finding spans), then retry
        post_otlp(run_request(run, spans, findings).SerializeToString(), f"{base}/v1/traces",
                  token=os.environ.get("PHOENIX_API_KEY"))
        sent = True
        deadline = time.monotonic() + wait_s
        while status == 404 and time.monotonic() < deadline:
            time.sleep(0.5)  # Phoenix stores received spans in the background
            status, text = _post_json(target, body)
    if status != 200:
        raise TracekitError(f"Phoenix at {base} refused the annotations: HTTP {status} {text.strip()[:200]}")
    return len(body["data"]), sent
