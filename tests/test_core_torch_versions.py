"""Calls into torch that every supported torch version accepts.

``F.batch_norm`` of torch 2.11 refuses ``eps <= 0`` in eval as well as in training (2.13
only in training); the PyTorch path's eval with autograd used BatchNorm's eval as an affine
map with ``eps = 0`` and failed there (seen on a GPU machine with torch 2.11). Here
``F.batch_norm`` is replaced by one that applies 2.11's rule, and every path runs the calls
that reach it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _reference import reference_l2bn, relative_error
from l2bn import L2BatchNorm1d, L2BatchNorm2d

pytestmark = pytest.mark.usefixtures("each_path")


@pytest.fixture(autouse=True)
def batch_norm_of_torch_2_11(monkeypatch):
    """``F.batch_norm`` refusing ``eps <= 0`` in every mode, as torch 2.11's does."""
    original = F.batch_norm

    def batch_norm(
        input,
        running_mean,
        running_var,
        weight=None,
        bias=None,
        training=False,
        momentum=0.1,
        eps=1e-5,
    ):
        if eps <= 0.0:
            raise ValueError(f"batch_norm eps must be positive, but got {eps}")
        return original(input, running_mean, running_var, weight, bias, training, momentum, eps)

    monkeypatch.setattr(F, "batch_norm", batch_norm)


@pytest.mark.parametrize(
    "layer_type,shape", [(L2BatchNorm2d, (4, 3, 5, 5)), (L2BatchNorm1d, (6, 5))]
)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("grad", [True, False])
def test_every_mode_runs_under_the_eps_rule_of_torch_2_11(layer_type, shape, training, grad):
    torch.manual_seed(0)
    layer = layer_type(shape[1]).train(training)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)
        layer.running_mean.uniform_(-0.2, 0.2)
        layer.running_var.uniform_(0.5, 2.0)
    # Samples of different norms: plain BatchNorm of them is far from L2BN.
    scales = torch.linspace(0.5, 3.0, shape[0]).view(-1, *[1] * (len(shape) - 1))
    x = ((torch.randn(shape) + 0.5) * scales).requires_grad_(grad)
    expected = reference_l2bn(
        x.detach().double(),
        None if training else layer.running_mean.double(),
        None if training else layer.running_var.double(),
        layer.weight.detach().double(),
        layer.bias.detach().double(),
        training,
        eps=layer.eps,
    )
    with torch.set_grad_enabled(grad):
        y = layer(x)
    assert relative_error(y, expected) < 1e-5
    if grad:
        y.backward(torch.randn_like(y))
        assert x.grad is not None and torch.isfinite(x.grad).all()
