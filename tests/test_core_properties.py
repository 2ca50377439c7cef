"""Properties that define L2BN (paper section 3) and tell it apart from plain BN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from l2bn import L2BatchNorm1d, L2BatchNorm2d, L2BatchNorm3d

# Every test runs on the fused C++ kernels and on the pure-PyTorch path.
pytestmark = pytest.mark.usefixtures("each_path")

LAYERS = [
    (L2BatchNorm1d, nn.BatchNorm1d, (8, 5)),
    (L2BatchNorm1d, nn.BatchNorm1d, (6, 4, 7)),
    (L2BatchNorm2d, nn.BatchNorm2d, (6, 3, 5, 5)),
    (L2BatchNorm3d, nn.BatchNorm3d, (4, 2, 3, 3, 3)),
]


def _per_sample_factors(n: int, dims: int) -> torch.Tensor:
    factors = torch.logspace(-2, 3, n, dtype=torch.float64)
    return factors.view((n,) + (1,) * (dims - 1))


@pytest.mark.parametrize("l2_cls,bn_cls,shape", LAYERS)
@pytest.mark.parametrize("training", [True, False])
def test_invariant_to_per_sample_positive_scaling(l2_cls, bn_cls, shape, training):
    torch.manual_seed(1)
    m = l2_cls(shape[1], dtype=torch.float64).train(training)
    x = torch.randn(shape, dtype=torch.float64) + 0.5
    scaled = x * _per_sample_factors(shape[0], len(shape))
    y, y_scaled = m(x), m(scaled)
    assert torch.allclose(y, y_scaled, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("l2_cls,bn_cls,shape", LAYERS)
def test_differs_from_batchnorm_when_norms_differ(l2_cls, bn_cls, shape):
    """The test that catches a no-op L2BN (the failure of the authors' Keras layer)."""
    torch.manual_seed(2)
    x = (torch.randn(shape, dtype=torch.float64) + 0.5) * _per_sample_factors(shape[0], len(shape))
    l2 = l2_cls(shape[1], dtype=torch.float64)
    bn = bn_cls(shape[1], dtype=torch.float64)
    y_l2, y_bn = l2(x), bn(x)
    assert (y_l2 - y_bn).abs().max() > 0.1
    # ... and BN is NOT invariant to per-sample scaling, so the invariance test above is real.
    y_bn_unscaled = bn_cls(shape[1], dtype=torch.float64)(
        x / _per_sample_factors(shape[0], len(shape))
    )
    assert (y_bn - y_bn_unscaled).abs().max() > 0.1


def test_equals_batchnorm_when_all_norms_are_equal():
    """With equal sample norms the l2 step is a common rescaling, which BN removes."""
    torch.manual_seed(3)
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    x = x / x.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    y_l2 = L2BatchNorm2d(3, dtype=torch.float64, eps=1e-14)(x)
    y_bn = nn.BatchNorm2d(3, dtype=torch.float64, eps=1e-14)(x)
    assert torch.allclose(y_l2, y_bn, atol=1e-9)


def test_normalization_spans_the_whole_sample_not_each_channel():
    """Eq. 3 uses one norm over C*H*W: scaling one channel of one sample changes the others."""
    torch.manual_seed(4)
    m = L2BatchNorm2d(3, dtype=torch.float64)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    x2 = x.clone()
    x2[0, 0] *= 10
    y, y2 = m(x), m(x2)
    # Sample 0's other channels see a different norm, so they change too.
    assert (y[0, 1:] - y2[0, 1:]).abs().max() > 1e-3


def test_scale_forms_differ_only_through_eps():
    """``scale`` multiplies by sqrt(D) before BN: identical output when eps is negligible,
    different when eps is comparable to the plain form's variance (about 1/D)."""
    torch.manual_seed(5)
    x = torch.randn(8, 16, 32, 32, dtype=torch.float64)
    scaled = L2BatchNorm2d(16, dtype=torch.float64, eps=1e-14, scale=True)(x)
    plain = L2BatchNorm2d(16, dtype=torch.float64, eps=1e-14, scale=False)(x)
    assert torch.allclose(scaled, plain, atol=1e-7)
    scaled = L2BatchNorm2d(16, dtype=torch.float64, scale=True)(x)
    plain = L2BatchNorm2d(16, dtype=torch.float64, scale=False)(x)
    # Plain form: variance of x/||x|| is about 1/D = 6.1e-5, so eps = 1e-5 shrinks the
    # output by sqrt(v / (v + eps)) ~ 0.93; the scaled form has v ~ 1 and is untouched.
    v = (x.flatten(1) / x.flatten(1).norm(dim=1, keepdim=True)).var().item()
    expected = (v / (v + 1e-5)) ** 0.5
    assert abs(plain.std().item() / scaled.std().item() - expected) < 2e-3
    assert expected < 0.95


def test_zero_sample_gives_finite_output():
    """A sample of all zeros: its norm is clamped to l2_eps, output finite (documented)."""
    m = L2BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5)
    x[2] = 0
    y = m(x)
    assert torch.isfinite(y).all()
    # It normalizes to zero, so its output is BN's output for the value 0: beta - gamma*mu/sigma.
    assert torch.allclose(y[2], y[2, :, :1, :1].expand_as(y[2]))
    y.sum().backward()


def test_nan_propagates():
    m = L2BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5)
    x[1, 2, 3, 4] = float("nan")
    y = m(x)
    assert torch.isnan(y).any()
    assert torch.isnan(m.running_mean).any() or torch.isnan(m.running_var).any()
    m.eval()
    x2 = torch.randn(4, 3, 5, 5)
    x2[0, 0, 0, 0] = float("nan")
    m2 = L2BatchNorm2d(3).eval()
    y2 = m2(x2)
    assert torch.isnan(y2[0]).all() and torch.isfinite(y2[1:]).all()
