"""Input checks shared by the angle measures, with messages that name the problem."""

from __future__ import annotations

import torch
from torch import Tensor


def check_features(features: Tensor, name: str = "features") -> None:
    if not isinstance(features, Tensor):
        raise TypeError(f"l2bn.analysis: {name} must be a torch.Tensor, got {type(features)}")
    if features.dim() != 2:
        raise ValueError(
            f"l2bn.analysis: {name} must be 2-D (num_samples, num_features), "
            f"got shape {tuple(features.shape)}; flatten them first, e.g. x.flatten(1)"
        )
    if not features.is_floating_point():
        raise TypeError(f"l2bn.analysis: {name} must be floating point, got {features.dtype}")


def check_labels(
    labels: Tensor, num_samples: int, num_classes: int, device: torch.device
) -> Tensor:
    """Validate ``labels`` and return them as int64 on ``device``."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"l2bn.analysis: labels must be a torch.Tensor, got {type(labels)}")
    if labels.dim() != 1:
        raise ValueError(f"l2bn.analysis: labels must be 1-D, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"l2bn.analysis: labels must be integers, got {labels.dtype}")
    if labels.shape[0] != num_samples:
        raise ValueError(
            f"l2bn.analysis: {labels.shape[0]} labels for {num_samples} feature rows; "
            "they must match"
        )
    labels = labels.to(device=device, dtype=torch.int64)
    if labels.numel():
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise ValueError(
                f"l2bn.analysis: label {bad} is outside [0, num_classes) = [0, {num_classes})"
            )
    return labels


def resolve_num_classes(labels: Tensor, num_classes: int | None, centers: Tensor | None) -> int:
    """``num_classes`` as given, else the number of center rows, else ``max(label) + 1``."""
    if centers is not None:
        if num_classes is not None and num_classes != centers.shape[0]:
            raise ValueError(
                f"l2bn.analysis: num_classes={num_classes} but centers has {centers.shape[0]} rows"
            )
        return centers.shape[0]
    if num_classes is not None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                f"l2bn.analysis: num_classes must be a positive int, got {num_classes}"
            )
        return num_classes
    if not isinstance(labels, Tensor) or labels.numel() == 0:
        raise ValueError("l2bn.analysis: no samples, so num_classes cannot be inferred")
    return int(labels.max()) + 1


def check_centers(centers: Tensor, num_features: int) -> None:
    check_features(centers, name="centers")
    if centers.shape[1] != num_features:
        raise ValueError(
            f"l2bn.analysis: centers have {centers.shape[1]} features, "
            f"the features have {num_features}"
        )
