"""Overhead of torch.distributed capture: step time with and without capture in the same job, vs torch.profiler.

    python benchmarks/bench_collectives_overhead.py [--nproc 4 --blocks 12 --block 10]

One torchrun job (gloo, CPU) trains identical DDP models in alternating blocks of steps, so all see
the same machine noise: model A is recorded by tracekit (wrapped calls, the native C++ DDP comm hook
with the non-finite check -- or the Python fallback hook when the extension is not built, see the
``hook`` field -- and the optimizer step hook), model B runs plain DDP (C++ all-reduce) with capture
paused, and model C runs PyTorch's own Python ``allreduce_hook`` with capture paused: the floor any
*Python* comm hook pays (its completion continuation needs the GIL on gloo's thread). A fourth block
type runs model B under ``torch.profiler`` (CPU activities). Also measures the cost of one recorded
collective in isolation (a 1-rank gloo group, 4-byte all_reduce, with vs without capture).
Target: <= 1 % step-time overhead. The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
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
    import tracekit.capture.torch_dist as td

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    tracekit.torch.instrument()
    rank = dist.get_rank()

    def make() -> tuple[DDP, torch.optim.Optimizer]:
        torch.manual_seed(0)
        h = 256
        model = nn.Sequential(nn.Linear(64, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                              nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 8))
        ddp = DDP(model, bucket_cap_mb=0.2)
        return ddp, torch.optim.SGD(ddp.parameters(), lr=0.01)

    plain, plain_opt = make()
    plain.__dict__["_tracekit_hooked"] = True  # keep DDP's built-in all-reduce: no tracekit hook on this one
    cap_model, cap_opt = make()
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    hooked, hooked_opt = make()
    hooked.__dict__["_tracekit_hooked"] = True  # PyTorch's Python hook, registered past tracekit's wrapper
    td._originals[("DDP", "register_comm_hook")](hooked, hooked.process_group, allreduce_hook)
    gen = torch.Generator().manual_seed(rank)
    x, y = torch.randn(64, 64, generator=gen), torch.randn(64, 8, generator=gen)
    loss_buf = torch.zeros(1)
    capture = td._cap

    def one_step(model: DDP, opt: torch.optim.Optimizer) -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        loss_buf.copy_(loss.detach())
        dist.all_reduce(loss_buf)
        return time.perf_counter() - t0

    for _ in range(5):  # warm up all
        td._cap = None
        one_step(plain, plain_opt)
        one_step(hooked, hooked_opt)
        td._cap = capture
        one_step(cap_model, cap_opt)
    times: dict[str, list[float]] = {"plain": [], "python_hook": [], "capture": [], "profiler": []}
    before = capture.collectives.records + len(capture.collectives._buffer) if capture else 0
    for block in range(args.blocks):
        mode = ("plain", "python_hook", "capture", "profiler")[block % 4]
        if mode == "python_hook":
            td._cap = None
            for _ in range(args.block):
                times[mode].append(one_step(hooked, hooked_opt))
        elif mode == "capture":
            td._cap = capture
            for _ in range(args.block):
                times[mode].append(one_step(cap_model, cap_opt))
        elif mode == "plain":
            td._cap = None
            for _ in range(args.block):
                times[mode].append(one_step(plain, plain_opt))
        else:
            td._cap = None
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]):
                for _ in range(args.block):
                    times[mode].append(one_step(plain, plain_opt))
    td._cap = capture
    recorded = (capture.collectives.records + len(capture.collectives._buffer) - before) if capture else 0
    if rank == 0:
        hook = "native" if capture is not None and capture.native is not None else "python"
        Path(args.out).write_text(json.dumps({"times": times, "recorded": recorded, "hook": hook}))
    dist.destroy_process_group()


def per_call_cost(n: int = 3000) -> dict[str, float]:
    """µs per all_reduce call on a 1-rank gloo group, plain vs recorded (same process, interleaved)."""
    code = f"""
import os, time, json, torch, torch.distributed as dist
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29750 + os.getpid() % 200), RANK="0", WORLD_SIZE="1")
import tracekit, tracekit.capture.torch_dist as td
dist.init_process_group("gloo")
tracekit.torch.instrument()
cap = td._cap
t = torch.zeros(1)
res = {{"plain": [], "capture": []}}
for rep in range(6):
    for mode in ("plain", "capture"):
        td._cap = cap if mode == "capture" else None
        t0 = time.perf_counter_ns()
        for _ in range({n}):
            dist.all_reduce(t)
        res[mode].append((time.perf_counter_ns() - t0) / {n} / 1000)
td._cap = cap
print(json.dumps({{k: sorted(v)[len(v) // 2] for k, v in res.items()}}))
dist.destroy_process_group()
"""
    env = dict(os.environ, TRACEKIT_INGEST_AT_EXIT="0", TRACEKIT_SPOOL_DIR=tempfile.mkdtemp(prefix="tk-oh-"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=4)
    p.add_argument("--blocks", type=int, default=40)
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
    subprocess.run(["torchrun", "--nproc-per-node", str(args.nproc), "--master-port", "29740", __file__, "--worker",
                    "--blocks", str(args.blocks), "--block", str(args.block), "--out", str(out)],
                   check=True, env=env, capture_output=True, timeout=1800)
    data = json.loads(out.read_text())
    times = data["times"]
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    mean = {k: statistics.fmean(v) * 1000 for k, v in times.items()}
    steps = len(times["capture"])
    per_step = data["recorded"] / steps if steps else 0
    overhead = (med["capture"] - med["plain"]) / med["plain"]
    prof = (med["profiler"] - med["plain"]) / med["plain"]
    floor = (med["python_hook"] - med["plain"]) / med["plain"]
    call = per_call_cost()
    print(f"{args.nproc} ranks, {steps} steps per mode in alternating blocks of {args.block}; "
          f"tracekit's DDP hook: {data['hook']}")
    for k in ("plain", "python_hook", "capture", "profiler"):
        print(f"  {k:<11} median step {med[k]:7.2f} ms   mean {mean[k]:7.2f} ms")
    print(f"capture overhead: {overhead:+.2%} of step time (target <= 1 %); torch.profiler: {prof:+.2%}")
    print(f"  for comparison, PyTorch's Python allreduce_hook alone (records nothing): {floor:+.2%}")
    print(f"recorded per step on rank 0: {per_step:.1f} collectives (+1 step record)")
    print(f"per recorded collective (1-rank all_reduce): {call['capture'] - call['plain']:.1f} us "
          f"(plain call {call['plain']:.1f} us, recorded {call['capture']:.1f} us)")
    print(json.dumps({"name": "collectives_capture_overhead", "value": round(overhead * 100, 2), "unit": "% step time",
                      "baseline": "torch.profiler (CPU)", "baseline_value": round(prof * 100, 2),
                      "ratio": round(overhead / prof, 3) if prof else None,
                      "ddp_hook": data["hook"], "python_comm_hook_floor_pct": round(floor * 100, 2),
                      "median_step_ms": {k: round(v, 3) for k, v in med.items()},
                      "us_per_recorded_collective": round(call["capture"] - call["plain"], 2),
                      "collectives_per_step": round(per_step, 1)}))


if __name__ == "__main__":
    main()
