"""The injection runtime in real processes: each fault type at a traced function and at an explicit point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tracekit
from foundation_helpers import spool_streams
from tracekit.capture import hooks
from tracekit.inject.runtime import FAULT_TYPES, Plan, resolve_exception

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import json, time
    import tracekit
    tracekit.init(run="inject-test", kind="campaign", ingest_at_exit=False)

    @tracekit.trace(name="t.work")
    def work(x):
        return x + 1

    @tracekit.trace(name="t.check")
    def check():
        return True

    @tracekit.trace(name="t.fragile")
    def fragile(x):
        return int(x)

    @tracekit.trace(name="t.outer")
    def outer():
        out = {}
        t0 = time.perf_counter()
        try:
            out["work"] = work(1)
        except Exception as exc:
            out["work"] = type(exc).__name__
        out["work_ms"] = (time.perf_counter() - t0) * 1000
        out["check"] = check()
        try:
            fragile(out["work"])
        except ValueError:
            out["fragile"] = "ValueError"
        try:
            out["point"] = tracekit.fault_point("t.point", value=7, raises=ConnectionError)
        except Exception as exc:
            out["point"] = type(exc).__name__
        out["second"] = work(1)
        return out

    print(json.dumps(outer()))
""")


def run_plan(tmp_path: Path, plan: Plan | None, script: str = SCRIPT) -> tuple[dict, list[dict], list[dict]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEKIT_")}
    env.update(TRACEKIT_SPOOL_DIR=str(tmp_path / "spool"), TRACEKIT_DB=str(tmp_path / "db.duckdb"),
               PYTHONPATH=str(ROOT))
    if plan is not None:
        env["TRACEKIT_INJECT"] = plan.to_json()
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    def records(stream: str) -> list[dict]:  # either spool encoding (spans are binary by default)
        lines = spool_streams(tmp_path / "spool", f"{stream}.*").get(stream, [])
        return [r for r in lines[1:] if "tracekit_end" not in r]

    return result, records("faults"), records("spans")


@pytest.mark.parametrize("fault", FAULT_TYPES)
def test_each_fault_type_at_a_traced_function(tmp_path, fault):
    plan = Plan(campaign="c1", test="t", mode="inject", point="t.work", fault=fault, exception="TimeoutError",
                delay_ms=300, value=41)
    result, faults, spans = run_plan(tmp_path, plan)
    expected = {"raise": "TimeoutError", "delay": 2, "error_return": 41, "drop": 41}[fault]
    assert result["work"] == expected
    assert result["second"] == 2  # only the first occurrence is faulted
    if fault == "delay":
        assert result["work_ms"] >= 300
    [injected] = [f for f in faults if f["injected"]]
    assert (injected["point"], injected["fault_type"], injected["campaign"], injected["test"]) == ("t.work", fault, "c1", "t")
    assert json.loads(injected["detail"])["parent"] == "t.outer"
    span = next(s for s in spans if s["span_id"] == injected["span_id"])
    assert span["name"] == "t.work" and json.loads(span["attributes"])["tracekit.injected"] == fault
    reached = {(p["point"], p["parent"]) for f in (tmp_path / "spool").rglob("inject_points.*.jsonl")
               for p in map(json.loads, f.read_text().splitlines()[1:]) if "point" in p}
    assert {("t.work", "t.outer"), ("t.check", "t.outer"), ("t.point", "t.outer"), ("t.outer", None)} <= reached


def test_error_return_negates_a_boolean_check_and_the_span_says_so(tmp_path):
    plan = Plan(campaign="c1", test="t", mode="inject", point="t.check", fault="error_return")
    result, faults, spans = run_plan(tmp_path, plan)
    assert result["check"] is False
    check_span = next(s for s in spans if s["name"] == "t.check")
    assert json.loads(check_span["attributes"])["tracekit.return"] is False


@pytest.mark.parametrize("fault,expected", [("raise", "ConnectionError"), ("drop", 41), ("error_return", 41)])
def test_explicit_fault_point(tmp_path, fault, expected):
    plan = Plan(campaign="c1", test="t", mode="inject", point="t.point", fault=fault, value=41)
    result, faults, _ = run_plan(tmp_path, plan)
    assert result["point"] == expected  # raise uses the exception the point declares
    assert [f["point"] for f in faults if f["injected"]] == ["t.point"]


def test_profile_run_observes_but_injects_nothing(tmp_path):
    result, faults, spans = run_plan(tmp_path, Plan(campaign="c1", test="t", mode="profile"))
    assert result == {"work": 2, "work_ms": result["work_ms"], "check": True, "point": 7, "second": 2}
    assert not [f for f in faults if f["injected"]]


def test_observed_exceptions_are_recorded_with_their_span(tmp_path):
    plan = Plan(campaign="c1", test="t", mode="inject", point="t.work", fault="raise", exception="TimeoutError")
    _, faults, spans = run_plan(tmp_path, plan)
    observed = [f for f in faults if not f["injected"]]
    # the injected TimeoutError is not observed again at t.work; its consequence, t.fragile's ValueError, is
    assert [(f["point"], f["fault_type"], json.loads(f["detail"])["exception"]) for f in observed] == [
        ("t.fragile", "raise", "ValueError")]
    fragile_span = next(s for s in spans if s["name"] == "t.fragile")
    assert observed[0]["span_id"] == fragile_span["span_id"] and fragile_span["status"] == "error"


def test_outside_a_campaign_points_are_inert():
    assert hooks.ACTIVE is None  # the hook slot is filled only in a campaign run
    assert tracekit.fault_point("anything", value=5) == 5
    tracekit.observe_fault("anything", "retry")  # a no-op, never raises


def test_resolve_exception_names():
    assert resolve_exception("TimeoutError") is TimeoutError
    assert resolve_exception("socket.timeout") is TimeoutError
    assert resolve_exception("no.such.Thing") is RuntimeError


GEN_SCRIPT = textwrap.dedent("""
    import asyncio, json, time
    import tracekit
    tracekit.init(run="gen-test", kind="campaign", ingest_at_exit=False)

    @tracekit.trace(name="t.inner")
    def inner(i):
        return i

    @tracekit.trace(name="t.gen")
    def gen(n):
        for i in range(n):
            yield inner(i)
        return "done"

    @tracekit.trace(name="t.agen")
    async def agen(n):
        for i in range(n):
            await asyncio.sleep(0)
            yield inner(i)

    def drain(g):
        items = []
        try:
            while True:
                items.append(next(g))
        except StopIteration as stop:
            return [items, stop.value]

    async def adrain():
        return [x async for x in agen(3)]

    out = {}
    for key, run in (("gen", lambda: drain(gen(3))), ("agen", lambda: asyncio.run(adrain()))):
        t0 = time.perf_counter()
        try:
            out[key] = run()
        except Exception as exc:
            out[key] = type(exc).__name__
        out[key + "_ms"] = (time.perf_counter() - t0) * 1000
    print(json.dumps(out))
""")


@pytest.mark.parametrize("point", ["t.gen", "t.agen"])
@pytest.mark.parametrize("fault", FAULT_TYPES)
def test_each_fault_type_at_a_traced_generator(tmp_path, point, fault):
    """Guards the bug where generator and async-generator wrappers were registered as injection points
    but never injected anything."""
    plan = Plan(campaign="c1", test="t", mode="inject", point=point, fault=fault, exception="TimeoutError",
                delay_ms=300, value=41)
    result, faults, spans = run_plan(tmp_path, plan, GEN_SCRIPT)
    full = [[0, 1, 2], "done"] if point == "t.gen" else [0, 1, 2]
    expected = {
        "raise": "TimeoutError",
        "delay": full,
        "drop": [[], 41] if point == "t.gen" else [],  # the body never runs; the stand-in is the return value
        "error_return": [[0, 1, 2], 41] if point == "t.gen" else full,  # async generators return nothing
    }[fault]
    key = point[2:]
    assert result[key] == expected
    other = "agen" if key == "gen" else "gen"
    assert result[other] == ([[0, 1, 2], "done"] if other == "gen" else [0, 1, 2])  # the other point is untouched
    if fault == "delay":
        assert result[key + "_ms"] >= 300
    [injected] = [f for f in faults if f["injected"]]
    assert (injected["point"], injected["fault_type"]) == (point, fault)
    span = next(s for s in spans if s["span_id"] == injected["span_id"])
    assert span["name"] == point and json.loads(span["attributes"])["tracekit.injected"] == fault


def test_points_reached_inside_generators_have_the_generator_as_parent(tmp_path):
    _, faults, spans = run_plan(tmp_path, Plan(campaign="c1", test="t", mode="profile"), GEN_SCRIPT)
    reached = {(p["point"], p["parent"]) for f in (tmp_path / "spool").rglob("inject_points.*.jsonl")
               for p in map(json.loads, f.read_text().splitlines()[1:]) if "point" in p}
    assert {("t.gen", None), ("t.agen", None), ("t.inner", "t.gen"), ("t.inner", "t.agen")} <= reached
    by_id = {s["span_id"]: s for s in spans}
    parents = {by_id[s["parent_id"]]["name"] for s in spans if s["name"] == "t.inner"}
    assert parents == {"t.gen", "t.agen"}
    assert not faults
