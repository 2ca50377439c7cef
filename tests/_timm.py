"""timm for the recipe tests (a test-only extra: requirements-test-extras.txt).

timm imports torchvision. The torchvision wheel that matches the CPU torch is built for CUDA
and fails to import beside it ("operator torchvision::nms does not exist"), but the parts
timm needs (``torchvision.ops.misc``, ``torchvision.transforms``) are pure Python. When the
real import fails, :func:`import_timm` puts a ``torchvision`` package object in
``sys.modules`` that loads those parts from the installed files without running
``torchvision/__init__.py``; nothing here uses torchvision's compiled operators.

Without timm the tests that need it are skipped, unless ``L2BN_REQUIRE_TEST_EXTRAS=1``
(``make test`` sets it), which turns the skip into a failure.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest


def _missing(what: str) -> None:
    message = f"{what} (install requirements-test-extras.txt with pip --no-deps)"
    if os.environ.get("L2BN_REQUIRE_TEST_EXTRAS"):
        pytest.fail(message)
    pytest.skip(message)


def _torchvision_pure_python() -> None:
    """Make ``import torchvision.ops.misc`` (and ``.transforms``) work, if it does not."""
    if "torchvision" in sys.modules and hasattr(sys.modules["torchvision"], "__path__"):
        return
    try:
        importlib.import_module("torchvision")
        return
    except ImportError:
        pass  # not installed: timm's own import fails below and the test is skipped
    except Exception:
        # Installed but its compiled part does not load: drop the half-imported modules.
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    root = Path(next(iter(spec.submodule_search_locations)))
    package = types.ModuleType("torchvision")
    package.__path__ = [str(root)]
    package.__file__ = str(root / "__init__.py")
    ops = types.ModuleType("torchvision.ops")  # ops/__init__ registers compiled operators
    ops.__path__ = [str(root / "ops")]
    package.ops = ops
    sys.modules["torchvision"] = package
    sys.modules["torchvision.ops"] = ops


def import_timm() -> types.ModuleType:
    """``timm`` (with ``timm.layers`` and ``timm.utils`` loaded), or skip the test."""
    if importlib.util.find_spec("timm") is None:
        _missing("timm is not installed")
    _torchvision_pure_python()
    try:
        timm = importlib.import_module("timm")
        importlib.import_module("timm.layers")
        importlib.import_module("timm.utils")
    except Exception as error:  # e.g. no torchvision at all
        _missing(f"timm does not import: {type(error).__name__}: {error}")
    return timm
