"""The per-sample scale of L2BN (paper eq. 3), written once.

``xh_n = x_n / rho_n`` with ``rho_n = max(||x_n||_2, l2_eps) / sqrt(D)`` for the scaled
form (``scale=True``, values at unit scale) or ``max(||x_n||_2, l2_eps)`` for the plain
form; ``D`` is the number of values of one sample.

``D`` comes from the input's shape, and a recorded graph must keep it a function of that
shape: under ``torch.jit.trace`` (and the ONNX exporter built on it) a size is a traced 0-d
tensor, under ``torch.export`` / ``torch.compile`` with dynamic shapes a ``SymInt``. A
Python ``math.sqrt`` would turn either into a constant, and a graph recorded at one spatial
size would then normalize every other size by the wrong ``sqrt(D)``, silently.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def norm_divisor(values_per_sample: int | torch.SymInt | Tensor, scale: bool):
    """``sqrt(D)`` for the scaled form of eq. (3), 1 for the plain form.

    Returns a float for an ``int`` ``D``, a ``SymFloat`` for a ``SymInt`` and a 0-d float64
    tensor for a traced 0-d tensor, so that the graph recorded by a tracer keeps ``D``
    symbolic (see the module docstring).
    """
    if not scale:
        return 1.0
    if isinstance(values_per_sample, Tensor):
        return values_per_sample.to(torch.float64).sqrt()
    if isinstance(values_per_sample, torch.SymInt):
        return torch.sym_float(values_per_sample) ** 0.5
    return math.sqrt(values_per_sample)


def sample_scale(
    norm: Tensor, values_per_sample: int | torch.SymInt | Tensor, l2_eps: float, scale: bool
) -> Tensor:
    """``rho_n`` from the sample norms ``||x_n||_2`` (any shape, any float dtype), in
    ``norm``'s dtype."""
    rho = norm.clamp(min=l2_eps)
    if scale:
        divisor = norm_divisor(values_per_sample, scale)
        if isinstance(divisor, Tensor):
            divisor = divisor.to(rho.dtype)
        rho = rho / divisor
    return rho
