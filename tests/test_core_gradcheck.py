"""torch.autograd.gradcheck of every L2BN layer, training and eval (float64)."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from l2bn import L2BatchNorm1d, L2BatchNorm2d, L2BatchNorm3d, l2_batch_norm

# Every test runs on the fused C++ kernels and on the pure-PyTorch path.
pytestmark = pytest.mark.usefixtures("each_path")

CASES = [
    (L2BatchNorm1d, (6, 4)),
    (L2BatchNorm1d, (4, 3, 5)),
    (L2BatchNorm2d, (3, 2, 3, 4)),
    (L2BatchNorm3d, (3, 2, 2, 2, 3)),
]


@pytest.mark.parametrize("layer_cls,shape", CASES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("scale", [True, False])
def test_gradcheck_layer(layer_cls, shape, training, scale):
    torch.manual_seed(0)
    c = shape[1]
    m = layer_cls(c, scale=scale, dtype=torch.float64).train(training)
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
        m.running_mean.normal_()
        m.running_var.uniform_(0.5, 2.0)
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 0.3).requires_grad_()

    def fn(inp, weight, bias):
        # Running stats are updated in place by training steps: work on copies.
        rm, rv = m.running_mean.clone(), m.running_var.clone()
        return l2_batch_norm(inp, rm, rv, weight, bias, training, 0.1, m.eps, m.l2_eps, scale)

    w = m.weight.detach().clone().requires_grad_()
    b = m.bias.detach().clone().requires_grad_()
    assert gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-7, rtol=1e-5)
    # The module path goes through the same function: its gradient exists and is finite.
    m(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_gradcheck_without_affine():
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64, requires_grad=True)

    def fn(inp):
        return l2_batch_norm(inp, None, None, training=True)

    assert gradcheck(fn, (x,), eps=1e-6, atol=1e-7)


def test_gradcheck_with_clamped_sample():
    """A sample whose norm is below l2_eps: clamped, contributes no gradient through the norm.

    l2_eps = 1 keeps every quantity O(1) so finite differences stay accurate.
    """
    torch.manual_seed(0)
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    x[1] = 0.05 * torch.randn(3, 2, 2, dtype=torch.float64)
    assert x[1].norm() < 1.0 < x[0].norm()
    x.requires_grad_()

    def fn(inp):
        return l2_batch_norm(inp, None, None, training=True, l2_eps=1.0)

    assert gradcheck(fn, (x,), eps=1e-6, atol=1e-6)
