"""The fused kernels under every instruction set they are compiled for (``L2BN_CPU_ISA``)
and under every ATen CPU capability this processor has (``ATEN_CPU_CAPABILITY``).

Each combination runs ``_isa_parity.py`` in a fresh process (both variables are read at
load time): the reported instruction set and capability must be the requested ones, the
fused operators must have run, and the errors against the float64 reference must stay
within the tolerances of ``test_paths_fused.py``. A bad ``L2BN_CPU_ISA`` must fail the
import with a clear message, never crash the process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from l2bn import backends

pytestmark = pytest.mark.skipif(
    not backends.available("cpu"), reason=str(backends.unavailable_reason("cpu"))
)

TESTS = Path(__file__).parent
ALL_ISAS = ("avx512", "avx2", "default")
# ATen's capabilities below each one (x86 only: elsewhere just the machine's own).
LOWER_CAPABILITIES = {"AVX512": ("avx512", "avx2", "default"), "AVX2": ("avx2", "default")}


def _supported_isas() -> list[str]:
    return list(torch.ops.l2bn.cpu_isas()) if backends.available("cpu") else []


def _capabilities() -> list[str]:
    own = torch.backends.cpu.get_cpu_capability()
    return list(LOWER_CAPABILITIES.get(own, (own.lower(),)))


def _run(script: Path | str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env, "OMP_NUM_THREADS": "2"}
    paths = [str(TESTS), environment.get("PYTHONPATH", "")]
    environment["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    args = [str(script)] if isinstance(script, Path) else ["-c", script]
    return subprocess.run(
        [sys.executable, *args], env=environment, capture_output=True, text=True, timeout=600
    )


COMBINATIONS = [(isa, cap) for isa in _supported_isas() for cap in _capabilities()]


@pytest.mark.slow
@pytest.mark.parametrize("isa,capability", COMBINATIONS)
def test_fused_parity_under_each_isa_and_aten_capability(isa, capability):
    done = _run(TESTS / "_isa_parity.py", L2BN_CPU_ISA=isa, ATEN_CPU_CAPABILITY=capability)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["isa"] == isa
    assert result["aten"].lower() == capability
    assert result["isas"] == _supported_isas()
    assert min(result["calls"].values()) > 0, "the fused operators were not called"
    assert result["worst"]["float32"] < 1e-5, result["worst"]
    assert result["worst"]["float64"] < 1e-10, result["worst"]
    assert result["worst"]["float64 offset"] < 1e-10, result["worst"]


def test_default_isa_is_the_best_available():
    assert _supported_isas()[-1] == "default"
    done = _run("import torch, l2bn.layers; print(torch.ops.l2bn.cpu_isa())", L2BN_CPU_ISA="auto")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [_supported_isas()[0]]
    assert torch.ops.l2bn.cpu_isa() in _supported_isas()
    assert set(_supported_isas()) <= set(ALL_ISAS)


@pytest.mark.parametrize("value", ["sse9", *[i for i in ALL_ISAS if i not in _supported_isas()]])
def test_unknown_or_unsupported_isa_is_a_clear_error(value):
    done = _run("import l2bn.layers", L2BN_CPU_ISA=value)  # import l2bn loads l2bn._C
    assert done.returncode == 1, (done.returncode, done.stderr[-3000:])  # an exception, no signal
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: l2bn._C: L2BN_CPU_ISA"), last
    assert ("valid values" in last) if value == "sse9" else ("available here" in last)


def test_bad_isa_is_one_line_from_the_command_line():
    """The ``l2bn`` command reports a bad ``L2BN_CPU_ISA`` in one line, exit status 2."""
    done = _run("import l2bn_cli, sys; sys.exit(l2bn_cli.main(['bench', '--quick']))",
                L2BN_CPU_ISA="sse9")  # fmt: skip
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("l2bn: error: l2bn._C: L2BN_CPU_ISA='sse9'")
