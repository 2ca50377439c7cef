"""The loops of benchmarks/bench_eval_floor.py do the work whose time they claim to be: the
README's measured floor of eval-mode L2BN is only a floor if the loops write the values
of BatchNorm's and L2BN's data flows (a loop the compiler could drop would time nothing).
Builds the loops once (a C++ compiler, as for l2bn._C)."""

from __future__ import annotations

import pytest
import torch

from _benchmark_scripts import load
from l2bn import backends

pytestmark = pytest.mark.skipif(
    not backends.available("cpu"), reason="needs a C++ toolchain, as l2bn._C does"
)


@pytest.fixture(scope="module")
def bench():
    return load("bench_eval_floor")


@pytest.fixture(scope="module")
def floor(bench):
    return bench.build(None)


def _inputs(shape):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g)
    a, b = torch.rand(shape[1], generator=g) + 0.5, torch.randn(shape[1], generator=g)
    return x, a, b


@pytest.mark.parametrize(
    ("shape", "layout"),
    [
        ((5, 3, 4, 4), "contiguous"),
        ((3, 16, 8, 12), "contiguous"),
        ((3, 5, 7, 7), "contiguous"),  # rows of 49 values: a tail after the vector steps
        ((3, 16, 8, 12), "channels_last"),
        ((3, 32, 3, 5), "channels_last"),
    ],
)
def test_floor_loops_write_batchnorm_and_l2bn_outputs(floor, shape, layout):
    x, a, b = _inputs(shape)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    channel = (1, -1, 1, 1)
    torch.testing.assert_close(floor.stream(x, a, b), a.view(channel) * x + b.view(channel))
    r = (x.double().square().sum(dim=(1, 2, 3), keepdim=True) + 1).rsqrt().float()
    expected = a.view(channel) * r * x + b.view(channel)
    torch.testing.assert_close(floor.two_pass(x, a, b), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(floor.pipelined(x, a, b), expected, rtol=1e-5, atol=1e-5)


def test_floor_loops_refuse_what_they_do_not_take(floor):
    one, zero = torch.ones(3), torch.zeros(3)
    with pytest.raises(RuntimeError, match="float32"):
        floor.stream(torch.randn(2, 3, 4, 4).double(), one, zero)
    with pytest.raises(RuntimeError, match="contiguous or channels_last"):
        floor.stream(torch.randn(2, 3, 4, 4).transpose(2, 3), one, zero)
    with pytest.raises(RuntimeError, match="multiple of 16"):
        x = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
        floor.stream(x, one, zero)


@pytest.mark.parametrize(
    ("layout", "alone", "cold"),
    [
        ("contiguous", False, None),
        ("channels_last", True, None),
        ("contiguous", False, "all"),
        ("channels_last", False, "data"),
    ],
)
def test_measure_times_every_contender(bench, floor, layout, alone, cold):
    times = bench.measure((4, 16, 3, 3), floor, rounds=2, layout=layout, alone=alone, cold=cold)
    assert set(times) == {"bn", "l2bn", "stream", "two_pass", "pipelined"}
    assert all(t > 0 for t in times.values())


def test_channels_last_is_measured_where_the_loops_take_it(bench):
    assert bench.layouts((4, 32, 3, 3)) == ("contiguous", "channels_last")
    assert bench.layouts((4, 3, 3, 3)) == ("contiguous",)


def test_l2bn_contender_is_the_eval_operator(bench):
    """The timed L2BN call (below autograd) computes eval-mode L2BN."""
    from l2bn.functional import l2_batch_norm

    x, w, b = _inputs((4, 3, 4, 4))
    mean, var = torch.randn(3), torch.rand(3) + 0.5
    expected = l2_batch_norm(x, mean, var, w, b, training=False)
    torch.testing.assert_close(bench.l2bn_eval(x, mean, var, w, b), expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [("abc", "NxCxHxW"), ("4x3x4", "NxCxHxW"), ("0x3x4x4", "positive"), ("1x3x4x4", "N >= 2")],
)
def test_bad_shapes_are_usage_errors(bench, text, message):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match=message):
        bench.shape_arg(text)
    assert bench.shape_arg("4x3x4x4") == (4, 3, 4, 4)
    assert bench.shape_arg("4x3x7x7") == (4, 3, 7, 7)  # any H * W


def test_evict_caches_writes_the_whole_buffer():
    from l2bn.bench.caches import COLD_BYTES, evict_caches, eviction_buffer

    buffer = torch.zeros(1000)
    evict_caches(buffer)
    assert torch.equal(buffer, torch.ones(1000))
    assert eviction_buffer().numel() * 4 == COLD_BYTES


def test_unknown_cold_mode_is_refused(bench, floor):
    with pytest.raises(ValueError, match="cold must be one of"):
        bench.measure((4, 16, 3, 3), floor, rounds=1, cold="warm")
