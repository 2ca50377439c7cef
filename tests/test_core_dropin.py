"""L2BatchNorm*d is a drop-in for torch.nn.BatchNorm*d: class, state, dtypes, layouts."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

import l2bn
from _reference import reference_l2bn, relative_error
from l2bn import L2BatchNorm1d, L2BatchNorm2d, L2BatchNorm3d

PAIRS = [
    (L2BatchNorm1d, nn.BatchNorm1d),
    (L2BatchNorm2d, nn.BatchNorm2d),
    (L2BatchNorm3d, nn.BatchNorm3d),
]


@pytest.mark.parametrize("l2_cls,bn_cls", PAIRS)
def test_isinstance_and_state_dict_keys(l2_cls, bn_cls):
    l2, bn = l2_cls(5), bn_cls(5)
    # BatchNorm's own base, not _BatchNorm: BatchNorm rewriters leave L2BN alone.
    assert isinstance(l2, _NormBase) and not isinstance(l2, _BatchNorm)
    assert list(l2.state_dict()) == list(bn.state_dict())
    assert [n for n, _ in l2.named_parameters()] == [n for n, _ in bn.named_parameters()]


@pytest.mark.parametrize("l2_cls,bn_cls", PAIRS)
def test_checkpoints_load_both_ways_strictly(l2_cls, bn_cls):
    bn = bn_cls(4)
    with torch.no_grad():
        bn.weight.uniform_()
        bn.bias.uniform_()
        bn.running_mean.uniform_()
        bn.running_var.uniform_(1, 2)
        bn.num_batches_tracked.fill_(7)
    l2 = l2_cls(4)
    l2.load_state_dict(bn.state_dict(), strict=True)
    for key, value in bn.state_dict().items():
        assert torch.equal(l2.state_dict()[key], value), key
    back = bn_cls(4)
    back.load_state_dict(l2.state_dict(), strict=True)
    assert torch.equal(back.running_var, bn.running_var)


@pytest.mark.parametrize(
    "affine,track", [(True, True), (False, True), (True, False), (False, False)]
)
def test_constructor_options_match_batchnorm(affine, track):
    l2 = L2BatchNorm2d(3, eps=1e-3, momentum=0.2, affine=affine, track_running_stats=track)
    bn = nn.BatchNorm2d(3, eps=1e-3, momentum=0.2, affine=affine, track_running_stats=track)
    assert list(l2.state_dict()) == list(bn.state_dict())
    assert (l2.weight is None) == (bn.weight is None)
    assert l2.eps == 1e-3 and l2.momentum == 0.2
    x = torch.randn(4, 3, 5, 5)
    assert l2(x).shape == x.shape
    assert "scale=True" in repr(l2) and "l2_eps=" in repr(l2)


def test_weight_without_bias_as_batchnorm():
    l2, bn = L2BatchNorm2d(3, bias=False), nn.BatchNorm2d(3, bias=False)
    assert l2.bias is None and l2.weight is not None
    assert list(l2.state_dict()) == list(bn.state_dict())
    with torch.no_grad():
        l2.weight.uniform_(0.5, 2)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    ref = reference_l2bn(x, None, None, l2.weight.double(), None, training=True)
    assert relative_error(l2.double()(x), ref) < 1e-12
    converted = l2bn.convert_l2bn_to_bn(nn.Sequential(l2))[0]
    assert isinstance(converted, nn.BatchNorm2d) and converted.bias is None


def test_parametrized_and_swapped_parameters_are_used():
    """The layer reads its parameters from the module's tables when they are there: a
    parametrization (which moves ``weight`` out of the table), and tensors swapped in by
    ``torch.func.functional_call``, must still be what it normalizes with."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    layer = L2BatchNorm2d(3).double()

    class Double(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return 2 * w

    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1, 1)
    torch.nn.utils.parametrize.register_parametrization(layer, "weight", Double())
    weight = 2 * layer.parametrizations.weight.original.detach()
    ref = reference_l2bn(x, None, None, weight, layer.bias.detach(), training=True)
    assert relative_error(layer(x), ref) < 1e-12

    other = L2BatchNorm2d(3).double()
    swapped = {
        "weight": torch.full((3,), 3.0, dtype=torch.float64),
        "bias": torch.zeros(3).double(),
    }
    y = torch.func.functional_call(other, swapped, (x,))
    ref = reference_l2bn(x, None, None, swapped["weight"], swapped["bias"], training=True)
    assert relative_error(y, ref) < 1e-12


def test_device_and_dtype_arguments():
    m = L2BatchNorm2d(3, device="cpu", dtype=torch.float64)
    assert m.weight.dtype == torch.float64 and m.running_mean.dtype == torch.float64
    assert m(torch.randn(2, 3, 4, 4, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("training", [True, False])
def test_low_precision_keeps_dtype_and_accumulates_in_float32(dtype, training):
    torch.manual_seed(0)
    m = L2BatchNorm2d(4).train(training)  # float32 parameters, as under autocast
    x = (torch.randn(6, 4, 8, 8) * 3 + 1).to(dtype).requires_grad_()
    y = m(x)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert x.grad.dtype == dtype and m.weight.grad.dtype == torch.float32
    assert m.running_mean.dtype == torch.float32
    ref = reference_l2bn(
        x.detach().double(),
        None if training else torch.zeros(4, dtype=torch.float64),
        None if training else torch.ones(4, dtype=torch.float64),
        m.weight.detach().double(),
        m.bias.detach().double(),
        training=training,
    )
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3  # a few ulps of the output dtype
    assert relative_error(y, ref) < tol


@pytest.mark.parametrize(
    "layer_cls,shape,fmt",
    [
        (L2BatchNorm2d, (4, 5, 6, 7), torch.channels_last),
        (L2BatchNorm3d, (3, 4, 3, 4, 5), torch.channels_last_3d),
    ],
)
@pytest.mark.parametrize("training", [True, False])
def test_channels_last_is_correct_and_preserved(layer_cls, shape, fmt, training):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64) * 2 + 1
    dy = torch.randn(shape, dtype=torch.float64)
    outs = []
    for layout in (torch.contiguous_format, fmt):
        m = layer_cls(shape[1], dtype=torch.float64).train(training)
        xi = x.detach().contiguous(memory_format=layout).requires_grad_()
        y = m(xi)
        y.backward(dy.contiguous(memory_format=layout))
        outs.append((y, xi.grad, m.weight.grad, m.running_var))
        if layout is fmt:
            assert y.is_contiguous(memory_format=fmt)
    for a, b in zip(*outs, strict=True):
        assert relative_error(a, b) < 1e-12


def test_non_contiguous_input():
    x = torch.randn(6, 8, 5, 4, dtype=torch.float64).transpose(2, 3)[:, ::2]
    assert not x.is_contiguous()
    m = L2BatchNorm2d(4, dtype=torch.float64)
    ref = reference_l2bn(x.contiguous(), None, None, m.weight, m.bias, training=True)
    assert relative_error(m(x), ref) < 1e-12
