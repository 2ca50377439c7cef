"""benchmarks/bench_cold_backward.py times each training backward operator without and with
dx, warm and after an eviction: the README's account of the 1d forward+backward rests on
it."""

from __future__ import annotations

import pytest
import torch

from _benchmark_scripts import load, run
from l2bn import backends


def test_dx_pass_is_the_whole_backward_minus_the_reduction():
    medians = {"bn_reduction": 1e-4, "bn_both": 3e-4, "l2bn_reduction": 1e-4, "l2bn_both": 2e-4}
    rows = {label: rest for label, *rest in load("bench_cold_backward").table(medians)}
    assert rows["reduction"] == pytest.approx([100.0, 100.0, 1.0])
    assert rows["backward"] == pytest.approx([300.0, 200.0, 2 / 3])
    assert rows["dx pass"] == pytest.approx([200.0, 100.0, 0.5])


def test_time_calls_runs_before_ahead_of_every_call_in_alternating_orders():
    order: list[str] = []
    calls = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    medians = load("bench_cold_backward").time_calls(
        calls, 2, lambda name: order.append("-" + name)
    )
    assert order == ["-a", "a", "-b", "b", "-b", "b", "-a", "a"]
    assert set(medians) == {"a", "b"} and all(m >= 0 for m in medians.values())


@pytest.mark.skipif(not backends.available("cpu"), reason="times the fused operators")
def test_backward_calls_compute_what_they_are_named_for():
    x, dy = torch.randn(8, 16, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)
    calls = load("bench_cold_backward").backward_calls(x, dy)
    assert calls["bn_reduction"]()[0] is None and calls["bn_both"]()[0].shape == x.shape
    assert calls["l2bn_both"]()[0].shape == x.shape
    assert calls["l2bn_reduction"]()[0].numel() == 0  # no dx asked for


@pytest.mark.skipif(not backends.available("cpu"), reason="times the fused operators")
def test_command_prints_every_state_and_three_passes():
    out = run("bench_cold_backward", "--rounds", "2", "--shape", "8x16", "--evict", "1").stdout
    for state in ("warm", "cold", "cold data"):
        for label in ("reduction", "backward", "dx pass"):
            assert f"{state:<11}{label}" in out


@pytest.mark.skipif(not backends.available("cpu"), reason="times the fused operators")
def test_channels_last_layout_is_timed_in_that_layout(monkeypatch):
    module = load("bench_cold_backward")
    formats = []
    real = module.backward_calls

    def spy(x, dy):
        formats.append((x.is_contiguous(memory_format=torch.channels_last), x.is_contiguous()))
        return real(x, dy)

    monkeypatch.setattr(module, "backward_calls", spy)
    monkeypatch.setattr(
        "sys.argv",
        [
            "bench_cold_backward",
            "--rounds",
            "1",
            "--shape",
            "4x16x3x3",
            "--evict",
            "1",
            "--layout",
            "channels_last",
        ],
    )
    module.main()
    assert formats == [(True, False), (True, False)]  # the whole input and its first rows


def test_cold_data_runs_the_same_operator_after_the_eviction():
    calls: list[str] = []
    x, dy = torch.zeros(4, 2), torch.zeros(4, 2)
    before = load("bench_cold_backward").evictor(x, dy, 1, {"op": lambda: calls.append("op")})
    before("op")
    assert calls == ["op"]


def test_bad_arguments_are_usage_errors():
    result = run("bench_cold_backward", "--shape", "1x3", check=False)
    assert result.returncode == 2 and "N >= 2" in result.stderr
    result = run("bench_cold_backward", "--layout", "channels_last", check=False)
    assert result.returncode == 2 and "4-D" in result.stderr
    result = run("bench_cold_backward", "--evict", "0", check=False)
    assert result.returncode == 2 and "--evict must be >= 1" in result.stderr
