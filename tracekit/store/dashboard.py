"""Read queries behind the dashboard: every page's data, aggregated in DuckDB and bounded in size.

Each function returns plain rows (dicts) or small pandas-free lists, never a whole table: lists are
capped by ``limit`` and large runs are summarised (time buckets per node, step buckets per rank)
so a page renders in the same time on a run of a hundred spans or of a million.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from tracekit.store.queries import rows
from tracekit.store.sql import one

# ---------------------------------------------------------------------------------------------
# runs

_RUNS_SQL = """
WITH per_node AS (
    SELECT run_id, node, count(*) AS spans, count(*) FILTER (WHERE status = 'error') AS errors
    FROM spans GROUP BY run_id, node
), counts AS (
    SELECT run_id, sum(spans) AS spans, sum(errors) AS errors, count(*) AS nodes FROM per_node GROUP BY run_id
), top AS (
    SELECT run_id, arg_min(kind || ' ' || subject, rank_order) AS top_finding, count(*) AS findings
    FROM findings GROUP BY run_id
), injected AS (
    SELECT run_id, count(*) FILTER (WHERE injected) AS injected_faults, count(*) AS faults
    FROM faults GROUP BY run_id
)
SELECT r.run_id, r.name, r.kind, r.status, r.started_ns,
       (r.ended_ns - r.started_ns) / 1e9 AS duration_s,
       coalesce(c.spans, 0) AS spans, coalesce(c.errors, 0) AS errors, coalesce(c.nodes, 0) AS nodes,
       coalesce(i.injected_faults, 0) AS injected_faults, coalesce(t.findings, 0) AS findings,
       t.top_finding
FROM runs r LEFT JOIN counts c USING (run_id) LEFT JOIN top t USING (run_id)
     LEFT JOIN injected i USING (run_id)
WHERE (len($kinds) = 0 OR list_contains($kinds, r.kind))
  AND (len($statuses) = 0 OR list_contains($statuses, r.status))
  AND ($search IS NULL OR contains(lower(r.name), lower($search)) OR starts_with(r.run_id, lower($search)))
  AND (NOT $with_errors OR coalesce(c.errors, 0) > 0 OR r.status IN ('error', 'aborted'))
ORDER BY r.started_ns DESC NULLS LAST, r.run_id
LIMIT $limit
"""


def runs_table(
    con: duckdb.DuckDBPyConnection, *, kinds: list[str] | None = None, statuses: list[str] | None = None,
    search: str | None = None, with_errors: bool = False, limit: int = 500,
) -> list[dict[str, Any]]:
    """Runs newest first with span, error, node and fault counts and the top finding, filtered."""
    return rows(con, _RUNS_SQL, {
        "kinds": list(kinds or []), "statuses": list(statuses or []), "search": search or None,
        "with_errors": with_errors, "limit": limit,
    })


def run_facets(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """The distinct run kinds and statuses (the Runs page's filter choices)."""
    kinds = [r[0] for r in con.execute("SELECT DISTINCT kind FROM runs WHERE kind IS NOT NULL ORDER BY 1").fetchall()]
    statuses = [r[0] for r in con.execute("SELECT DISTINCT status FROM runs WHERE status IS NOT NULL ORDER BY 1").fetchall()]
    return {"kinds": kinds, "statuses": statuses}


def run_choices(con: duckdb.DuckDBPyConnection, *, kind: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """Runs for a picker: id, name, kind, status, newest first."""
    return rows(con, """
        SELECT run_id, name, kind, status FROM runs WHERE ($kind IS NULL OR kind = $kind)
        ORDER BY started_ns DESC NULLS LAST, run_id LIMIT $limit
    """, {"kind": kind, "limit": limit})


# ---------------------------------------------------------------------------------------------
# timeline


def run_bounds(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    """First span start, last span end, and span / node / error counts of a run."""
    return _bounds(con, "SELECT * FROM spans WHERE run_id = $run", run_id)


def _bounds(con: duckdb.DuckDBPyConnection, source: str, run_id: str) -> dict[str, Any]:
    """Time bounds and bar / node / error counts of `source` (rows with start_ns, end_ns, node, status)."""
    found = one(con, f"""
        SELECT min(start_ns), max(end_ns), count(*), count(DISTINCT node), count(*) FILTER (WHERE status = 'error')
        FROM ({source})
    """, {"run": run_id}) or (None, None, 0, 0, 0)
    return {"start_ns": found[0], "end_ns": found[1], "spans": int(found[2]), "nodes": int(found[3]),
            "errors": int(found[4])}


def timeline_spans(
    con: duckdb.DuckDBPyConnection, run_id: str, *, t0: int | None = None, t1: int | None = None,
    nodes: list[str] | None = None, limit: int = 1500,
) -> list[dict[str, Any]]:
    """Spans overlapping [t0, t1] to draw as bars: every error span and every span a fault names first,
    then the longest others, at most `limit`, in start order. `faulted` marks spans an injected or
    observed fault points at."""
    faulted = [r[0] for r in con.execute(
        "SELECT DISTINCT span_id FROM faults WHERE run_id = ? AND span_id IS NOT NULL", [run_id]).fetchall()]
    params: dict[str, Any] = {"run": run_id, "t0": t0, "t1": t1, "nodes": list(nodes or []), "faulted": faulted}
    where = """run_id = $run AND ($t0 IS NULL OR end_ns >= $t0) AND ($t1 IS NULL OR start_ns <= $t1)
               AND (len($nodes) = 0 OR list_contains($nodes, node))"""
    # the telling spans first (a cheap filtered scan), then the longest others by a narrow top-N
    picked = rows(con, f"""
        SELECT span_id FROM spans WHERE {where} AND (status = 'error' OR list_contains($faulted, span_id))
        LIMIT $n""", params | {"n": limit})
    ids = [r["span_id"] for r in picked]
    if len(ids) < limit:
        ids += [r["span_id"] for r in rows(con, f"""
            SELECT span_id FROM spans WHERE {where} AND status IS DISTINCT FROM 'error'
                   AND NOT list_contains($faulted, span_id)
            ORDER BY end_ns - start_ns DESC, start_ns LIMIT $n""", params | {"n": limit - len(ids)})]
    return rows(con, f"""
        SELECT span_id, parent_id, name, node, start_ns, end_ns, status, status_message,
               list_contains($faulted, span_id) AS faulted
        FROM spans WHERE {where} AND span_id IN (SELECT unnest($ids)) ORDER BY start_ns, span_id
    """, params | {"ids": ids})


def timeline_density(
    con: duckdb.DuckDBPyConnection, run_id: str, *, t0: int, t1: int, buckets: int = 200,
    nodes: list[str] | None = None, max_nodes: int = 64,
) -> list[dict[str, Any]]:
    """Spans started per node per time bucket in [t0, t1] (and how many failed): the overview of a
    run too large to draw span by span. At most `max_nodes` nodes (the busiest)."""
    width = max(1, (t1 - t0) // max(1, buckets) + 1)
    found = rows(con, """
        SELECT node, $t0 + ((start_ns - $t0) // $width) * $width AS bucket_ns, count(*) AS spans,
               count(*) FILTER (WHERE status = 'error') AS errors
        FROM spans
        WHERE run_id = $run AND start_ns BETWEEN $t0 AND $t1 AND (len($nodes) = 0 OR list_contains($nodes, node))
        GROUP BY ALL ORDER BY node, bucket_ns
    """, {"run": run_id, "t0": t0, "t1": t1, "width": width, "nodes": list(nodes or [])})
    per_node: dict[str, int] = {}
    for r in found:
        per_node[r["node"]] = per_node.get(r["node"], 0) + r["spans"]
    if len(per_node) > max_nodes:
        keep = set(sorted(per_node, key=lambda n: (-per_node[n], n))[:max_nodes])
        found = [r for r in found if r["node"] in keep]
    return found


def run_nodes(con: duckdb.DuckDBPyConnection, run_id: str) -> list[dict[str, Any]]:
    """A run's nodes with span and error counts and first start / last end, nodes with errors first,
    then the busiest (one scan gives the run's bounds too: see `bounds_of`)."""
    return rows(con, """
        SELECT node, count(*) AS spans, count(*) FILTER (WHERE status = 'error') AS errors,
               min(start_ns) AS start_ns, max(end_ns) AS end_ns
        FROM spans WHERE run_id = $run GROUP BY node ORDER BY errors DESC, spans DESC, node
    """, {"run": run_id})


def bounds_of(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """run_bounds computed from run_nodes' rows."""
    starts = [n["start_ns"] for n in nodes if n["start_ns"] is not None]
    ends = [n["end_ns"] for n in nodes if n["end_ns"] is not None]
    return {"start_ns": min(starts) if starts else None, "end_ns": max(ends) if ends else None,
            "spans": sum(int(n["spans"]) for n in nodes), "nodes": len(nodes),
            "errors": sum(int(n["errors"]) for n in nodes)}


def run_faults(con: duckdb.DuckDBPyConnection, run_id: str, *, limit: int = 1000) -> list[dict[str, Any]]:
    """Injected and observed faults of a run, in time order, with the node of the span they name."""
    return rows(con, """
        SELECT f.ts_ns, f.point, f.fault_type, f.injected, f.span_id, f.test, f.campaign, s.node, f.detail
        FROM faults f LEFT JOIN spans s ON s.run_id = f.run_id AND s.span_id = f.span_id
        WHERE f.run_id = $run ORDER BY f.ts_ns LIMIT $limit
    """, {"run": run_id, "limit": limit})


def find_spans(
    con: duckdb.DuckDBPyConnection, run_id: str, *, text: str | None = None, errors_only: bool = False,
    limit: int = 200,
) -> list[dict[str, Any]]:
    """Spans to pick from: error spans first, then others in recorded order; `text` matches name, node
    or span id prefix. (No sort over the whole run: on a million spans that costs more than the page.)"""
    where = """run_id = $run AND ($text IS NULL OR contains(lower(name), lower($text))
               OR contains(lower(node), lower($text)) OR starts_with(span_id, lower($text)))"""
    cols = "span_id, name, node, status, start_ns, (end_ns - start_ns) / 1e6 AS duration_ms"
    params = {"run": run_id, "text": text or None, "limit": limit}
    found = rows(con, f"SELECT * FROM (SELECT {cols} FROM spans WHERE {where} AND status = 'error' LIMIT $limit) "
                      "ORDER BY start_ns, span_id", params)
    if not errors_only and len(found) < limit:
        params["limit"] = limit - len(found)
        found += rows(con, f"SELECT * FROM (SELECT {cols} FROM spans WHERE {where} AND status IS DISTINCT FROM 'error' "
                           "LIMIT $limit) ORDER BY start_ns, span_id", params)
    return found


def span_detail(con: duckdb.DuckDBPyConnection, run_id: str, span_id: str) -> dict[str, Any] | None:
    """One span with decoded attributes and its events (decoded attributes too)."""
    found = rows(con, "SELECT * FROM spans WHERE run_id = ? AND span_id = ? LIMIT 1", [run_id, span_id])
    if not found:
        return None
    span = found[0]
    span["attributes"] = json.loads(span["attributes"] or "{}")
    span["events"] = [
        {**e, "attributes": json.loads(e["attributes"] or "{}")}
        for e in rows(con, "SELECT ts_ns, name, attributes FROM events WHERE run_id = ? AND span_id = ? "
                           "ORDER BY ts_ns LIMIT 500", [run_id, span_id])
    ]
    return span


def span_tree(con: duckdb.DuckDBPyConnection, run_id: str, span_id: str, *, limit: int = 300) -> list[dict[str, Any]]:
    """The selected span's ancestors (negative depth) and descendants (positive depth), at most `limit`
    descendants, in tree order (children by start time).

    Walked level by level with filtered scans rather than a recursive CTE: each level is one scan
    DuckDB prunes well, where a recursive join rebuilds a hash table over the whole run per level.
    """
    cols = ("SELECT span_id, parent_id, name, node, status, start_ns, (end_ns - start_ns) / 1e6 AS duration_ms "
            "FROM spans WHERE run_id = $run AND ")
    found = rows(con, cols + "span_id = $span LIMIT 1", {"run": run_id, "span": span_id})
    if not found:
        return []
    chain = [{**found[0], "depth": 0}]
    seen = {span_id}
    while chain[0]["parent_id"] and len(chain) < 50 and chain[0]["parent_id"] not in seen:
        up = rows(con, cols + "span_id = $span LIMIT 1", {"run": run_id, "span": chain[0]["parent_id"]})
        if not up:
            break
        seen.add(up[0]["span_id"])
        chain.insert(0, {**up[0], "depth": chain[0]["depth"] - 1})
    children: dict[str, list[dict[str, Any]]] = {}
    level, depth, total = [span_id], 0, 0
    while level and depth < 50 and total < limit:
        depth += 1
        kids = rows(con, cols + "list_contains($ids, parent_id) ORDER BY start_ns, span_id LIMIT $n",
                    {"run": run_id, "ids": level, "n": limit - total})
        kids = [k for k in kids if k["span_id"] not in seen]
        for k in kids:
            seen.add(k["span_id"])
            children.setdefault(k["parent_id"], []).append({**k, "depth": depth})
        total += len(kids)
        level = [k["span_id"] for k in kids]
    out = chain[:-1]
    stack = [chain[-1]]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(children.get(node["span_id"], [])))
    return out


# ---------------------------------------------------------------------------------------------
# findings


def run_findings(
    con: duckdb.DuckDBPyConnection, run_id: str, *, analysis: str | None = None, limit: int = 200,
) -> list[dict[str, Any]]:
    """Stored findings of a run in rank order, with their detail decoded."""
    found = rows(con, """
        SELECT analysis, kind, subject, score, rank_order, first_step, confidence, detail
        FROM findings WHERE run_id = $run AND ($analysis IS NULL OR analysis = $analysis)
        ORDER BY analysis, rank_order LIMIT $limit
    """, {"run": run_id, "analysis": analysis, "limit": limit})
    for f in found:
        f["detail"] = json.loads(f["detail"] or "{}")
    return found


# ---------------------------------------------------------------------------------------------
# training


def training_summary(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    """Ranks, steps and collective calls recorded for a training run."""
    st = one(con, "SELECT count(DISTINCT rank), min(step), max(step), count(*) FROM steps WHERE run_id = ?", [run_id])
    co = one(con, "SELECT count(DISTINCT rank), max(world_size), count(*), count(*) FILTER (WHERE NOT ok) "
                  "FROM collectives WHERE run_id = ?", [run_id])
    st = st or (0, None, None, 0)
    co = co or (0, None, 0, 0)
    return {"step_ranks": int(st[0]), "first_step": st[1], "last_step": st[2], "step_rows": int(st[3]),
            "collective_ranks": int(co[0]), "world_size": co[1], "collectives": int(co[2]),
            "failed_collectives": int(co[3] or 0)}


def _step_width(first: int | None, last: int | None, max_steps: int) -> int:
    if first is None or last is None:
        return 1
    return max(1, -(-(int(last) - int(first) + 1) // max_steps))


def step_times(con: duckdb.DuckDBPyConnection, run_id: str, *, max_steps: int = 300) -> list[dict[str, Any]]:
    """Step time (ms) per rank per step; steps are averaged into buckets when there are more than
    `max_steps`. `step` is the bucket's first step; `nonfinite` counts steps with a NaN/Inf."""
    b = one(con, "SELECT min(step), max(step) FROM steps WHERE run_id = ?", [run_id]) or (None, None)
    width = _step_width(b[0], b[1], max_steps)
    return rows(con, """
        SELECT rank, (step // $w) * $w AS step, avg(end_ns - start_ns) / 1e6 AS step_ms,
               count(*) FILTER (WHERE nonfinite) AS nonfinite, avg(loss) AS loss
        FROM steps WHERE run_id = $run AND end_ns IS NOT NULL
        GROUP BY ALL ORDER BY rank, step
    """, {"run": run_id, "w": width})


def collective_matrix(con: duckdb.DuckDBPyConnection, run_id: str, *, max_steps: int = 300) -> list[dict[str, Any]]:
    """Per rank per step: arrival skew (ms a rank entered a collective after the first rank to enter
    the same call, worst of the step) and wait time (ms inside collectives, summed), plus failed
    calls. Calls are matched across ranks by (process group, seq)."""
    b = one(con, "SELECT min(step), max(step) FROM collectives WHERE run_id = ?", [run_id]) or (None, None)
    width = _step_width(b[0], b[1], max_steps)
    return rows(con, """
        WITH c AS (
            SELECT rank, coalesce(step, -1) AS step, enter_ns, exit_ns, ok,
                   enter_ns - min(enter_ns) OVER (PARTITION BY process_group, seq) AS skew_ns
            FROM collectives WHERE run_id = $run
        ), per AS (
            SELECT rank, step, max(skew_ns) AS skew_ns, sum(exit_ns - enter_ns) AS wait_ns,
                   count(*) FILTER (WHERE NOT ok) AS failed, count(*) AS calls
            FROM c GROUP BY rank, step
        )
        SELECT rank, (step // $w) * $w AS step, max(skew_ns) / 1e6 AS skew_ms, avg(wait_ns) / 1e6 AS wait_ms,
               sum(failed) AS failed, sum(calls) AS calls
        FROM per GROUP BY ALL ORDER BY rank, step
    """, {"run": run_id, "w": width})


def rank_last_activity(con: duckdb.DuckDBPyConnection, run_id: str) -> list[dict[str, Any]]:
    """Per rank: last step started and the last collective entered (hangs and crashes show here)."""
    return rows(con, """
        WITH s AS (SELECT rank, max(step) AS last_step, count(*) AS steps FROM steps WHERE run_id = $run GROUP BY rank),
             c AS (SELECT rank, max(seq) AS last_seq, count(*) FILTER (WHERE exit_ns IS NULL OR NOT ok) AS unfinished
                   FROM collectives WHERE run_id = $run GROUP BY rank)
        SELECT coalesce(s.rank, c.rank) AS rank, s.last_step, s.steps, c.last_seq, c.unfinished
        FROM s FULL OUTER JOIN c USING (rank) ORDER BY rank
    """, {"run": run_id})


# ---------------------------------------------------------------------------------------------
# campaigns


def campaign_list(con: duckdb.DuckDBPyConnection, *, limit: int = 200) -> list[dict[str, Any]]:
    """Campaigns newest first (empty when no campaign was ever run)."""
    if not _has_table(con, "campaigns"):
        return []
    return rows(con, """
        SELECT campaign_id, name, strategy, budget, status, started_ns, ended_ns, summary
        FROM campaigns ORDER BY started_ns DESC NULLS LAST LIMIT $limit
    """, {"limit": limit})


def campaign_runs(con: duckdb.DuckDBPyConnection, campaign: str, *, limit: int = 2000) -> list[dict[str, Any]]:
    """The runs of a campaign: per run its test, whether it injected (and what), and the faults seen."""
    return rows(con, """
        WITH f AS (
            SELECT run_id, any_value(test) AS test,
                   string_agg(DISTINCT point || ':' || fault_type, ', ') FILTER (WHERE injected) AS injection,
                   count(*) FILTER (WHERE NOT injected) AS observed
            FROM faults WHERE campaign = $c GROUP BY run_id
        )
        SELECT f.run_id, r.name, f.test, f.injection, f.observed, r.status, r.started_ns
        FROM f LEFT JOIN runs r USING (run_id)
        ORDER BY f.test, f.injection NULLS FIRST, r.started_ns LIMIT $limit
    """, {"c": campaign, "limit": limit})


def fault_campaigns(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Campaign names seen in the faults table (works before any campaign bookkeeping exists)."""
    return [r[0] for r in con.execute(
        "SELECT campaign FROM faults WHERE campaign IS NOT NULL GROUP BY campaign ORDER BY max(ts_ns) DESC"
    ).fetchall()]


def run_fault_summary(con: duckdb.DuckDBPyConnection, run_id: str) -> list[dict[str, Any]]:
    """A run's faults grouped by point and type: injected or observed, how often, first time."""
    return rows(con, """
        SELECT point, fault_type, injected, count(*) AS n, min(ts_ns) AS first_ns
        FROM faults WHERE run_id = $run GROUP BY ALL ORDER BY injected DESC, first_ns
    """, {"run": run_id})


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    hit = one(con, "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name])
    return bool(hit and hit[0])


def run_campaign_id(con: duckdb.DuckDBPyConnection, run_id: str) -> str | None:
    """The campaign a run belongs to (from the run's attributes, else from its faults)."""
    hit = one(con, """
        SELECT coalesce(json_extract_string(r.attributes, '$.campaign'),
                        (SELECT any_value(campaign) FROM faults f WHERE f.run_id = r.run_id))
        FROM runs r WHERE r.run_id = ?
    """, [run_id])
    return hit[0] if hit and hit[0] else None


def span_profile(con: duckdb.DuckDBPyConnection, run_ids: list[str], *, limit: int = 500) -> list[dict[str, Any]]:
    """Per run, how many spans each (operation, status) has: what a side-by-side of two runs compares."""
    return rows(con, """
        SELECT run_id, name, status, count(*) AS n, sum(end_ns - start_ns) / 1e6 AS total_ms
        FROM spans WHERE list_contains($ids, run_id) GROUP BY ALL ORDER BY name, status LIMIT $limit
    """, {"ids": run_ids, "limit": limit})


_ACTIVITY = """
    SELECT NULL AS span_id, NULL AS parent_id, 'step ' || step AS name, 'rank:' || rank AS node, start_ns,
           coalesce(end_ns, start_ns) AS end_ns, CASE WHEN nonfinite THEN 'error' ELSE 'ok' END AS status,
           CASE WHEN nonfinite THEN 'non-finite loss or gradient' END AS status_message, false AS faulted
    FROM steps WHERE run_id = $run
    UNION ALL
    SELECT NULL, NULL, op || ' #' || seq, 'rank:' || rank || ' comm', enter_ns, coalesce(exit_ns, enter_ns),
           CASE WHEN ok IS false OR exit_ns IS NULL THEN 'error' ELSE 'ok' END,
           CASE WHEN exit_ns IS NULL THEN 'never returned' WHEN ok IS false THEN 'failed' END, false
    FROM collectives WHERE run_id = $run
"""


def activity_bounds(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    """Like run_bounds, over a training run's steps and collectives (for runs recorded without spans)."""
    return _bounds(con, _ACTIVITY, run_id)


def activity_bars(
    con: duckdb.DuckDBPyConnection, run_id: str, *, t0: int | None = None, t1: int | None = None,
    nodes: list[str] | None = None, limit: int = 1500,
) -> list[dict[str, Any]]:
    """Steps and collective calls of a training run as timeline bars (rows shaped like timeline_spans):
    failed ones first, then the longest, at most `limit`, in start order."""
    return rows(con, f"""
        WITH a AS ({_ACTIVITY}), picked AS (
            SELECT * FROM a
            WHERE ($t0 IS NULL OR end_ns >= $t0) AND ($t1 IS NULL OR start_ns <= $t1)
              AND (len($nodes) = 0 OR list_contains($nodes, node))
            ORDER BY status = 'error' DESC, end_ns - start_ns DESC, start_ns LIMIT $limit
        )
        SELECT * FROM picked ORDER BY start_ns, node
    """, {"run": run_id, "t0": t0, "t1": t1, "nodes": list(nodes or []), "limit": limit})
