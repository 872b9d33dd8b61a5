"""Unit tests of the collective-anomaly detectors on tiny hand-built per-rank frames (no torch, no processes)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from foundation_helpers import as_read_plainly

from tracekit.analysis.collectives import (
    DEFAULT_DETECTORS, Finding, RunFrames, Thresholds, detect, detect_missing_rank, detect_nonfinite,
    detect_slow_links, detect_stragglers, infer_period, naive_slowest_rank,
)

MS = 1_000_000
T0 = 1_800_000_000 * 10**9


def build(world: int = 4, steps: int = 30, per_step: int = 4, *, late: dict[int, tuple[int, int]] | None = None,
          seed: int = 0, step_col: bool = True, sched_lag: dict[int, tuple[int, int]] | None = None,
          nonfinite: dict[int, int] | None = None) -> RunFrames:
    """A healthy job with arrival noise; `late={rank: (from_step, ms)}` delays a rank's arrivals."""
    rng = np.random.default_rng(seed)
    rows, step_rows, hb = [], [], []
    for s in range(steps):
        for k in range(per_step):
            seq = s * per_step + k
            base = T0 + s * 100 * MS + k * 5 * MS
            enters = {r: base + int(rng.gamma(2.0, 1.0) * MS) for r in range(world)}
            for r, (onset, ms) in (late or {}).items():
                if s >= onset:
                    enters[r] += ms * MS
            done = max(enters.values()) + MS
            for r in range(world):
                bad = nonfinite is not None and r in nonfinite and seq >= nonfinite[r]
                spread = nonfinite is not None and any(seq > v for v in nonfinite.values())
                rows.append({"rank": r, "world_size": world, "process_group": "default", "seq": seq,
                             "op": "all_reduce", "bytes": 1 << 20, "enter_ns": enters[r], "exit_ns": done,
                             "step": s if step_col else None, "ok": True, "peer": None, "async_op": True,
                             "source": "ddp", "nonfinite": bool(bad or spread), "error": None})
        for r in range(world):
            step_rows.append({"rank": r, "step": s, "start_ns": T0 + s * 100 * MS, "end_ns": T0 + (s + 1) * 100 * MS,
                              "loss": 1.0, "grad_norm": 1.0, "nonfinite": False})
    for r in range(world):
        for i in range(steps // 5 + 1):
            ts = T0 + i * 500 * MS
            lag = 2 * MS
            if sched_lag and r in sched_lag and ts >= T0 + sched_lag[r][0] * 100 * MS:
                lag = sched_lag[r][1] * MS
            hb.append({"rank": r, "ts_ns": ts, "step": i * 5, "last_seq": None, "inflight_op": None,
                       "inflight_seq": None, "inflight_since_ns": None, "state": "alive", "sched_lag_ns": lag})
    return RunFrames(collectives=pl.DataFrame(rows, schema=COLLECTIVES), steps=pl.DataFrame(step_rows),
                     heartbeats=pl.DataFrame(hb, schema=HEARTBEATS))


COLLECTIVES = {"rank": pl.Int32, "world_size": pl.Int32, "process_group": pl.String, "seq": pl.Int64,
               "op": pl.String, "bytes": pl.Int64, "enter_ns": pl.Int64, "exit_ns": pl.Int64, "step": pl.Int64,
               "ok": pl.Boolean, "peer": pl.Int32, "async_op": pl.Boolean, "source": pl.String,
               "nonfinite": pl.Boolean, "error": pl.String}
HEARTBEATS = {"rank": pl.Int32, "ts_ns": pl.Int64, "step": pl.Int64, "last_seq": pl.Int64, "inflight_op": pl.String,
              "inflight_seq": pl.Int64, "inflight_since_ns": pl.Int64, "state": pl.String, "sched_lag_ns": pl.Int64}


def test_healthy_run_has_no_findings() -> None:
    for seed in range(5):
        assert detect(build(seed=seed)) == []


@pytest.mark.parametrize("culprit", [0, 2, 3])
def test_straggler_named_from_its_onset(culprit: int) -> None:
    findings = detect(build(late={culprit: (10, 40)}))
    assert [f.kind for f in findings] == ["straggler"]
    top = findings[0]
    assert top.subject == f"rank:{culprit}"
    assert 10 <= top.first_step <= 12
    assert 0 < top.confidence <= 1
    assert top.evidence["median_lag_ms"] > top.evidence["threshold_ms"]


def test_throttle_told_apart_by_scheduling_lag() -> None:
    findings = detect(build(late={1: (10, 40)}, sched_lag={1: (10, 80)}))
    assert [(f.kind, f.subject) for f in findings] == [("throttle", "rank:1")]
    assert findings[0].evidence["sched_lag_ms"] == 80.0


def test_throttle_found_from_scheduling_lag_when_late_arrivals_are_intermittent() -> None:
    """A stop/continue duty cycle lets the starved rank catch up now and then: its late arrivals alone
    are not persistent enough, its heartbeats (late in every beat from step 10) still name it."""
    findings = detect(build(steps=60, late={1: (99, 0)}, sched_lag={1: (10, 70)}))
    assert [(f.kind, f.subject) for f in findings] == [("throttle", "rank:1")]
    top = findings[0]
    assert 10 <= top.first_step <= 11 and top.evidence["starved_heartbeats"] >= 4
    assert top.evidence["peers_sched_lag_ms"] == 2.0 and 0.5 < top.confidence <= 1


def test_throttle_onset_is_the_step_in_progress_at_the_late_wakeup_not_at_the_beat() -> None:
    """A starved rank's steps crawl, so the beat after its first late wake-up can come steps later:
    the onset is the beat's lag_step (the step in progress at its latest wake-up) when capture wrote it."""
    frames = build(steps=60, late={1: (99, 0)}, sched_lag={1: (12, 70)})
    hb = frames.heartbeats.with_columns(lag_step=(pl.col("step") - 4).clip(0))
    findings = detect(RunFrames(collectives=frames.collectives, steps=frames.steps, heartbeats=hb))
    assert [(f.kind, f.subject) for f in findings] == [("throttle", "rank:1")]
    assert findings[0].first_step == 11  # the first starved beat is at step 15; its late wake-up was in step 11
    without = detect(RunFrames(collectives=frames.collectives, steps=frames.steps, heartbeats=frames.heartbeats))
    assert without[0].first_step == 15  # files from before lag_step: the step at the beat


def test_one_slow_wakeup_or_a_machine_wide_stall_is_not_a_throttle() -> None:
    frames = build(steps=60)
    hb = frames.heartbeats
    spike = hb.with_columns(sched_lag_ns=pl.when((pl.col("rank") == 2) & (pl.col("step") == 25))
                            .then(300 * MS).otherwise(pl.col("sched_lag_ns")))
    assert detect(RunFrames(collectives=frames.collectives, steps=frames.steps, heartbeats=spike)) == []
    stall = hb.with_columns(sched_lag_ns=pl.when(pl.col("step") >= 20).then(90 * MS).otherwise(pl.col("sched_lag_ns")))
    assert detect(RunFrames(collectives=frames.collectives, steps=frames.steps, heartbeats=stall)) == []


def test_transient_late_arrivals_are_not_a_straggler() -> None:
    """Guards against alarming on noise: a rank late in 2 isolated steps is not a straggler."""
    frames = build()
    c = frames.collectives.with_columns(
        enter_ns=pl.when((pl.col("rank") == 1) & pl.col("step").is_in([5, 17])).then(pl.col("enter_ns") + 60 * MS)
        .otherwise(pl.col("enter_ns")))
    assert detect(RunFrames(collectives=c, steps=frames.steps, heartbeats=frames.heartbeats)) == []


def test_period_is_learned_when_steps_are_missing() -> None:
    findings = detect(build(late={2: (12, 40)}, step_col=False, per_step=3))
    assert findings[0].subject == "rank:2"
    assert 12 <= findings[0].first_step <= 14


def test_infer_period() -> None:
    assert infer_period(["a", "a", "b"] * 20) == 3
    assert infer_period(list("abcdefgh")) is None


def _cut(frames: RunFrames, rank: int, last_seq: int, *, alive_until: int | None, sigterm: bool = False) -> RunFrames:
    """Rank `rank` stops after `last_seq`; the others enter last_seq+1 and fail there."""
    c = frames.collectives
    stuck = last_seq + 1
    c = c.filter(pl.col("seq") <= stuck).filter(~((pl.col("rank") == rank) & (pl.col("seq") == stuck)))
    c = c.with_columns(
        ok=pl.when(pl.col("seq") == stuck).then(False).otherwise(pl.col("ok")),
        error=pl.when(pl.col("seq") == stuck).then(pl.lit("Timed out")).otherwise(pl.col("error")),
        exit_ns=pl.when(pl.col("seq") == stuck).then(pl.col("enter_ns") + 5_000 * MS).otherwise(pl.col("exit_ns")))
    stuck_enter = c.filter(pl.col("seq") == stuck)["enter_ns"].min()
    hb = frames.heartbeats.filter(pl.col("ts_ns") <= stuck_enter)
    if alive_until is not None:
        extra = [{**hb.row(0, named=True), "rank": rank, "ts_ns": stuck_enter + alive_until * MS,
                  "state": "sigterm" if sigterm else "alive"}]
        hb = pl.concat([hb, pl.DataFrame(extra, schema=hb.schema)])
    steps = frames.steps.filter(~((pl.col("rank") == rank) & (pl.col("start_ns") >= stuck_enter - 100 * MS)))
    return RunFrames(collectives=c, steps=steps, heartbeats=hb)


def test_hang_is_the_missing_rank_that_stayed_alive() -> None:
    frames = _cut(build(), 2, 41, alive_until=6_000, sigterm=True)
    findings = detect(frames)
    assert findings[0].kind == "hang" and findings[0].subject == "rank:2"
    assert findings[0].first_step == 10
    assert findings[0].evidence["stuck_seq"] == 42
    assert findings[0].evidence["ranks_waiting"] == [0, 1, 3]


def test_crash_is_the_missing_rank_that_died_first() -> None:
    frames = _cut(build(), 1, 41, alive_until=None)
    findings = detect(frames)
    assert [(f.kind, f.subject) for f in findings][:1] == [("crash", "rank:1")]
    assert findings[0].evidence["ranks_failed"] == [0, 2, 3]


def test_live_hang_seen_through_heartbeats_only() -> None:
    """The others are still waiting (nothing failed yet): their heartbeats name the in-flight collective."""
    frames = build()
    c = frames.collectives.filter(pl.col("seq") <= 41)
    since = c["enter_ns"].max() + 20 * MS
    hb = pl.concat([frames.heartbeats.filter(pl.col("ts_ns") <= since), pl.DataFrame([
        {"rank": r, "ts_ns": since + 3_000 * MS, "step": 10, "last_seq": 42 if r != 3 else 41,
         "inflight_op": "all_reduce" if r != 3 else None, "inflight_seq": 42 if r != 3 else None,
         "inflight_since_ns": since if r != 3 else None, "state": "alive", "sched_lag_ns": MS}
        for r in range(4)], schema=frames.heartbeats.schema)])
    findings = detect(RunFrames(collectives=c, steps=frames.steps, heartbeats=hb))
    assert (findings[0].kind, findings[0].subject) == ("hang", "rank:3")


def test_a_missing_rank_is_undecided_until_the_others_records_pass_the_hang_threshold() -> None:
    """Live, a rank that stopped looks crashed until its heartbeats show it alive: with the others'
    records only 0.6 s past their entry the verdict is marked undecided; 2 s past, it is a crash."""
    frames = build()
    c = frames.collectives.filter(pl.col("seq") <= 41)
    since = c["enter_ns"].max() + 20 * MS
    steps = frames.steps.filter(pl.col("end_ns") <= since)

    def waiting(after_ms: int) -> RunFrames:
        hb = pl.concat([frames.heartbeats.filter(pl.col("ts_ns") <= since), pl.DataFrame([
            {"rank": r, "ts_ns": since + after_ms * MS, "step": 10, "last_seq": 42, "inflight_op": "all_reduce",
             "inflight_seq": 42, "inflight_since_ns": since, "state": "alive", "sched_lag_ns": MS}
            for r in (0, 1, 2)], schema=frames.heartbeats.schema)])
        return RunFrames(collectives=c, steps=steps, heartbeats=hb)

    early = detect(waiting(600))
    assert (early[0].kind, early[0].subject, early[0].evidence.get("undecided")) == ("crash", "rank:3", True)
    late = detect(waiting(2_000))
    assert (late[0].kind, late[0].subject) == ("crash", "rank:3") and "undecided" not in late[0].evidence
    exits = pl.DataFrame({"rank": [3], "exit_code": [13], "signal": [None], "ts_ns": [since + 100 * MS],
                          "host": ["h"]}, schema_overrides={"signal": pl.Int64})
    seen_dead = detect(RunFrames(collectives=c, steps=steps, heartbeats=waiting(600).heartbeats,
                                 worker_exits=exits))
    assert "undecided" not in next(f for f in seen_dead if f.subject == "rank:3").evidence  # its exit is on record


def test_a_live_rank_whose_newest_beat_trails_the_others_is_not_called_crashed() -> None:
    """Live, the store holds a hung rank's beats up to a beat and a flush behind the others' newest
    records: 0.8 s after the others entered, while theirs reach 1.6 s. It is undecided (it has been silent
    0.8 s, not 1.6 s), and a hang once its beats pass the hang threshold."""
    frames = build()
    c = frames.collectives.filter(pl.col("seq") <= 41)
    since = c["enter_ns"].max() + 20 * MS
    steps = frames.steps.filter(pl.col("end_ns") <= since)

    def beats(others_ms: int, mine_ms: int) -> RunFrames:
        rows = [{"rank": r, "ts_ns": since + others_ms * MS, "step": 10, "last_seq": 42, "inflight_op": "all_reduce",
                 "inflight_seq": 42, "inflight_since_ns": since, "state": "alive", "sched_lag_ns": MS} for r in (0, 1, 2)]
        rows.append({"rank": 3, "ts_ns": since + mine_ms * MS, "step": 10, "last_seq": 41, "inflight_op": None,
                     "inflight_seq": None, "inflight_since_ns": None, "state": "alive", "sched_lag_ns": MS})
        hb = pl.concat([frames.heartbeats.filter(pl.col("ts_ns") <= since),
                        pl.DataFrame(rows, schema=frames.heartbeats.schema)])
        return RunFrames(collectives=c, steps=steps, heartbeats=hb)

    trailing = detect(beats(1_600, 800))
    assert (trailing[0].subject, trailing[0].evidence.get("undecided")) == ("rank:3", True)
    later = detect(beats(2_600, 1_900))
    assert (later[0].kind, later[0].subject) == ("hang", "rank:3") and "undecided" not in later[0].evidence
    silent = detect(beats(2_600, 800))  # its beats stopped 1.8 s ago: it died after the others entered
    assert (silent[0].kind, silent[0].subject) == ("crash", "rank:3") and "undecided" not in silent[0].evidence
    # the same, as a live read gives it: every rank's files still open, their clean exit not known (NULL);
    # read after the run, a rank whose files have no footer died without closing them: decided at once
    live = beats(1_600, 800)
    exits = pl.DataFrame({"rank": [0, 1, 2, 3], "clean_exit": [None] * 4}, schema={"rank": pl.Int32, "clean_exit": pl.Boolean})
    trailing = detect(RunFrames(collectives=live.collectives, steps=live.steps, heartbeats=live.heartbeats,
                                rank_exits=exits))
    assert (trailing[0].subject, trailing[0].evidence.get("undecided")) == ("rank:3", True)
    died = detect(RunFrames(collectives=live.collectives, steps=live.steps, heartbeats=live.heartbeats,
                            rank_exits=exits.with_columns(clean_exit=pl.lit(False))))
    assert (died[0].kind, died[0].subject) == ("crash", "rank:3") and "undecided" not in died[0].evidence


def test_a_live_read_does_not_call_open_spool_files_an_unclean_exit(tmp_path) -> None:
    """While a run is written, a rank whose files have no footer yet is running (or died: later records
    tell): a live read gives its clean exit as NULL, the full read as False; once closed, True in both."""
    from tracekit.capture.spool import Spool
    from tracekit.ingest import ingest_paths
    from tracekit.store.collectives import rank_exits_table
    from tracekit.store.db import connect

    run_id = "e" * 32
    spools = [Spool(tmp_path / "spool" / run_id, run_id, f"rank:{r}") for r in range(2)]
    for r, sp in enumerate(spools):
        sp.write("collectives", {"rank": r, "world_size": 2, "process_group": "0", "seq": 0, "op": "allreduce",
                                 "bytes": 8, "dtype": "float32", "enter_ns": 10, "exit_ns": 20, "step": 0, "ok": True})
        sp.flush()

    def exits(live: bool) -> dict[int, bool | None]:
        ingest_paths([tmp_path / "spool"], tmp_path / "t.duckdb")
        with connect(tmp_path / "t.duckdb", read_only=True) as con:
            table = rank_exits_table(con, run_id, live=live).to_pylist()
        return {row["rank"]: row["clean_exit"] for row in table}

    assert exits(live=True) == {0: None, 1: None} and exits(live=False) == {0: False, 1: False}
    spools[0].close()
    assert exits(live=True) == {0: True, 1: None} and exits(live=False) == {0: True, 1: False}
    spools[1].close()


def test_nonfinite_names_the_first_rank_before_reduction() -> None:
    findings = detect(build(nonfinite={3: 50}))
    assert [(f.kind, f.subject, f.first_step) for f in findings] == [("nonfinite", "rank:3", 12)]
    assert findings[0].evidence["others_nonfinite_from_seq"] == 51


def test_nonfinite_everywhere_at_once_is_not_localized() -> None:
    findings = detect_nonfinite(build(nonfinite={0: 50, 1: 50, 2: 50, 3: 50}), Thresholds())
    assert len(findings) == 4 and all(f.confidence < 0.5 for f in findings)


def _probes(world: int, rounds: int, slow: tuple[int, int] | None, from_round: int = 3,
            slow_rank: int | None = None) -> pl.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for rnd in range(rounds):
        for src in range(world):
            for dst in range(world):
                if src == dst:
                    continue
                dur = int(rng.uniform(1, 3) * MS)
                if slow and (src, dst) == slow and rnd >= from_round:
                    dur = 60 * MS
                if slow_rank is not None and slow_rank in (src, dst) and rnd >= from_round:
                    dur = 40 * MS
                rows.append({"rank": dst, "world_size": world, "round": rnd, "src": src, "dst": dst,
                             "bytes": 1 << 18, "ts_ns": T0 + rnd * 200 * MS, "dur_ns": dur, "step": rnd * 2})
    return pl.DataFrame(rows)


def test_slow_link_named_by_the_probe() -> None:
    frames = build()
    frames = RunFrames(collectives=frames.collectives, steps=frames.steps, probes=_probes(4, 8, (2, 3)))
    findings = detect(frames)
    assert [(f.kind, f.subject, f.first_step) for f in findings] == [("slow_link", "link:2-3", 6)]
    assert findings[0].evidence["slow_directions"] == ["2->3"]


def test_a_slow_rank_is_not_a_slow_link() -> None:
    frames = RunFrames(collectives=build().collectives, probes=_probes(4, 8, None, slow_rank=1))
    assert detect_slow_links(frames, Thresholds()) == []


def test_healthy_probes_have_no_findings() -> None:
    assert detect_slow_links(RunFrames(collectives=build().collectives, probes=_probes(8, 10, None)), Thresholds()) == []


def test_detectors_are_injectable_and_findings_sorted() -> None:
    calls = []

    def mine(frames: RunFrames, th: Thresholds) -> list[Finding]:
        calls.append(frames.world_size)
        return [Finding("straggler", "rank:0", 3, 0.3, {}, "low"), Finding("hang", "rank:1", 2, 0.9, {}, "high"),
                Finding("nonfinite", "rank:2", 1, 0.5, {}, "mid")]

    found = detect(build(), detectors=[mine])
    assert calls == [4]
    assert [f.subject for f in found] == ["rank:1", "rank:2"]  # the straggler after the hang's onset is a symptom
    assert len(DEFAULT_DETECTORS) == 6


def test_finding_dict_is_the_json_contract() -> None:
    f = detect(build(late={1: (10, 40)}))[0].to_dict()
    assert {"kind", "subject", "first_step", "confidence", "evidence"} <= set(f)
    json.dumps(f)


def test_naive_baseline_always_blames_someone() -> None:
    assert len(naive_slowest_rank(build())) == 1
    assert detect_missing_rank(build(), Thresholds()) == []
    assert detect_stragglers(RunFrames(collectives=build().collectives.head(0)), Thresholds()) == []


def test_thresholds_drive_the_detectors() -> None:
    """Every knob lives in Thresholds (issue #15): changing one changes what the detectors report."""
    late = build(late={2: (10, 40)})
    assert [f.subject for f in detect(late)] == ["rank:2"]
    assert detect(late, thresholds=Thresholds(floor_ns=200 * MS)) == []  # 40 ms late is under a 200 ms floor
    assert detect(late, thresholds=Thresholds(margin=50.0)) == []  # nobody is that far ahead of the second-latest
    starved = build(sched_lag={1: (10, 80)})
    assert [f.kind for f in detect(starved)] == ["throttle"]
    assert detect(starved, thresholds=Thresholds(warmup_steps=10_000)) == []  # every beat counts as warm-up


def test_every_threshold_is_documented_where_it_is_declared() -> None:
    import inspect

    from dataclasses import fields

    source = inspect.getsource(Thresholds)
    for f in fields(Thresholds):
        line = next(l for l in source.splitlines() if l.strip().startswith(f"{f.name}:"))
        assert "#" in line, f"Thresholds.{f.name} has no comment saying what it means"


# ---------------------------------------------------------------------------------------------
# the same frames read back from a real store (tracekit.store.collectives: constant columns not read,
# text as codes)


def _store(tmp_path, runs: dict[str, pl.DataFrame]):
    from tracekit.store.db import connect

    con = connect(tmp_path / "store.duckdb")
    for run_id, frame in runs.items():
        con.register("rows", frame.to_arrow())
        con.execute("INSERT INTO collectives BY NAME SELECT ? AS run_id, * FROM rows", [run_id])
        con.unregister("rows")
    return con


def _plain(con, run_id: str) -> pl.DataFrame:
    from tracekit.store import collectives as q

    return pl.from_arrow(con.sql(q._COLLECTIVES_SQL, params={"run": run_id}).to_arrow_table())  # type: ignore[return-value]


def test_a_run_read_back_from_the_store_has_the_same_rows_and_findings(tmp_path) -> None:
    import pyarrow as pa

    from tracekit.analysis.collectives import frames_from_store
    from tracekit.store import collectives as q

    run = build(late={2: (10, 40)})
    other = build(world=8, steps=3).collectives.with_columns(  # another run, whose values must not leak in
        world_size=pl.lit(8, pl.Int32), process_group=pl.lit("pg1"), op=pl.lit("broadcast"), peer=pl.lit(3, pl.Int32),
        error=pl.lit("NCCL timeout"), ok=pl.lit(False), source=pl.lit("call"))
    con = _store(tmp_path, {"other": other, "run": run.collectives})
    read = frames_from_store(con, "run").collectives
    plain = _plain(con, "run")
    assert as_read_plainly(read, plain).equals(plain)
    assert as_read_plainly(read, plain).equals(run.collectives.drop("async_op"))
    table = q.collectives_table(con, "run")  # one value or null throughout in this run: not read
    for name in ("world_size", "process_group", "op", "bytes", "ok", "peer", "source", "error"):
        assert pa.types.is_run_end_encoded(table.schema.field(name).type), name
    from_store = RunFrames(collectives=read, steps=run.steps, heartbeats=run.heartbeats)
    assert [f.to_dict() for f in detect(from_store)] == [f.to_dict() for f in detect(run)]
    assert [f.subject for f in detect(from_store)] == ["rank:2"]
    con.close()


@pytest.mark.parametrize("last", ["other value", "null", "same"])
def test_a_column_is_left_unread_only_when_every_row_of_the_run_has_its_one_value(tmp_path, last: str) -> None:
    """Which columns are constant is found from the first row and an EXISTS per column (no pass over the
    rows): one row that differs, last in the run, or a null after values, makes the column read."""
    import pyarrow as pa

    from tracekit.store import collectives as q

    n = 320  # 4 ranks x 20 steps x 4
    value = {"other value": (7, "call", True), "null": (None, None, None), "same": (4, "ddp", False)}[last]
    frame = build(world=4, steps=20, per_step=4).collectives.drop("async_op").with_columns(
        world_size=pl.Series([4] * (n - 1) + [value[0]], dtype=pl.Int32),
        source=pl.Series(["ddp"] * (n - 1) + [value[1]], dtype=pl.String),
        nonfinite=pl.Series([False] * (n - 1) + [value[2]], dtype=pl.Boolean),
        peer=pl.Series([None] * (n - 1) + [value[0]], dtype=pl.Int32))  # null until the last row
    con = _store(tmp_path, {"run": frame, "after": frame.head(5).with_columns(world_size=pl.lit(9, pl.Int32))})
    table = q.collectives_table(con, "run")
    constant = last == "same"
    for name in ("world_size", "source", "nonfinite"):
        assert pa.types.is_run_end_encoded(table.schema.field(name).type) == constant, name
    assert pa.types.is_run_end_encoded(table.schema.field("peer").type) == (last == "null")  # null throughout
    read = q.to_polars(table)
    assert as_read_plainly(read, _plain(con, "run")).equals(_plain(con, "run"))
    con.close()


@pytest.mark.parametrize("values, code", [(2, "uint8"), (256, "uint8"), (257, None)])
def test_text_codes_are_the_narrowest_integer_and_round_trip_at_the_boundaries(tmp_path, values: int, code) -> None:
    import pyarrow as pa

    from tracekit.store import collectives as q

    frame = build(world=4, steps=80, per_step=4).collectives.drop("async_op")  # 1,280 rows
    names = [f"op {i:03d} é" for i in range(values)]  # the last value is the highest code
    frame = frame.with_columns(op=pl.Series([names[i % values] for i in range(frame.height)], dtype=pl.String))
    con = _store(tmp_path, {"run": frame})
    table = q.collectives_table(con, "run")
    kind = table.schema.field("op").type
    if code is None:  # more values than are coded: read as text
        assert pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    else:
        assert pa.types.is_dictionary(kind) and str(kind.index_type) == code
    read = q.to_polars(table)
    assert as_read_plainly(read, _plain(con, "run")).equals(_plain(con, "run")) and set(read["op"].unique()) == set(names)
    con.close()


@pytest.mark.parametrize("index", ["uint8", "int16", "uint32"])
def test_coded_text_becomes_an_enum_whatever_width_its_codes_cross_in(index: str) -> None:
    """Codes of polars' own enum width are handed over as polars' Arrow form of the enum; codes of another
    width (another polars, another reader) are gathered into it: both give the same enum column, nulls kept,
    and keep the table's chunks."""
    import pyarrow as pa

    from tracekit.store import collectives as q

    values = pa.array(["call", "ddp", "zeta é"])
    chunks = [pa.array(codes, getattr(pa, index)()) for codes in ([0, 1, None, 2], [2, 2, 1])]
    table = pa.table({"rank": pa.chunked_array([pa.array([0, 1, 2, 3], pa.int32()), pa.array([4, 5, 6], pa.int32())]),
                      "source": pa.chunked_array([pa.DictionaryArray.from_arrays(c, values) for c in chunks])})
    read = q.to_polars(table)
    assert read.schema["source"] == pl.Enum(["call", "ddp", "zeta é"])
    assert read["source"].to_list() == ["call", "ddp", None, "zeta é", "zeta é", "zeta é", "ddp"]
    assert read["rank"].to_list() == list(range(7)) and read["source"].n_chunks() == read["rank"].n_chunks() == 2
    assert read.filter(pl.col("source") == "ddp")["rank"].to_list() == [1, 6]


@pytest.mark.parametrize("out_of_range", [2**31, -(2**31) - 1, None])
def test_counters_cross_as_32_bit_only_when_every_value_of_the_run_fits(tmp_path, out_of_range) -> None:
    import pyarrow as pa

    from tracekit.store import collectives as q

    frame = build(world=4, steps=20, per_step=4).collectives.drop("async_op")
    last = frame.height - 1
    if out_of_range is not None:  # one message size out of the 32-bit range, last in the run
        frame = frame.with_columns(bytes=pl.when(pl.int_range(pl.len()) == last).then(out_of_range)
                                   .otherwise(pl.col("bytes") + pl.int_range(pl.len())))
    else:
        frame = frame.with_columns(bytes=pl.col("bytes") + pl.int_range(pl.len()))
    con = _store(tmp_path, {"run": frame, "big": frame.head(3).with_columns(seq=pl.lit(2**40))})  # another run's values
    table = q.collectives_table(con, "run")
    assert table.schema.field("seq").type == pa.int32() and table.schema.field("step").type == pa.int32()
    assert table.schema.field("bytes").type == (pa.int64() if out_of_range is not None else pa.int32())
    read = q.to_polars(table)
    assert as_read_plainly(read, _plain(con, "run")).equals(_plain(con, "run"))
    if out_of_range is not None:
        assert read["bytes"][last] == out_of_range
    con.close()


def test_an_empty_or_one_row_run_reads_back_like_a_plain_read(tmp_path) -> None:
    from tracekit.store import collectives as q

    frame = build(world=2, steps=2, per_step=1).collectives.drop("async_op")
    con = _store(tmp_path, {"run": frame.head(1), "more": frame})
    for run_id in ("run", "nothing"):
        read = q.to_polars(q.collectives_table(con, run_id))
        assert read.schema == _plain(con, run_id).schema and read.equals(_plain(con, run_id))
    assert q.to_polars(q.collectives_table(con, "nothing")).height == 0
    con.close()


def test_reading_a_run_does_not_import_pandas(tmp_path) -> None:
    """pyarrow's constructors from Python values import pandas where it is installed: 0.3 s of a 0.3 s read."""
    import subprocess
    import sys

    pytest.importorskip("pandas")
    con = _store(tmp_path, {"run": build(world=2, steps=4).collectives})
    con.close()
    code = ("import sys; from tracekit.store.db import connect; from tracekit.analysis.collectives import frames_from_store\n"
            f"con = connect({str(tmp_path / 'store.duckdb')!r}, read_only=True)\n"
            "f = frames_from_store(con, 'run'); assert f.collectives.height == 32, f.collectives.height\n"
            "print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
