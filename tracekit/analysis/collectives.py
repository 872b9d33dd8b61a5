"""C4-style collective-anomaly detection: name the straggler, throttled, hung, crashed or non-finite rank and the slow link.

Data-parallel training is *periodic* (every step repeats the same collectives) and *homogeneous*
(every rank issues the same ones), so the same collective -- same process group, same sequence
number -- can be compared across ranks, and each rank against its peers and its own history:

=============  ==========================================================================================
finding        evidence
=============  ==========================================================================================
straggler      one rank enters the shared collectives last, step after step, by more than the job's
               own arrival noise (and so waits least); its backward pass runs at its usual pace
throttle       the rank's threads wake up late, heartbeat after heartbeat, far later than its peers' (its
               heartbeat thread measures its own scheduling lag): the whole process is starved of CPU, not
               merely busy; usually it also arrives last, but a stop/continue duty cycle lets it catch up
               now and then, so the scheduling lag alone suffices
hang           the other ranks entered collective N (and timed out or are still waiting); this rank
               never entered N, yet its heartbeats show it alive after they had entered
crash          the same missing rank, but its records and heartbeats stop before the others failed
nonfinite      the first bucket whose *local* (pre-reduction) gradients were non-finite was on this
               rank alone; everyone else only turned non-finite after the all-reduce spread it
slow_link      the pairwise probe (``tracekit.torch.probe_links``) measured one direction of one pair
               far slower than every other pair of the same round, in consecutive rounds
=============  ==========================================================================================

Every detector is a plain function ``f(frames, thresholds) -> list[Finding]``; :func:`detect` runs an
injectable list of them (HTA's habit) and returns findings most certain first; every knob is a field of
:class:`Thresholds`. Everything is vectorised with polars: 8 M collective rows (1,024 ranks x 1,000
steps x 8) take a few seconds.

Over 600 lines because it answers one question with six detectors that share the frames, the arrival
matrix and the finding merge; split by detector they would each import the same private helpers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl

__all__ = [
    "RunFrames", "Finding", "Thresholds", "Detector", "DEFAULT_DETECTORS", "frames_from_store", "detect",
    "detect_run", "detect_stragglers", "detect_missing_rank", "detect_nonfinite", "detect_slow_links",
    "naive_slowest_rank", "infer_period", "Arrivals", "arrivals", "detect_first_exit",
]

MS = 1_000_000
KINDS = ("straggler", "throttle", "hang", "crash", "nonfinite", "slow_link")


@dataclass(frozen=True)
class RunFrames:
    """The canonical per-rank frames of one training run (one row per record, times in ns)."""

    collectives: pl.DataFrame
    steps: pl.DataFrame = field(default_factory=pl.DataFrame)
    probes: pl.DataFrame = field(default_factory=pl.DataFrame)
    heartbeats: pl.DataFrame = field(default_factory=pl.DataFrame)
    rank_exits: pl.DataFrame = field(default_factory=pl.DataFrame)
    clock_offsets: dict[str, int] | None = None  # per host, ns (analysis.clock); None: not yet aligned
    worker_exits: pl.DataFrame = field(default_factory=pl.DataFrame)  # as torchrun's launcher saw them

    @property
    def world_size(self) -> int:
        c = self.collectives
        sizes = []
        if c.height and "world_size" in c.columns and c["world_size"].max() is not None:
            sizes.append(int(c["world_size"].max()))
        if c.height:
            sizes.append(int(c["rank"].max()) + 1)
        return max(sizes, default=0)


@dataclass(frozen=True)
class Finding:
    """One anomaly: what (kind), where (subject), since when (first_step), how sure, and why."""

    kind: str
    subject: str
    first_step: int | None
    confidence: float
    evidence: dict[str, Any]
    summary: str

    @property
    def score(self) -> float:
        return self.confidence

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["score"] = self.confidence
        return out


@dataclass(frozen=True)
class Thresholds:
    """The detectors' knobs (the collectives analysis's parameter object); the defaults are what the
    accuracy benchmark (benchmarks/bench_collectives_accuracy.py) was measured with."""

    noise_k: float = 3.5              # a late arrival must exceed k robust standard deviations of arrival lag
    floor_ns: int = 5 * MS            # ... and this absolute floor
    margin: float = 0.5               # ... and the second-latest rank by this fraction of the threshold
    window: int = 5                   # a straggler is late in `min_in_window` of `window` consecutive steps
    min_in_window: int = 4            # (also: a throttle's scheduling lag, heartbeat by heartbeat)
    min_fraction: float = 0.5         # ... and in at least this fraction of all steps since its onset
    throttle_ratio: float = 5.0       # a throttled rank's threads wake this many times later than its peers' ...
    throttle_lag_ns: int = 20 * MS    # ... and this late: 4 GIL switch intervals. Measured on 11 throttled 4-rank
    # jobs (fixtures/ddp_job.py, 90 % stopped): the starved rank's median lag 38-78 ms, its peers' largest 5.7 ms;
    # at 40 ms, a run whose starved rank lagged 28-67 ms had 3 of 7 beats over it and no finding (a CI failure)
    probe_ratio: float = 4.0          # a probed direction this many times the round's median ...
    probe_excess_ns: int = 10 * MS    # ... and this much slower is a slow link
    probe_min_rounds: int = 2         # a slow link is slow in at least this many probe rounds ...
    probe_min_fraction: float = 0.6   # ... and in this fraction of the rounds from its onset on
    warmup_steps: int = 2             # late wake-ups before this step are warm-up (lazy init, DDP's bucket rebuild)
    hang_alive_ns: int = 1_000 * MS   # a missing rank alive this long after the others entered is hung


Detector = Callable[[RunFrames, Thresholds], list[Finding]]
HEARTBEAT_BIN_NS = 500 * MS  # capture's heartbeat period (a fact of capture, not a knob): one beat per rank per bin


# ---------------------------------------------------------------------------------------------
# loading


def frames_from_store(con: Any, run_id: str) -> RunFrames:
    """The run's frames, read through the store's typed queries."""
    from tracekit.store import collectives as q

    return RunFrames(
        collectives=q.to_polars(q.collectives_table(con, run_id)),
        steps=pl.from_arrow(q.steps_table(con, run_id)),  # type: ignore[arg-type]
        probes=pl.from_arrow(q.probes_table(con, run_id)),  # type: ignore[arg-type]
        heartbeats=pl.from_arrow(q.heartbeats_table(con, run_id)),  # type: ignore[arg-type]
        rank_exits=pl.from_arrow(q.rank_exits_table(con, run_id)),  # type: ignore[arg-type]
        worker_exits=pl.from_arrow(q.worker_exits_table(con, run_id)),  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------------------------------------
# period


def infer_period(ops: Sequence[Any], *, max_period: int = 256, agreement: float = 0.9) -> int | None:
    """The smallest p such that the op sequence repeats with period p (C4's periodicity), or None.

    Examples
    --------
    >>> infer_period(["ar", "ar", "bc"] * 10)
    3
    >>> infer_period(["ar", "bc", "ag", "x"]) is None
    True
    """
    values = np.asarray([hash(v) for v in ops], dtype=np.int64)
    n = len(values)
    for p in range(1, min(max_period, n // 3) + 1):
        if float(np.mean(values[p:] == values[:-p])) >= agreement:
            return p
    return None


def _with_steps(c: pl.DataFrame) -> pl.DataFrame:
    """Fill a missing step from the learned period of the default group's op sequence."""
    if c.height == 0 or c["step"].null_count() == 0:
        return c
    ref_rank = int(c["rank"].min())
    seq = c.filter((pl.col("rank") == ref_rank) & pl.col("peer").is_null()).sort("seq")
    period = infer_period([f"{o}:{b}" for o, b in zip(seq["op"].to_list(), seq["bytes"].to_list())])
    offset = 0
    if period in (None, 1) and seq.height > 3:
        # identical collectives: the period shows in time instead, as the long gap between steps
        gaps = np.diff(seq["enter_ns"].to_numpy().astype(np.int64))
        big = gaps > 2 * np.median(gaps)
        by_gap = infer_period(big.tolist())
        if by_gap and by_gap > 1 and big.any():
            period, offset = by_gap, (int(np.argmax(big)) + 1) % by_gap
    if period is None:
        return c.with_columns(pl.col("step").fill_null(pl.col("seq")))
    return c.with_columns(pl.col("step").fill_null((pl.col("seq") - offset) // period))


# ---------------------------------------------------------------------------------------------
# straggler and throttle


@dataclass(frozen=True)
class Arrivals:
    """Per step and rank (dense matrices): mean arrival lag behind the median rank, and mean wait, in ns,
    over the collectives every rank completed; NaN where a rank has none."""

    steps: np.ndarray  # (S,)
    lag: np.ndarray    # (S, world)
    wait: np.ndarray   # (S, world)


def arrivals(frames: RunFrames) -> Arrivals | None:
    """Compare each collective (group, seq) across ranks; vectorised with numpy (one sort of the keys)."""
    world = frames.world_size
    c = frames.collectives
    if c.height == 0 or world < 2:
        return None
    done = pl.col("peer").is_null() & pl.col("ok") & pl.col("exit_ns").is_not_null()
    if c["step"].null_count():
        c = _with_steps(c.filter(done))
    else:  # only the columns needed, without copying every column of every row first
        c = c.lazy().filter(done).select("process_group", "seq", "rank", "step", "enter_ns", "exit_ns").collect()
    if c.height == 0:
        return None
    t0 = int(c["enter_ns"].min())
    c = c.select(
        group=pl.col("process_group").cast(pl.Categorical).to_physical().cast(pl.Int64), seq=pl.col("seq"),
        rank=pl.col("rank"), step=pl.col("step").fill_null(-1),
        enter=(pl.col("enter_ns") - t0).cast(pl.Float64), exit=(pl.col("exit_ns") - t0).cast(pl.Float64))
    keys, inverse = _collective_index(c["group"].to_numpy(), c["seq"].to_numpy())
    step_of = np.zeros(len(keys), dtype=np.int64)
    step_of[inverse] = c["step"].to_numpy()
    # one flat (collective, rank) index, built in place: 33 M rows make every temporary array cost
    flat = inverse if inverse.flags.writeable and inverse.dtype == np.int64 else inverse.astype(np.int64)
    flat *= world
    flat += c["rank"].to_numpy()
    enter = np.full((len(keys), world), np.nan)
    leave = np.full((len(keys), world), np.nan)
    enter.reshape(-1)[flat] = c["enter"].to_numpy()
    leave.reshape(-1)[flat] = c["exit"].to_numpy()
    del flat, c
    complete = ~np.isnan(enter).any(axis=1)
    if not complete.all():
        enter, leave, step_of = enter[complete], leave[complete], step_of[complete]
    if len(step_of) == 0:
        return None
    wait = np.subtract(leave, enter, out=leave)  # in place: the matrices are the detector's largest arrays
    median = np.empty((len(enter), 1))
    for i in range(0, len(enter), 256):  # in row blocks: np.median copies what it partitions
        median[i:i + 256, 0] = np.median(enter[i:i + 256], axis=1)
    lag = np.subtract(enter, median, out=enter)
    if np.any(np.diff(step_of) < 0):  # usually already in step order (sequence numbers grow with steps)
        order = np.argsort(step_of, kind="stable")
        step_of, lag, wait = step_of[order], lag[order], wait[order]
    steps, start = np.unique(step_of, return_index=True)
    count = np.diff(np.append(start, len(step_of)))[:, None]
    return Arrivals(steps, np.add.reduceat(lag, start, axis=0) / count, np.add.reduceat(wait, start, axis=0) / count)


def _collective_index(group: np.ndarray, seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct (group, seq) keys in order, each row's index among them), like np.unique(key,
    return_inverse=True) but in linear time when sequence numbers are dense (they count up per group):
    33 M rows take one pass instead of a sort."""
    lo = int(seq.min())
    span = int(seq.max()) - lo + 1
    key = seq.astype(np.int64)  # a copy, then built in place (each 33 M-row temporary costs ~0.3 s)
    key -= lo
    groups = int(group.max()) + 1
    if groups > 1:
        key += group * span
    slots = groups * span
    if slots > max(4 * len(key), 1 << 20):  # sparse keys: sort
        return np.unique(key, return_inverse=True)
    present = np.zeros(slots, dtype=bool)
    present[key] = True
    if present.all():  # every key present: each row's index is its key
        return np.arange(slots), key
    position = np.cumsum(present) - 1
    return np.flatnonzero(present), position[key]


def _bucket_span(frames: RunFrames, ranks: Sequence[int]) -> pl.DataFrame:
    """Per (step, rank) of `ranks`: time from the first to the last DDP bucket all-reduce issued (backward compute)."""
    c = frames.collectives
    if c.height == 0 or "source" not in c.columns:
        return pl.DataFrame()
    ddp = c.filter(pl.col("rank").is_in(list(ranks))).filter(pl.col("source").cast(pl.String).str.starts_with("ddp"))
    if ddp.height == 0:
        return pl.DataFrame()
    return ddp.group_by("step", "rank").agg(span=pl.col("enter_ns").max() - pl.col("enter_ns").min(), n=pl.len())


def detect_stragglers(frames: RunFrames, th: Thresholds) -> list[Finding]:
    """The rank that arrives last at the shared collectives, persistently and by more than the noise."""
    arr = arrivals(frames)
    if arr is None or arr.lag.shape[1] < 2:
        return []
    values = arr.lag[~np.isnan(arr.lag)]
    med = float(np.median(values))
    sigma = 1.4826 * float(np.median(np.abs(values - med)))
    threshold = max(th.noise_k * sigma, float(th.floor_ns))
    filled = np.nan_to_num(arr.lag, nan=-np.inf)
    steps = arr.steps
    ranks = np.argmax(filled, axis=1)
    lag = filled[np.arange(len(steps)), ranks]
    second = np.partition(filled, -2, axis=1)[:, -2]
    margin = lag - np.where(np.isfinite(second), second, 0.0)
    flagged = (lag > threshold) & (margin > threshold * th.margin)
    n = len(steps)
    hits = np.zeros(n, dtype=int)
    for d in range(min(th.window, n)):
        same = np.zeros(n, dtype=bool)
        same[: n - d] = flagged[d:] & (ranks[d:] == ranks[: n - d])
        hits += same
    remaining = np.minimum(th.window, n - np.arange(n))
    need = np.minimum(th.min_in_window, np.maximum(remaining - 1, 2))
    onset_mask = flagged & (hits >= need)
    findings = []
    candidates = np.unique(ranks[onset_mask])
    peers_sample = [r for r in range(min(arr.lag.shape[1], 9))]
    spans = _bucket_span(frames, sorted({*map(int, candidates), *peers_sample})) if len(candidates) else pl.DataFrame()
    for rank in candidates:
        first = int(np.argmax(onset_mask & (ranks == rank)))
        onset = int(steps[first])
        after = steps >= onset
        mine = flagged & (ranks == rank) & after
        frac = float(mine.sum() / after.sum())
        if mine.sum() < th.min_in_window or frac < th.min_fraction:
            continue
        median_lag = float(np.median(lag[mine]))
        strength = min(1.0, median_lag / (2 * threshold))
        confidence = round(min(0.99, 0.5 * frac + 0.5 * strength), 3)
        waits = arr.wait[after]
        own_wait = _nanmedian(waits[:, rank])
        peer_wait = _nanmedian(np.delete(waits, rank, axis=1))
        kind, compute = _classify_slow_rank(frames, spans, int(rank), onset, th)
        evidence = {
            "late_in_steps": int(mine.sum()), "steps_since_onset": int(after.sum()),
            "median_lag_ms": round(median_lag / MS, 2), "threshold_ms": round(threshold / MS, 2),
            "noise_sigma_ms": round(sigma / MS, 2),
            "median_wait_ms": _ms(own_wait), "peers_median_wait_ms": _ms(peer_wait), **compute,
        }
        what = (f"is starved of CPU: its threads wake {compute.get('sched_lag_ms')} ms late "
                f"(peers {compute.get('peers_sched_lag_ms')} ms)" if kind == "throttle"
                else "does extra work while its threads stay schedulable, so it is a compute straggler")
        findings.append(Finding(
            kind, f"rank:{int(rank)}", onset, confidence, evidence,
            f"rank {int(rank)} arrives last at the shared collectives in {int(mine.sum())} of {int(after.sum())} "
            f"steps since step {onset} (median {median_lag / MS:.1f} ms behind, threshold {threshold / MS:.1f} ms) "
            f"and waits least ({_ms(own_wait)} vs {_ms(peer_wait)} ms); it {what}",
        ))
    return findings


def _nanmedian(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(np.median(values)) if values.size else None


def _ms(value: Any) -> float | None:
    return None if value is None else round(float(value) / MS, 2)


def _classify_slow_rank(frames: RunFrames, spans: pl.DataFrame, rank: int, onset: int,
                        th: Thresholds) -> tuple[str, dict[str, Any]]:
    """Throttle if the rank is starved of CPU: its heartbeat thread wakes up late, far later than its peers'.

    Extra work on a rank keeps its own threads schedulable; a CPU quota, SIGSTOP or a noisy neighbour
    does not. (Backward-compute time between buckets is reported too, but on an oversubscribed host
    the other ranks' spinning waits slow a straggler's backward as well, so it does not decide.)
    """
    evidence: dict[str, Any] = {}
    if spans.height:
        after = spans.filter((pl.col("n") >= 2) & (pl.col("step") >= onset))
        own = after.filter(pl.col("rank") == rank)["span"].median()
        peers = after.filter(pl.col("rank") != rank)["span"].median()
        if own is not None and peers is not None:
            evidence["backward_compute_ratio_vs_peers"] = round(float(own) / max(float(peers), 1.0), 2)
    hb = frames.heartbeats
    if hb.height == 0 or "sched_lag_ns" not in hb.columns:
        return "straggler", evidence
    since = frames.collectives.filter((pl.col("rank") == rank) & (pl.col("step") >= onset))["enter_ns"].min()
    if since is None:
        return "straggler", evidence
    after = hb.filter((pl.col("ts_ns") >= since) & pl.col("sched_lag_ns").is_not_null())
    own = after.filter(pl.col("rank") == rank)["sched_lag_ns"].median()
    peers = after.filter(pl.col("rank") != rank)["sched_lag_ns"].median()
    if own is None or peers is None:
        return "straggler", evidence
    evidence["sched_lag_ms"] = _ms(own)
    evidence["peers_sched_lag_ms"] = _ms(peers)
    throttled = float(own) >= max(th.throttle_ratio * float(peers), float(th.throttle_lag_ns))
    return ("throttle" if throttled else "straggler"), evidence


def detect_starved_ranks(frames: RunFrames, th: Thresholds) -> list[Finding]:
    """Throttle from scheduling lag alone: a rank whose threads wake up late heartbeat after heartbeat,
    far later than its peers' at the same time, is starved of CPU, even in the steps where it happens
    not to arrive last (a quota or a stop/continue duty cycle lets it catch up now and then, so late
    arrivals alone can take several steps to become persistent)."""
    hb = frames.heartbeats
    if hb.height == 0 or "sched_lag_ns" not in hb.columns or frames.world_size < 2:
        return []
    # steps 0 and 1 are warm-up (lazy initialization; DDP rebuilds its buckets after step 0): a rank's
    # threads may wake late then without being starved
    hb = hb.filter(pl.col("sched_lag_ns").is_not_null() & (pl.col("step") >= th.warmup_steps))
    if hb.height == 0:
        return []
    t0 = int(hb["ts_ns"].min())
    # a beat's step: the one in progress at its worst wake-up (capture since lag_step), else at the beat
    at = pl.coalesce("lag_step", "step") if "lag_step" in hb.columns else pl.col("step")
    per = (hb.with_columns(bin=(pl.col("ts_ns") - t0) // HEARTBEAT_BIN_NS, at=at)
           .group_by("bin", "rank").agg(lag=pl.col("sched_lag_ns").max(), step=pl.col("at").min()))
    stats = per.group_by("bin").agg(med=pl.col("lag").median(), total=pl.col("lag").sum(), n=pl.len())
    # the peers at the same time: the other rank of two, else the median rank (robust to the one starved)
    per = (per.join(stats, on="bin").filter(pl.col("n") >= 2)
           .with_columns(peers=pl.when(pl.col("n") == 2).then(pl.col("total") - pl.col("lag")).otherwise(pl.col("med")))
           .with_columns(flag=pl.col("lag") >= pl.max_horizontal(pl.col("peers") * th.throttle_ratio,
                                                                 pl.lit(th.throttle_lag_ns)))
           .sort("rank", "bin"))
    findings = []
    for rank in per.filter(pl.col("flag"))["rank"].unique().sort():
        mine = per.filter(pl.col("rank") == rank)
        flag = mine["flag"].to_numpy()
        n = len(flag)
        onset = None
        for i in np.flatnonzero(flag):
            window = flag[i:i + th.window]
            if window.sum() >= min(th.min_in_window, max(n - i - 1, 2)):
                onset = int(i)
                break
        if onset is None:
            continue
        since = flag[onset:]
        frac = float(since.mean())
        if since.sum() < th.min_in_window or frac < th.min_fraction:
            continue
        lags = mine["lag"].to_numpy()[onset:][since]
        peers = mine["peers"].to_numpy()[onset:][since]
        own, others = float(np.median(lags)), float(np.median(peers))
        confidence = round(min(0.99, 0.5 * frac + 0.5 * min(1.0, own / (2 * th.throttle_lag_ns))), 3)
        first = int(mine["step"][onset])
        evidence = {"sched_lag_ms": _ms(own), "peers_sched_lag_ms": _ms(others),
                    "starved_heartbeats": int(since.sum()), "heartbeats_since_onset": len(since)}
        findings.append(Finding(
            "throttle", f"rank:{int(rank)}", first, confidence, evidence,
            f"rank {int(rank)} is starved of CPU from step {first}: its threads wake {_ms(own)} ms late "
            f"(peers {_ms(others)} ms) in {int(since.sum())} of {len(since)} heartbeats since",
        ))
    return findings


def _merge_slow_rank_findings(findings: list[Finding]) -> list[Finding]:
    """One finding per slow rank: starvation (throttle) outranks a straggler reading of the same rank,
    and two throttle readings (late arrivals, scheduling lag) merge into the earlier, surer one."""
    throttled: dict[str, list[Finding]] = {}
    for f in findings:
        if f.kind == "throttle":
            throttled.setdefault(f.subject, []).append(f)
    out = [f for f in findings if not (f.kind in ("straggler", "throttle") and f.subject in throttled)]
    for subject, same in throttled.items():
        steps = [f.first_step for f in same if f.first_step is not None]
        best = max(same, key=lambda f: f.confidence)
        evidence = {k: v for f in sorted(same, key=lambda f: f.confidence) for k, v in f.evidence.items()}
        first = min(steps) if steps else None
        summary = best.summary if first == best.first_step else f"{best.summary} (starved from step {first})"
        out.append(Finding("throttle", subject, first, best.confidence, evidence, summary))
    return out


# ---------------------------------------------------------------------------------------------
# hang and crash


def detect_missing_rank(frames: RunFrames, th: Thresholds) -> list[Finding]:
    """A rank that never entered the collective the others are stuck in (or failed at): hung or crashed."""
    world = frames.world_size
    c = frames.collectives
    if c.height == 0 or world < 2:
        return []
    per_group = (c.lazy().filter(pl.col("peer").is_null()).group_by("process_group", "rank")
                 .agg(max_seq=pl.col("seq").max(), n=pl.len()).collect())
    group = per_group.group_by("process_group").agg(pl.col("n").sum()).sort("n", descending=True)["process_group"][0]
    last = per_group.filter(pl.col("process_group") == group).select("rank", "max_seq")
    hb = frames.heartbeats
    if hb.height:  # a rank still waiting has no record of its in-flight collective yet, but a heartbeat
        waiting = hb.filter(pl.col("inflight_seq").is_not_null()).group_by("rank").agg(
            max_seq=pl.col("inflight_seq").max())
        last = pl.concat([last, waiting.cast(last.schema)]).group_by("rank").agg(pl.col("max_seq").max())
    seen = dict(zip(last["rank"].to_list(), last["max_seq"].to_list()))
    max_seq = max(seen.values())
    per_rank = {r: seen.get(r, -1) for r in range(world)}
    lowest = min(per_rank.values())
    if lowest >= max_seq:
        return []
    culprits = [r for r, s in per_rank.items() if s == lowest]
    # the rows the rest needs: the main group's past the culprits' last (few, unless nobody is missing)
    g = c.lazy().filter(pl.col("peer").is_null() & (pl.col("process_group") == group)
                        & (pl.col("seq") > lowest)).collect()
    # where the others got stuck: their first failed or in-flight collective past the culprit's last
    # (the culprit's own last records may be up to one flush interval older than its death)
    blocked = g.filter(~pl.col("ok").fill_null(False) & (pl.col("seq") > lowest) & ~pl.col("rank").is_in(culprits))
    stuck_seq = int(blocked["seq"].min()) if blocked.height else lowest + 1
    if hb.height and not blocked.height:
        waiting_at = hb.filter(pl.col("inflight_seq") > lowest)["inflight_seq"].min()
        stuck_seq = int(waiting_at) if waiting_at is not None else stuck_seq
    others = g.filter((pl.col("seq") == stuck_seq) & ~pl.col("rank").is_in(culprits))
    enters = others["enter_ns"].to_list()
    if hb.height:
        enters += hb.filter((pl.col("inflight_seq") == stuck_seq) & ~pl.col("rank").is_in(culprits))[
            "inflight_since_ns"].to_list()
    enters = [e for e in enters if e is not None]
    others_enter = min(enters) if enters else None
    failed = others.filter(~pl.col("ok").fill_null(False))
    op = others["op"][0] if others.height else None
    step = others["step"].min() if others.height else None
    findings = []
    for rank in culprits:
        alive = _last_alive(frames, rank)
        sigterm = None
        if hb.height:
            st = hb.filter((pl.col("rank") == rank) & (pl.col("state") == "sigterm"))["ts_ns"]
            sigterm = st.max() if st.len() else None
        alive_after = None if alive is None or others_enter is None else alive - others_enter
        hung = alive_after is not None and (
            alive_after >= th.hang_alive_ns or (sigterm is not None and sigterm > others_enter))
        first_step = step if step is not None else _rank_last_step(frames, rank) + 1
        clean = _clean_exit(frames, rank)
        # while the records are still arriving (a live run), a rank silent for less than the hang threshold
        # plus one heartbeat may still show itself alive: crash or hang is not yet decided, unless its exit
        # is on record. Silent: since its own last record or the others' entry, whichever is later -- a live rank's
        # newest beat in the store trails the others' newest records by up to a beat and a flush (more
        # under load), so a hung rank read then looked crashed (a flake of the live test, beside a busy loop)
        last_heard = others_enter if alive is None or others_enter is None else max(alive, others_enter)
        silent = None if last_heard is None else _latest_record(frames) - last_heard
        undecided = (not hung and silent is not None and clean is None and not _exit_recorded(frames, rank)
                     and silent < th.hang_alive_ns + HEARTBEAT_BIN_NS)
        evidence = {
            "process_group": group, "stuck_seq": stuck_seq, "op": op, "rank_last_seq": lowest,
            "others_last_seq": max_seq, "ranks_waiting": sorted(set(others["rank"].to_list())),
            "ranks_failed": sorted(set(failed["rank"].to_list())),
            "errors": sorted(set(e for e in failed["error"].to_list() if e))[:3] if failed.height else [],
            "alive_after_others_entered_ms": _ms(alive_after), "received_sigterm": sigterm is not None,
            "clean_exit": clean,
        }
        if undecided:
            evidence["undecided"] = True  # crash or hang: later records decide (the live follower waits)
        confidence = round((0.95 if failed.height or others_enter is not None else 0.7) / len(culprits), 3)
        if hung:
            summary = (f"rank {rank} never entered {op or 'collective'} #{stuck_seq} of group {group} that ranks "
                       f"{evidence['ranks_waiting']} entered; it stayed alive {alive_after / MS / 1000:.1f} s "
                       "after they did (heartbeats), so it hung before the collective")
        else:
            summary = (f"rank {rank}'s records stop before {op or 'collective'} #{stuck_seq} of group {group}; "
                       f"{'it did not exit cleanly; ' if clean is False else ''}"
                       f"the others failed waiting for it ({len(evidence['ranks_failed'])} ranks)")
        findings.append(Finding("hang" if hung else "crash", f"rank:{rank}", None if first_step is None else int(first_step),
                                confidence, evidence, summary))
    return findings


def _last_alive(frames: RunFrames, rank: int) -> int | None:
    times = []
    c = frames.collectives.filter(pl.col("rank") == rank)
    if c.height:
        times += [c["enter_ns"].max(), c["exit_ns"].max()]
    if frames.heartbeats.height:
        times.append(frames.heartbeats.filter(pl.col("rank") == rank)["ts_ns"].max())
    if frames.steps.height:
        times.append(frames.steps.filter(pl.col("rank") == rank)["end_ns"].max())
    times = [t for t in times if t is not None]
    return max(times) if times else None


def _latest_record(frames: RunFrames) -> int:
    """The newest time any rank's records reach (the run's 'now' as far as its records tell)."""
    times = [frame[col].max() for frame, col in ((frames.collectives, "exit_ns"), (frames.collectives, "enter_ns"),
                                                (frames.heartbeats, "ts_ns"), (frames.steps, "end_ns"))
             if frame.height and col in frame.columns]
    return max((int(t) for t in times if t is not None), default=0)


def _exit_recorded(frames: RunFrames, rank: int) -> bool:
    """The launcher saw the rank's worker exit."""
    w = frames.worker_exits
    return bool(w.height) and "rank" in w.columns and w.filter(pl.col("rank") == rank).height > 0


def _rank_last_step(frames: RunFrames, rank: int) -> int:
    s = frames.collectives.filter(pl.col("rank") == rank)["step"].max()
    return int(s) if s is not None else -1


def _clean_exit(frames: RunFrames, rank: int) -> bool | None:
    e = frames.rank_exits
    if e.height == 0:
        return None
    row = e.filter(pl.col("rank") == rank)
    value = row["clean_exit"][0] if row.height else None
    return None if value is None else bool(value)  # None: not known (live, its files are still open)


# ---------------------------------------------------------------------------------------------
# non-finite gradients


def detect_nonfinite(frames: RunFrames, th: Thresholds) -> list[Finding]:
    """The rank whose local gradients went non-finite first (checked in the DDP hook before reducing)."""
    c = frames.collectives
    if c.height and "nonfinite" in c.columns and c["nonfinite"].any():
        bad = c.filter(pl.col("nonfinite").fill_null(False))
        group = bad.sort("seq")["process_group"][0]
        bad = bad.filter(pl.col("process_group") == group)
        first_seq = bad["seq"].min()
        culprits = sorted(bad.filter(pl.col("seq") == first_seq)["rank"].to_list())
        step = bad.filter(pl.col("seq") == first_seq)["step"].min()
        later = bad.filter(~pl.col("rank").is_in(culprits))
        spread_seq = later["seq"].min() if later.height else None
        where = f"bucket all-reduce #{first_seq} (step {step})"
    elif frames.steps.height and frames.steps["nonfinite"].fill_null(False).any():
        bad = frames.steps.filter(pl.col("nonfinite").fill_null(False))
        step = bad["step"].min()
        culprits = sorted(bad.filter(pl.col("step") == step)["rank"].to_list())
        later = bad.filter(~pl.col("rank").is_in(culprits))
        spread_seq, first_seq = None, None
        where = f"step {step}"
    else:
        return []
    world = max(frames.world_size, 1)
    localized = len(culprits) < world
    confidence = round((0.95 if localized else 0.2) / len(culprits), 3)
    evidence = {"first_seq": first_seq, "ranks_nonfinite_first": culprits,
                "others_nonfinite_from_seq": spread_seq, "others_nonfinite": sorted(set(later["rank"].to_list()))}
    return [Finding(
        "nonfinite", f"rank:{r}", None if step is None else int(step), confidence, evidence,
        f"rank {r}'s local gradients were non-finite before reduction at {where}"
        + (", before any other rank's; the all-reduce then spread them" if localized else
           ", on every rank at once: not localized to one rank"),
    ) for r in culprits]


# ---------------------------------------------------------------------------------------------
# slow link


def detect_slow_links(frames: RunFrames, th: Thresholds) -> list[Finding]:
    """The rank pair the pairwise probe measured far slower than the other pairs, round after round.

    A probe is slow when it takes `probe_ratio` x the round's median and `probe_excess_ns` more. A pair
    is a slow link when it is slow in most probe rounds from its onset on (scattered slow probes are
    noise). A rank that is persistently slow with two or more peers is a slow *rank*, not a link.
    """
    p = frames.probes
    if p.height == 0:
        return []
    p = p.with_columns(round_median=pl.col("dur_ns").median().over("round"))
    p = p.with_columns(
        slow=(pl.col("dur_ns") >= th.probe_ratio * pl.col("round_median"))
        & ((pl.col("dur_ns") - pl.col("round_median")) >= th.probe_excess_ns),
        a=pl.min_horizontal("src", "dst"), b=pl.max_horizontal("src", "dst"))
    rounds = p.group_by("round").agg(step=pl.col("step").min()).sort("round")
    round_index = {r: i for i, r in enumerate(rounds["round"].to_list())}
    per_pair = p.group_by("a", "b", "round").agg(
        slow=pl.col("slow").any(), dur=pl.col("dur_ns").max(), med=pl.col("round_median").first(),
        directions=pl.concat_str(pl.col("src"), pl.lit("->"), pl.col("dst")).filter(pl.col("slow")))
    persistent: dict[tuple[int, int], tuple[int, float]] = {}  # pair -> (onset round index, median ratio)
    for (a, b), rows in per_pair.filter(pl.col("slow")).group_by(["a", "b"]):
        flags = np.zeros(len(round_index), dtype=bool)
        flags[[round_index[r] for r in rows["round"].to_list()]] = True
        suffix_hits = np.cumsum(flags[::-1])[::-1]
        suffix_len = np.arange(len(flags), 0, -1)
        ok = flags & (suffix_hits >= th.probe_min_rounds) & (suffix_hits >= th.probe_min_fraction * suffix_len)
        if ok.any():
            persistent[(int(a), int(b))] = (int(np.argmax(ok)), float((rows["dur"] / rows["med"]).median()))
    # a rank slow with two or more peers alike is a slow rank (throttle), not a link; a weaker slow pair
    # sharing a rank with a much stronger one is that link's side effect
    by_rank: dict[int, list[tuple[float, tuple[int, int]]]] = {}
    for pair, (_onset, ratio) in persistent.items():
        for r in pair:
            by_rank.setdefault(r, []).append((ratio, pair))
    dropped: set[tuple[int, int]] = set()
    for entries in by_rank.values():
        entries.sort(reverse=True)
        if len(entries) >= 2 and entries[1][0] >= entries[0][0] / 2:
            dropped.update(pair for _ratio, pair in entries)
        else:
            dropped.update(pair for _ratio, pair in entries[1:])
    findings = []
    for (a, b), (onset_index, _ratio) in persistent.items():
        if (a, b) in dropped:
            continue
        onset_round = rounds["round"][onset_index]
        rows = per_pair.filter((pl.col("a") == a) & (pl.col("b") == b) & (pl.col("round") >= onset_round)
                               & pl.col("slow")).sort("round")
        since = len(round_index) - onset_index
        ratio = float((rows["dur"] / rows["med"]).median())
        first_step = rounds["step"][onset_index]
        directions = sorted({d for ds in rows["directions"].to_list() for d in ds})
        evidence = {"slow_rounds": rows.height, "rounds_since_onset": since,
                    "median_probe_ms": _ms(rows["dur"].median()), "median_other_pairs_ms": _ms(rows["med"].median()),
                    "ratio": round(ratio, 1), "slow_directions": directions,
                    "probe_bytes": int(p["bytes"][0] or 0), **_collective_slowdown(frames, first_step)}
        confidence = round(min(0.99, 0.5 * rows.height / since + 0.5 * min(1.0, math.log10(max(ratio, 1.0)))), 3)
        findings.append(Finding(
            "slow_link", f"link:{a}-{b}", None if first_step is None else int(first_step), confidence, evidence,
            f"the pairwise probe between ranks {a} and {b} ({', '.join(directions)}) took "
            f"{evidence['median_probe_ms']} ms, {ratio:.0f}x the other pairs ({evidence['median_other_pairs_ms']} ms), "
            f"in {rows.height} of {since} probe rounds since step {first_step}",
        ))
    return findings


def _collective_slowdown(frames: RunFrames, onset: Any) -> dict[str, Any]:
    """Collective time before/after onset, and the arrival spread (a slow link slows all, late-arrives none)."""
    arr = arrivals(frames)
    if arr is None or onset is None:
        return {}
    before = (arr.steps < onset) & (arr.steps > 0)
    after = arr.steps >= onset
    return {"collective_wait_before_ms": _ms(_nanmedian(arr.wait[before].ravel())),
            "collective_wait_after_ms": _ms(_nanmedian(arr.wait[after].ravel())),
            "median_arrival_lag_after_ms": _ms(_nanmedian(np.abs(arr.lag[after]).ravel()))}


# ---------------------------------------------------------------------------------------------
# running


def detect_first_exit(frames: RunFrames, th: Thresholds) -> list[Finding]:
    """The crashed rank as torchrun's launcher saw it: the first worker to fail, clearly before the others."""
    from tracekit.analysis.launcher import first_failure, next_step

    coll = frames.collectives
    waiting = (frozenset(coll.filter(pl.col("error").is_not_null())["rank"].unique().to_list())
               if coll.height and "error" in coll.columns else frozenset())
    found = first_failure(frames.worker_exits, lambda rank: next_step(frames, rank), waiting)
    return [] if found is None else [Finding(**found)]


DEFAULT_DETECTORS: tuple[Detector, ...] = (detect_missing_rank, detect_nonfinite, detect_slow_links, detect_stragglers,
                                           detect_starved_ranks, detect_first_exit)


def detect(
    frames: RunFrames, *, detectors: Sequence[Detector] = DEFAULT_DETECTORS, thresholds: Thresholds | None = None,
) -> list[Finding]:
    """Run the detectors and return their findings, most certain first.

    Once a rank is hung, crashed or a link is slow, the late arrivals it causes are symptoms: straggler
    findings on steps after a hang/crash onset are dropped.
    """
    from tracekit.analysis.clock import align_clocks, clock_evidence
    from tracekit.analysis.launcher import merge_launcher_view

    th = thresholds or Thresholds()
    if frames.clock_offsets is None:  # a multi-host run: every timestamp onto one host's clock first
        frames = align_clocks(frames)
    findings = merge_launcher_view(_merge_slow_rank_findings([f for d in detectors for f in d(frames, th)]))
    stops = [f.first_step for f in findings if f.kind in ("hang", "crash") and f.first_step is not None]
    if stops:
        findings = [f for f in findings if not (f.kind in ("straggler", "throttle")
                                                and f.first_step is not None and f.first_step >= min(stops))]
    findings = clock_evidence(findings, frames)
    return sorted(findings, key=lambda f: (-f.confidence, KINDS.index(f.kind), f.subject))


def detect_run(con: Any, run_id: str, thresholds: Thresholds | None = None, *,
               detectors: Sequence[Detector] = DEFAULT_DETECTORS, store: bool = True) -> list[dict[str, Any]]:
    """Detect anomalies in a stored run; store them in the findings table (a writable `con`) and return them.

    The registered entry point of the ``collectives`` analysis (``fn(con, run_id, params)``)."""
    from tracekit.analysis.clock import align_clocks
    from tracekit.store.findings import write_findings

    frames = align_clocks(frames_from_store(con, run_id))
    found = [f.to_dict() for f in detect(frames, detectors=detectors, thresholds=thresholds)]
    if store:
        write_findings(con, run_id, "collectives", found)
        if frames.clock_offsets:
            from tracekit.store.clock import save_clock_offsets

            save_clock_offsets(con, run_id, frames.clock_offsets)
    return found


def naive_slowest_rank(frames: RunFrames, th: Thresholds | None = None) -> list[Finding]:
    """The naive baseline: blame the rank with the slowest mean step time (always names someone)."""
    s = frames.steps
    if s.height == 0:
        return []
    mean = (s.filter(pl.col("step") > 0).group_by("rank")
             .agg(ms=((pl.col("end_ns") - pl.col("start_ns")).mean() / MS)).sort("ms", descending=True))
    if mean.height == 0:
        return []
    rank = int(mean["rank"][0])
    return [Finding("straggler", f"rank:{rank}", None, 1.0, {"mean_step_ms": round(float(mean["ms"][0]), 2)},
                    f"rank {rank} has the slowest mean step time")]
