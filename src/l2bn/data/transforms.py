"""Image transforms on batched tensors ``(B, C, H, W)`` (torchvision is not needed).

Random choices come from an explicit ``torch.Generator`` (drawn on the generator's
device, then moved to the images' device), so a seeded generator reproduces them.
Resizing is bilinear with antialiasing, as ``torchvision.transforms.v2`` does on tensors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_batch(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(
            f"expected images as a (B, C, H, W) tensor, got {getattr(images, 'shape', images)}"
        )
    if not images.is_floating_point():
        raise TypeError(f"expected floating-point images, got {images.dtype}")


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=device)


def _randint(high: Tensor | int, shape: tuple[int, ...], generator: torch.Generator | None):
    """Integers uniform in ``[0, high)`` (``high`` may vary per element)."""
    u = _uniform(shape, generator)
    high_t = torch.as_tensor(high, device=u.device)
    return torch.minimum((u * high_t).long(), high_t.long() - 1)


def random_flip(images: Tensor, generator: torch.Generator | None, p: float = 0.5) -> Tensor:
    """Mirror each image left-right with probability ``p``."""
    _check_batch(images)
    flip = (_uniform((images.shape[0],), generator) < p).to(images.device)
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def pad_random_crop(images: Tensor, padding: int, generator: torch.Generator | None) -> Tensor:
    """Zero-pad by ``padding`` on each side, then crop each image back to ``H x W`` at a
    random offset (the "simple data augmentation" of Lee et al. 2015 without the flip)."""
    _check_batch(images)
    if padding <= 0:
        return images
    batch, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = _randint(2 * padding + 1, (2, batch), generator).to(images.device)
    # every H x W window of every image as a view (B, dy, dx, C, H, W); pick one per image
    windows = padded.unfold(2, height, 1).unfold(3, width, 1).permute(0, 2, 3, 1, 4, 5)
    return windows[torch.arange(batch, device=images.device), offsets[0], offsets[1]]


def resize_shorter(images: Tensor, size: int) -> Tensor:
    """Resize so that the shorter side is ``size``, keeping the aspect ratio."""
    _check_batch(images)
    height, width = images.shape[-2:]
    if min(height, width) == size:
        return images
    if height <= width:
        new = (size, max(1, round(width * size / height)))
    else:
        new = (max(1, round(height * size / width)), size)
    return F.interpolate(images, size=new, mode="bilinear", align_corners=False, antialias=True)


def center_crop(images: Tensor, size: int | tuple[int, int]) -> Tensor:
    """The central ``size`` crop; raises ValueError if the image is smaller."""
    _check_batch(images)
    out_h, out_w = (size, size) if isinstance(size, int) else size
    height, width = images.shape[-2:]
    if out_h > height or out_w > width:
        raise ValueError(f"cannot center-crop {out_h}x{out_w} from a {height}x{width} image")
    top, left = (height - out_h) // 2, (width - out_w) // 2
    return images[..., top : top + out_h, left : left + out_w]


def resize_center_crop(images: Tensor, resize: int, crop: int) -> Tensor:
    """Evaluation view: shorter side to ``resize``, then the central ``crop x crop``."""
    return center_crop(resize_shorter(images, resize), crop).contiguous()


def random_resized_crop_box(
    height: int,
    width: int,
    generator: torch.Generator | None,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a crop covering a random fraction ``scale`` of the area with a
    random aspect ratio (log-uniform in ``ratio``); after ``attempts`` misses, the largest
    central crop whose aspect ratio lies in ``ratio`` (Szegedy et al. 2015)."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        u = _uniform((4,), generator).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u[2] * (height - h + 1)), height - h)
            left = min(int(u[3] * (width - w + 1)), width - w)
            return top, left, h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    images: Tensor,
    size: int,
    generator: torch.Generator | None,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Tensor:
    """A random-resized crop of each image, resized to ``size x size``."""
    _check_batch(images)
    height, width = images.shape[-2:]
    crops = []
    for image in images:
        top, left, h, w = random_resized_crop_box(height, width, generator, scale, ratio)
        crop = image[None, :, top : top + h, left : left + w]
        crops.append(
            F.interpolate(
                crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        )
    return torch.cat(crops)
