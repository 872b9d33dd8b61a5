"""Calls every torch.distributed op tracekit records (2 gloo ranks), sync and async, plus a few DDP steps."""

import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

dist.init_process_group("gloo")
if "--instrument" in sys.argv:
    import tracekit

    tracekit.torch.instrument()
rank, world = dist.get_rank(), dist.get_world_size()
t = torch.ones(4)
dist.all_reduce(t)
dist.broadcast(t, 0)
dist.all_gather([torch.zeros(4) for _ in range(world)], t)
dist.all_gather_into_tensor(torch.zeros(4 * world), t)
dist.reduce_scatter(torch.zeros(4), [torch.ones(4) for _ in range(world)])
dist.reduce_scatter_tensor(torch.zeros(4), torch.ones(4 * world, dtype=torch.float32))
dist.all_to_all([torch.zeros(4) for _ in range(world)], [torch.ones(4) for _ in range(world)])
dist.all_to_all_single(torch.zeros(4 * world), torch.ones(4 * world))
dist.barrier()
peer = 1 - rank
if rank == 0:
    dist.send(torch.arange(8, dtype=torch.int64), peer)
    dist.recv(torch.zeros(2, dtype=torch.float64), peer)
else:
    dist.recv(torch.zeros(8, dtype=torch.int64), peer)
    dist.send(torch.ones(2, dtype=torch.float64), peer)
reqs = [dist.isend(torch.ones(16), peer), dist.irecv(torch.zeros(16), peer)]
for req in reqs:
    req.wait()
if rank == 0:  # a receive from any source: numbered apart from the group's collectives
    dist.send(torch.ones(3), peer)
else:
    dist.recv(torch.zeros(3))
work = dist.all_reduce(torch.ones(1000), async_op=True)
work.wait()
model = DDP(nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)), bucket_cap_mb=0.01)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(3):
    opt.zero_grad()
    loss = model(torch.randn(8, 32)).pow(2).mean()
    loss.backward()
    opt.step()
# free DDP's reducer and the async work handles before the process group: anything holding gloo's
# state that is only freed while the interpreter finalizes can abort the process ("terminate called
# without an active exception", rank 1 in about 1 of 12 runs on a loaded machine)
del model, opt, reqs, work
dist.destroy_process_group()
