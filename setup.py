"""Builds the optional fused CPU kernels ``l2bn._C`` (issue 3); metadata is in pyproject.toml.

The extension is compiled against the torch already installed, so it is only built when
torch is importable at build time: ``make setup`` installs torch first and then the
project with ``pip install --no-build-isolation``. An isolated build (plain
``pip install .``) finds no torch and installs the pure-PyTorch package, which works
everywhere and is slower on CPU. ``L2BN_NO_EXTENSION=1`` skips the build on purpose.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

SOURCES = ("module.cpp", "register.cpp", "train.cpp", "vector.cpp", "eval.cpp", "kernels.cpp")


def extension_setup() -> dict:
    if os.environ.get("L2BN_NO_EXTENSION", "") not in ("", "0"):
        return {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        return {}
    csrc = os.path.join("src", "l2bn", "csrc")
    sources = [os.path.join(csrc, name) for name in SOURCES]
    if sys.platform == "win32":
        compile_args, link_args = ["/O2", "/openmp"], []
    elif sys.platform == "darwin":
        compile_args, link_args = ["-O3"], []  # torch's macOS builds do not use OpenMP
    else:
        # at::parallel_for is OpenMP in torch's Linux builds: without -fopenmp it runs serially.
        compile_args, link_args = ["-O3", "-fopenmp"], ["-fopenmp"]
    extension = CppExtension(
        "l2bn._C", sources, extra_compile_args={"cxx": compile_args}, extra_link_args=link_args
    )
    return {"ext_modules": [extension], "cmdclass": {"build_ext": BuildExtension}}


setup(**extension_setup())
