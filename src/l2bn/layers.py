"""L2BatchNorm1d/2d/3d: drop-in replacements for :class:`torch.nn.BatchNorm1d/2d/3d`.

They subclass torch's ``_BatchNorm``: same constructor (plus ``l2_eps`` and ``scale``),
same parameters, buffers and ``state_dict`` keys, same ``isinstance`` behaviour.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from l2bn.functional import DEFAULT_L2_EPS, checked_l2_batch_norm, validate_input


class _L2BatchNorm(_BatchNorm):
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

    def _momentum_factor(self) -> float:
        """BatchNorm's rule: ``momentum``, or a cumulative average when it is None."""
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        return factor

    def forward(self, input: Tensor) -> Tensor:
        training = self.training
        running_mean, running_var = self.running_mean, self.running_var
        use_batch_stats = training or (running_mean is None and running_var is None)
        validate_input(input, self.num_features, use_batch_stats, self._expected_dims or None)
        factor = 0.0
        if training:
            factor = self._momentum_factor()
            if not self.track_running_stats:
                running_mean = running_var = None
        return checked_l2_batch_norm(
            input,
            running_mean,
            running_var,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
            self.l2_eps,
            self.scale,
        )


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
