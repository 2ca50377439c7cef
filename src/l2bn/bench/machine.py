"""What ``l2bn bench`` ran on: the processor, the instruction set of the fused kernels and
ATen's CPU capability, and how to force lower ones.

Both instruction sets are fixed when their library loads: the kernels' by the environment
variable ``L2BN_CPU_ISA`` (read when ``l2bn._C`` is imported), ATen's by
``ATEN_CPU_CAPABILITY``. A benchmark that asks for others therefore runs in a fresh
process with those variables set (:func:`forced_environment`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

import torch

from l2bn import backends

ISAS = ("avx512", "avx2", "default")


def processor() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), its logical CPU count and,
    when an affinity mask leaves this process fewer, how many it may use."""
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown processor"
    total = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total
    if usable == total:
        return f"{name}, {total} logical CPUs"
    # Under an affinity mask (taskset, a container's cpuset) the process runs on fewer.
    return f"{name}, {total} logical CPUs, {usable} usable by this process"


def _reports_isa() -> bool:
    # A build of l2bn._C older than the switch has the kernels but not these operators.
    return backends.available("cpu") and hasattr(torch.ops.l2bn, "cpu_isas")


def kernel_isa() -> str | None:
    """The instruction set the fused kernels run (None without ``l2bn._C``)."""
    if not _reports_isa():
        return None
    return str(torch.ops.l2bn.cpu_isa())


def kernel_isas() -> list[str]:
    """Instruction sets the fused kernels can run here, best first."""
    if not _reports_isa():
        return []
    return [str(isa) for isa in torch.ops.l2bn.cpu_isas()]


def aten_capability() -> str:
    """ATen's CPU capability (its own kernels, native BatchNorm's included), lower-case."""
    return torch.backends.cpu.get_cpu_capability().lower()


def describe() -> dict[str, object]:
    return {
        "processor": processor(),
        "kernel_isa": kernel_isa(),
        "kernel_isas": kernel_isas(),
        "aten_capability": aten_capability(),
        "huge_pages": huge_pages(),
    }


def forced_environment(isa: str | None, aten: str | None) -> dict[str, str] | None:
    """The environment of a process that runs the kernels at ``isa`` and ATen at ``aten``
    (None: this process already does). ``isa`` also sets ATen unless ``aten`` is given, so
    that ``--isa avx2`` measures both sides as an AVX2 processor would."""
    if isa is None and aten is None:
        return None
    if isa is not None:
        if not backends.available("cpu"):
            raise ValueError(
                f"--isa {isa}: the fused kernels are unavailable "
                f"({backends.unavailable_reason('cpu')})"
            )
        if isa not in kernel_isas():
            raise ValueError(
                f"--isa {isa}: not available on this processor; available: "
                f"{', '.join(kernel_isas())}"
            )
    aten = aten if aten is not None else isa
    if (isa is None or isa == kernel_isa()) and (aten is None or aten == aten_capability()):
        return None
    env = dict(os.environ)
    if isa is not None:
        env["L2BN_CPU_ISA"] = isa
    if aten is not None:
        env["ATEN_CPU_CAPABILITY"] = aten
        if "TORCHINDUCTOR_CACHE_DIR" not in env:
            # Inductor's cache does not tell kernels compiled under one ATen capability
            # from another's: torch 2.13 reused the AVX-512 kernels of an earlier run under
            # ATEN_CPU_CAPABILITY=avx2 and computed garbage (a compiled Conv-BatchNorm
            # model off by 1e35). The compile row then gets a cache of its own.
            try:
                from torch._inductor.runtime.cache_dir_utils import default_cache_dir
            except ImportError:  # another torch: its own cache, as before
                return env
            env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(default_cache_dir(), f"aten-{aten}")
    return env


_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages() -> str:
    """Whether torch's CPU allocator asks for transparent huge pages, for the report.

    torch maps allocations of 2 MB or more on huge pages when ``THP_MEM_ALLOC_ENABLE=1``
    is set before it starts (read once, at its first allocation) and the kernel's THP mode
    (``/sys/kernel/mm/transparent_hugepage/enabled``) is ``always`` or ``madvise``.
    Without them each fresh 4 kB page of a large output is one page fault: at the 51 MB
    cases that is most of the call, for BatchNorm and L2BN alike (README, "What is not at
    1.0x, and why").
    """
    try:
        with open(_THP_MODE, encoding="utf-8") as f:
            text = f.read()
        mode = text[text.index("[") + 1 : text.index("]")]
    except (OSError, ValueError):
        mode = "unknown"
    value = os.environ.get("THP_MEM_ALLOC_ENABLE")
    on = value == "1" and mode in ("always", "madvise")
    setting = "unset" if value is None else repr(value)
    text = f"{'on' if on else 'off'} (THP_MEM_ALLOC_ENABLE {setting}, kernel THP mode {mode}"
    if not on and mode == "always":
        text += ": the kernel may back large mappings with huge pages anyway"
    return text + ")"


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


# Replacements of malloc that LD_PRELOAD puts in front of glibc's (mallopt then has no
# effect on the tensors' memory).
PRELOADED_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def _mapped_files() -> list[str]:
    """The files mapped into this process (``/proc/self/maps``; empty where absent)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            return [line.split()[-1] for line in f if line.count(" ") >= 5 and "/" in line]
    except OSError:
        return []


def preloaded_allocator() -> str | None:
    """The malloc replacement mapped into this process (``LD_PRELOAD=libjemalloc.so.2``,
    say), or None when glibc's malloc serves it."""
    for path in _mapped_files():
        name = path.rsplit("/", 1)[-1]
        for allocator in PRELOADED_ALLOCATORS:
            if name.startswith(f"lib{allocator}"):
                return allocator
    return None


def keep_freed_memory() -> str:
    """Make glibc keep freed memory in the process (fixed trim and mmap thresholds).

    By default glibc returns the top of its heap to the system once more than a few MB
    are free, so the next large allocation page-faults fresh pages in; which call pays
    depends on what ran just before it (the naive composite frees the most), not on the
    contender. With fixed thresholds every contender reuses warm memory, as in a steady
    training loop. Tensors of 32 MB or more are still mapped afresh for every contender
    (glibc's largest mmap threshold). Under a preloaded allocator (jemalloc, tcmalloc,
    mimalloc) nothing is set: glibc's thresholds would not apply to it. Returns a
    description for the report.
    """
    preloaded = preloaded_allocator()
    if preloaded is not None:
        conf = os.environ.get("MALLOC_CONF") if preloaded == "jemalloc" else None
        settings = f"MALLOC_CONF={conf!r}" if conf else "its own settings"
        return f"{preloaded} (preloaded; {settings}; glibc's thresholds do not apply)"
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        ok = libc is not None and all(
            libc.mallopt(param, value) == 1
            for param, value in ((_M_TRIM_THRESHOLD, 2**31 - 1), (_M_MMAP_THRESHOLD, 32 << 20))
        )
    except (OSError, AttributeError):
        ok = False
    if not ok:
        return "system default (mallopt unavailable)"
    return "glibc, freed memory kept (trim threshold off, mmap threshold 32 MB)"
