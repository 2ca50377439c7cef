"""benchmarks/bench_overhead.py: the per-call cost of the layers around the kernels, warm
and with the caches evicted (the README's account of the entry points rests on it)."""

from __future__ import annotations

import pytest

from _benchmark_scripts import load, run
from l2bn import backends

needs_fused = pytest.mark.skipif(not backends.available("cpu"), reason="times the fused ops")


def _rows(out: str) -> dict[str, float]:
    rows = {}
    for line in out.splitlines():
        if line.endswith(" us"):
            name, value = line[:-3].rsplit(maxsplit=1)
            rows[name.strip()] = float(value)
    return rows


@needs_fused
def test_cold_times_the_layers_and_both_ways_to_the_operators():
    out = run("bench_overhead", "--cold", "--rounds", "2").stdout
    assert "caches evicted before each call, medians of 2 rounds" in out
    rows = _rows(out)
    assert set(rows) == set(load("bench_overhead").COLD_CALLS)
    assert all(us > 0 for us in rows.values())


@needs_fused
def test_warm_runs_every_call_and_only_filters():
    rows = _rows(run("bench_overhead", "--repeats", "1", "--calls", "3").stdout)
    assert {"entry train fwd+bwd", "op l2bn::train fwd+bwd", "entry eval_forward"} <= set(rows)
    assert len(rows) > len(load("bench_overhead").COLD_CALLS)
    only = _rows(run("bench_overhead", "--repeats", "1", "--calls", "3", "--only", "entry").stdout)
    assert set(only) == {"entry train fwd+bwd", "entry eval_forward"}


def test_bad_rounds_is_a_usage_error():
    result = run("bench_overhead", "--cold", "--rounds", "0", check=False)
    assert result.returncode == 2 and "--rounds must be >= 1" in result.stderr
