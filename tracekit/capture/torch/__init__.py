"""Per-rank capture of torch.distributed (``tracekit.torch``): collective and p2p calls, DDP buckets, steps, probes.

``tracekit.torch.instrument()`` (automatic under ``tracekit record``) records, on every rank, one
lean spool record per collective (stream ``collectives``: process group, per-group sequence number,
op, bytes, dtype, enter/exit ns, step, ok) -- not one OpenTelemetry span per call. One module per job:

* ``state``: the per-process recording state (rank, sequence counters, current step, in-flight calls)
  and the native module's records on their way to the spool;
* ``patching``: the public and ``distributed_c10d`` functions are wrapped; for ``async_op=True`` and
  isend/irecv the exit time is the work's completion (its future's callback), not the call's return;
* ``ddp``: DistributedDataParallel is patched so every wrapped model gets a communication hook that
  records each gradient-bucket all-reduce and measures the *local* bucket before the reduction, in one
  pass: its norm (summed into the rank's gradient norm) and whether it holds a NaN or inf. The hook is
  native (``tracekit.capture.native``: no GIL per bucket) when its prebuilt library loads, else Python's.
  The native module also keeps the wrapped calls' and the steps' records, and its writer thread appends
  them to the spool files, in the record layouts the build generates from ``tracekit.conventions.STREAMS``;
* ``steps``: the optimizer's step (global post hook) closes a training step (stream ``steps``: start,
  end, loss of the last ``backward()``, gradient norm, local non-finite flag), unless the script calls
  ``tracekit.torch.step(...)`` itself;
* ``liveness``: a heartbeat (the native writer thread's, else a ticker on the spool's flusher) writes
  each rank's liveness, in-flight collective and scheduling lag (stream ``heartbeats``); on SIGTERM
  (torchrun stopping a failed job) a watcher thread records in-flight collectives as interrupted and
  flushes the spool, even while the main thread is blocked inside gloo;
* ``lifecycle``: instrument / uninstrument, the run all ranks of a torchrun job share, explicit steps;
* ``probe``: ``probe_links()``, the active pairwise send/recv probe (C4-style) that names a slow link;
* ``import_hook``: instruments torch.distributed when (and only if) a recorded process imports it.

Nothing here imports torch until ``instrument()`` runs, and nothing raises into the training script.
Every import of torch in this package is absolute, so ``import torch`` always means PyTorch itself.
"""

from __future__ import annotations

from tracekit.capture.torch.import_hook import install_import_hook
from tracekit.capture.torch.lifecycle import instrument, is_instrumented, step, uninstrument
from tracekit.capture.torch.probe import probe_links

__all__ = ["instrument", "uninstrument", "step", "probe_links", "is_instrumented", "install_import_hook"]
