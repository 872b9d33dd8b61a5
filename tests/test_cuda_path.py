"""The CUDA bucket path (capture/torch/cuda.py) cannot be taken by accident on CPU. It was never run on a GPU."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tracekit.capture.torch.cuda import cuda_allreduce_hook, end_cuda_step, uses_cuda  # noqa: E402


class _Bucket:
    def __init__(self, tensor):
        self._tensor = tensor

    def buffer(self):
        return self._tensor


def test_a_cpu_model_never_takes_the_cuda_path() -> None:
    assert uses_cuda(torch.nn.Linear(4, 4)) is False
    assert uses_cuda(torch.nn.Sequential()) is False  # no parameters at all


def test_the_cuda_hook_refuses_a_cpu_bucket_before_touching_it() -> None:
    grads = torch.ones(8)
    with pytest.raises(RuntimeError, match="CPU bucket"):
        cuda_allreduce_hook(None, _Bucket(grads))
    assert torch.equal(grads, torch.ones(8))  # not scaled, not reduced


def test_a_step_without_cuda_buckets_is_closed_by_the_cpu_path() -> None:
    class Cap:
        pass

    assert end_cuda_step(Cap(), None) is False
