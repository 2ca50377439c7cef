"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module with one torch thread (small models: much faster on shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["fused", "pytorch", "generic", "composite"])
def each_path(request):
    """Run a test on each CPU backend: the fused C++ kernels, the pure-PyTorch path (its CPU
    fast paths), the pure-PyTorch path as it runs on GPUs and other devices ("generic": no
    fast path, float32 statistics of float32 input) and the differentiable composite (what
    transforms and double backward run)."""
    from l2bn import backends
    from l2bn._impl import passes

    if request.param == "fused" and not backends.available("cpu"):
        pytest.skip(f"fused kernels not built: {backends.unavailable_reason('cpu')}")
    preferred = "composite" if request.param == "composite" else None
    with (
        backends.flags(cpu=request.param == "fused"),
        backends.prefer(preferred),
        passes.accelerator_paths(request.param == "generic"),
    ):
        yield request.param
