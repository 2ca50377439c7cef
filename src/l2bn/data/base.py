"""The in-memory image dataset shared by the IDX (MNIST) and CIFAR readers.

Images live as one uint8 tensor ``(N, C, H, W)`` and labels as one int64 tensor, so a
batch is a single indexing operation plus one fused normalization, never a PIL image
per item. Loaders use :meth:`InMemoryImageDataset.get_batch` (the "fast path").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def check_channel_constants(
    mean: Sequence[float], std: Sequence[float], channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Validate per-channel normalization constants and return them as float tuples."""
    mean_t = tuple(float(v) for v in mean)
    std_t = tuple(float(v) for v in std)
    if len(mean_t) != channels or len(std_t) != channels:
        raise ValueError(
            f"mean and std need {channels} values (one per channel), "
            f"got {len(mean_t)} and {len(std_t)}"
        )
    if any(v <= 0 for v in std_t):
        raise ValueError(f"std values must be positive, got {std_t}")
    return mean_t, std_t


def uint8_to_normalized(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(images / 255 - mean) / std`` per channel, as float32, in one fused step.

    Works for ``(C, H, W)`` and ``(B, C, H, W)`` tensors on any device.
    """
    shape = (-1, 1, 1)  # broadcasts over the trailing (C, H, W) dimensions
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=images.device).view(shape)
    shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], device=images.device)
    return images.to(torch.float32).mul_(scale).add_(shift.view(shape))


class InMemoryImageDataset(torch.utils.data.Dataset):
    """A labelled image set held as tensors: ``images`` uint8 (N, C, H, W), ``labels`` int64.

    Items and batches are float32, normalized per channel with ``mean``/``std``
    (constants of the dataset, not recomputed from the files).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        classes: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        source: str = "",
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
        if labels.numel() != images.shape[0]:
            raise ValueError(
                f"{source or 'dataset'}: {images.shape[0]} images but {labels.numel()} labels"
            )
        self.classes = [str(c) for c in classes]
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(self.classes)):
            raise ValueError(
                f"{source or 'dataset'}: labels must lie in [0, {len(self.classes)}), "
                f"found [{int(labels.min())}, {int(labels.max())}]"
            )
        self.images = images
        self.labels = labels
        self.mean, self.std = check_channel_constants(mean, std, images.shape[1])
        self.source = source

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int | tuple[int, int]:
        height, width = (int(v) for v in self.images.shape[2:])
        return height if height == width else (height, width)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = uint8_to_normalized(self.images[index], self.mean, self.std)
        return image, int(self.labels[index])

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Normalized float32 images ``(B, C, H, W)`` and int64 labels ``(B,)`` at ``indices``,
        on the device the dataset lives on (see :meth:`to`)."""
        indices = indices.to(self.images.device)
        images = uint8_to_normalized(self.images[indices], self.mean, self.std)
        return images, self.labels[indices]

    def to(self, device: torch.device | str) -> InMemoryImageDataset:
        """Move the tensors to ``device`` (e.g. keep a small set on the GPU so batches and
        their augmentation never leave it); returns ``self``."""
        self.images = self.images.to(device)
        self.labels = self.labels.to(device)
        return self

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={len(self)}, classes={self.num_classes}, "
            f"shape={tuple(self.images.shape[1:])}, source={self.source!r})"
        )
