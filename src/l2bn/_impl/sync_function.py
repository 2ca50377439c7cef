"""Training-mode L2BN with channel statistics synchronized over a process group.

Forward (paper eqs. 2-3): local per-(n, c) moments and ``rho[n]``, one all-gather of the
per-channel ``(count, mean, M2)`` (see :mod:`l2bn._impl.sync_stats`), then the local output
``y = a[n, c] * x + b[c]`` with the global ``mu`` and ``delta``.

Backward: the gradient of BatchNorm needs two channel sums over the whole batch,
``dbeta = sum dy`` and ``dgamma = sum dy * z``. Each rank computes its share from the
per-(n, c) sums of :func:`l2bn._impl.pytorch.grad_row_sums`; one all-reduce adds them up;
:func:`l2bn._impl.pytorch.input_grad` (``dx = P * dy + Q * x + R``, the derivation shared with
L2BatchNorm) then uses the global sums and the global count. The l2-normalization's own
term, the per-sample projection ``e[n]``, is local to the sample. The weight and bias
gradients returned are each rank's share, as ``torch.nn.SyncBatchNorm`` does:
DistributedDataParallel averages them over the ranks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from l2bn._impl.pytorch import (
    affine_coefficients,
    affine_output,
    channel_grad_sums,
    grad_row_sums,
    input_grad,
)
from l2bn._impl.sync_stats import gather_channel_stats, local_stats


class SyncL2BatchNormFunction(torch.autograd.Function):
    """Returns ``(y, mean, var, count)``: output and the global statistics (non-differentiable)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
        l2_eps: float,
        scale: bool,
        group: Any,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n, c = x.shape[0], x.shape[1]
        x3 = x.reshape(n, c, math.prod(x.shape[2:]))
        local = local_stats(x3, l2_eps, scale)
        stats = gather_channel_stats(local, group)
        a, shift, invstd = affine_coefficients(stats.mean, stats.var, local.rho, weight, bias, eps)
        y = affine_output(x, a, shift)

        ctx.save_for_backward(
            x, weight, local.rho, local.active, local.moments.mean, local.row_mean,
            local.row_var, stats.mean, invstd, stats.count,
        )  # fmt: skip
        ctx.scale = scale
        ctx.group = group
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.mark_non_differentiable(stats.mean, stats.var, stats.count)
        return y, stats.mean, stats.var, stats.count

    @staticmethod
    def backward(
        ctx: Any, dy: Tensor, _dmean: Tensor, _dvar: Tensor, _dcount: Tensor
    ) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():
            raise NotImplementedError(
                "l2bn: double backward (create_graph=True) through SyncL2BatchNorm across "
                "processes is not implemented; a single process, eval mode and "
                "L2BatchNorm*d support it"
            )
        x, weight, rho, active, _x_mean, m, v, mu, invstd, count = ctx.saved_tensors
        c = x.shape[1]
        inv_rho = rho.reciprocal().unsqueeze(1)
        sums = grad_row_sums(dy, x, mu, rho)
        dbeta_local, dgamma_local = channel_grad_sums(sums, inv_rho, invstd)

        dx = None
        if ctx.needs_input_grad[0]:
            totals = torch.cat([dbeta_local, dgamma_local])
            dist.all_reduce(totals, group=ctx.group)
            dbeta, dgamma = totals[:c], totals[c:]
            dx = input_grad(
                dy, x, sums, m, v, mu, invstd, weight, rho, active, dbeta, dgamma,
                count.clamp(min=1), ctx.scale,
            )  # fmt: skip

        dweight = None
        if weight is not None and ctx.needs_input_grad[1]:
            dweight = dgamma_local.to(weight.dtype)
        dbias = None
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            dbias = dbeta_local.to(ctx.bias_dtype)
        return dx, dweight, dbias, None, None, None, None
