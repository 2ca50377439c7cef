"""Eval-mode gradients on the fused CPU path (the eval operator's autograd formula,
``l2bn._impl.cpu._eval_backward``) against the float64 reference: float32 input, every
layout, large channel offsets, norms 1e6 apart, clamped samples, and frozen layers (whose
input gradient is what fine-tuning a network with frozen norms runs)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from _reference import adversarial_input, reference_l2bn, relative_error
from l2bn import L2BatchNorm1d, L2BatchNorm2d, backends, freeze

pytestmark = pytest.mark.skipif(
    not backends.available("cpu"), reason=str(backends.unavailable_reason("cpu"))
)

CASES = [
    ((6, 5, 7, 9), torch.contiguous_format),
    ((6, 5, 7, 9), torch.channels_last),
    ((8, 16, 2, 2), torch.channels_last),
    ((12, 7), torch.contiguous_format),
]


def _layer(x):
    """An eval-mode layer whose running statistics are those of ``x`` normalized (as after
    training on it): then ``x / rho - mean`` cancels where the channels' means are large
    against their spread (the ``offset`` input: 1e3 standard deviations)."""
    c = x.shape[1]
    layer = (L2BatchNorm2d if x.dim() == 4 else L2BatchNorm1d)(c)
    gen = torch.Generator().manual_seed(1)
    flat = x.double().reshape(x.shape[0], -1)
    xh = (flat / flat.norm(dim=1, keepdim=True).clamp(min=1e-12) * flat.shape[1] ** 0.5).view(
        x.shape
    )
    dims = (0, *range(2, x.dim()))
    with torch.no_grad():
        layer.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        layer.bias.copy_(torch.rand(c, generator=gen) - 0.5)
        layer.running_mean.copy_(xh.mean(dim=dims))
        layer.running_var.copy_(xh.var(dim=dims))
    return layer.eval()


def _grads(layer, x, dy):
    x = x.detach().clone().requires_grad_()
    layer.zero_grad()
    y = layer(x)
    # The fused eval operator, differentiated by its formula (not the PyTorch path).
    assert "EvalFunction" in y.grad_fn.name()
    y.backward(dy)
    params = [p.grad for p in (layer.weight, layer.bias)] if layer.weight is not None else []
    return [x.grad, *params]


def _reference_grads(layer, x, dy):
    x = x.detach().double().requires_grad_()
    w = layer.weight.detach().double().requires_grad_()
    b = layer.bias.detach().double().requires_grad_()
    rm, rv = layer.running_mean.double(), layer.running_var.double()
    reference_l2bn(x, rm, rv, w, b, training=False).backward(dy.double())
    return [x.grad, w.grad, b.grad]


def _inputs(kind, shape, fmt):
    if kind == "plain":
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    elif kind == "clamped":  # two samples of zeros: rho clamped, no gradient through it
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        x[1].zero_()
        x[3].zero_()
    else:
        x = adversarial_input(kind, shape, dtype=torch.float32)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    return x.contiguous(memory_format=fmt), dy.contiguous(memory_format=fmt)


@pytest.mark.parametrize("kind", ["plain", "offset", "norms", "clamped"])
@pytest.mark.parametrize(("shape", "fmt"), CASES)
def test_eval_gradients_match_the_float64_reference(kind, shape, fmt):
    x, dy = _inputs(kind, shape, fmt)
    layer = _layer(x)
    got = _grads(layer, x, dy)
    want = _reference_grads(layer, x, dy)
    for name, g, r in zip(("dx", "dweight", "dbias"), got, want, strict=True):
        assert g.dtype == torch.float32
        assert relative_error(g, r) < 2e-5, name
    assert got[0].stride() == x.stride()


@pytest.mark.parametrize(("shape", "fmt"), CASES)
@pytest.mark.parametrize("kind", ["plain", "offset", "norms"])
def test_frozen_layer_input_gradient(kind, shape, fmt):
    x, dy = _inputs(kind, shape, fmt)
    layer = _layer(x)
    want = _reference_grads(layer, x, dy)[0]
    frozen = freeze(layer)
    xg = x.detach().clone().requires_grad_()
    frozen(xg).backward(dy)
    assert relative_error(xg.grad, want) < 2e-5
    # The same gradient as the unfrozen layer in eval mode, to float32 rounding.
    assert relative_error(xg.grad, _grads(layer, x, dy)[0]) < 1e-6


@pytest.mark.parametrize("wanted", ["x", "weight", "bias", "x,weight,bias"])
@pytest.mark.parametrize("shape", [(4, 3, 3, 2), (5, 4)])
def test_eval_formula_is_differentiable_again(shape, wanted):
    """gradcheck and gradgradcheck (float64) of the fused eval operator's formula, for each
    subset of the gradients it is asked for."""
    from l2bn import l2_batch_norm

    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5
    c = shape[1]
    args = {
        "x": x,
        "weight": torch.rand(c, generator=g, dtype=torch.float64) + 0.5,
        "bias": torch.randn(c, generator=g, dtype=torch.float64),
    }
    rm = torch.randn(c, generator=g, dtype=torch.float64)
    rv = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    names = wanted.split(",")
    inputs = [args[k].clone().requires_grad_() for k in names]

    def fn(*tensors):
        call = dict(args, **dict(zip(names, tensors, strict=True)))
        y = l2_batch_norm(call["x"], rm, rv, call["weight"], call["bias"], training=False)
        assert "EvalFunction" in y.grad_fn.name()
        return y

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def _frozen_grads(layer, x, dy):
    """Input, weight and bias gradients of ``layer`` (eval mode) and of the float64
    reference, for the parameters that require grad."""
    got = _grads(layer, x, dy)
    want = _reference_grads(layer, x, dy)
    return got, want


def test_dy_along_y_cancels_without_losing_precision():
    """A loss like ||y||^2 / 2 sends dy = y, whose component along x the projection
    through the norm removes: dx is the small difference of two large terms."""
    x = torch.randn(4, 64, 56, 56, generator=torch.Generator().manual_seed(0))
    layer = _layer(x)
    with torch.no_grad():
        layer.weight.fill_(1)
        layer.bias.zero_()
        dy = layer(x)
    got, want = _frozen_grads(layer, x, dy)
    assert relative_error(got[0], want[0]) < 1e-6


def test_one_value_per_sample_has_no_input_gradient():
    """D = 1: x / rho is the sign of x, whose gradient is zero."""
    x = torch.randn(6, 1, generator=torch.Generator().manual_seed(0)) * 3
    layer = _layer(x)
    dx = _grads(layer, x, torch.randn(6, 1))[0]
    assert dx.abs().max() < 1e-12


@pytest.mark.parametrize(
    ("x_scale", "dy_scale", "shape"),
    [(1e-11, 1e17, (16, 4)), (1e-11, 1e17, (8, 4, 5)), (1e20, 1.0, (8, 4, 6, 6))],
    ids=["tiny-x-huge-dy", "tiny-x-huge-dy-3d", "huge-x"],
)
def test_extreme_magnitudes_stay_finite_and_accurate(x_scale, dy_scale, shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g) * x_scale
    dy = torch.randn(shape, generator=g) * dy_scale
    layer = _layer(x)
    got, want = _frozen_grads(layer, x, dy)
    for name, a, r in zip(("dx", "dweight", "dbias"), got, want, strict=True):
        assert torch.isfinite(a).all(), name
        assert relative_error(a, r) < 2e-5, name
    # Frozen: the input gradient alone (no weight gradient asks for anything in float64).
    xg = x.detach().clone().requires_grad_()
    freeze(layer)(xg).backward(dy)
    assert torch.isfinite(xg.grad).all()
    assert relative_error(xg.grad, want[0]) < 2e-5


def test_bias_gradient_when_dy_cancels_across_samples():
    """dy of +-1e3 per sample plus small noise: sum dy over the batch is the small noise."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 64, 64, generator=g)
    dy = torch.tensor([1e3, -1e3]).view(2, 1, 1, 1) + 1e-2 * torch.randn(x.shape, generator=g)
    got, want = _frozen_grads(_layer(x), x, dy)
    assert relative_error(got[2], want[2]) < 1e-5


class _BackwardCalls(TorchDispatchMode):
    """Records the mask of each fused eval backward the dispatcher runs (the C++ autograd
    kernel calls it through the dispatcher)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[bool]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        if name == "l2bn::eval_backward":
            self.calls.append(("eval_backward", list(args[-1])))
        return func(*args, **(kwargs or {}))


def test_the_fused_backward_runs_unless_a_graph_is_recorded():
    x = torch.randn(4, 3, 5, 5)
    layer = _layer(x)
    xg = x.clone().requires_grad_()
    with _BackwardCalls() as seen:
        layer(xg).sum().backward()
    assert seen.calls == [("eval_backward", [True, True, True])]
    with _BackwardCalls() as seen:
        freeze(_layer(x))(xg).sum().backward()
    assert seen.calls == [("eval_backward", [True, False, False])]
    # create_graph=True: the differentiable formula (torch operations, which the mode sees
    # in place of its operator), not the fused kernel.
    with _BackwardCalls() as seen:
        (gx,) = torch.autograd.grad(layer(xg).square().sum(), xg, create_graph=True)
    assert seen.calls == []
    assert gx.requires_grad
    # Its backward reaches the eval operator again (dy = 2 y), with no graph: fused.
    with _BackwardCalls() as seen:
        gx.sum().backward()
    assert ("eval_backward", [True, True, True]) in seen.calls


@pytest.mark.parametrize(("shape", "fmt"), CASES)
def test_eval_backward_operator_opcheck(shape, fmt):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).contiguous(memory_format=fmt)
    dy = torch.randn(shape, generator=g)
    c = shape[1]
    stats = torch.rand(c, generator=g) - 0.5, torch.rand(c, generator=g) + 0.5
    for mask in ([True, True, True], [True, False, False], [False, True, False]):
        args = (dy, x, *stats, torch.rand(c, generator=g) + 0.5, 1e-5, 1e-12, True, mask)
        torch.library.opcheck(torch.ops.l2bn.eval_backward.default, args)
        dx, dweight, dbias = torch.ops.l2bn.eval_backward.default(*args)
        assert dx.numel() == (x.numel() if mask[0] else 0)
        assert dweight.shape == ((c,) if mask[1] else (0,)) and dweight.dtype == torch.float64
        assert dbias.shape == ((c,) if mask[2] else (0,))
        if mask[0]:
            assert dx.stride() == x.stride()


def test_eval_backward_operator_refuses_mismatched_gradients():
    x = torch.randn(4, 3, 5, 5)
    stats = torch.zeros(3), torch.ones(3)
    with pytest.raises(RuntimeError, match="grad_output of shape"):
        torch.ops.l2bn.eval_backward.default(
            torch.randn(4, 3, 5), x, *stats, None, 1e-5, 1e-12, True, [True, False, False]
        )
    with pytest.raises(RuntimeError, match="grad_output of dtype"):
        torch.ops.l2bn.eval_backward.default(
            x.double(), x, *stats, None, 1e-5, 1e-12, True, [True, False, False]
        )


@pytest.mark.parametrize("training", [False, True])
def test_batched_gradients_match_one_vector_gradients(training):
    """``torch.autograd.grad(is_grads_batched=True)`` hands the C++ autograd kernels a
    batched gradient (the backward runs under vmap): each of its gradients must equal the
    one-vector gradient."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, generator=g)
    layer = _layer(x).to(torch.float64).train(training)
    xg = x.requires_grad_()
    y = layer(xg)
    name = "TrainFunction" if training else "EvalFunction"
    assert name in y.grad_fn.name()  # the fused operators' formula, not the PyTorch path
    vectors = torch.randn(3, *y.shape, dtype=torch.float64, generator=g)
    inputs = (xg, layer.weight, layer.bias)
    batched = torch.autograd.grad(y, inputs, vectors, retain_graph=True, is_grads_batched=True)
    for i, v in enumerate(vectors):
        single = torch.autograd.grad(y, inputs, v, retain_graph=True)
        for b, s in zip(batched, single, strict=True):
            assert relative_error(b[i], s) < 1e-12
