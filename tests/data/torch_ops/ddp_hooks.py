"""2 gloo ranks train a small DDP model: 4 clean steps, then one where rank 1's input holds a NaN.

Writes ``ddp_hooks.RANK.json`` in the working directory: whether tracekit's native DDP hook was attached and a checksum of the
parameters after the clean steps (identical with and without capture when the hook reduces the same way),
and its own local gradient norm per step (before DDP's reduction).
"""

import atexit
import json
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

dist.init_process_group("gloo")
native = None
if os.environ.get("TRACEKIT_DISABLED") != "1":
    import tracekit
    from tracekit.capture.torch import state

    tracekit.torch.instrument()
    native = state.current.native is not None
rank = dist.get_rank()
torch.manual_seed(0)
model = DDP(nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)),
            bucket_cap_mb=0.01)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
gen = torch.Generator().manual_seed(rank)
loss_sum = torch.zeros(1)
checksum = None
norms = []
for step in range(5):
    x = torch.randn(8, 32, generator=gen)
    if step == 4:
        checksum = [float(p.detach().double().sum()) for p in model.parameters()]
        if rank == 1:
            x[0, 0] = float("nan")
    # this rank's own gradients, before any reduction (autograd.grad does not fire DDP's hooks)
    local = torch.autograd.grad(model.module(x).pow(2).mean(), list(model.module.parameters()))
    norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in local]))))
    opt.zero_grad()
    loss = model(x).pow(2).mean()
    loss.backward()
    opt.step()
    loss_sum.copy_(loss.detach())
    dist.all_reduce(loss_sum)  # the script's own collective: shares the "default" sequence with DDP's buckets
with open(f"ddp_hooks.{rank}.json", "w") as fh:
    json.dump({"rank": rank, "native": native, "checksum": checksum, "norms": norms}, fh)
del model, opt  # free DDP's reducer first: PyTorch itself aborts at exit in ~2 of 10 runs otherwise
dist.destroy_process_group()
# Even so, plain PyTorch (capture off) still aborted in C++ static destruction at exit ("terminate called
# without an active exception") in ~1 of 10 runs under pytest: run the Python exit handlers (tracekit's
# spool footers and ingest among them), then leave without C++ static destructors.
atexit._run_exitfuncs()
os._exit(0)
