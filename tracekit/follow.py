"""Live detection: follow a training run while it runs and report each new collective anomaly once.

Every ``interval`` seconds the follower ingests what the run's spool directories gained (this process
is then the store's one writer: ingest stays the single writer) and runs the collective detectors
over the run's last ``window_steps`` steps, so a poll costs the same at step 10 and step 10,000. A
finding is reported once per (kind, subject), after it was seen in ``confirm_polls`` consecutive
polls (a lone late step is not yet a straggler). A rank missing from a collective is reported once
the others stopped progressing and its records decide crash or hang: a rank that stopped looks
crashed until its heartbeats show it alive a second later (``undecided`` in the finding's
evidence). When the run has ended, one last ingest and a full-run detection (stored in the findings
table, as ``tracekit anomalies`` does) report whatever is still new.

After each poll the follower publishes a small JSON snapshot beside the store
(``<store>.live/<run_id>.json``: status, findings reported and pending, the last window's step
times per rank). The dashboard's live view reads that file, never the store: DuckDB's file lock is
exclusive per process, so a read-only reader cannot open the store while the follower writes it,
and a reader holding it would make the follower's ingest skip polls.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracekit.errors import NotFoundError, StoreError, TracekitError

__all__ = ["FollowOptions", "locate_run", "follow", "poll_findings", "snapshot_path", "read_snapshots"]

Finding = dict[str, Any]


@dataclass(frozen=True)
class FollowOptions:
    interval_s: float = 1.0    # how often new spool records are ingested and the detectors run
    window_steps: int = 64     # the detectors see the run's last this many steps
    confirm_polls: int = 2     # a finding is reported after this many consecutive polls saw it
    wait_s: float | None = None  # give up when the run has not appeared after this long (None: wait)


def _spool_candidates(ref: str, spools: Sequence[Path]) -> list[Path]:
    """Run directories under the spool paths whose id starts with `ref` or whose manifest names it."""
    import json

    hits: list[Path] = []
    for root in spools:
        dirs = [root] if (root / "run.json").exists() else ([d for d in root.iterdir() if d.is_dir()]
                                                             if root.is_dir() else [])
        for d in dirs:
            if d.name.startswith(ref.lower()):
                hits.append(d)
                continue
            try:
                if json.loads((d / "run.json").read_text()).get("name") == ref:
                    hits.append(d)
            except (OSError, ValueError, AttributeError):
                continue
    return hits


def locate_run(ref: str, spools: Sequence[Path], db: Path | None) -> tuple[str, list[Path]] | None:
    """The run id `ref` names (in the store, else among the spool directories) and the run directories
    to ingest from (one per spool path: a host's spool root or the run directory itself); None when
    it is nowhere yet."""
    from tracekit.config import db_path
    from tracekit.store.db import connect
    from tracekit.store.queries import resolve_run

    run_id = None
    store = db_path(db)
    if store.exists():
        try:
            with connect(store, read_only=True) as con:
                run_id = resolve_run(con, ref)
        except (NotFoundError, StoreError):
            run_id = None
    if run_id is None:
        hits = _spool_candidates(ref, spools)
        if not hits:
            return None
        newest = max(hits, key=lambda d: d.stat().st_mtime)
        run_id = newest.name
    paths = [root if root.name == run_id else root / run_id for root in spools]
    return run_id, paths


def poll_findings(con: Any, run_id: str, options: FollowOptions) -> tuple[list[Finding], tuple[int, int]]:
    """The findings of the run's last window of steps (detected, not stored), and the run's progress
    (collective records in the window, the latest sequence number): unchanged progress is a stall."""
    found, progress, _ = _poll(con, run_id, options)
    return found, progress


SNAPSHOT_RANKS = 16  # a snapshot keeps every rank's step times up to this many ranks, else the slowest ones


def _poll(con: Any, run_id: str, options: FollowOptions) -> tuple[list[Finding], tuple[int, int], list[dict]]:
    """poll_findings, and the window's step times (rank, step, step_ms) for the live snapshot."""
    import polars as pl

    from tracekit.analysis.collectives import RunFrames, detect
    from tracekit.store.live import window_tables

    tables = window_tables(con, run_id, options.window_steps)
    frames = RunFrames(**{name: pl.from_arrow(table) for name, table in tables.items()})  # type: ignore[arg-type]
    c = frames.collectives
    progress = (c.height, int(c["seq"].max() or 0) if c.height else -1)
    return [f.to_dict() for f in detect(frames)], progress, _step_times(frames.steps)


def _step_times(steps: Any) -> list[dict]:
    """Step times of the window for the snapshot: every rank when there are few, else the slowest
    ranks (by mean step time) and a 'median' row (rank -1) of all ranks per step."""
    import polars as pl

    if steps.height == 0:
        return []
    st = steps.select("rank", "step", ((pl.col("end_ns") - pl.col("start_ns")) / 1e6).alias("step_ms"))
    if st["rank"].n_unique() > SNAPSHOT_RANKS:
        slow = (st.group_by("rank").agg(pl.col("step_ms").mean().alias("m"))
                .sort("m", descending=True).head(SNAPSHOT_RANKS)["rank"])
        median = st.group_by("step").agg(pl.col("step_ms").median()).with_columns(pl.lit(-1).alias("rank"))
        st = pl.concat([st.filter(pl.col("rank").is_in(slow.implode())), median.select("rank", "step", "step_ms")],
                       how="vertical_relaxed")
    return st.sort("rank", "step").to_dicts()


def snapshot_path(store: Path, run_id: str) -> Path:
    """Where the follower of `run_id` publishes its live snapshot: ``<store>.live/<run_id>.json``."""
    return store.with_name(store.name + ".live") / f"{run_id}.json"


def _write_snapshot(path: Path, snapshot: dict[str, Any]) -> None:
    """Replace the snapshot atomically (a reader sees the old or the new one whole); never raises."""
    import json

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(snapshot, default=str))
        os.replace(tmp, path)
    except OSError:
        pass


def read_snapshots(store: Path) -> list[dict[str, Any]]:
    """The live snapshots published beside `store`, most recently updated first (unreadable ones skipped)."""
    import json

    folder = store.with_name(store.name + ".live")
    out = []
    for path in folder.glob("*.json") if folder.is_dir() else []:
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda s: s.get("updated_ns", 0), reverse=True)


def follow(
    ref: str, *, db: Path | None, spools: Sequence[Path], on_finding: Callable[[Finding], bool],
    stop: threading.Event | None = None, options: FollowOptions = FollowOptions(),
    on_poll: Callable[[float], None] | None = None, on_wait: Callable[[], None] | None = None,
) -> list[Finding]:
    """Follow a run until it ends (or `stop` is set, or `on_finding` returns False); returns the
    findings reported, in order. `on_poll(seconds)` hears each poll's cost; `on_wait()` is called once
    when the run has not appeared yet (it is waited for up to `options.wait_s`)."""
    from tracekit.analysis.collectives import detect_run
    from tracekit.config import db_path
    from tracekit.ingest import ingest_paths
    from tracekit.store.db import connect
    from tracekit.store.live import run_state

    stop = stop or threading.Event()
    store = db_path(db)
    started = time.monotonic()
    located = None
    while located is None:
        located = locate_run(ref, spools, db)
        if located is None:
            if options.wait_s is not None and time.monotonic() - started >= options.wait_s:
                raise NotFoundError(
                    f"no run {ref!r} in {store} or under {', '.join(map(str, spools))} after waiting "
                    f"{options.wait_s:g} s: check the run id and the spool directory (--spool), or wait longer (--wait)")
            if on_wait is not None:
                on_wait()
                on_wait = None  # once
            if stop.wait(options.interval_s):
                return []
    run_id, paths = located
    snapshot = snapshot_path(store, run_id)
    window: list[dict] = []  # the last window's step times, kept for the snapshot after the run ended
    reported: list[Finding] = []
    seen: dict[tuple[str, str], int] = {}  # (kind, subject) -> consecutive polls it was found in
    done: set[tuple[str, str]] = set()
    progress: tuple[int, int] | None = None
    stalled = 0  # consecutive polls in which the run recorded no new collective
    state = None

    def report(finding: Finding) -> bool:
        done.add((finding["kind"], finding["subject"]))
        reported.append(finding)
        publish("running")
        return on_finding(finding)

    def publish(status: str, found: Sequence[Finding] = ()) -> None:
        _write_snapshot(snapshot, {
            "run_id": run_id, "ref": ref, "status": status, "updated_ns": time.time_ns(), "pid": os.getpid(),
            "interval_s": options.interval_s, "window_steps": options.window_steps, "findings": reported,
            "pending": [{"kind": f["kind"], "subject": f["subject"], "first_step": f.get("first_step"),
                         "polls": seen.get((f["kind"], f["subject"]), 0)}
                        for f in found if (f["kind"], f["subject"]) not in done],
            "steps": window})

    while not stop.is_set():
        t0 = time.monotonic()
        existing = [p for p in paths if p.exists()]
        try:
            if existing:
                ingest_paths(existing, store)
            with connect(store, create=False) as con:
                state = run_state(con, run_id)
                ended = state is not None and state[0] != "running" and state[1] is not None
                found = []
                if state is not None and not ended:
                    found, now, window = _poll(con, run_id, options)
                    stalled = stalled + 1 if now == progress else 0
                    progress = now
                if ended:  # the whole run, once, stored as `tracekit anomalies` stores it
                    found = detect_run(con, run_id)
        except StoreError:  # another writer (the recorder's own ingest at exit) holds the store: next poll
            found, ended = [], False
        if on_poll:
            on_poll(time.monotonic() - t0)
        keys = {(f["kind"], f["subject"]) for f in found}
        seen = {k: seen.get(k, 0) + 1 for k in keys}
        for f in found:
            key = (f["kind"], f["subject"])
            # a missing rank is only missing once the others stopped making progress: while the run
            # moves on, it is a rank whose last records are still on their way to the spool
            missing = f["kind"] in ("hang", "crash") and (stalled < options.confirm_polls - 1
                                                          or f.get("evidence", {}).get("undecided", False))
            if key not in done and (ended or (seen[key] >= options.confirm_polls and not missing)):
                if not report(f):
                    publish("stopped", found)
                    return reported
        if ended:
            publish("ended")
            return reported
        publish("running" if state is not None else "waiting", found)
        stop.wait(max(0.0, options.interval_s - (time.monotonic() - t0)))
    publish("stopped")
    return reported


def default_spools(spools: Sequence[Path]) -> list[Path]:
    """The spool paths to follow: the ones given, else the spool root (TRACEKIT_SPOOL_DIR)."""
    from tracekit.config import spool_root

    if spools:
        for path in spools:
            if not Path(path).exists():
                raise TracekitError(f"{path} does not exist: give a spool root or a run's spool directory")
        return [Path(p) for p in spools]
    return [spool_root(os.environ.get("TRACEKIT_SPOOL_DIR"))]
