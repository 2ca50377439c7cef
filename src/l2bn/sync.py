"""SyncL2BatchNorm: L2BN whose batch statistics span every process of a group.

The counterpart of :class:`torch.nn.SyncBatchNorm` for data-parallel training of the
paper's large-batch runs (ImageNet, batch 256 over several GPUs). Each sample is
l2-normalized locally (eq. 3: the norm involves one sample only); the channel
statistics of eq. (2) are those of the whole global batch, gathered with one
collective per layer in forward and one all-reduce in backward. Built on
``torch.distributed`` collectives, so it runs on CPU with ``gloo`` as well as on GPUs
with ``nccl``.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from l2bn._impl.running import momentum_factor, update_running_stats
from l2bn._impl.sync_function import SyncL2BatchNormFunction
from l2bn.convert import Predicate, move_state, register_conversion
from l2bn.functional import DEFAULT_L2_EPS, validate_input
from l2bn.layers import L2BatchNorm1d, L2BatchNorm2d, L2BatchNorm3d, _L2BatchNorm


class SyncL2BatchNorm(_L2BatchNorm):
    """L2BN (paper eqs. 1-3) with channel statistics synchronized across processes.

    Same constructor as :class:`torch.nn.SyncBatchNorm` plus ``l2_eps`` and ``scale``
    (see :class:`l2bn.L2BatchNorm2d`); accepts any input of shape ``(N, C, *)``.
    In training mode inside an initialized process group of more than one process, the
    mean and variance of eq. (2) are taken over the samples of all ranks of
    ``process_group`` (default: the whole world); ranks may hold different numbers of
    samples, including none, but every rank must call the layer (and its backward)
    the same number of times. The running statistics receive the global unbiased
    variance and stay identical on all ranks. Outside a process group, with one
    process, or in eval mode it computes exactly what ``L2BatchNorm`` computes.

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
        if not self.training or self._group_size() <= 1:
            return super().forward(input)
        # Local checks only: a rank may hold 1 value per channel, or none at all.
        validate_input(input, self.num_features, False)
        factor = 0.0
        if self.track_running_stats:
            factor = momentum_factor(self.momentum, self.num_batches_tracked)
        group = self.process_group or dist.group.WORLD
        out, mean, var, count = SyncL2BatchNormFunction.apply(
            input, self.weight, self.bias, self.eps, self.l2_eps, self.scale, group
        )
        if self.track_running_stats:
            # The global count is a tensor: no host synchronization.
            update_running_stats(self.running_mean, self.running_var, mean, var, count, factor)
        return out


_CONVERTIBLE: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    L2BatchNorm1d,
    L2BatchNorm2d,
    L2BatchNorm3d,
    SyncL2BatchNorm,
)


def _to_sync(layer: _BatchNorm, process_group: Any | None) -> SyncL2BatchNorm:
    ref = layer.weight if layer.weight is not None else layer.running_mean
    placement = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    out = SyncL2BatchNorm(
        layer.num_features,
        layer.eps,
        layer.momentum,
        layer.affine,
        layer.track_running_stats,
        process_group,
        l2_eps=getattr(layer, "l2_eps", DEFAULT_L2_EPS),
        scale=getattr(layer, "scale", True),
        **placement,
    )
    return move_state(layer, out)


def convert_sync_l2batchnorm(
    module: nn.Module,
    process_group: Any | None = None,
    *,
    predicate: Predicate | None = None,
) -> nn.Module:
    """Replace BatchNorm1d/2d/3d, SyncBatchNorm and L2BatchNorm* layers by SyncL2BatchNorm.

    Mirrors :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`: parameters and
    buffers are moved (same objects), mode, ``requires_grad``, ``l2_eps`` and ``scale``
    are kept (BatchNorm layers get the L2BN defaults), and ``process_group`` is set on
    every converted layer. Only these exact classes are converted; other normalization
    layers are left alone. ``predicate(qualified_name, layer) -> bool`` restricts the
    conversion, as in :func:`l2bn.convert_bn_to_l2bn`; e.g. ``lambda _, m:
    is_l2_batch_norm(m)`` synchronizes the L2BN layers and leaves BatchNorm a BatchNorm.
    Returns the converted module (a new object when ``module`` itself is converted).
    """
    return _convert(module, process_group, predicate, "")


def _convert(
    module: nn.Module, process_group: Any | None, predicate: Predicate | None, prefix: str
) -> nn.Module:
    selected = type(module) in _CONVERTIBLE and (predicate is None or predicate(prefix, module))
    out = _to_sync(module, process_group) if selected else module
    for name, child in module.named_children():
        qualified = f"{prefix}.{name}" if prefix else name
        out.add_module(name, _convert(child, process_group, predicate, qualified))
    return out


register_conversion(nn.SyncBatchNorm, SyncL2BatchNorm)

__all__ = ["SyncL2BatchNorm", "convert_sync_l2batchnorm"]
