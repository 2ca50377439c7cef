"""Deterministic batch loaders: ``build_loader`` and the epoch loader it returns.

Reproducibility contract: the batches of an epoch (sample order and augmentation draws;
mixup is left to the caller) depend only on ``(seed, epoch, rank)`` and the loader's
settings, never on global RNG state. The epoch's order is ``torch.randperm`` under a
generator seeded from ``(seed, epoch)``; augmentation draws use a fresh generator per batch
(in-memory datasets, seeded from ``(seed, epoch, rank, batch)``) or per item (lazy
datasets, seeded from ``(seed, epoch, slot in the epoch's order)``), so the number of
workers does not change any batch. See :mod:`l2bn.data.sampling` for ``subset`` and
sharding.

Two paths:

* datasets with ``get_batch(indices)`` (the in-memory IDX/CIFAR readers) are indexed
  as whole tensors and augmented batch-wise in the calling process (``num_workers`` is
  ignored: tensor ops are faster than worker round-trips);
* other datasets go through a ``torch.utils.data.DataLoader`` whose sampler hands each
  worker ``(index, seed)`` pairs; the augmentation then runs per item (a batch of one).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from l2bn.data.registry import Augmentation, get_augmentation
from l2bn.data.sampling import epoch_generator, fixed_subset, mix_seed, shard_slots

_BATCH_STREAM = 0x42
_ITEM_STREAM = 0x17


def _seeded_generator(*values: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(mix_seed(*values))
    return generator


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class _SeededItems(torch.utils.data.Dataset):
    """Wraps a lazy dataset: item ``(index, seed)`` -> augmented image, label."""

    def __init__(self, dataset: Any, augmentation: Augmentation, train: bool) -> None:
        self.dataset = dataset
        self.augmentation = augmentation
        self.train = train

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int]:
        index, seed = key
        fn = self.augmentation.train_fn if self.train else self.augmentation.eval_fn
        if fn is None or self.augmentation.name == "none":
            return self.dataset[index]
        if self.augmentation.full_image and hasattr(self.dataset, "read_full"):
            image, label = self.dataset.read_full(index), int(self.dataset.labels[index])
        else:
            image, label = self.dataset[index]
        generator = torch.Generator()
        generator.manual_seed(seed)
        return fn(image[None], generator)[0], label


def _collate(items: Sequence[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    shapes = {tuple(image.shape) for image, _ in items}
    if len(shapes) > 1:
        raise ValueError(
            f"images of different sizes in one batch: {sorted(shapes)[:3]}; give the dataset "
            "a fixed size (e.g. load_dataset('imagefolder', ..., image_size=N)) or an "
            "augmentation that outputs one size"
        )
    images = torch.stack([image for image, _ in items])
    labels = torch.tensor([int(label) for _, label in items], dtype=torch.int64)
    return images, labels


class EpochLoader:
    """One epoch of batches for one rank: iterate for ``(images, labels)``; ``len()`` is the
    number of batches. ``set_epoch`` re-targets it to another epoch."""

    def __init__(
        self,
        dataset: Any,
        *,
        batch_size: int,
        train: bool,
        seed: int,
        epoch: int = 0,
        augment: str | Augmentation | None = "none",
        subset: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        num_workers: int = 0,
    ) -> None:
        self.dataset = dataset
        self.batch_size = _positive_int("batch_size", batch_size)
        self.train = bool(train)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.seed = seed
        self.augmentation = get_augmentation(augment)
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = bool(drop_last)
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        self.num_workers = num_workers
        if len(dataset) == 0:
            raise ValueError(f"dataset {dataset!r} is empty")
        labels = getattr(dataset, "labels", None)
        self.base_indices = (
            torch.arange(len(dataset))
            if subset is None
            else fixed_subset(len(dataset), subset, labels if isinstance(labels, Tensor) else None)
        )
        shard_slots(0, num_replicas, rank, pad=False)  # validates rank and num_replicas
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Recompute this rank's sample order for ``epoch``."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self.epoch = epoch
        count = self.base_indices.numel()
        order = (
            torch.randperm(count, generator=epoch_generator(self.seed, epoch))
            if self.train
            else torch.arange(count)
        )
        # slots in the (padded) epoch order; they also seed each item's augmentation
        self.slots = shard_slots(count, self.num_replicas, self.rank, pad=self.train)
        self.indices = self.base_indices[order[self.slots % count]]

    @property
    def num_samples(self) -> int:
        """Samples this rank visits per epoch (before ``drop_last``)."""
        return int(self.indices.numel())

    def padding(self, batch: int) -> Tensor:
        """Which samples of batch ``batch`` (0-based) are padding (True): the repeats of
        the epoch's first samples that give every rank of a training epoch as many samples
        as the others (``DistributedSampler``'s padding). Over all ranks, the samples that
        are not padding are the epoch's (or the subset's) samples, each once."""
        slots = self.slots[batch * self.batch_size : (batch + 1) * self.batch_size]
        return slots >= self.base_indices.numel()

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def _batch_slices(self) -> Iterator[slice]:
        for b in range(len(self)):
            yield slice(b * self.batch_size, (b + 1) * self.batch_size)

    def _iter_in_memory(self) -> Iterator[tuple[Tensor, Tensor]]:
        for b, part in enumerate(self._batch_slices()):
            images, labels = self.dataset.get_batch(self.indices[part])
            if self.augmentation.name != "none":
                generator = _seeded_generator(_BATCH_STREAM, self.seed, self.epoch, self.rank, b)
                images = self.augmentation(images, generator, self.train)
            yield images, labels

    def _iter_lazy(self) -> Iterator[tuple[Tensor, Tensor]]:
        keys = [
            (int(index), mix_seed(_ITEM_STREAM, self.seed, self.epoch, int(slot)))
            for index, slot in zip(self.indices.tolist(), self.slots.tolist(), strict=True)
        ]
        batches = [keys[part] for part in self._batch_slices()]
        loader = torch.utils.data.DataLoader(
            _SeededItems(self.dataset, self.augmentation, self.train),
            batch_sampler=batches,
            num_workers=self.num_workers,
            collate_fn=_collate,
        )
        yield from loader

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if hasattr(self.dataset, "get_batch"):
            return self._iter_in_memory()
        return self._iter_lazy()

    def __repr__(self) -> str:
        return (
            f"EpochLoader(n={self.num_samples}, batches={len(self)}, batch_size={self.batch_size}, "
            f"train={self.train}, seed={self.seed}, epoch={self.epoch}, "
            f"augment={self.augmentation.name!r}, rank={self.rank}/{self.num_replicas})"
        )


def build_loader(
    dataset: Any,
    *,
    batch_size: int,
    train: bool,
    seed: int,
    epoch: int = 0,
    augment: str | Augmentation | None = "none",
    subset: int | None = None,
    num_replicas: int = 1,
    rank: int = 0,
    drop_last: bool = False,
    num_workers: int = 0,
) -> EpochLoader:
    """Batches ``(images float32 (B, C, H, W), labels int64 (B,))`` of one epoch.

    ``train=True`` shuffles (order from ``(seed, epoch)`` only) and applies the training
    augmentation; ``train=False`` keeps the dataset order and applies the augmentation's
    evaluation transform. ``subset=k``: a fixed, seed-independent, label-stratified subset
    of ``k`` samples. ``num_replicas``/``rank``: this rank's shard (training pads to equal
    shards by wrapping around; evaluation shards are disjoint and cover each sample once).
    """
    return EpochLoader(
        dataset,
        batch_size=batch_size,
        train=train,
        seed=seed,
        epoch=epoch,
        augment=augment,
        subset=subset,
        num_replicas=num_replicas,
        rank=rank,
        drop_last=drop_last,
        num_workers=num_workers,
    )
