"""The Triton kernels' tests in Triton's interpreter, in a fresh process.

``test_triton_kernels.py``, ``test_triton_launches.py`` and ``test_triton_sync.py`` need
``TRITON_INTERPRET=1`` set before triton is first imported, which an ordinary ``pytest``
run on CPU cannot promise (other tests import triton through ``torch.compile``). This test
runs those modules in a new Python process started with ``TRITON_INTERPRET=1`` and fails
with their output if any of them fails or if fewer ran than they hold. On a machine with
CUDA they run in-process on the GPU instead, and this test is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

MODULES = (
    "test_triton_kernels.py",
    "test_triton_launches.py",
    "test_triton_sync.py",
    "test_triton_direct.py",
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA they run on the GPU in-process")
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET", "") not in ("", "0"),
    reason="this process already runs them in the interpreter",
)
def test_kernels_in_the_interpreter():
    tests = Path(__file__).resolve().parent
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"]
    done = subprocess.run(
        [*command, *(str(tests / m) for m in MODULES)],
        cwd=tests.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    summary = output.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 164, output[-3000:]
    assert "skipped" not in summary, output[-3000:]
