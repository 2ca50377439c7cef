"""The per-sample scale of L2BN (paper eq. 3), written once.

``xh_n = x_n / rho_n`` with ``rho_n = max(||x_n||_2, l2_eps) / sqrt(D)`` for the scaled
form (``scale=True``, values at unit scale) or ``max(||x_n||_2, l2_eps)`` for the plain
form; ``D`` is the number of values of one sample.
"""

from __future__ import annotations

import math

from torch import Tensor


def norm_divisor(values_per_sample: int, scale: bool) -> float:
    """``sqrt(D)`` for the scaled form of eq. (3), 1 for the plain form."""
    return math.sqrt(values_per_sample) if scale else 1.0


def sample_scale(norm: Tensor, values_per_sample: int, l2_eps: float, scale: bool) -> Tensor:
    """``rho_n`` from the sample norms ``||x_n||_2`` (any shape, any float dtype)."""
    rho = norm.clamp(min=l2_eps)
    if scale:
        rho = rho / math.sqrt(values_per_sample)
    return rho
