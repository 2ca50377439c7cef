"""L2BatchNorm1d/2d/3d: drop-in replacements for :class:`torch.nn.BatchNorm1d/2d/3d`.

They derive from torch's ``_NormBase``, the base of ``_BatchNorm``: same constructor (plus
``l2_eps`` and ``scale``), same parameters, buffers, ``state_dict`` keys and
``num_batches_tracked`` handling, so BatchNorm checkpoints load both ways. They are not
``_BatchNorm`` instances, so that rewriters written for BatchNorm (``convert_sync_batchnorm``
of torch and timm, conv-BN folding) leave them alone instead of turning them into BatchNorm
(README, "Using L2BN with DDP, timm, torchvision, fusion and freezing").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _NormBase

from l2bn._impl.running import momentum_factor
from l2bn.functional import DEFAULT_L2_EPS, checked_l2_batch_norm, validate_input


class _L2BatchNorm(_NormBase):
    """Shared base: l2-normalize each sample (eq. 1/3), then batch-normalize (eq. 2)."""

    _expected_dims: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: Any = None,
        l2_eps: float = DEFAULT_L2_EPS,
        scale: bool = True,
        *,
        bias: bool = True,
    ) -> None:
        # ``bias=False`` (affine weight only) exists in torch's BatchNorm since 2.6.
        extra = {} if bias else {"bias": False}
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device=device,
            dtype=dtype,
            **extra,
        )
        if l2_eps < 0:
            raise ValueError(f"l2_eps must be non-negative, got {l2_eps}")
        self.l2_eps = float(l2_eps)
        self.scale = bool(scale)

    def _check_input_dim(self, input: Tensor) -> None:
        validate_input(input, None, False, self._expected_dims)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, l2_eps={self.l2_eps}, scale={self.scale}"

    def __prepare_scriptable__(self) -> torch.nn.Module:
        raise RuntimeError(
            f"l2bn: torch.jit.script does not support {type(self).__name__}; use "
            "torch.jit.trace or torch.export (both record L2BN exactly), or torch.compile"
        )

    def forward(self, input: Tensor) -> Tensor:
        return layer_forward(
            input,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            self.num_batches_tracked,
            self.training,
            self.track_running_stats,
            self.momentum,
            self.eps,
            self.l2_eps,
            self.scale,
            self.num_features,
            self._expected_dims or None,
        )


def layer_forward(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    training: bool,
    track_running_stats: bool,
    momentum: float | None,
    eps: float,
    l2_eps: float,
    scale: bool,
    num_features: int,
    expected_dims: tuple[int, ...] | None,
) -> Tensor:
    """The forward of an L2BN layer, BatchNorm's mode rules included.

    Batch statistics in training mode, or in eval mode without running statistics; the
    running statistics are updated (and ``num_batches_tracked`` advanced) in training mode
    when tracked. A module-level function registered with :func:`torch.fx.wrap`, so that
    ``torch.fx.symbolic_trace`` records an L2BN layer as one call.
    """
    use_batch_stats = training or (running_mean is None and running_var is None)
    validate_input(input, num_features, use_batch_stats, expected_dims)
    factor = 0.0
    if training:
        if track_running_stats:
            factor = momentum_factor(momentum, num_batches_tracked)
        else:
            running_mean = running_var = None
    return checked_l2_batch_norm(
        input,
        running_mean,
        running_var,
        weight,
        bias,
        use_batch_stats,
        factor,
        eps,
        l2_eps,
        scale,
    )


torch.fx.wrap("layer_forward")


class L2BatchNorm1d(_L2BatchNorm):
    """L2BN over ``(N, C)`` (paper eq. 1) or ``(N, C, L)`` (eq. 3 over C*L values)."""

    _expected_dims = (2, 3)


class L2BatchNorm2d(_L2BatchNorm):
    """L2BN over ``(N, C, H, W)``: each sample's whole C*H*W feature map (eq. 3)."""

    _expected_dims = (4,)


class L2BatchNorm3d(_L2BatchNorm):
    """L2BN over ``(N, C, D, H, W)``: each sample's whole C*D*H*W feature (eq. 3)."""

    _expected_dims = (5,)


L2_BATCH_NORMS: tuple[type[_L2BatchNorm], ...] = (L2BatchNorm1d, L2BatchNorm2d, L2BatchNorm3d)


def is_l2_batch_norm(module: torch.nn.Module) -> bool:
    """True for every L2BN layer (any dimensionality, synchronized or not)."""
    return isinstance(module, _L2BatchNorm)
