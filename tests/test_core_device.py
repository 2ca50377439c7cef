"""L2BN on devices other than the CPU: no host synchronization (CUDA-graph capturable).

The ``meta`` device stands in for a GPU: any read of a tensor's value on the host
(``.item()``, ``bool(t)``, a data-dependent Python branch) raises there, so a training
step that completes on meta tensors has none. The same code runs on CUDA.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import l2bn
from l2bn import L2BatchNorm1d, L2BatchNorm2d, L2BatchNorm3d

LAYER = {2: L2BatchNorm1d, 3: L2BatchNorm1d, 4: L2BatchNorm2d, 5: L2BatchNorm3d}


class _HostReads(TorchDispatchMode):
    """Counts the operators that copy a value to the host."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 3), (5, 3, 7), (4, 3, 2, 3, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_training_step_reads_nothing_back(shape, dtype, channels_last):
    layer = LAYER[len(shape)](shape[1], device="meta", dtype=dtype)
    x = torch.randn(*shape, device="meta", dtype=dtype)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    with _HostReads() as reads:
        layer(x).sum().backward()
        layer.eval()
        layer(x).sum().backward()
        with torch.no_grad():
            layer(x)
    assert reads.count == 0
    assert x.grad.shape == x.shape and layer.weight.grad.shape == (shape[1],)


def test_the_pytorch_backend_serves_other_devices():
    x = torch.randn(4, 3, 5, 5, device="meta")
    text = l2bn.backends.status("meta")
    assert "meta float32: training -> pytorch, eval -> pytorch" in text
    assert L2BatchNorm2d(3, device="meta")(x).device.type == "meta"
