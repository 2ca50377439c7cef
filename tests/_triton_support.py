"""Shared set-up of the Triton backend's tests.

On a machine with CUDA (and triton) the tests run the compiled kernels on the GPU. Without
one they run the same kernels on CPU tensors in Triton's interpreter: the module fixture
sets ``TRITON_INTERPRET=1`` and reloads the backend (the kernels are decorated when the
backend's modules are first imported, which on a machine without CUDA happens only here),
then restores the environment and the backend's availability, so that the rest of the
suite never sees the interpreter. Every test runs with the backend preferred.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

from l2bn import backends
from l2bn._impl import triton as triton_backend

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_interpreter_fixture():
    """A module-scoped fixture: the Triton backend usable on ``DEVICE`` for the module."""

    @pytest.fixture(scope="module", autouse=True)
    def triton_backend_ready():
        previous = os.environ.get("TRITON_INTERPRET")
        if DEVICE == "cpu":
            os.environ["TRITON_INTERPRET"] = "1"
        reason = triton_backend.load()
        try:
            if reason is not None:
                pytest.skip(f"Triton backend unavailable: {reason}")
            yield DEVICE
        finally:
            if previous is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = previous
            triton_backend.load()

    return triton_backend_ready


def make_ops_fixture():
    """A module-scoped fixture: the module ``l2bn._impl.triton.ops``, imported only once the
    backend is ready (importing it earlier would decorate the kernels for the GPU)."""

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
        self.inside = False

    def wrap(self, original):
        def launch(kernel, grid, *args, **meta):
            self.names.append(kernel_name(kernel))
            self.inside = True
            try:
                return original(kernel, grid, *args, **meta)
            finally:
                self.inside = False

        return launch

    def take(self) -> list[str]:
        names, self.names = self.names, []
        return names
