"""Soft targets for the RegNet recipe: mixup (Zhang et al. 2018) and label smoothing
(Szegedy et al. 2016), and the matching cross-entropy (supplement, section B: RegNet
uses mixup with alpha = 0.5 and label smoothing 0.1).

Combining them: mix first, then smooth the mixed targets (smoothing is linear, so this
equals mixing smoothed one-hot targets), and train on :func:`soft_cross_entropy`::

    images, targets = mixup(images, labels, num_classes, alpha=0.5, generator=g)
    targets = smooth_targets(targets, num_classes, smoothing=0.1)
    loss = soft_cross_entropy(model(images), targets)

With smoothing alone, ``soft_cross_entropy(logits, smooth_targets(labels, K, s))`` equals
``F.cross_entropy(logits, labels, label_smoothing=s)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _uniform(generator: torch.Generator | None) -> float:
    device = generator.device if generator is not None else "cpu"
    return float(torch.rand((), generator=generator, device=device))


def _normal(generator: torch.Generator | None) -> float:
    device = generator.device if generator is not None else "cpu"
    return float(torch.randn((), generator=generator, device=device))


def sample_gamma(shape_k: float, generator: torch.Generator | None) -> float:
    """One Gamma(k, 1) draw from ``generator`` (Marsaglia & Tsang 2000; k < 1 via boosting)."""
    if shape_k <= 0:
        raise ValueError(f"gamma shape must be positive, got {shape_k}")
    if shape_k < 1:
        u = max(_uniform(generator), 1e-300)
        return sample_gamma(shape_k + 1.0, generator) * u ** (1.0 / shape_k)
    d = shape_k - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = _normal(generator)
        v = (1.0 + c * x) ** 3
        if v <= 0:
            continue
        u = _uniform(generator)
        if u > 0 and math.log(u) < 0.5 * x * x + d - d * v + d * math.log(v):
            return d * v


def sample_beta(alpha: float, beta: float, generator: torch.Generator | None) -> float:
    """One Beta(alpha, beta) draw from ``generator`` (ratio of two Gamma draws)."""
    x = sample_gamma(alpha, generator)
    y = sample_gamma(beta, generator)
    return 0.5 if x + y == 0 else x / (x + y)


def _one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    if labels.dim() != 1 or labels.dtype.is_floating_point:
        raise ValueError(f"labels must be an int tensor (B,), got {labels.dtype} {labels.shape}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    return F.one_hot(labels.long(), num_classes).to(dtype)


def mixup(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    alpha: float,
    generator: torch.Generator | None = None,
    *,
    per_sample: bool = False,
) -> tuple[Tensor, Tensor]:
    """Mix each sample with a random partner of the same batch.

    ``lam ~ Beta(alpha, alpha)`` (one per batch, as in Zhang et al.'s code and pycls; with
    ``per_sample`` one per sample, as the acoustic recipes' Keras generators draw
    ``np.random.beta(alpha, alpha, batch_size)``), partner order ``randperm(B)``; returns
    ``lam * x + (1 - lam) * x[perm]`` and the same mix of one-hot targets ``(B, K)``,
    which sum to 1. ``alpha <= 0`` disables mixing (one-hot targets).
    """
    targets = _one_hot(
        labels, num_classes, images.dtype if images.is_floating_point() else torch.float32
    )
    if alpha <= 0:
        return images, targets
    if per_sample:
        lams = [sample_beta(alpha, alpha, generator) for _ in range(images.shape[0])]
    else:
        lam = sample_beta(alpha, alpha, generator)
    device = generator.device if generator is not None else "cpu"
    perm = torch.randperm(images.shape[0], generator=generator, device=device).to(images.device)
    if not per_sample:
        mixed = images.mul(lam).add_(images[perm], alpha=1.0 - lam)
        mixed_targets = targets.mul(lam).add_(targets[perm.to(targets.device)], alpha=1.0 - lam)
        return mixed, mixed_targets
    weight = torch.tensor(lams, dtype=torch.float64)
    x_weight = weight.to(images.device, images.dtype).view(-1, *([1] * (images.dim() - 1)))
    t_weight = weight.to(targets.device, targets.dtype).view(-1, 1)
    mixed = images * x_weight + images[perm] * (1.0 - x_weight)
    mixed_targets = targets * t_weight + targets[perm.to(targets.device)] * (1.0 - t_weight)
    return mixed, mixed_targets


def smooth_targets(labels: Tensor, num_classes: int, smoothing: float) -> Tensor:
    """Label smoothing: ``(1 - s) * targets + s / K``.

    ``labels`` may be int labels ``(B,)`` or soft targets ``(B, K)`` (e.g. from mixup).
    """
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing must lie in [0, 1], got {smoothing}")
    if labels.is_floating_point():
        if labels.dim() != 2 or labels.shape[1] != num_classes:
            raise ValueError(
                f"soft targets must have shape (B, {num_classes}), got {tuple(labels.shape)}"
            )
        targets = labels
    else:
        targets = _one_hot(labels, num_classes, torch.float32)
    return targets * (1.0 - smoothing) + smoothing / num_classes


def soft_cross_entropy(logits: Tensor, soft_targets: Tensor) -> Tensor:
    """Mean over the batch of ``-sum_k t_k log softmax(logits)_k``."""
    if logits.shape != soft_targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(soft_targets.shape)} differ"
        )
    return -(soft_targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
