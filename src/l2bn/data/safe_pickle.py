"""Unpickle dataset files that hold only plain containers and numpy arrays.

The CIFAR python batches are pickles; a plain ``pickle.load`` would run any code a
tampered file names. This loader resolves only the handful of globals numpy arrays need
and rejects everything else with a ValueError naming the file. Needs numpy (lazily).
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if module.startswith("numpy.core."):  # numpy >= 2 moved numpy.core to numpy._core
            try:
                return getattr(importlib.import_module("numpy._core.multiarray"), name)
            except ImportError:
                pass
        return getattr(importlib.import_module(module), name)


def load_array_pickle(path: Path) -> Any:
    """Load ``path`` (a pickle of dicts/lists/bytes/numpy arrays) with bytes keys."""
    if not path.is_file():
        raise FileNotFoundError(f"expected file not found: {path}")
    try:
        with open(path, "rb") as f:
            return _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"reading {path} needs numpy: pip install numpy") from err
    except Exception as err:  # truncated or tampered files fail in many ways
        raise ValueError(f"{path}: malformed or unsupported pickle ({err!r})") from err
