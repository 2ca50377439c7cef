"""l2bn.backends: the public switchboard of the one dispatch point."""

from __future__ import annotations

import pytest
import torch

import l2bn
from l2bn import L2BatchNorm2d, backends
from l2bn._impl import dispatch


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
    assert "cpu float16: training -> pytorch, eval -> pytorch" in text


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
