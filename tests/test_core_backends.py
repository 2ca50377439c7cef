"""l2bn.backends: the public switchboard of the one dispatch point."""

from __future__ import annotations

import pytest
import torch

import l2bn
from _reference import reference_l2bn
from l2bn import L2BatchNorm1d, L2BatchNorm2d, backends
from l2bn._impl import dispatch, passes


@pytest.fixture
def chosen(monkeypatch):
    """Record the backend that runs each call."""
    names: list[str] = []
    original = dispatch.choose

    def spy(*args):
        backend = original(*args)
        names.append(backend.NAME)
        return backend

    monkeypatch.setattr(dispatch, "choose", spy)
    return names


def test_status_names_every_backend_and_what_runs():
    text = backends.status("cpu")
    for name in backends.names():
        assert f"\n{name}: " in f"\n{text}"
    expected = "cpu" if backends.available("cpu") else "pytorch"
    assert f"cpu float32: training -> {expected}, eval -> {expected}" in text
    assert f"cpu float64: training -> {expected}, eval -> {expected}" in text
    assert "cpu float16: training -> pytorch, eval -> pytorch" in text
    assert "cpu bfloat16: training -> pytorch, eval -> pytorch" in text


def test_status_gives_the_reason_a_backend_is_unavailable_without_nested_parentheses(
    monkeypatch,
):
    reason = "no CUDA device (torch.cuda.is_available() is False)"
    monkeypatch.setattr(dispatch.BACKENDS["triton"], "UNAVAILABLE_REASON", reason)
    lines = backends.status("cpu").splitlines()
    assert f"triton: unavailable: {reason}" in lines
    assert not any("((" in line or "))" in line for line in lines), lines


def test_flags_switch_a_backend_off_and_restore_it(chosen):
    x = torch.randn(4, 3, 5, 5)
    layer = L2BatchNorm2d(3)
    with backends.flags(cpu=False):
        assert not backends.is_enabled("cpu")
        layer(x)
    assert backends.is_enabled("cpu")
    layer(x)
    assert chosen[0] == "pytorch"
    assert chosen[1] == ("cpu" if backends.available("cpu") else "pytorch")


@pytest.mark.parametrize("name", ["pytorch", "composite"])
def test_prefer_runs_that_backend_and_gives_the_same_answer(name, chosen):
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    layer = L2BatchNorm2d(3).double()
    reference = L2BatchNorm2d(3).double()(x)
    with backends.prefer(name):
        y = layer(x)
    assert chosen[-1] == name
    torch.testing.assert_close(y, reference)


@pytest.mark.parametrize("name", ["cpu", "pytorch", "composite"])
@pytest.mark.parametrize("accelerator", [False, True])
@pytest.mark.parametrize("shape", [(4, 3, 2, 2), (4, 3, 5), (6, 3)])
@pytest.mark.parametrize("value", [float("inf"), -float("inf")])
def test_infinite_input_agrees_with_the_reference(name, accelerator, shape, value, request):
    """One +-inf in one sample: ||x_n|| = inf, so eq. 3 gives NaN at that value and 0 at
    the sample's others; only that channel's statistics and output are NaN. Every backend
    (the PyTorch one on its CPU fast path and on the path of other devices) agrees with the
    float64 reference, in training (output, running statistics) and eval."""
    if name == "cpu" and not backends.available("cpu"):
        pytest.skip("the cpu backend is not built")
    if name == "pytorch" and accelerator and len(shape) > 2:
        # Known limitation: off the CPU fast path, float32/float64 row moments come from
        # var_mean (Welford), whose mean of a row holding inf is NaN, as for a NaN input;
        # telling the two apart would take another full-size reduction.
        request.applymarker(pytest.mark.xfail(strict=True, reason="Welford mean of inf"))
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    x.view(shape[0], -1)[1, 0] = value  # sample 1, channel 0
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    y_ref = reference_l2bn(x, rm, rv, training=True)
    y_ref_eval = reference_l2bn(x, rm, rv, training=False)
    layer = L2BatchNorm1d(3) if len(shape) < 4 else L2BatchNorm2d(3)
    layer = layer.double()
    with backends.prefer(name), passes.accelerator_paths(accelerator):
        y = layer(x)
        y_eval = layer.eval()(x)
    assert torch.isnan(y_ref).any() and not torch.isnan(y_ref).all()  # the case at hand
    torch.testing.assert_close(y, y_ref, equal_nan=True)
    torch.testing.assert_close(layer.running_mean, rm, equal_nan=True)
    torch.testing.assert_close(layer.running_var, rv, equal_nan=True)
    torch.testing.assert_close(y_eval, y_ref_eval, equal_nan=True)


def test_strict_preference_refuses_what_the_backend_cannot_run():
    if not backends.available("cpu"):
        pytest.skip(str(backends.unavailable_reason("cpu")))
    x = torch.randn(4, 3, 5, 5, dtype=torch.bfloat16)
    with (
        backends.prefer("cpu", strict=True),
        pytest.raises(RuntimeError, match=r"l2bn: backend 'cpu' is required, but"),
    ):
        L2BatchNorm2d(3).to(torch.bfloat16)(x)
    with backends.prefer("cpu", strict=False):
        L2BatchNorm2d(3).to(torch.bfloat16)(x)  # falls back to the pytorch backend


def test_unknown_backend_names_are_errors():
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        backends.set_enabled("cuda", False)
    with pytest.raises(ValueError, match="unknown backend"), backends.prefer("nosuch"):
        pass


def test_backends_is_public():
    assert l2bn.backends is backends


# (N, C), row-wise and channel-last maps, and channel-last small maps (rows of C).
HUGE_CASES = [((16, 32), None), ((8, 4, 6, 6), None), ((8, 4, 6, 6), "cl"), ((4, 16, 2, 2), "cl")]


@pytest.mark.parametrize(
    ("backend", "dtype"),
    [("pytorch", torch.float32), ("composite", torch.float32), ("composite", torch.bfloat16)],
)
@pytest.mark.parametrize(("shape", "layout"), HUGE_CASES)
@pytest.mark.parametrize("magnitude", [1e19, 1e25, 1e35])
@pytest.mark.parametrize("training", [True, False])
def test_huge_values_match_the_reference(backend, dtype, shape, layout, magnitude, training):
    """Values whose squares overflow float32 (past about 1e19): the composite brings such
    samples to unit scale by a power of two first; the pytorch backend sums (N, C) norms in
    float64 and keeps the backward's 1 / rho^2 coefficient in float64 (CPU float32). Before,
    outputs of zeros and gradients 5-40% off."""
    if backend == "pytorch" and not passes.fast_applies(torch.empty(1, dtype=dtype)):
        pytest.skip("the pytorch backend's CPU float32 path")
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * magnitude).to(dtype)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn(shape, generator=g).to(dtype)
    layer = (L2BatchNorm1d if len(shape) < 4 else L2BatchNorm2d)(shape[1]).to(dtype)
    with torch.no_grad():
        layer.running_mean.uniform_(-0.5, 0.5, generator=g)
        layer.running_var.uniform_(0.5, 2.0, generator=g)
    layer.train(training)
    stats = [t.double().clone() for t in (layer.running_mean, layer.running_var)]
    xg = x.detach().clone().requires_grad_()
    with backends.prefer(backend):
        y = layer(xg)
    y.backward(dy)
    x64 = x.detach().double().requires_grad_()
    ref = reference_l2bn(x64, *(None, None) if training else stats, training=training)
    ref.backward(dy.double())
    limit = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.isfinite(y).all() and torch.isfinite(xg.grad).all()
    assert torch.allclose(y.double(), ref, rtol=limit, atol=limit)
    scale = x64.grad.abs().max()
    assert (xg.grad.double() - x64.grad).abs().max() <= 10 * limit * scale
