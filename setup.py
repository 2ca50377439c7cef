"""Builds the optional fused CPU kernels ``l2bn._C`` (issue 3); metadata is in pyproject.toml.

The extension is compiled against the torch already installed, so it is only built when
torch is importable at build time: ``make setup`` installs torch first and then the
project with ``pip install --no-build-isolation``. An isolated build (plain
``pip install .``) finds no torch and installs the pure-PyTorch package, which works
everywhere and is slower on CPU. ``L2BN_NO_EXTENSION=1`` skips the build on purpose. A
failed compilation (no C++ compiler, say) is reported and skipped, unless
``L2BN_REQUIRE_EXTENSION=1`` (set by ``make setup``) makes it an error.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

SOURCES = (
    "module.cpp",
    "entry_points.cpp",
    "register.cpp",
    "train.cpp",
    "autograd.cpp",
    "vector.cpp",
    "eval.cpp",
    "eval_backward.cpp",
    "kernels.cpp",
    # The passes, once per instruction set (chosen at load time, L2BN_CPU_ISA forces one).
    "kernels_avx512.cpp",
    "kernels_avx2.cpp",
    "kernels_default.cpp",
)


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _optional(build_ext: type) -> type:
    """``build_ext`` that reports a failed compilation and goes on without the extension."""

    class OptionalBuildExtension(build_ext):
        def build_extension(self, ext) -> None:
            try:
                super().build_extension(ext)
            except Exception as exc:
                if _flag("L2BN_REQUIRE_EXTENSION"):
                    raise
                print(
                    f"l2bn: building {ext.name} failed ({exc}); installing without the fused "
                    "CPU kernels (L2BN runs its pure-PyTorch path)",
                    file=sys.stderr,
                )

    return OptionalBuildExtension


def extension_setup() -> dict:
    if _flag("L2BN_NO_EXTENSION"):
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
        # -fno-math-errno: square roots in loops vectorize (the kernels never read errno).
        compile_args, link_args = ["-O3", "-fopenmp", "-fno-math-errno"], ["-fopenmp"]
    extension = CppExtension(
        "l2bn._C", sources, extra_compile_args={"cxx": compile_args}, extra_link_args=link_args
    )
    return {"ext_modules": [extension], "cmdclass": {"build_ext": _optional(BuildExtension)}}


setup(**extension_setup())
