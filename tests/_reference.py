"""The float64 reference L2BN of the tests: ``F.normalize`` then ``F.batch_norm`` (eqs. 1-3)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def reference_l2bn(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    l2_eps: float = 1e-12,
    scale: bool = True,
) -> Tensor:
    """The naive composite: l2-normalize each whole sample, then batch-normalize."""
    n = x.shape[0]
    flat = F.normalize(x.reshape(n, -1), dim=1, eps=l2_eps)
    if scale:
        flat = flat * math.sqrt(flat.shape[1])
    return F.batch_norm(
        flat.reshape(x.shape), running_mean, running_var, weight, bias, training, momentum, eps
    )


def reference_l2bn_float32_statistics(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    momentum: float = 0.1,
    eps: float = 1e-5,
    l2_eps: float = 1e-12,
    scale: bool = True,
) -> Tensor:
    """The composite in training mode computed in ``x``'s dtype throughout, BatchNorm's
    statistics included (two-pass: the mean, then the mean of squared deviations).

    That is what BatchNorm computes on a GPU, where float32 input has float32 statistics;
    CPU BatchNorm (``reference_l2bn`` in float32) accumulates them in double. Running
    statistics are updated as BatchNorm does (unbiased variance).
    """
    n, c = x.shape[0], x.shape[1]
    flat = F.normalize(x.reshape(n, -1), dim=1, eps=l2_eps)
    if scale:
        flat = flat * math.sqrt(flat.shape[1])
    xh = flat.reshape(x.shape)
    dims = [0, *range(2, x.dim())]
    view = (1, c) + (1,) * (x.dim() - 2)
    count = x.numel() // c
    mean = xh.sum(dims, keepdim=True) / count
    centred = xh - mean
    var = (centred * centred).sum(dims, keepdim=True) / count
    y = centred * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.view(view)
    if bias is not None:
        y = y + bias.view(view)
    with torch.no_grad():
        if running_mean is not None:
            running_mean.lerp_(mean.view(c), momentum)
        if running_var is not None:
            running_var.lerp_(var.view(c) * (count / (count - 1)), momentum)
    return y


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """max |actual - expected| / max |expected| (a norm-wise relative error)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    scale = expected.abs().max().clamp(min=1e-300)
    return float((actual - expected).abs().max() / scale)


def adversarial_input(
    kind: str, shape: tuple[int, ...], dtype=torch.float64, seed: int = 7
) -> Tensor:
    """Inputs that break naive formulas: large channel offsets, or sample norms 1e6 apart."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    view = (1, shape[1]) + (1,) * (len(shape) - 2)
    if kind == "offset":
        # Offsets of 1e3 per channel (alternating sign) with unit spread.
        signs = torch.tensor([(-1.0) ** c for c in range(shape[1])], dtype=torch.float64)
        x = x + 1e3 * signs.view(view)
    elif kind == "norms":
        factors = torch.logspace(-3, 3, shape[0], dtype=torch.float64)
        x = x * factors.view((-1,) + (1,) * (len(shape) - 1))
    else:
        raise ValueError(kind)
    return x.to(dtype)
