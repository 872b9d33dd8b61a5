"""The analysis registry and `tracekit analyze`: every applicable registered analysis runs and stores its
findings; `tracekit runs` counts them (issue #15: the registry drove nothing, `analyze` did not exist)."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest

from dashboard_stores import BASE_NS, ingest, whowhen_log, write_training_run
from foundation_helpers import assert_one_line_error, cli_here

from tracekit.analysis import REGISTRY, Analysis, analyze_all, applicable, register

KINDS = ("training", "agents", "service", "campaign")
CALLS: list[str] = []


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("analyze")
    write_training_run(tmp / "spool", "ddp-healthy", steps=24)
    write_training_run(tmp / "spool", "ddp-straggler", steps=24, slow_rank=2, base_ns=BASE_NS + 10**12)
    ingest(tmp / "spool", tmp / "store.duckdb")
    done = cli_here(tmp, "import", "whowhen", str(whowhen_log(tmp / "ww")))
    assert done.code == 0, done.err
    return tmp


def _runs(tmp: Path) -> dict[str, dict]:
    done = cli_here(tmp, "runs", "--format", "json")
    assert done.code == 0, done.err
    return {r["name"]: r for r in json.loads(done.out)}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_entry_loads_and_declares_its_parameters(name: str) -> None:
    entry = REGISTRY[name]
    assert set(entry.run_kinds) <= set(KINDS)
    params = list(inspect.signature(entry.runner()).parameters)
    assert len(params) >= 3, f"{entry.entry_point} must take (con, run_id, params)"
    if entry.params is not None:
        assert dataclasses.is_dataclass(entry.default_params())


def test_applicable_follows_the_run_kind() -> None:
    assert [a.name for a in applicable("training")] == ["collectives"]
    assert [a.name for a in applicable("agents")] == ["attribution"]
    assert [a.name for a in applicable("campaign")] == ["causality"]
    assert applicable("service") == []


def test_analyze_one_run_stores_its_findings_and_runs_counts_them(store: Path) -> None:
    before = _runs(store)
    assert before["ddp-straggler"]["findings"] == 0
    done = cli_here(store, "analyze", "ddp-straggler", "--format", "json")
    assert done.code == 0, done.err
    [result] = json.loads(done.out)
    assert result["analysis"] == "collectives" and result["error"] is None
    assert [(f["kind"], f["subject"]) for f in result["findings"]][:1] == [("straggler", "rank:2")]
    after = _runs(store)
    assert after["ddp-straggler"]["findings"] == len(result["findings"]) >= 1
    assert after["ddp-straggler"]["top_finding"] == "straggler rank:2"
    table = cli_here(store, "runs", COLUMNS="200")
    header = next(line for line in table.out.splitlines() if "run_id" in line)
    assert "findings" in header.split() and "top_finding" in header.split()


def test_analyze_all_runs_every_applicable_analysis(store: Path) -> None:
    done = cli_here(store, "analyze", "--all", "--format", "json")
    assert done.code == 0, done.err
    results = {(r["run"], r["analysis"]): r for r in json.loads(done.out)}
    assert sorted(a for _run, a in results) == ["attribution", "collectives", "collectives"]
    assert results[("ddp-healthy", "collectives")]["findings"] == []
    agents = [r for (_name, a), r in results.items() if a == "attribution"]
    assert len(agents) == 1 and agents[0]["findings"], "attribution stored no candidates"
    counts = _runs(store)
    assert counts[agents[0]["run"]]["findings"] == len(agents[0]["findings"])
    csv = cli_here(store, "analyze", "--all", "--format", "csv", "--analysis", "collectives")
    assert csv.code == 0 and csv.out.splitlines()[0] == "run_id,run,analysis,stored_under,findings,top_finding"
    assert len(csv.out.splitlines()) == 3  # the header and the two training runs


@pytest.mark.parametrize("args", [["analyze"], ["analyze", "x", "--all"], ["analyze", "no-such-run"],
                                  ["analyze", "ddp-healthy", "--analysis", "nonsense"]])
def test_bad_input_is_one_line_and_exit_2(store: Path, args: list[str]) -> None:
    done = cli_here(store, *args)
    if args == ["analyze"] or "--all" in args:
        assert done.code == 2 and "Traceback" not in done.err
    else:
        assert_one_line_error(done)


def test_an_analysis_stored_per_campaign_runs_once_per_campaign(tmp_path: Path) -> None:
    from tracekit.capture.spool import write_run_manifest
    from tracekit.store.db import connect

    for i in range(3):
        write_run_manifest(tmp_path / "spool" / f"{i:032x}", {
            "run_id": f"{i:032x}", "name": f"c-run-{i}", "kind": "campaign", "started_ns": BASE_NS + i,
            "ended_ns": BASE_NS + i + 1, "exit_code": 0, "attributes": {"campaign": "c1" if i < 2 else "c2"}, "pid": 0})
    ingest(tmp_path / "spool", tmp_path / "store.duckdb")
    probe = register(Analysis("probe", "records its calls", ("campaign",), "test_analyze:_probe", per="campaign"))
    try:
        CALLS.clear()
        with connect(tmp_path / "store.duckdb") as con:
            results = analyze_all(con, only=["probe"])
        assert sorted(r.subject for r in results) == ["c1", "c2"]
        assert len(CALLS) == 2
    finally:
        REGISTRY.pop(probe.name)


def _probe(con: object, run_id: str, params: object) -> list[dict]:
    CALLS.append(run_id)
    return [{"kind": "probe", "subject": run_id}]
