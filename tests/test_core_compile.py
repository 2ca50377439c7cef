"""torch.compile and torch.export of models with L2BN."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from _export_training import case as export_case
from _export_training import training_step
from _reference import reference_l2bn, relative_error
from l2bn import L2BatchNorm2d, backends, convert_bn_to_l2bn


def _model() -> nn.Module:
    torch.manual_seed(0)
    return convert_bn_to_l2bn(
        nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(6, 4),
        )
    )


@pytest.mark.slow
@pytest.mark.parametrize("training", [False, True])
def test_compile_matches_eager(training):
    eager = _model().train(training)
    compiled_model = _model().train(training)
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model)
    x = torch.randn(4, 3, 8, 8) * torch.linspace(0.5, 3, 4).view(-1, 1, 1, 1)
    y_eager, y_comp = eager(x), compiled(x)
    torch.testing.assert_close(y_comp, y_eager, rtol=1e-5, atol=1e-5)
    # Not y.sum(): a gradient constant per channel is zero through a batch normalization
    # (in training), and the parameters before it would get rounding noise to compare.
    dy = torch.randn(y_eager.shape, generator=torch.Generator().manual_seed(1))
    (y_eager * dy).sum().backward()
    (y_comp * dy).sum().backward()
    for (name, p), q in zip(eager.named_parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
    for a, b in zip(eager.buffers(), compiled_model.buffers(), strict=True):
        torch.testing.assert_close(b, a)


def test_export_eval_model():
    model = _model().eval()
    x = torch.randn(3, 3, 8, 8)
    exported = torch.export.export(model, (x,))
    x2 = torch.randn(3, 3, 8, 8) * 5
    torch.testing.assert_close(exported.module()(x2), model(x2))


def test_export_layer_with_dynamic_batch():
    layer = L2BatchNorm2d(4).eval()
    batch = torch.export.Dim("batch", min=1)
    exported = torch.export.export(
        layer, (torch.randn(2, 4, 5, 5),), dynamic_shapes={"input": {0: batch}}
    )
    x = torch.randn(7, 4, 5, 5)
    torch.testing.assert_close(exported.module()(x), layer(x))


def test_export_training_mode_under_no_grad():
    """Training mode under torch.no_grad is traceable too (no data-dependent branch),
    including inputs whose rows need the centred variance (offsets of 1e3)."""
    layer = L2BatchNorm2d(4).train()
    with torch.no_grad():
        exported = torch.export.export(layer, (torch.randn(3, 4, 5, 5),))
        x = torch.randn(3, 4, 5, 5) * 3 + 1
        x[:, 1] += 1e3
        eager = L2BatchNorm2d(4).train()
        torch.testing.assert_close(exported.module()(x), eager(x), rtol=1e-5, atol=1e-4)


# ----- torch.export in training mode: the exported program trains as eager does ------

# (backend, dtype, run_decompositions). The CPU backend records l2bn::train_stats (the
# fused kernels, functional, with an autograd formula), the PyTorch backend the composite;
# both update the running statistics after the operator: a decomposed nn.BatchNorm2d
# program itself fails in backward in torch 2.13 (its running-statistics write-back bumps
# a saved tensor).
_EXPORT_TRAINING = [
    ("cpu", torch.float32, False),
    ("cpu", torch.float32, True),
    ("pytorch", torch.float32, False),
    ("pytorch", torch.float32, True),
    ("pytorch", torch.bfloat16, False),
]


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "dtype", "decompose"), _EXPORT_TRAINING, ids=str)
def test_exported_training_program_trains_as_eager(backend, dtype, decompose):
    """``torch.export(model.train())`` (optionally ``run_decompositions()``): a training
    step of the exported module gives the input, L2BN and preceding-conv gradients and the
    running statistics of eager, and of the float64 reference. Before, the fused CPU
    operators' program left those gradients None, and the PyTorch backend's failed in
    backward (an in-place step of its inlined forward)."""
    if not backends.available(backend):
        pytest.skip(str(backends.unavailable_reason(backend)))
    x, probe, net, reference = export_case(dtype)
    with backends.prefer(backend):
        program = torch.export.export(copy.deepcopy(net), (x,))
        if decompose:
            program = program.run_decompositions()
        if backend == "cpu":  # the fused kernels, not the composite
            assert "l2bn.train_stats" in str(program.graph), program.graph
        exported = training_step(program.module(), x, probe)
        eager = training_step(copy.deepcopy(net), x, probe)
    limit = 1e-4 if dtype == torch.float32 else 3e-2  # bfloat16: 2**-8 per rounding
    for name, value in exported.items():
        assert value is not None, f"{name}: no gradient"
        assert value.dtype == eager[name].dtype, name
        for expected in (eager[name], reference[name]):
            assert relative_error(value, expected) < limit, (name, value, expected)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cpu", "pytorch"])
def test_compiled_decomposed_training_program_trains_as_eager(backend):
    """``torch.compile`` of ``torch.export(model.train()).run_decompositions().module()``
    (AOTAutograd): the input, L2BN and conv gradients and the running statistics of eager.
    The CPU backend's program recorded ``l2bn.train``, whose own autograd formula
    functionalization dropped: those gradients were None, without an error."""
    if not backends.available(backend):
        pytest.skip(str(backends.unavailable_reason(backend)))
    x, probe, net, reference = export_case(torch.float32)
    with backends.prefer(backend):
        program = torch.export.export(copy.deepcopy(net), (x,)).run_decompositions()
        compiled = torch.compile(program.module(), backend="aot_eager")
        result = training_step(compiled, x, probe)
        eager = training_step(copy.deepcopy(net), x, probe)
    for name, value in result.items():
        assert value is not None, f"{name}: no gradient"
        for expected in (eager[name], reference[name]):
            assert relative_error(value, expected) < 1e-4, (name, value, expected)


@pytest.mark.skipif(not backends.available("cpu"), reason="needs the fused CPU operators")
@pytest.mark.parametrize("shape", [(4, 3, 3, 2), (6, 3)])
def test_functional_training_operator_is_differentiable(shape):
    """``l2bn::train_stats`` (what exported training programs record): its output and
    batch statistics match the float64 reference, and its registered autograd formula
    passes gradcheck and gradgradcheck in every argument, with or without the affine
    parameters."""
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5).requires_grad_()
    w = (torch.rand(3, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(3, generator=g, dtype=torch.float64).requires_grad_()
    y, *_stats, mean, invstd, var = torch.ops.l2bn.train_stats(x, w, b, 1e-5, 1e-12, True)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    expected = reference_l2bn(x, rm, rv, w, b, True, 1.0, 1e-5)  # momentum 1: the batch's
    count = x.numel() // 3
    assert relative_error(y, expected) < 1e-12
    assert relative_error(mean, rm) < 1e-12
    assert relative_error(var * count / (count - 1), rv) < 1e-12
    assert relative_error(invstd, (var + 1e-5).rsqrt()) < 1e-12

    def fn(*tensors):
        return torch.ops.l2bn.train_stats(*tensors, 1e-5, 1e-12, True)[0]

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))
    assert torch.autograd.gradcheck(lambda t: fn(t, None, None), (x,))


@pytest.mark.skipif(not backends.available("cpu"), reason="needs the fused CPU operators")
@pytest.mark.parametrize("op", ["train_forward", "train_backward"])
def test_bare_training_operators_refuse_backward(op):
    """train_forward and train_backward have no derivative of their own: a graph holding
    them bare (as programs exported by earlier versions of l2bn did) raises in backward
    instead of leaving the input and parameter gradients at None."""
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    w = torch.rand(3).add(0.5).requires_grad_()
    b = torch.zeros(3, requires_grad=True)
    y, *stats = torch.ops.l2bn.train_forward(x.detach(), w.detach(), b.detach(), None, None,
                                             0.1, 1e-5, 1e-12, True)  # fmt: skip
    if op == "train_forward":
        out = torch.ops.l2bn.train_forward(x, w, b, None, None, 0.1, 1e-5, 1e-12, True)[0]
    else:
        rho, active, x_mean, x_var, mean, invstd = stats
        out = torch.ops.l2bn.train_backward(
            torch.ones_like(y), x, w, rho, active, x_mean, x_var, mean, invstd, True, True
        )[0]
    with pytest.raises(RuntimeError, match=f"derivative for l2bn::{op} is not implemented"):
        out.sum().backward()


@pytest.mark.parametrize("training", [False, True])
def test_compiled_func_grad_takes_the_composite(training):
    """``torch.compile(torch.func.grad(f))``: dynamo traces the transform, so the call runs
    under it and must take the composite, as it does in eager. Before, the fused CPU
    operators were chosen there and tracing failed ("cannot use C++
    torch::autograd::Function with functorch transforms")."""
    torch.manual_seed(0)
    layer = L2BatchNorm2d(4).train(training)
    with torch.no_grad():
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 4, 5, 6) * 2 + 0.3
    probe = torch.randn(4, 4, 5, 6)
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss(p, buffers, x):
        return (torch.func.functional_call(layer, (p, buffers), (x,)) * probe).sum()

    grad = torch.func.grad(loss, argnums=(0, 2))
    buffers = {k: v.clone() for k, v in layer.named_buffers()}
    expected = grad(params, buffers, x)
    compiled_buffers = {k: v.clone() for k, v in layer.named_buffers()}
    found = torch.compile(grad, backend="eager", fullgraph=True)(params, compiled_buffers, x)
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5)
    for name, value in buffers.items():
        torch.testing.assert_close(compiled_buffers[name], value, msg=name)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_converting_a_compiled_batch_norm_computes_l2bn(backend):
    # torch.compile(bn) binds its forward to bn.__call__: replacing _orig_mod alone kept
    # running the old BatchNorm, silently.
    x = torch.randn(4, 5, 8, 8) * torch.linspace(0.5, 3, 4).view(-1, 1, 1, 1)
    compiled = torch.compile(nn.BatchNorm2d(5), backend=backend, fullgraph=True)
    compiled(x)
    converted = convert_bn_to_l2bn(compiled)
    assert isinstance(converted._orig_mod, L2BatchNorm2d)
    torch.testing.assert_close(converted(x), L2BatchNorm2d(5)(x))
    assert converted._orig_mod.num_batches_tracked.item() == 2
