"""Which samples a loader visits, in which order: seeds, subsets and shards.

Everything here is a pure function of integers, so that the same ``(seed, epoch, rank)``
always gives the same indices (needed for bit-exact resume).

* :func:`epoch_generator` derives a ``torch.Generator`` from ``(seed, epoch)`` alone.
* :func:`fixed_subset` picks ``k`` samples independently of the run's seed: a fixed
  permutation with seed 0, stratified by label when labels are known (each class keeps
  its share of the subset, classes interleaved), and its first ``k`` entries.
* :func:`shard` splits an epoch's order across ``num_replicas`` ranks like
  ``DistributedSampler`` (rank ``r`` takes positions ``r, r + R, r + 2R, ...``). With
  ``pad=True`` (the training default) the order is first padded by wrapping around to a
  multiple of ``R`` so every rank gets the same number of samples and batches; without
  padding (evaluation) the ranks are disjoint and together cover every sample once.
"""

from __future__ import annotations

import torch
from torch import Tensor

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """A 63-bit seed from a sequence of integers (SplitMix64 finalizer, chained)."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (int(value) & _MASK64)) & _MASK64
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = z ^ (z >> 31)
    return state & ((1 << 63) - 1)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose stream depends on ``(seed, epoch)`` only."""
    generator = torch.Generator()
    generator.manual_seed(mix_seed(seed, epoch))
    return generator


def fixed_subset(num_samples: int, k: int, labels: Tensor | None = None) -> Tensor:
    """Indices of a fixed, seed-independent subset of ``k`` of ``num_samples`` samples.

    The base order is ``torch.randperm(num_samples)`` with seed 0. With ``labels`` the
    choice is stratified: the ``j``-th sample (in base order) of a class of size ``n_c``
    gets the key ``(j + 0.5) / n_c`` and samples are taken by increasing key, so every
    class keeps its proportion of the subset (ties keep the base order).
    """
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise ValueError(f"subset must be a positive int, got {k!r}")
    if k > num_samples:
        raise ValueError(f"subset={k} is larger than the dataset ({num_samples} samples)")
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(0))
    if labels is None:
        return order[:k].clone()
    labels = torch.as_tensor(labels).reshape(-1).to("cpu", torch.int64)
    if labels.numel() != num_samples:
        raise ValueError(f"got {labels.numel()} labels for {num_samples} samples")
    ordered = labels[order]
    _, inverse, counts = torch.unique(ordered, return_inverse=True, return_counts=True)
    # rank of each sample within its class, in base order (stable sort by class)
    by_class = torch.sort(inverse, stable=True).indices
    class_start = counts.cumsum(0) - counts
    rank_in_class = torch.empty(num_samples, dtype=torch.int64)
    rank_in_class[by_class] = torch.arange(num_samples) - class_start[inverse[by_class]]
    keys = (rank_in_class.double() + 0.5) / counts[inverse].double()
    chosen = torch.sort(keys, stable=True).indices[:k]
    return order[chosen].clone()


def shard_slots(count: int, num_replicas: int, rank: int, pad: bool) -> Tensor:
    """Positions in the epoch's order that rank ``rank`` visits (see the module docstring).

    With ``pad`` the order is virtually extended to a multiple of ``num_replicas``; slot
    ``s`` then refers to the sample at position ``s % count``.
    """
    if not isinstance(num_replicas, int) or num_replicas < 1:
        raise ValueError(f"num_replicas must be an int >= 1, got {num_replicas!r}")
    if not isinstance(rank, int) or not 0 <= rank < num_replicas:
        raise ValueError(f"rank must be an int in [0, {num_replicas}), got {rank!r}")
    total = count
    if pad and count % num_replicas:
        total += num_replicas - count % num_replicas
    return torch.arange(rank, max(total, rank), num_replicas)


def shard(order: Tensor, num_replicas: int, rank: int, pad: bool) -> Tensor:
    """Rank ``rank``'s part of ``order``, like ``DistributedSampler``."""
    if order.numel() == 0:
        shard_slots(0, num_replicas, rank, pad)  # validates the arguments
        return order
    return order[shard_slots(order.numel(), num_replicas, rank, pad) % order.numel()]
