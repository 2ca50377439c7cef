"""Batch augmentations of the acoustic-scene recipes (paper section 4.2).

Both act on ``(B, 3, 128, T)`` feature batches (time on the last axis) and draw their random
numbers from the loader's ``torch.Generator`` (on its device; indices then move to the
features' device), so a seeded generator reproduces them.

* :func:`random_time_crop` (registered as ``asc``): an independent random window of 400
  frames per clip, as in McDonnell & Gao's training generator (Hu et al. and the paper's
  authors reuse it). Clips of at most 400 frames are returned unchanged.
* :func:`spec_augment` + crop (registered as ``asc_specaugment``): before the crop, Hu et
  al.'s FCNN/fsFCNN recipe zeroes one random band of ``f < 13`` mel bins and one random span
  of ``t < 40`` frames, drawn independently for every clip and every channel.

Mixup (alpha 0.4) is applied by the training harness, not here.
"""

from __future__ import annotations

import torch
from torch import Tensor

CROP_FRAMES = 400
MAX_FREQ_MASK = 13
MAX_TIME_MASK = 40


def _check(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(
            "expected features as a (B, C, bands, frames) tensor, got "
            f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}"
        )


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=device)


def _below(high: Tensor | int, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    """Integers uniform in ``[0, high)``; ``high`` (>= 1) may differ per element."""
    u = _uniform(shape, generator)
    high_t = torch.as_tensor(high, device=u.device)
    return torch.minimum((u * high_t).long(), high_t.long() - 1)


def random_time_crop(
    images: Tensor, generator: torch.Generator | None, length: int = CROP_FRAMES
) -> Tensor:
    """A random ``length``-frame window per clip, its offset uniform in ``[0, T - length)``:
    the recipes' ``np.random.randint(0, T - length)`` (upper bound excluded, so the window
    never ends on the last frame)."""
    _check(images)
    batch, channels, bands, frames = images.shape
    if frames <= length:
        return images
    start = _below(frames - length, (batch,), generator).to(images.device)
    index = start[:, None] + torch.arange(length, device=images.device)
    index = index[:, None, None, :].expand(batch, channels, bands, length)
    return images.gather(3, index)


def _span_mask(size: int, max_width: int, shape: tuple[int, int], generator) -> Tensor:
    """Boolean ``(*shape, size)``: one span of width in ``[0, max_width)`` per row, its start
    uniform in ``[0, size - width)`` (Hu et al.'s ``randrange`` bounds)."""
    width = _below(min(max_width, size), shape, generator)
    start = _below((size - width).clamp(min=1), shape, generator)
    positions = torch.arange(size, device=width.device)
    return (positions >= start[..., None]) & (positions < (start + width)[..., None])


def spec_augment(
    images: Tensor,
    generator: torch.Generator | None,
    max_freq_mask: int = MAX_FREQ_MASK,
    max_time_mask: int = MAX_TIME_MASK,
) -> Tensor:
    """Zero one frequency band and one time span per clip and channel (SpecAugment masks)."""
    _check(images)
    batch, channels, bands, frames = images.shape
    freq = _span_mask(bands, max_freq_mask, (batch, channels), generator).to(images.device)
    time = _span_mask(frames, max_time_mask, (batch, channels), generator).to(images.device)
    masked = freq[..., :, None] | time[..., None, :]
    return images.masked_fill(masked, 0.0)


def spec_augment_time_crop(images: Tensor, generator: torch.Generator | None) -> Tensor:
    """Hu et al.'s FCNN/fsFCNN training input: :func:`spec_augment` then the 400-frame crop."""
    return random_time_crop(spec_augment(images, generator), generator)
