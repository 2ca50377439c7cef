"""benchmarks/bench_faults.py splits each call's time into wall, user and system CPU: the
README's account of the large-map page faults rests on it."""

from __future__ import annotations

import pytest
import torch

from _benchmark_scripts import load, run
from l2bn import backends


def test_measure_reports_wall_user_and_system_of_every_call():
    calls = {"sleep": lambda: __import__("time").sleep(0.002), "alloc": lambda: torch.ones(64)}
    times = load("bench_faults").measure(calls, rounds=3)
    assert set(times) == {"sleep", "alloc"}
    wall, user, system = times["sleep"]
    assert wall >= 2.0 and user >= 0 and system >= 0  # ms; a sleep is wall time only


@pytest.mark.skipif(not backends.available("cpu"), reason="times the fused operators")
def test_command_prints_the_operators_and_the_fault_baseline():
    out = run("bench_faults", "--rounds", "2", "--shape", "4x16x4x4").stdout
    assert "bn_op" in out and "l2bn_op" in out and "empty_like+fill" in out


def test_bad_shape_is_a_usage_error():
    result = run("bench_faults", "--shape", "1x3", check=False)
    assert result.returncode == 2 and "N >= 2" in result.stderr
