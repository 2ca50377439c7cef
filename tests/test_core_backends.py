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
