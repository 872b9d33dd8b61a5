"""Overhead of torch.distributed capture: step time with and without capture in the same job, vs torch.profiler.

    python benchmarks/bench_collectives_overhead.py                 # 12,000 steps per arm: ~20 min, +-0.5 %
    python benchmarks/bench_collectives_overhead.py --epochs 30     # a 2-minute look: +-3 %

One torchrun job (gloo, CPU; the fixture's model: hidden 256, batch 64, 0.2 MB buckets) trains
identical DDP models, one step per arm per round, in a random order per round (the same on every
rank), so all arms see the same machine noise and none always follows another. Every epoch builds
every arm's model anew. Arms: ``capture`` is recorded by tracekit (wrapped calls, the native C++ DDP
comm hook -- or the Python fallback when the extension is not built, see ``hook`` -- and the
optimizer step hook); ``plain`` runs plain DDP with capture paused; ``plain_twin``, a second plain
model, is the A/A arm: what two identical models differ by; with ``--python-hook``, ``python_hook``
runs PyTorch's own Python ``allreduce_hook`` (records nothing: what any *Python* comm hook pays).

Why so many steps: on 2 cores, 4 ranks' step times scatter by ~20 % from one step to the next
(scheduling: a rank descheduled mid-all-reduce stalls all of them), and the scatter is independent
from step to step, so no pairing removes it; a +-0.5 % interval takes ~12,000 steps per arm. Each
arm's overhead is the ratio of its 10 %-trimmed mean step time to plain's, minus one; the 95 %
intervals resample whole epochs. CPU time per step is reported too, for the whole process and for
the training thread alone (the steadiest figure: what capture itself costs the training loop), and
the CPU time of tracekit's own threads (the native writer, which samples scheduling lag, beats and
writes the records; the spool's Python flusher, asleep while no Python record waits), per second and
as a share of the process's CPU: work no arm's step time contains.
Then ``torch.profiler`` (CPU activities), which cannot start and stop around one step for free, runs
the plain model in blocks of steps against unprofiled blocks, in a random order. Also measures the
cost of recording one collective in isolation: tracekit's ``all_reduce`` wrapper around a no-op callee,
capture on vs paused (CPU time of the calling thread; a real 1-rank gloo call scatters by more).
Target: <= 1 % step-time overhead. The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    import tracekit
    from tracekit.capture.torch import state

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    tracekit.torch.instrument()
    rank = dist.get_rank()

    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    capture = state.current

    def make(arm: str) -> tuple[DDP, torch.optim.Optimizer, bool]:
        """One arm's model, optimizer and whether capture is on while it steps."""
        torch.manual_seed(0)
        h = 256
        model = nn.Sequential(nn.Linear(64, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                              nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 8))
        state.current = capture if arm == "capture" else None  # DDP is built with capture on only for its arm
        ddp = DDP(model, bucket_cap_mb=0.2)
        if arm != "capture":
            ddp.__dict__["_tracekit_hooked"] = True  # no tracekit hook: DDP's built-in all-reduce ...
        if arm == "python_hook":  # ... or PyTorch's Python hook, registered past tracekit's wrapper
            state.originals[("DDP", "register_comm_hook")](ddp, ddp.process_group, allreduce_hook)
        return ddp, torch.optim.SGD(ddp.parameters(), lr=0.01), arm == "capture"

    gen = torch.Generator().manual_seed(rank)
    x, y = torch.randn(64, 64, generator=gen), torch.randn(64, 8, generator=gen)
    loss_buf = torch.zeros(1)

    cpu: dict[str, list[float]] = {}  # arm -> CPU time per step: the training thread's, and the process's

    def one_step(model: DDP, opt: torch.optim.Optimizer, arm: str = "") -> float:
        c0, m0 = time.process_time(), time.thread_time()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        loss_buf.copy_(loss.detach())
        dist.all_reduce(loss_buf)
        wall = time.perf_counter() - t0
        if arm:
            cpu.setdefault(arm, []).append(time.process_time() - c0)
            cpu.setdefault(f"{arm}/main", []).append(time.thread_time() - m0)
        return wall

    # plain_twin: a second plain model, the A/A arm (what two identical models differ by)
    names = ["plain", "plain_twin", "capture", *(["python_hook"] if args.python_hook else [])]
    order = random.Random(7)  # the same seed on every rank: all ranks run the same arm at the same time
    rounds: dict[str, list[float]] = {name: [] for name in names}

    def recorded_so_far() -> int:  # written, after a flush (the native module's records included)
        if capture is None:
            return 0
        capture.run.spool.flush()
        return capture.collectives.records

    before = recorded_so_far()
    background0, process0, wall0 = background_cpu(), time.process_time(), time.perf_counter()
    # phase 1: each epoch builds every arm's model anew, in a random order (so no arm keeps a lucky or
    # unlucky place in memory for the whole run), then runs rounds of one step per arm, in a random order
    for _epoch in range(args.epochs):
        order.shuffle(names)
        arms = {name: make(name) for name in names}
        for _ in range(3):  # warm up
            for model, opt, on in arms.values():
                state.current = capture if on else None
                one_step(model, opt)
        for _round in range(args.rounds):
            order.shuffle(names)
            for name in names:
                model, opt, on = arms[name]
                state.current = capture if on else None
                rounds[name].append(one_step(model, opt, name))
        del arms
    background = {"cpu_s": background_cpu() - background0, "process_cpu_s": time.process_time() - process0,
                  "wall_s": time.perf_counter() - wall0}
    plain, plain_opt, _ = make("plain")
    # phase 2: torch.profiler cannot start and stop around single steps for free: blocks of steps,
    # profiled or not, in a random order; the first step of each block is not counted
    from torch.profiler import ProfilerActivity, profile

    state.current = None
    blocks: dict[str, list[list[float]]] = {"plain": [], "profiler": []}
    for _cycle in range(args.cycles):
        names = list(blocks)
        order.shuffle(names)
        for name in names:
            with profile(activities=[ProfilerActivity.CPU]) if name == "profiler" else contextlib.nullcontext():
                one_step(plain, plain_opt)
                blocks[name].append([one_step(plain, plain_opt) for _ in range(args.block)])
    state.current = capture
    recorded = recorded_so_far() - before
    if rank == 0:
        hook = "native" if capture is not None and capture.native is not None else "python"
        Path(args.out).write_text(json.dumps({"rounds": rounds, "cpu": cpu, "blocks": blocks, "recorded": recorded,
                                              "hook": hook, "background": background}))
    del plain, plain_opt
    dist.destroy_process_group()
    # PyTorch 2.13 sometimes aborts in C++ static destruction at interpreter exit ("terminate called
    # without an active exception"), after everything above is done: leave without it
    atexit._run_exitfuncs()
    os._exit(0)


def trimmed_mean(values: "np.ndarray", axis: int = -1, cut: float = 0.1) -> "np.ndarray":
    """Mean of the middle 80 %: step times have a long tail of scheduling stalls (a rank descheduled
    mid-all-reduce costs every rank milliseconds); the trimmed mean keeps most of the data and is about
    a quarter tighter than the median here."""
    import numpy as np

    ordered = np.sort(values, axis=axis)
    k = int(ordered.shape[axis] * cut)
    return ordered.take(range(k, ordered.shape[axis] - k), axis=axis).mean(axis=axis)


def overhead_with_ci(arm: list[float], plain: list[float], per_epoch: int, draws: int = 2000) -> tuple[float, float, float]:
    """Overhead of ``arm`` over ``plain`` (ratio of trimmed mean step times - 1) and its 95 % interval,
    resampling whole epochs (rounds of one epoch share their models, so they are resampled together)."""
    import numpy as np

    a = np.asarray(arm).reshape(-1, per_epoch)
    b = np.asarray(plain).reshape(-1, per_epoch)
    point = float(trimmed_mean(a.ravel()) / trimmed_mean(b.ravel()) - 1)
    rng = np.random.default_rng(11)
    picks = rng.integers(0, len(a), size=(draws, len(a)))
    ratios = trimmed_mean(a[picks].reshape(draws, -1)) / trimmed_mean(b[picks].reshape(draws, -1)) - 1
    low, high = np.quantile(ratios, [0.025, 0.975])
    return point, float(low), float(high)


def background_cpu() -> float:
    """CPU seconds used so far by tracekit's threads: its native writer thread (which samples scheduling
    lag, beats and writes the native records) and the Python threads other than the training thread
    (the spool flusher, idle while only native records flow). Their work, done off the training thread,
    is in no arm's step time."""
    import threading

    total = 0.0
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and thread.ident is not None:
            try:
                total += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
            except (OSError, ValueError):  # the thread has just ended
                pass
    for task in Path("/proc/self/task").iterdir():
        try:
            if (task / "comm").read_text().strip() == "tracekit-writer":
                total += int((task / "schedstat").read_text().split()[0]) / 1e9  # ns on a CPU
        except (OSError, ValueError, IndexError):
            pass
    return total


def per_call_cost(n: int = 20000, reps: int = 10) -> dict[str, float]:
    """What recording adds to one collective call, in us of the calling thread's CPU: tracekit's wrapper
    of ``all_reduce`` (argument handling, the native begin and finish records) around a callee that does
    nothing, capture on vs paused, interleaved with the order alternating. A real 1-rank gloo call is
    no use for this: its time scatters by more than the difference (gloo's thread hand-off), so its
    plain cost is reported beside it for scale."""
    code = f"""
import os, time, json, torch, torch.distributed as dist
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29750 + os.getpid() % 200), RANK="0", WORLD_SIZE="1")
import tracekit
from tracekit.capture.torch import patching, state
dist.init_process_group("gloo")
tracekit.torch.instrument()
cap = state.current
t = torch.zeros(1)

def nothing(tensor, op=None, group=None, async_op=False):
    return None

wrapped = patching.wrap("all_reduce", nothing)
res = {{"plain": [], "capture": [], "gloo_call": []}}
for rep in range({reps}):
    for mode in (("plain", "capture") if rep % 2 else ("capture", "plain")):
        state.current = cap if mode == "capture" else None
        t0 = time.thread_time_ns()
        for _ in range({n}):
            wrapped(t)
        res[mode].append((time.thread_time_ns() - t0) / {n} / 1000)
    state.current = None
    t0 = time.thread_time_ns()
    for _ in range(1000):
        dist.all_reduce(t)
    res["gloo_call"].append((time.thread_time_ns() - t0) / 1000 / 1000)
state.current = cap
print(json.dumps({{k: sorted(v)[len(v) // 2] for k, v in res.items()}}))
dist.destroy_process_group()
"""
    env = dict(os.environ, TRACEKIT_INGEST_AT_EXIT="0", TRACEKIT_SPOOL_DIR=tempfile.mkdtemp(prefix="tk-oh-"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=4)
    p.add_argument("--epochs", type=int, default=300, help="times every arm's model is built anew")
    p.add_argument("--rounds", type=int, default=40, help="rounds of one step per arm per epoch, in a random order")
    p.add_argument("--python-hook", action="store_true",
                   help="add an arm with PyTorch's own Python allreduce_hook (what any Python comm hook costs)")
    p.add_argument("--cycles", type=int, default=12, help="rounds of one plain and one profiled block")
    p.add_argument("--block", type=int, default=10)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    tmp = Path(tempfile.mkdtemp(prefix="tk-bench-oh-"))
    out = tmp / "times.json"
    env = dict(os.environ, TRACEKIT_INGEST_AT_EXIT="0", TRACEKIT_SPOOL_DIR=str(tmp / "spool"))
    arms = ["plain", "plain_twin", "capture", *(["python_hook"] if args.python_hook else [])]
    print(f"{args.nproc} ranks, {len(arms)} arms x {args.epochs * args.rounds} steps (about "
          f"{len(arms) * args.epochs * args.rounds * 0.03 / 60:.0f} min at 4 ranks on 2 cores) ...", flush=True)
    job = subprocess.run(["torchrun", "--nproc-per-node", str(args.nproc), "--master-port", "29740", __file__, "--worker",
                          "--epochs", str(args.epochs), "--rounds", str(args.rounds), "--cycles", str(args.cycles),
                          "--block", str(args.block), "--out", str(out), *(["--python-hook"] if args.python_hook else [])],
                         env=env, capture_output=True, text=True, timeout=4 * 3600)
    if job.returncode != 0:
        lines = job.stderr.splitlines()
        first = next((i for i, line in enumerate(lines) if "Traceback" in line or "terminate called" in line), -25)
        sys.exit(f"the benchmark's torchrun job failed (exit {job.returncode}); its output from the first error:\n"
                 + "\n".join(lines[first:][:40]))
    data = json.loads(out.read_text())
    rounds, blocks = data["rounds"], data["blocks"]
    med = {k: statistics.median(v) * 1000 for k, v in rounds.items()}
    est = {k: overhead_with_ci(rounds[k], rounds["plain"], args.rounds) for k in arms if k != "plain"}
    overhead, noise = est["capture"][0], est["plain_twin"][0]
    prof = statistics.median(statistics.median(a) / statistics.median(b) - 1
                             for a, b in zip(blocks["profiler"], blocks["plain"]))
    steps = len(rounds["capture"])
    per_step = data["recorded"] / (steps + 3 * args.epochs)  # the 3 warm-up steps of each epoch record too
    call = per_call_cost()
    print(f"{args.nproc} ranks, {args.epochs} epochs (models built anew) x {args.rounds} rounds of one step per arm "
          f"(random order): {steps} steps per arm; tracekit's DDP hook: {data['hook']}")
    for k in arms:
        line = f"  {k:<11} median step {med[k]:7.2f} ms"
        if k in est:
            line += f"   vs plain (10 %-trimmed means) {est[k][0]:+7.2%}  95 % CI {est[k][1]:+.2%} .. {est[k][2]:+.2%}"
        print(line)
    print(f"capture overhead: {overhead:+.2%} of step time (95 % CI {est['capture'][1]:+.2%} .. {est['capture'][2]:+.2%}; "
          f"target <= 1 %); A/A (an identical plain model): {noise:+.2%} "
          f"(95 % CI {est['plain_twin'][1]:+.2%} .. {est['plain_twin'][2]:+.2%})")
    cpu = {k: statistics.median(v) * 1000 for k, v in data["cpu"].items()}
    cpu_overhead = (cpu["capture"] - cpu["plain"]) / cpu["plain"]
    main_us = {k: (cpu[f"{k}/main"] - cpu["plain/main"]) * 1000 for k in arms if k != "plain"}
    print(f"CPU time per step, whole process (gloo's threads included): plain {cpu['plain']:.2f} ms, "
          f"plain_twin {cpu['plain_twin']:.2f} ms, capture {cpu['capture']:.2f} ms ({cpu_overhead:+.2%})")
    print(f"CPU time per step, training thread: plain {cpu['plain/main']:.3f} ms; over plain: "
          + ", ".join(f"{k} {v:+.0f} us" for k, v in main_us.items()))
    print(f"torch.profiler (CPU), {len(blocks['plain'])} x {args.block}-step blocks vs plain blocks: {prof:+.2%}")
    print(f"recorded per step on rank 0: {per_step:.1f} collectives (+1 step record)")
    bg = data["background"]
    bg_ms_per_s = bg["cpu_s"] / bg["wall_s"] * 1000
    bg_share = bg["cpu_s"] / bg["process_cpu_s"]
    print(f"tracekit's own threads on rank 0 (the native writer, which beats and writes; the spool flusher), in no arm's "
          f"step time: {bg_ms_per_s:.2f} ms CPU per second = {bg_share:.2%} of the rank's process CPU over the "
          f"same time (the records of all captured steps included)")
    print(f"per recorded collective (tracekit's wrapper and records around a no-op callee, CPU of the calling "
          f"thread): {call['capture'] - call['plain']:.2f} us (paused {call['plain']:.2f} us); a plain 1-rank gloo "
          f"all_reduce costs {call['gloo_call']:.1f} us")
    print(json.dumps({"name": "collectives_capture_overhead", "value": round(overhead * 100, 2), "unit": "% step time",
                      "baseline": "torch.profiler (CPU)", "baseline_value": round(prof * 100, 2),
                      "ratio": round(overhead / prof, 3) if prof else None,
                      "ddp_hook": data["hook"], "steps_per_arm": steps,
                      "ci95_pct": [round(est["capture"][1] * 100, 2), round(est["capture"][2] * 100, 2)],
                      "aa_pct": round(noise * 100, 2),
                      "aa_ci95_pct": [round(est["plain_twin"][1] * 100, 2), round(est["plain_twin"][2] * 100, 2)],
                      **({"python_comm_hook_pct": round(est["python_hook"][0] * 100, 2)} if "python_hook" in est else {}),
                      "cpu_overhead_pct": round(cpu_overhead * 100, 2),
                      "training_thread_cpu_us_over_plain": {k: round(v, 1) for k, v in main_us.items()},
                      "median_step_ms": {k: round(v, 3) for k, v in med.items()},
                      "us_per_recorded_collective": round(call["capture"] - call["plain"], 2),
                      "collectives_per_step": round(per_step, 1),
                      "background_thread_cpu_ms_per_s": round(bg_ms_per_s, 3),
                      "background_thread_cpu_pct_of_process": round(bg_share * 100, 2)}))


if __name__ == "__main__":
    main()
