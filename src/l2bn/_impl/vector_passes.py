"""L2BN of ``(N, C)`` input (paper eq. 1) on BatchNorm's own kernels.

With one value per ``(n, c)`` the per-row statistics of the fused path are as large as
the input, so their ``O(N * C)`` arithmetic is no longer cheap. Here instead:

* forward: ``xh = x / rho[n]`` (one pass), then BatchNorm's training kernel on ``xh``;
* backward: BatchNorm's training backward gives ``dxh`` (and ``dgamma``, ``dbeta``), then
  the Jacobian of the l2 normalization: ``dx = (dxh - xh * <xh, dxh> / D) / rho[n]`` for
  the scaled form (``/ 1`` instead of ``/ D`` unscaled), ``dx = dxh / rho[n]`` for samples
  whose norm was clamped by ``l2_eps``.

Only ``xh`` (the size of ``x``) and ``O(C + N)`` statistics are saved for backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from l2bn._impl.sample_scale import sample_scale


def vector_forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, l2_eps: float, scale: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns ``y, xh, mean, var (biased), invstd, rho, active`` for ``x`` of shape (N, C)."""
    # Summed in float64 (this path is CPU float32/float64 only): float32 squares of values
    # past about 1e19 overflow, and the norm became inf (an output of zeros).
    norm = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64).to(x.dtype)
    active = norm > l2_eps
    rho = sample_scale(norm, x.shape[1], l2_eps, scale)
    xh = x / rho.unsqueeze(1)
    # BatchNorm's training kernel; with momentum 1 its running buffers receive the exact
    # batch mean and unbiased variance (torch.var_mean over dim 0 is 10x slower here).
    n, c = x.shape
    batch_mean = x.new_zeros(c)
    unbiased = x.new_zeros(c)
    y, mean, invstd = torch.native_batch_norm(
        xh, weight, bias, batch_mean, unbiased, True, 1.0, eps
    )
    var = unbiased * ((n - 1) / n)
    return y, xh, mean, var, invstd, rho, active


def vector_backward(
    dy: Tensor,
    xh: Tensor,
    weight: Tensor | None,
    mean: Tensor,
    invstd: Tensor,
    rho: Tensor,
    active: Tensor,
    eps: float,
    scale: bool,
    mask: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``dx, dweight, dbias`` (None where ``mask`` says it is not needed)."""
    dxh, dweight, dbias = torch.ops.aten.native_batch_norm_backward(
        dy, xh, weight, None, None, mean, invstd, True, eps, [mask[0], mask[1], mask[2]]
    )
    dx = None
    if mask[0]:
        dot = (xh * dxh).sum(dim=1)
        proj = active.to(dot.dtype) * dot
        if scale:
            proj = proj / xh.shape[1]
        dx = dxh.addcmul_(xh, proj.unsqueeze(1), value=-1).div_(rho.unsqueeze(1))
    return dx, (dweight if mask[1] else None), (dbias if mask[2] else None)
