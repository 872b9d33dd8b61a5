"""Store queries for fault-injection campaigns: the campaigns table, campaign runs, and what FCA reads per run."""

from __future__ import annotations

import json
from typing import Any

import duckdb

from tracekit import conventions as conv
from tracekit.errors import NotFoundError
from tracekit.store.queries import rows


def insert_campaign(con: duckdb.DuckDBPyConnection, record: dict[str, Any]) -> None:
    con.execute(
        "INSERT OR REPLACE INTO campaigns VALUES ($campaign_id, $name, $file, $strategy, $budget, $executor, "
        "$started_ns, $ended_ns, $status, $config, $summary)",
        {
            "campaign_id": record["campaign_id"], "name": record["name"], "file": record.get("file"),
            "strategy": record.get("strategy"), "budget": record.get("budget"), "executor": record.get("executor"),
            "started_ns": record.get("started_ns"), "ended_ns": record.get("ended_ns"),
            "status": record.get("status", "running"), "config": json.dumps(record.get("config") or {}),
            "summary": json.dumps(record.get("summary") or {}, default=str),
        },
    )


def finish_campaign(
    con: duckdb.DuckDBPyConnection, campaign_id: str, *, status: str, ended_ns: int, summary: dict[str, Any]
) -> None:
    con.execute(
        "UPDATE campaigns SET status = ?, ended_ns = ?, summary = ? WHERE campaign_id = ?",
        [status, ended_ns, json.dumps(summary, default=str), campaign_id],
    )


def list_campaigns(con: duckdb.DuckDBPyConnection, limit: int = 100) -> list[dict[str, Any]]:
    return rows(con, """
        SELECT c.campaign_id, c.name, c.strategy, c.budget, c.executor, c.status, c.started_ns, c.ended_ns,
               (SELECT count(*) FROM runs r
                WHERE r.kind = 'campaign' AND json_extract_string(r.attributes, '$.campaign') = c.campaign_id) AS runs,
               json_extract(c.summary, '$.cycles') AS cycles
        FROM campaigns c ORDER BY c.started_ns DESC NULLS LAST LIMIT ?
    """, [limit])


def get_campaign(con: duckdb.DuckDBPyConnection, campaign_id: str) -> dict[str, Any]:
    found = rows(con, "SELECT * FROM campaigns WHERE campaign_id = ?", [campaign_id])
    if not found:
        raise NotFoundError(f"no campaign with id {campaign_id!r}")
    out = found[0]
    out["config"] = json.loads(out["config"] or "{}")
    out["summary"] = json.loads(out["summary"] or "{}")
    return out


def resolve_campaign(con: duckdb.DuckDBPyConnection, ref: str) -> str:
    """A campaign id from an id, a unique id prefix, or a name (the newest campaign of that name)."""
    hit = rows(con, """
        SELECT campaign_id FROM campaigns WHERE campaign_id = $r OR name = $r
        ORDER BY (campaign_id = $r) DESC, started_ns DESC NULLS LAST LIMIT 1
    """, {"r": ref})
    if hit:
        return str(hit[0]["campaign_id"])
    if len(ref) >= 4:
        prefixed = rows(con, "SELECT campaign_id FROM campaigns WHERE starts_with(campaign_id, ?)", [ref.lower()])
        if len(prefixed) == 1:
            return str(prefixed[0]["campaign_id"])
        if len(prefixed) > 1:
            raise NotFoundError(f"campaign id prefix {ref!r} matches {len(prefixed)} campaigns: give more characters")
    raise NotFoundError(f"no campaign with id or name {ref!r}: `tracekit campaign list` lists them")


def campaign_ids_for(con: duckdb.DuckDBPyConnection, refs: list[str]) -> list[str]:
    """Campaign ids for campaign ids or for runs of campaigns (an analysis may be handed either)."""
    out: list[str] = []
    for ref in refs:
        hit = rows(con, """
            SELECT campaign_id FROM campaigns WHERE campaign_id = $r
            UNION ALL
            SELECT json_extract_string(attributes, '$.campaign') FROM runs WHERE run_id = $r AND kind = 'campaign'
        """, {"r": ref})
        found = hit[0]["campaign_id"] if hit else ref
        if found not in out:
            out.append(found)
    return out


def campaign_runs(con: duckdb.DuckDBPyConnection, campaign_ids: list[str]) -> list[dict[str, Any]]:
    """Every run of the campaigns with its plan attributes (mode, test, point, fault, repeat, ...)."""
    found = rows(con, """
        SELECT run_id, name, status, started_ns, ended_ns, attributes FROM runs
        WHERE kind = 'campaign' AND list_contains($ids, json_extract_string(attributes, '$.campaign'))
        ORDER BY started_ns
    """, {"ids": campaign_ids})
    for r in found:
        r["attributes"] = json.loads(r["attributes"] or "{}")
    return found


def _path(attribute: str) -> str:
    """The JSON path of one span attribute (its name holds dots, so it is quoted)."""
    return f'$."{attribute}"'


_SIGNATURES = """
SELECT DISTINCT s.run_id, s.name AS op,
    CASE WHEN s.status = 'error'
              THEN 'error:' || coalesce(nullif(split_part(s.status_message, ':', 1), ''), 'error')
         WHEN json_extract(s.attributes, $returned) IS NOT NULL
              THEN 'ret:' || json_extract_string(s.attributes, $returned)
         ELSE 'ok' END AS outcome,
    p.name AS parent, json_extract_string(s.attributes, $injected) AS injected
FROM spans s LEFT JOIN spans p ON p.run_id = s.run_id AND p.span_id = s.parent_id
WHERE list_contains($ids, s.run_id)
UNION
SELECT DISTINCT run_id, point AS op, 'fault:' || fault_type AS outcome,
    json_extract_string(detail, '$.parent') AS parent, NULL AS injected
FROM faults
WHERE list_contains($ids, run_id) AND NOT injected AND fault_type NOT IN ('raise', 'timeout')
"""


def run_signatures(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> list[dict[str, Any]]:
    """Distinct span signatures (op, outcome, parent op, injected) per run.

    outcome is ``error:<ExceptionType>``, ``ret:true|false`` for a boolean check, ``ok``, or
    ``fault:<type>`` for a fault the program reported (a retry, a crash or hang of the workload).
    injected is the fault type a campaign injected into that span (None for every other span): the
    analysis decides which of the injected span's outcomes are the injection itself.
    """
    return rows(con, _SIGNATURES, {"ids": run_ids, "returned": _path(conv.RETURN), "injected": _path(conv.INJECTED)})


def run_counts(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> list[dict[str, Any]]:
    """How many spans each (parent op, op) has per run: the loop counts S+ edges compare."""
    return rows(con, """
        SELECT s.run_id, p.name AS parent, s.name AS op, count(*) AS n
        FROM spans s LEFT JOIN spans p ON p.run_id = s.run_id AND p.span_id = s.parent_id
        WHERE list_contains($ids, s.run_id)
        GROUP BY ALL
    """, {"ids": run_ids})


def injected_faults(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> list[dict[str, Any]]:
    """The faults injected in these runs, with the call context (parent op) and what the span returned."""
    return rows(con, """
        SELECT f.run_id, f.point, f.fault_type, f.ts_ns, f.span_id,
               json_extract_string(f.detail, '$.parent') AS parent,
               json_extract_string(f.detail, '$.exception') AS exception,
               json_extract_string(s.attributes, $returned) AS returned
        FROM faults f LEFT JOIN spans s ON s.run_id = f.run_id AND s.span_id = f.span_id
        WHERE list_contains($ids, f.run_id) AND f.injected
        ORDER BY f.ts_ns
    """, {"ids": run_ids, "returned": _path(conv.RETURN)})


def observed_faults(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> list[dict[str, Any]]:
    return rows(con, """
        SELECT run_id, point, fault_type, ts_ns, span_id, detail FROM faults
        WHERE list_contains($ids, run_id) AND NOT injected ORDER BY ts_ns
    """, {"ids": run_ids})


def reached_points(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> list[dict[str, Any]]:
    """Injection points the runs reached: point, kind, the parents it was called from, return type, declared raise."""
    return rows(con, """
        SELECT point, any_value(kind) AS kind, list(DISTINCT parent) AS parents,
               max(returns) AS returns, max(raises) AS raises
        FROM campaign_points WHERE list_contains($ids, run_id)
        GROUP BY point ORDER BY point
    """, {"ids": run_ids})
