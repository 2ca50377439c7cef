"""benchmarks/bench_gpu_host.py runs (here in Triton's interpreter, a check of the command,
not a measurement) and refuses what it cannot do."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from _benchmark_scripts import BENCHMARKS


def _run(*args: str, interpret: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_gpu_host.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU it is a full measurement")
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_prints_each_mode_for_the_three_contenders():
    done = _run("--reps", "2", "--shape", "4x8", interpret=True)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("bench_gpu_host: CPU, Triton's interpreter")
    assert all(label in lines[1] for label in ("bn host", "ops host", "direct host"))
    rows = [line.split() for line in lines[2:]]
    assert [row[:2] for row in rows] == [["4x8", mode] for mode in ("fwd", "fwd+bwd", "eval")]
    for row in rows:  # three pairs of positive times, "host | synced"
        values = [float(v) for v in row[2:] if v != "|"]
        assert len(values) == 6 and all(v > 0 for v in values)
    bad = _run("--reps", "0", interpret=True)
    assert bad.returncode == 2 and "--reps" in bad.stderr
    steps = _run("--steps", interpret=True)
    assert steps.returncode == 2 and "--steps needs CUDA" in steps.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the backend is available")
def test_refuses_to_run_without_the_backend():
    done = _run("--reps", "2", interpret=False)
    assert done.returncode == 2 and "Triton backend is unavailable" in done.stderr
