"""Bad and unusual input: clear errors, or BatchNorm's documented behaviour."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import l2bn
from _reference import reference_l2bn
from l2bn import L2BatchNorm1d, L2BatchNorm2d, L2BatchNorm3d, backends, l2_batch_norm

# Every test runs on the fused C++ kernels and on the pure-PyTorch path.
pytestmark = pytest.mark.usefixtures("each_path")


@pytest.mark.parametrize(
    "layer,shape,expected",
    [
        (L2BatchNorm1d(4), (2, 4, 3, 3), "expected 2D or 3D input (got 4D input)"),
        (L2BatchNorm2d(4), (2, 4, 3), "expected 4D input (got 3D input)"),
        (L2BatchNorm3d(4), (2, 4, 3, 3), "expected 5D input (got 4D input)"),
    ],
)
def test_wrong_number_of_dims(layer, shape, expected):
    with pytest.raises(ValueError, match=re.escape(expected)):
        layer(torch.randn(shape))


def test_wrong_channel_count():
    with pytest.raises(ValueError, match=r"expected input with 4 channels.*got 3"):
        L2BatchNorm2d(4)(torch.randn(2, 3, 5, 5))
    with pytest.raises(ValueError, match="expected input with 4 channels"):
        L2BatchNorm2d(4).eval()(torch.randn(2, 3, 5, 5))


def test_functional_wrong_parameter_size():
    message = r"running_mean should contain 3 elements in one dimension, not shape \(4,\)"
    with pytest.raises(ValueError, match=message):
        l2_batch_norm(torch.randn(2, 3, 4, 4), torch.zeros(4), torch.ones(4))
    with pytest.raises(ValueError, match="weight should contain 3 elements"):
        l2_batch_norm(torch.randn(2, 3, 4, 4), None, None, torch.ones(5), training=True)
    with pytest.raises(ValueError, match=r"bias should contain 3 elements.*shape \(1, 3\)"):
        l2_batch_norm(torch.randn(2, 3, 4, 4), None, None, None, torch.ones(1, 3), training=True)


@pytest.mark.parametrize(
    "layer,shape",
    [(L2BatchNorm1d(4), (1, 4)), (L2BatchNorm2d(4), (1, 4, 1, 1)), (L2BatchNorm1d(4), (1, 4, 1))],
)
def test_one_value_per_channel_in_training(layer, shape):
    layer.train()  # the same module object serves every path
    with pytest.raises(ValueError, match="more than 1 value per channel when training"):
        layer(torch.randn(shape))
    # BatchNorm raises the same error for the same shapes...
    with pytest.raises(ValueError):
        nn.BatchNorm1d(4)(torch.randn(1, 4))
    # ... and in eval mode the running statistics are used: no error.
    layer.eval()
    assert layer(torch.randn(shape)).shape == shape


def test_batch_of_one_with_positions_trains_like_batchnorm():
    """N = 1 with H*W > 1 is allowed by BatchNorm (statistics over positions) and by L2BN."""
    y = L2BatchNorm2d(3)(torch.randn(1, 3, 4, 4))
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_input_is_rejected(dtype):
    x = torch.ones(2, 3, 4, 4, dtype=dtype)
    with pytest.raises(TypeError, match="expected a floating-point input"):
        L2BatchNorm2d(3)(x)
    with pytest.raises(TypeError, match="floating-point"):
        l2_batch_norm(x, None, None, training=True)


def test_non_tensor_is_rejected():
    with pytest.raises(TypeError, match=r"expected a torch\.Tensor"):
        L2BatchNorm1d(3)([[1.0, 2.0, 3.0]])


def test_empty_batch_behaves_as_batchnorm():
    l2, bn = L2BatchNorm2d(3), nn.BatchNorm2d(3)
    x = torch.randn(0, 3, 4, 4, requires_grad=True)
    y_l2, y_bn = l2(x), bn(x)
    assert y_l2.shape == y_bn.shape == (0, 3, 4, 4)
    assert torch.equal(l2.running_mean, bn.running_mean)
    assert torch.equal(l2.running_var, bn.running_var)
    assert int(l2.num_batches_tracked) == int(bn.num_batches_tracked) == 1
    y_l2.sum().backward()
    assert l2.weight.grad is not None and torch.equal(l2.weight.grad, torch.zeros(3))


@pytest.mark.parametrize("backend", ["cpu", "pytorch", "composite"])
@pytest.mark.parametrize(
    "layer,bn_layer,shape",
    [
        (L2BatchNorm2d, nn.BatchNorm2d, (4, 3, 0, 5)),
        (L2BatchNorm1d, nn.BatchNorm1d, (4, 3, 0)),
        (L2BatchNorm3d, nn.BatchNorm3d, (2, 3, 2, 0, 2)),
    ],
)
@pytest.mark.parametrize("affine,momentum", [(True, 0.1), (False, None)])
def test_zero_size_positions_behave_as_batchnorm(backend, layer, bn_layer, shape, affine, momentum):
    """Samples of no value ((N, C, 0, W)): as BatchNorm, in training and eval, forward and
    backward: an empty output, the running statistics unchanged (num_batches_tracked
    advanced) and zero parameter gradients, on every backend."""
    l2 = layer(3, affine=affine, momentum=momentum)
    bn = bn_layer(3, affine=affine, momentum=momentum)
    with backends.prefer(backend):
        for train in (True, False):
            l2.train(train)
            bn.train(train)
            x_l2 = torch.randn(shape, requires_grad=True)
            x_bn = x_l2.detach().clone().requires_grad_()
            y_l2, y_bn = l2(x_l2), bn(x_bn)
            assert y_l2.shape == y_bn.shape == shape and y_l2.dtype == y_bn.dtype
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                assert torch.equal(getattr(l2, name), getattr(bn, name)), (train, name)
            y_l2.sum().backward()
            y_bn.sum().backward()
            assert x_l2.grad.shape == x_bn.grad.shape == shape
            for p_l2, p_bn in zip(l2.parameters(), bn.parameters(), strict=True):
                assert torch.equal(p_l2.grad, p_bn.grad), train
    # The running statistics still work: a later batch gives finite eval output.
    l2.eval()
    assert torch.isfinite(l2(torch.randn((2, 3) + (4,) * (len(shape) - 2)))).all()


@pytest.mark.parametrize("backend", ["cpu", "pytorch", "composite"])
def test_functional_zero_size_positions_leave_statistics_alone(backend):
    rm, rv = torch.zeros(3), torch.ones(3)
    x = torch.randn(4, 3, 0, 5)
    with backends.prefer(backend):
        y = l2_batch_norm(x, rm, rv, training=True)
    assert y.shape == x.shape
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(3))


def test_eps_must_be_positive_in_training():
    with pytest.raises(ValueError, match="eps must be positive"):
        L2BatchNorm2d(3, eps=0.0)(torch.randn(2, 3, 4, 4))


def test_negative_eps_is_refused_in_eval():
    """As F.batch_norm: eps may be 0 in eval mode, never negative (it would give NaN where
    running_var < -eps, silently)."""
    x = torch.randn(2, 3, 4, 4)
    rm, rv = torch.zeros(3), torch.full((3,), 0.5)
    with pytest.raises(ValueError, match="non-negative"):
        torch.nn.functional.batch_norm(x, rm, rv, training=False, eps=-1.0)
    with pytest.raises(ValueError, match=r"l2bn: eps must be non-negative, got -1\.0"):
        l2_batch_norm(x, rm, rv, training=False, eps=-1.0)
    with pytest.raises(ValueError, match=r"l2bn: eps must be non-negative, got -1\.0"):
        L2BatchNorm2d(3, eps=-1.0).eval()(x)
    assert torch.isfinite(l2_batch_norm(x, rm, rv, training=False, eps=0.0)).all()


@pytest.mark.parametrize("eps", ["1e-5", None])
def test_eps_that_is_not_a_number_is_named(eps):
    """A string eps (a config value read as text) raised "'<=' not supported between
    instances of 'str' and 'int'" from inside the layer; now a TypeError naming eps."""
    x = torch.randn(2, 3, 4, 4)
    for layer in (L2BatchNorm2d(3, eps=eps), L2BatchNorm2d(3, eps=eps).eval()):
        with pytest.raises(TypeError, match=r"l2bn: eps must be a number, got "):
            layer(x)
    with pytest.raises(TypeError, match=r"l2bn: eps must be a number, got "):
        l2_batch_norm(x, None, None, training=True, eps=eps)


@pytest.mark.parametrize("scale", ["no", "False", 2, None, 1.0])
def test_scale_that_is_not_a_bool_is_refused(scale):
    """``bool("no")`` is True: a string scale silently chose the scaled form of eq. 3."""
    match = r"l2bn: scale must be True or False, got "
    for make in (
        lambda: L2BatchNorm2d(3, scale=scale),
        lambda: l2bn.LazyL2BatchNorm2d(scale=scale),
        lambda: l2bn.FrozenL2BatchNorm2d(3, scale=scale),
    ):
        with pytest.raises(TypeError, match=match):
            make()
    with pytest.raises(TypeError, match=match):
        l2_batch_norm(torch.randn(2, 3, 4, 4), None, None, training=True, scale=scale)
    assert L2BatchNorm2d(3, scale=0).scale is False and L2BatchNorm2d(3, scale=1).scale is True


def test_numpy_and_tensor_bools_are_bools_for_scale():
    """A NumPy bool (a flag read from an array, ``np.bool_``) or a one-value bool tensor is
    a bool: the layers took ``bool(scale)`` of them before ``checked_scale``, which refused
    both as not ``True`` or ``False``."""
    import numpy as np

    x = torch.randn(2, 3, 4, 4)
    for value in (True, False):
        for scale in (np.bool_(value), torch.tensor(value)):
            for layer in (
                L2BatchNorm2d(3, scale=scale),
                l2bn.LazyL2BatchNorm2d(scale=scale),
                l2bn.FrozenL2BatchNorm2d(3, scale=scale),
            ):
                assert layer.scale is value
            expected = l2_batch_norm(x, None, None, training=True, scale=value)
            found = l2_batch_norm(x, None, None, training=True, scale=scale)
            torch.testing.assert_close(found, expected, rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"l2bn: scale must be True or False, got "):
        L2BatchNorm2d(3, scale=torch.tensor([True, False]))


@pytest.mark.parametrize("l2_eps", [-1.0, float("nan"), float("inf")])
def test_bad_l2_eps_is_rejected(l2_eps):
    """A NaN bound would be ignored by the clamp, an infinite one would zero every sample."""
    match = "l2bn: l2_eps must be a finite non-negative number"
    for make in (
        lambda: L2BatchNorm2d(3, l2_eps=l2_eps),
        lambda: l2bn.LazyL2BatchNorm2d(l2_eps=l2_eps),
        lambda: l2bn.FrozenL2BatchNorm2d(3, l2_eps=l2_eps),
    ):
        with pytest.raises(ValueError, match=match):
            make()
    with pytest.raises(ValueError, match=match):
        l2_batch_norm(torch.randn(2, 3, 4, 4), None, None, training=True, l2_eps=l2_eps)


def test_functional_running_statistics_come_in_pairs():
    """As F.batch_norm: one running statistic without the other is refused, not half
    updated."""
    x = torch.randn(4, 3, 2, 2)
    for rm, rv in ((torch.zeros(3), None), (None, torch.ones(3))):
        with pytest.raises(ValueError, match="both be None or neither"):
            l2_batch_norm(x, rm, rv, training=True)
    with pytest.raises(ValueError, match="both be None or neither"):
        torch.nn.functional.batch_norm(x, torch.zeros(3), None, training=True)


def test_functional_integer_running_statistics_are_refused():
    x = torch.randn(4, 3, 2, 2)
    with pytest.raises(TypeError, match="running_var must be a floating-point tensor"):
        l2_batch_norm(x, torch.zeros(3), torch.ones(3, dtype=torch.int64), training=True)


@pytest.mark.parametrize("name", ["weight", "bias"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float16])
def test_functional_non_floating_affine_parameters_are_refused(name, dtype, training, x_dtype):
    """On every backend: the fused kernels raised NotImplementedError, the PyTorch ones
    promoted an integer or bool weight or bias silently (float16 input, or L2BN_DISABLE_FUSED).
    torch's F.batch_norm refuses them too."""
    x = torch.randn(4, 3, 2, 2, dtype=x_dtype)
    rm, rv = torch.zeros(3), torch.ones(3)
    kwargs = {name: torch.ones(3, dtype=dtype)}
    with pytest.raises(TypeError, match=f"l2bn: {name} must be a floating-point tensor"):
        l2_batch_norm(x, rm, rv, training=training, **kwargs)


@pytest.mark.parametrize("momentum", [None, "0.1", True])
def test_functional_momentum_must_be_a_number(momentum):
    x = torch.randn(4, 3, 2, 2)
    with pytest.raises(TypeError, match="l2bn: momentum must be a number"):
        l2_batch_norm(x, torch.zeros(3), torch.ones(3), training=True, momentum=momentum)


def test_eval_requires_running_stats_in_functional_form():
    with pytest.raises(ValueError, match="running_mean and running_var are required"):
        l2_batch_norm(torch.randn(2, 3, 4, 4), None, None, training=False)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(
    "x_dtype,param_dtype,stat_dtype",
    [
        (torch.float64, torch.float32, torch.float32),
        (torch.float32, torch.float64, torch.float16),
        (torch.float16, torch.float32, torch.float64),
    ],
)
def test_mixed_floating_dtypes_are_accepted_as_documented(
    training, x_dtype, param_dtype, stat_dtype
):
    """The documented difference from F.batch_norm (which raises for these mixes): the
    output in the input's dtype, running statistics and gradients in their own."""
    torch.manual_seed(0)
    x = (torch.randn(4, 3, 5, 5) + 0.5).to(x_dtype).requires_grad_()
    w = torch.randn(3, dtype=param_dtype, requires_grad=True)
    b = torch.randn(3, dtype=param_dtype, requires_grad=True)
    rm0, rv0 = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5
    rm, rv = rm0.to(stat_dtype), rv0.to(stat_dtype)
    ref_rm, ref_rv = rm.double().clone(), rv.double().clone()
    y = l2_batch_norm(x, rm, rv, w, b, training=training)
    y.sum().backward()
    assert y.dtype == x_dtype and rm.dtype == rv.dtype == stat_dtype
    assert x.grad.dtype == x_dtype and w.grad.dtype == b.grad.dtype == param_dtype
    expected = reference_l2bn(
        x.detach().double(), ref_rm, ref_rv, w.detach().double(), b.detach().double(), training
    )
    tol = {torch.float16: 2e-3, torch.float32: 1e-5, torch.float64: 1e-8}
    torch.testing.assert_close(y.double(), expected, rtol=0, atol=10 * tol[x_dtype])
    # Statistics accumulate in float32 for float32 and half input, in float64 for float64.
    atol = max(2 * tol[stat_dtype], 0 if x_dtype == torch.float64 else 1e-6)
    torch.testing.assert_close(rm.double(), ref_rm, rtol=atol, atol=atol)
    torch.testing.assert_close(rv.double(), ref_rv, rtol=atol, atol=atol)


def test_running_statistics_that_require_grad_behave_alike_on_every_path():
    """torch's BatchNorm refuses running statistics that require grad; L2BN has one rule
    on every backend (the composite raised torch's error where the others ran): eval mode
    differentiates through them, training updates them in place outside the graph."""
    torch.manual_seed(0)
    x = torch.randn(3, 2, 3, 2, dtype=torch.float64) + 0.3
    rm = torch.randn(2, dtype=torch.float64, requires_grad=True)
    rv = (torch.rand(2, dtype=torch.float64) + 0.5).requires_grad_()
    w = torch.randn(2, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda m, v: l2_batch_norm(x, m, v, w, None, training=False), (rm, rv)
    )
    expected_rm, expected_rv = rm.detach().clone(), rv.detach().clone()
    reference_l2bn(x, expected_rm, expected_rv, w, None, True)
    y = l2_batch_norm(x.clone().requires_grad_(), rm, rv, w, None, training=True)
    y.pow(2).sum().backward()
    assert rm.grad is None and rv.grad is None
    torch.testing.assert_close(rm.detach(), expected_rm)
    torch.testing.assert_close(rv.detach(), expected_rv)
