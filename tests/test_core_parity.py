"""Parity of L2BatchNorm*d with the float64 composite reference (paper eqs. 1-3)."""

from __future__ import annotations

import pytest
import torch

from _reference import (
    adversarial_input,
    reference_l2bn,
    reference_l2bn_float32_statistics,
    relative_error,
)
from l2bn import L2BatchNorm1d, L2BatchNorm2d, L2BatchNorm3d

# Every test runs on the fused C++ kernels, on the pure-PyTorch path (its CPU fast paths, and
# its generic path as on other devices) and on the composite.
pytestmark = pytest.mark.usefixtures("each_path")

SHAPES = {
    "1d-NC": (L2BatchNorm1d, (12, 6)),
    "1d-NCL": (L2BatchNorm1d, (6, 5, 9)),
    "2d": (L2BatchNorm2d, (5, 4, 6, 7)),
    "3d": (L2BatchNorm3d, (4, 3, 3, 4, 5)),
}


def _run(layer_cls, x64, dtype, *, scale=True, affine=True, training=True, impl="layer"):
    """Forward + backward; returns (y, dx, running_mean, running_var, dweight, dbias) as float64."""
    c = x64.shape[1]
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(c, generator=g, dtype=torch.float64)
    bias = torch.randn(c, generator=g, dtype=torch.float64)
    rm = torch.randn(c, generator=g, dtype=torch.float64)
    rv = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    dy = torch.randn(x64.shape, generator=g, dtype=torch.float64)
    x = x64.detach().clone().to(dtype).requires_grad_()
    if impl == "layer":
        m = layer_cls(c, affine=affine, scale=scale, dtype=dtype).train(training)
        with torch.no_grad():
            m.running_mean.copy_(rm)
            m.running_var.copy_(rv)
            if affine:
                m.weight.copy_(weight)
                m.bias.copy_(bias)
        y = m(x)
        w, b, rm_out, rv_out = m.weight, m.bias, m.running_mean, m.running_var
    else:
        w = weight.to(dtype).requires_grad_() if affine else None
        b = bias.to(dtype).requires_grad_() if affine else None
        rm_out, rv_out = rm.to(dtype), rv.to(dtype)
        if impl == "float32_statistics":
            assert training
            y = reference_l2bn_float32_statistics(x, rm_out, rv_out, w, b, 0.1, 1e-5, 1e-12, scale)
        else:
            y = reference_l2bn(x, rm_out, rv_out, w, b, training, 0.1, 1e-5, 1e-12, scale)
    y.backward(dy.to(dtype))
    grads = (w.grad, b.grad) if affine else ()
    return (y, x.grad, rm_out, rv_out, *grads)


NAMES = ("y", "dx", "rm", "rv", "dw", "db")


def _errors(layer_cls, x64, dtype, ref_dtype=torch.float64, **kw):
    ours = _run(layer_cls, x64, dtype, **kw)
    ref = _run(layer_cls, x64, ref_dtype, impl="reference", **kw)
    return [relative_error(a, b) for a, b in zip(ours, ref, strict=True)]


@pytest.mark.parametrize("case", SHAPES)
@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_matches_reference(case, scale, affine, training, dtype, tol):
    layer_cls, shape = SHAPES[case]
    x64 = torch.randn(shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    x64 = x64 * 3 + 0.5
    errs = _errors(layer_cls, x64, dtype, scale=scale, affine=affine, training=training)
    assert max(errs) < tol, errs


@pytest.mark.parametrize("kind", ["offset", "norms"])
@pytest.mark.parametrize("case", ["1d-NC", "2d", "3d"])
def test_adversarial_float64(kind, case):
    layer_cls, shape = SHAPES[case]
    x64 = adversarial_input(kind, shape)
    errs = _errors(layer_cls, x64, torch.float64)
    assert max(errs) < 1e-10, errs


@pytest.mark.parametrize("kind", ["offset", "norms"])
@pytest.mark.parametrize("case", ["1d-NC", "2d", "3d"])
def test_adversarial_float32(kind, case, each_path):
    """float32 at 1e-5, except where float32 itself cannot carry it.

    With channel offsets of 1e3 and unit spread, a float32 value near 1e3 has an ulp of
    6e-5, so no float32 algorithm (native BatchNorm included) reaches 1e-5 on the output:
    there we require the error to stay within twice that of the float32 composite
    (F.normalize + native F.batch_norm) on the same input -- both sit at float32's floor and
    their rounding errors differ by a random factor of order one -- and 1e-5 wherever that
    composite achieves it.

    The generic path (the pure-PyTorch path as on a GPU) keeps float32 statistics of float32
    input, as BatchNorm and the Triton kernels do there, whereas CPU BatchNorm, inside that
    composite, accumulates in double. Its channel mean is then known to half an ulp of
    ``|mu|`` (3e-5 of the spread at offsets of 1e3), an error shared by every element, so
    single draws scatter around the floor: for offsets it must stay within twice the error
    of the composite computed in float32 throughout (two-pass float32 statistics, as
    BatchNorm on a GPU), both averaged over six draws.
    """
    layer_cls, shape = SHAPES[case]
    if each_path == "generic" and kind == "offset":
        ours, floor = [], []
        for seed in range(6):
            x64 = adversarial_input(kind, shape, seed=seed)
            ref = _run(layer_cls, x64, torch.float64, impl="reference")
            for errors, impl in ((ours, "layer"), (floor, "float32_statistics")):
                run = _run(layer_cls, x64, torch.float32, impl=impl)
                errors.append([relative_error(a, b) for a, b in zip(run, ref, strict=True)])
        mean_ours = torch.tensor(ours, dtype=torch.float64).mean(0)
        mean_floor = torch.tensor(floor, dtype=torch.float64).mean(0)
        for name, e_ours, e_floor in zip(NAMES, mean_ours, mean_floor, strict=True):
            assert e_ours < max(1e-5, 2 * e_floor), (name, float(e_ours), float(e_floor))
        return
    x64 = adversarial_input(kind, shape)
    ours = _errors(layer_cls, x64, torch.float32)
    composite = [
        relative_error(a, b)
        for a, b in zip(
            _run(layer_cls, x64, torch.float32, impl="reference"),
            _run(layer_cls, x64, torch.float64, impl="reference"),
            strict=True,
        )
    ]
    for name, e_ours, e_comp in zip(NAMES, ours, composite, strict=True):
        assert e_ours < max(1e-5, 2 * e_comp), (name, e_ours, e_comp)
    if kind == "norms":
        assert max(ours) < 1e-5, ours


# Rounding-level bounds for half-precision input, in units of the dtype's unit roundoff u:
# y and dx are rounded to it (dx on the generic path through one more rounded
# intermediate); dweight sums float32 products on CPU, but on the generic path (as on a
# GPU) products dy * (x - mu * rho) rounded to the input's dtype (its one full-size buffer);
# dbias and the running statistics (None: 1e-5) are float32 sums of exact values.
HALF_UNIT = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
HALF_BOUND = {"y": 1.0, "dx": 3.0, "rm": None, "rv": None, "dw": 1.0, "db": None}
HALF_BOUND_GENERIC = {**HALF_BOUND, "dw": 3.0}


@pytest.mark.parametrize("case", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["plain", "offset", "norms", "zero sample"])
@pytest.mark.parametrize("training", [True, False])
def test_half_precision_matches_reference(case, dtype, kind, training, each_path):
    """float16/bfloat16 input with float32 parameters and running statistics (autocast's
    layout): statistics in float32, outputs in the input dtype, against the float64 reference
    on the same (rounded) input: y within one unit roundoff, dx within three, dweight within
    one (three on the generic path), dbias and the running statistics within 1e-5 (float32
    work on exact values)."""
    layer_cls, shape = SHAPES[case]
    g = torch.Generator().manual_seed(13)
    # The zero sample's norm is clamped to l2_eps, which scales its input gradient by
    # sqrt(D) / l2_eps: 0.1 keeps it inside float16's range (the default 1e-12 would not).
    l2_eps = 0.1 if kind == "zero sample" else 1e-12
    if kind == "plain":
        x64 = torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 0.5
    elif kind == "zero sample":
        x64 = torch.randn(shape, generator=g, dtype=torch.float64)
        x64[1] = 0
    else:
        x64 = adversarial_input(kind, shape)
    x64 = x64.to(dtype).double()  # the input the layer sees, exactly
    dy64 = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).double()
    c = shape[1]
    weight = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    bias = torch.randn(c, generator=g, dtype=torch.float64)
    rm = torch.randn(c, generator=g, dtype=torch.float64).float().double()
    rv = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).float().double()
    weight, bias = weight.float().double(), bias.float().double()

    layer = layer_cls(c, l2_eps=l2_eps).train(training)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
        layer.running_mean.copy_(rm)
        layer.running_var.copy_(rv)
    x = x64.to(dtype).requires_grad_()
    y = layer(x)
    y.backward(dy64.to(dtype))
    assert y.dtype == x.grad.dtype == dtype and layer.weight.grad.dtype == torch.float32
    ours = (y, x.grad, layer.running_mean, layer.running_var, layer.weight.grad, layer.bias.grad)

    w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    xr = x64.clone().requires_grad_()
    y_ref = reference_l2bn(xr, rm, rv, w, b, training, 0.1, 1e-5, l2_eps, True)
    y_ref.backward(dy64)
    ref = (y_ref, xr.grad, rm, rv, w.grad, b.grad)
    unit = HALF_UNIT[dtype]
    bounds = HALF_BOUND_GENERIC if each_path == "generic" else HALF_BOUND
    for name, a, r in zip(NAMES, ours, ref, strict=True):
        bound = bounds[name]
        tol = 1e-5 if bound is None else bound * unit
        assert relative_error(a, r) < tol, (name, relative_error(a, r), tol)
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


def test_running_stats_follow_batchnorm_over_steps():
    """Several training steps: running stats equal the reference's (unbiased var, momentum)."""
    m = L2BatchNorm2d(3, momentum=0.3, dtype=torch.float64)
    rm = torch.zeros(3, dtype=torch.float64)
    rv = torch.ones(3, dtype=torch.float64)
    for step in range(4):
        x = torch.randn(4, 3, 5, 5, dtype=torch.float64) * (step + 1) + step
        m(x)
        reference_l2bn(x, rm, rv, training=True, momentum=0.3)
    assert torch.allclose(m.running_mean, rm, rtol=0, atol=1e-12)
    assert torch.allclose(m.running_var, rv, rtol=0, atol=1e-12)
    assert int(m.num_batches_tracked) == 4


def test_momentum_none_is_cumulative_average():
    m = L2BatchNorm2d(2, momentum=None, dtype=torch.float64)
    batches = [torch.randn(3, 2, 4, 4, dtype=torch.float64) + i for i in range(3)]
    means, variances = [], []
    for x in batches:
        m(x)
        rm, rv = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
        reference_l2bn(x, rm, rv, training=True, momentum=1.0)
        means.append(rm)
        variances.append(rv)
    assert torch.allclose(m.running_mean, torch.stack(means).mean(0), atol=1e-12)
    assert torch.allclose(m.running_var, torch.stack(variances).mean(0), atol=1e-12)


def test_track_running_stats_false_uses_batch_stats_in_eval():
    m = L2BatchNorm2d(3, track_running_stats=False, dtype=torch.float64).eval()
    assert m.running_mean is None
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64) * 2 + 1
    ref = reference_l2bn(x, None, None, m.weight, m.bias, training=True)
    assert relative_error(m(x), ref) < 1e-12
