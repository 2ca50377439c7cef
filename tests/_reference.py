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


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """max |actual - expected| / max |expected| (a norm-wise relative error)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    scale = expected.abs().max().clamp(min=1e-300)
    return float((actual - expected).abs().max() / scale)


def adversarial_input(kind: str, shape: tuple[int, ...], dtype=torch.float64) -> Tensor:
    """Inputs that break naive formulas: large channel offsets, or sample norms 1e6 apart."""
    g = torch.Generator().manual_seed(7)
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
