"""SyncL2BatchNorm: L2BN whose batch statistics span every process of a group.

The counterpart of :class:`torch.nn.SyncBatchNorm` for data-parallel training of the
paper's large-batch runs (ImageNet, batch 256 over several GPUs). Each sample is
l2-normalized locally (eq. 3: the norm involves one sample only); the channel
statistics of eq. (2) are those of the whole global batch, gathered with one
collective per layer in forward and one all-reduce in backward. Built on
``torch.distributed`` collectives, so it runs on CPU with ``gloo`` as well as on GPUs
with ``nccl``. On CUDA its full-size passes are the Triton backend's kernels where that
backend would run the call (float32, float16, bfloat16; see
:mod:`l2bn._impl.sync_function`), else the PyTorch passes.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch import Tensor

from l2bn._impl.running import momentum_factor, update_running_stats
from l2bn._impl.sync_function import sync_l2_batch_norm
from l2bn.functional import DEFAULT_L2_EPS, check_eps, validate_input
from l2bn.fx_leaf import as_fx_leaf
from l2bn.layers import _L2BatchNorm


class SyncL2BatchNorm(_L2BatchNorm):
    """L2BN (paper eqs. 1-3) with channel statistics synchronized across processes.

    Same constructor as :class:`torch.nn.SyncBatchNorm` plus ``l2_eps`` and ``scale``
    (see :class:`l2bn.L2BatchNorm2d`); accepts any input of shape ``(N, C, *)``.
    In training mode inside an initialized process group of more than one process, the
    mean and variance of eq. (2) are taken over the samples of all ranks of
    ``process_group`` (default: the whole world); ranks may hold different numbers of
    samples, including none, but every rank must call the layer (and its backward)
    the same number of times, and the group's batch must hold more than one value per
    channel (else every rank raises ``ValueError``, as ``L2BatchNorm`` does in one
    process). The running statistics receive the global unbiased variance and stay
    identical on all ranks. Outside a process group, with one process, or in eval mode it
    computes exactly what ``L2BatchNorm`` computes.

    Weight and bias gradients are each rank's share of the global sums, as in
    ``torch.nn.SyncBatchNorm``: wrap the model in ``DistributedDataParallel`` (which
    averages them) so that they match single-process training on the global batch.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any | None = None,
        device: Any = None,
        dtype: Any = None,
        l2_eps: float = DEFAULT_L2_EPS,
        scale: bool = True,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device=device,
            dtype=dtype,
            l2_eps=l2_eps,
            scale=scale,
            bias=bias,
        )
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        validate_input(input, None, False)  # any (N, C, *) input, like torch.nn.SyncBatchNorm

    def _group_size(self) -> int:
        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.process_group)

    def forward(self, input: Tensor) -> Tensor:
        traced = as_fx_leaf(self, input)  # torch.fx: one call of the layer (fx_leaf.py)
        if traced is not None:
            return traced
        if not self.training or self._group_size() <= 1:
            return super().forward(input)
        # Local checks only: a rank may hold 1 value per channel, or none at all (one value
        # over the whole group is refused after the gather, on every rank).
        validate_input(input, self.num_features, False)
        check_eps(self.eps, True)  # as L2BatchNorm, before any collective (same eps everywhere)
        group = self.process_group or dist.group.WORLD
        # No value on this rank (no sample, or a zero-size spatial dim): it adds nothing to
        # the statistics but joins the collectives, forward and backward, as a share of no
        # sample of one position each. Reshapes between empty shapes keep the graph.
        share = input
        if input.numel() == 0:
            share = input.reshape((0, input.shape[1]) + (1,) * (input.dim() - 2))
        try:
            out, mean, var, count = sync_l2_batch_norm(
                share, self.weight, self.bias, self.eps, self.l2_eps, self.scale, group
            )
        except RuntimeError as err:
            refusal = _device_refusal(group, input)
            if refusal is None:
                raise
            raise refusal from err
        out = out.reshape(input.shape)
        if self.track_running_stats:
            # Counted after the statistics pass, which may refuse the batch. The global
            # count is a tensor: no host synchronization.
            factor = momentum_factor(self.momentum, self.num_batches_tracked)
            update_running_stats(self.running_mean, self.running_var, mean, var, count, factor)
        return out


def _device_refusal(group: Any, input: Tensor) -> ValueError | None:
    """The error for input on a device that ``group`` has no backend for (e.g. CPU input in
    an NCCL group), or None when the group serves the input's device (or does not say which
    devices it serves). Asked only after a collective failed: no cost on the usual step."""
    devices = getattr(group, "_device_types", None)
    if not devices or input.device.type in {d.type for d in devices}:
        return None
    served = ", ".join(sorted({d.type for d in devices}))
    return ValueError(
        f"l2bn: SyncL2BatchNorm got input on {input.device.type}, but its process group "
        f"(backend {dist.get_backend(group)!r}) has no backend for that device, only for: "
        f"{served}. Move the model and its input to such a device (e.g. .cuda() for an "
        "NCCL group), or synchronize over a group that serves it (gloo on CPU)"
    )


__all__ = ["SyncL2BatchNorm"]
