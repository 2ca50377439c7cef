"""Evicting the processor's caches before a timed call, so that the call finds its data and
code in memory, as a call does after the naive composite in ``l2bn bench``'s rounds."""

from __future__ import annotations

import torch

# Twice the last-level cache of this project's machine (32 MB of L3).
COLD_BYTES = 64 * 1024 * 1024


def eviction_buffer(nbytes: int = COLD_BYTES) -> torch.Tensor:
    """A float32 buffer of ``nbytes`` bytes for :func:`evict_caches`."""
    return torch.zeros(nbytes // 4)


def evict_caches(buffer: torch.Tensor) -> None:
    """Write ``buffer`` (larger than the last-level cache): what the caches held is evicted."""
    buffer.add_(1)
