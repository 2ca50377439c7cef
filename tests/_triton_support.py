"""Shared set-up of the Triton backend's tests.

On a machine with CUDA (and triton) the tests run the compiled kernels on the GPU. Without
one they run the same kernels on CPU tensors in Triton's interpreter, which needs
``TRITON_INTERPRET=1`` before triton is first imported (triton decorates its own
``tl.zeros``, ``tl.sum``, ... at import): so in an ordinary ``pytest`` run on CPU these
modules skip themselves and ``test_triton_interpreter.py`` runs them again in a fresh
process started with ``TRITON_INTERPRET=1``; nothing else of the suite sees the
interpreter. Every test runs with the backend preferred.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from l2bn import backends
from l2bn._impl import triton as triton_backend

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


IN_PROCESS = DEVICE == "cuda" or triton_backend.interpreting()
SUBPROCESS_NOTE = "run in the interpreter by test_triton_interpreter.py (TRITON_INTERPRET=1)"


def make_interpreter_fixture():
    """A module-scoped fixture: skips the module unless the Triton backend runs here."""

    @pytest.fixture(scope="module", autouse=True)
    def triton_backend_ready():
        if not IN_PROCESS:
            pytest.skip(SUBPROCESS_NOTE)
        if triton_backend.UNAVAILABLE_REASON is not None:
            pytest.skip(f"Triton backend unavailable: {triton_backend.UNAVAILABLE_REASON}")
        return DEVICE

    return triton_backend_ready


def make_ops_fixture():
    """A module-scoped fixture: the module ``l2bn._impl.triton.ops`` (loaded by the backend
    when it is usable; not imported by the test modules, where triton may be missing)."""

    @pytest.fixture(scope="module")
    def ops(triton_backend_ready):
        return importlib.import_module("l2bn._impl.triton.ops")

    return ops


def make_launches_fixture():
    """A fixture recording the kernels each test launches (a ``LaunchRecorder``)."""

    @pytest.fixture
    def launches(ops, monkeypatch):
        recorder = LaunchRecorder(ops)
        monkeypatch.setattr(ops, "_launch", recorder.wrap(ops._launch))
        return recorder

    return launches


def make_prefer_fixture():
    """A function-scoped fixture: the Triton backend preferred during each test."""

    @pytest.fixture(autouse=True)
    def prefer_triton(triton_backend_ready):
        with backends.prefer("triton"):
            yield

    return prefer_triton


def kernel_name(kernel) -> str:
    fn = getattr(kernel, "fn", kernel)
    return getattr(fn, "__name__", repr(fn))


class LaunchRecorder:
    """Records the kernels launched through ``l2bn._impl.triton.ops._launch``."""

    def __init__(self, ops) -> None:
        self.ops = ops
        self.names: list[str] = []
        self.grids: list[tuple[int, ...]] = []
        self.log: list[tuple[str, tuple[int, ...]]] = []  # every launch, never taken
        self.inside = False

    def wrap(self, original):
        def launch(kernel, grid, *args, **meta):
            self.names.append(kernel_name(kernel))
            self.grids.append(tuple(grid))
            self.log.append((self.names[-1], self.grids[-1]))
            self.inside = True
            try:
                return original(kernel, grid, *args, **meta)
            finally:
                self.inside = False

        return launch

    def take(self) -> list[str]:
        """The kernels launched since the last call (their grids are dropped too)."""
        names, self.names, self.grids = self.names, [], []
        return names


SYNC = "aten._local_scalar_dense.default"  # what .item(), bool(t) and float(t) run


class Recorder(TorchDispatchMode):
    """Names of the aten operations run, except inside kernel launches. A launch on CUDA
    reaches the mode as the higher-order operator ``triton_kernel_wrapper_mutation``
    (without ``supports_higher_order_operators`` the mode would refuse it)."""

    supports_higher_order_operators = True

    def __init__(self, launches=None) -> None:
        super().__init__()
        self.seen: list[str] = []
        self.launches = launches

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.launches is None or not self.launches.inside:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))
