"""Training-mode L2BN with channel statistics synchronized over a process group.

Forward (paper eqs. 2-3): local per-(n, c) moments and ``rho[n]``, one all-gather of the
per-channel ``(count, mean, M2)`` (see :mod:`l2bn._impl.sync_stats`), then the local output
``y = a[n, c] * x + b[c]`` with the global ``mu`` and ``delta``.

Backward: the gradient of BatchNorm needs two channel sums over the whole batch,
``dbeta = sum dy`` and ``dgamma = sum dy * z``. Each rank computes its share from the
per-(n, c) sums of ``dy`` and ``dy * (x - mu * rho)``; one all-reduce adds them up;
:func:`l2bn._impl.pytorch.input_grad_coefficients` (``dx = P * dy + Q * x + R``, the
derivation shared with L2BatchNorm) then uses the global sums and the global count. The
l2-normalization's own term, the per-sample projection ``e[n]``, is local to the sample.
The weight and bias gradients returned are each rank's share, as ``torch.nn.SyncBatchNorm``
does: DistributedDataParallel averages them over the ranks.

Four passes read or write full-size tensors (the forward's row moments and output, the
backward's row sums and input gradient); everything between them is ``O(N * C)`` torch
operations. :func:`sync_l2_batch_norm` asks :func:`l2bn._impl.dispatch.sync_backend` which
backend's passes run them: the Triton kernels (:mod:`l2bn._impl.triton.sync`, statistics
in float32) where the Triton backend would run the call, else the PyTorch passes
(:data:`PYTORCH_PASSES`). Either way one all-gather runs in forward and one all-reduce in
backward, and nothing reads a value back to the host, except the group's count on a rank
holding at most one value per channel (:func:`l2bn._impl.sync_stats.check_global_count`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from l2bn._impl import dispatch
from l2bn._impl.passes import grad_combine, rows
from l2bn._impl.pytorch import (
    GradRowSums,
    affine_coefficients,
    affine_output,
    channel_grad_sums,
    grad_row_sums,
    input_grad_coefficients,
)
from l2bn._impl.sync_stats import LocalStats, gather_channel_stats, local_stats


class SyncPasses(NamedTuple):
    """The full-size passes of a synchronized call, on one backend.

    * ``local_stats(x, l2_eps, scale) -> LocalStats`` of ``x`` ``(N, C, *S)``, ``N >= 0``;
    * ``affine_output(x, a, b) -> a[n, c] * x + b[c]``;
    * ``grad_row_sums(dy, x, mu, rho) -> GradRowSums``;
    * ``grad_combine(dy, x, p, q, r, out) -> p * dy + q * x + r`` (``out``: the buffer of
      ``GradRowSums``, or None).
    """

    local_stats: Callable[[Tensor, float, bool], LocalStats]
    affine_output: Callable[[Tensor, Tensor, Tensor], Tensor]
    grad_row_sums: Callable[[Tensor, Tensor, Tensor, Tensor], GradRowSums]
    grad_combine: Callable[..., Tensor]


def _pytorch_local_stats(x: Tensor, l2_eps: float, scale: bool) -> LocalStats:
    return local_stats(rows(x), l2_eps, scale)


PYTORCH_PASSES = SyncPasses(_pytorch_local_stats, affine_output, grad_row_sums, grad_combine)


@functools.cache
def _triton_passes() -> SyncPasses:
    from l2bn._impl.triton import sync  # triton is importable: the backend is usable

    return SyncPasses(sync.local_stats, sync.affine_output, sync.grad_row_sums, sync.grad_combine)


def sync_passes(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> SyncPasses:
    """The passes of a synchronized training call on ``x``, as the dispatcher decides."""
    grad = dispatch.records_grad(x, weight, bias)
    if dispatch.sync_backend(x, weight, bias, grad).NAME == "triton":
        return _triton_passes()
    return PYTORCH_PASSES


def sync_l2_batch_norm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    l2_eps: float,
    scale: bool,
    group: Any,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training-mode L2BN of ``x`` (``(N, C, *S)``, ``N`` may be 0) with the channel
    statistics of every rank of ``group``. Returns ``(y, mean, var, count)``: the output
    and the group's biased statistics of ``xh`` with its count of values per channel (a
    0-d tensor; no host synchronization). Every rank of ``group`` must call it, and its
    backward, the same number of times.

    Raises:
        ValueError: the group's batch holds one value per channel (on every rank alike).
    """
    chosen = sync_passes(x, weight, bias)
    return SyncL2BatchNormFunction.apply(x, weight, bias, eps, l2_eps, scale, group, chosen)


class SyncL2BatchNormFunction(torch.autograd.Function):
    """Returns ``(y, mean, var, count)``: output and the global statistics (non-differentiable).

    ``impl`` (a :class:`SyncPasses`) runs the full-size passes; see :func:`sync_passes`.
    """

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
        impl: SyncPasses = PYTORCH_PASSES,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        local = impl.local_stats(x, l2_eps, scale)
        stats = gather_channel_stats(local, group)
        a, shift, invstd = affine_coefficients(stats.mean, stats.var, local.rho, weight, bias, eps)
        y = impl.affine_output(x, a, shift)

        ctx.save_for_backward(
            x, weight, local.rho, local.active, local.row_mean, local.row_var, stats.mean,
            invstd, stats.count,
        )  # fmt: skip
        ctx.scale = scale
        ctx.group = group
        ctx.impl = impl
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
        x, weight, rho, active, m, v, mu, invstd, count = ctx.saved_tensors
        c = x.shape[1]
        inv_rho = rho.reciprocal().unsqueeze(1)
        sums = ctx.impl.grad_row_sums(dy, x, mu, rho)
        dbeta_local, dgamma_local = channel_grad_sums(sums, inv_rho, invstd)

        dx = None
        if ctx.needs_input_grad[0]:
            totals = torch.cat([dbeta_local, dgamma_local])
            dist.all_reduce(totals, group=ctx.group)
            dbeta, dgamma = totals[:c], totals[c:]
            p, q, r = input_grad_coefficients(
                x, sums, m, v, mu, invstd, weight, rho, active, dbeta, dgamma,
                count.clamp(min=1), ctx.scale,
            )  # fmt: skip
            dx = ctx.impl.grad_combine(dy, x, p, q, r, sums.buffer)

        dweight = None
        if weight is not None and ctx.needs_input_grad[1]:
            dweight = dgamma_local.to(weight.dtype)
        dbias = None
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            dbias = dbeta_local.to(ctx.bias_dtype)
        return dx, dweight, dbias, None, None, None, None, None
