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


@pytest.fixture(params=["fused", "pytorch"])
def each_path(request):
    """Run a test on the fused C++ kernels and on the pure-PyTorch path."""
    from l2bn import backends

    if request.param == "fused" and not backends.available("cpu"):
        pytest.skip(f"fused kernels not built: {backends.unavailable_reason('cpu')}")
    with backends.flags(cpu=request.param == "fused"):
        yield request.param
