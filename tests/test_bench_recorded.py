"""benchmarks/bench_recorded.py times the operators bare and recorded by autograd: the
README's account of the small training cells rests on it."""

from __future__ import annotations

import pytest
import torch

from _benchmark_scripts import load, run
from _torch_ops_calls import record_torch_ops_calls
from l2bn import backends

needs_fused = pytest.mark.skipif(not backends.available("cpu"), reason="times the fused operators")


@needs_fused
def test_calls_compute_what_they_name():
    """Each recorded call runs through autograd (and its backward runs); the bare calls
    record nothing; every recorded forward's output address is kept."""
    module = load("bench_recorded")
    x, dy = torch.randn(6, 5, 3), torch.randn(6, 5, 3)
    addresses = {"bn": set(), "l2bn": set()}
    calls, drop_grads = module.contender_calls(x, dy, addresses)
    assert set(calls) == {f"{n} {c}" for n in ("bn", "l2bn") for c in module.CALLS}
    for name in ("bn", "l2bn"):
        assert calls[f"{name} op fwd"]()[0].grad_fn is None
        assert calls[f"{name} recorded fwd"]().grad_fn is not None
        assert addresses[name]
    y_bn, y_l2 = calls["bn recorded fwd"](), calls["l2bn recorded fwd"]()
    # L2BN is not BatchNorm: samples of different norms give different outputs.
    assert not torch.allclose(y_bn, y_l2, atol=1e-3)
    drop_grads()
    calls["l2bn recorded fwd+bwd"]()
    calls["l2bn layer fwd+bwd"]()


@needs_fused
def test_bn_and_l2bn_calls_cross_the_same_python_layers(monkeypatch):
    """A call through ``torch.ops`` (an OpOverload's Python ``__call__`` and the boxed
    call: about 2 us over torch's own binding) made by one contender and not the other
    would be counted against it in the call's ratio and in what recording adds."""
    module = load("bench_recorded")
    through_torch_ops = record_torch_ops_calls(monkeypatch)
    x, dy = torch.randn(6, 5, 3), torch.randn(6, 5, 3)
    calls, drop_grads = module.contender_calls(x, dy, {"bn": set(), "l2bn": set()})
    for call in module.CALLS:
        counts = {}
        for name in ("bn", "l2bn"):
            drop_grads()
            through_torch_ops.clear()
            calls[f"{name} {call}"]()
            counts[name] = list(through_torch_ops)
        assert len(counts["bn"]) == len(counts["l2bn"]), (call, counts)


@needs_fused
def test_command_prints_every_call_and_the_recording_cost():
    out = run("bench_recorded", "--rounds", "2", "--shape", "8x16", "--threads", "1").stdout
    for call in (
        "op fwd",
        "recorded fwd+bwd",
        "layer fwd+bwd",
        "recording fwd",
        "output addresses",
    ):
        assert call in out


def test_bad_shape_is_a_usage_error():
    result = run("bench_recorded", "--shape", "1x3", check=False)
    assert result.returncode == 2 and "N >= 2" in result.stderr
