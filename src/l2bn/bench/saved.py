"""Bytes an autograd graph keeps for backward, counted over unique storages."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def saved_bytes(forward: Callable[[], Tensor]) -> int:
    """Total size of the distinct storages saved for backward while ``forward`` runs.

    Uses :func:`torch.autograd.graph.saved_tensors_hooks`; a storage saved several times
    (e.g. the input saved by two ops) counts once.
    """
    storages: dict[tuple[str, int], int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        storages[key] = max(storages.get(key, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return sum(storages.values())
