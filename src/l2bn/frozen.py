"""Frozen L2BN for fine-tuning: fixed statistics and affine map, still l2-normalized.

The L2BN counterparts of torchvision's ``FrozenBatchNorm2d`` and timm's
``freeze_batch_norm_2d``. A frozen layer computes exactly what an L2BN layer computes in
eval mode (paper eq. 3, then the affine map of eq. 2 with the running statistics),
whatever ``train()`` says: nothing is learned and nothing is updated. ``weight``,
``bias``, ``running_mean``, ``running_var`` and ``num_batches_tracked`` are buffers with
the names of BatchNorm's, so the ``state_dict`` of a BatchNorm, an L2BN or a frozen layer
loads into any of the others with ``strict=True``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from l2bn.functional import (
    DEFAULT_L2_EPS,
    checked_l2_eps,
    checked_scale,
    l2_batch_norm,
    validate_input,
)


class FrozenL2BatchNorm(nn.Module):
    """Eval-mode L2BN with fixed buffers, for input of shape ``(N, C, *)``.

    The base of :class:`FrozenL2BatchNorm1d`/``2d``/``3d`` (which check the input's
    dimensionality) and what :func:`freeze` makes of a :class:`~l2bn.SyncL2BatchNorm`.
    ``momentum`` and ``process_group`` are kept only so that :func:`unfreeze` can restore
    the layer it froze. Without ``affine``, ``weight`` and ``bias`` are ``None`` (as in the
    unfrozen layer's ``state_dict``).
    """

    l2bn_per_sample_norm = True  # marks every L2BN layer (see l2bn.kinds.is_l2bn_layer)

    _version = 2  # the state_dict version of torch's _NormBase (num_batches_tracked kept)
    _expected_dims: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: Any = None,
        dtype: Any = None,
        l2_eps: float = DEFAULT_L2_EPS,
        scale: bool = True,
        *,
        bias: bool = True,
        momentum: float | None = 0.1,
        process_group: Any = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.affine = affine
        self.l2_eps = checked_l2_eps(l2_eps)
        self.scale = checked_scale(scale)
        self.momentum = momentum
        self.process_group = process_group
        self.register_buffer("weight", torch.ones(num_features, **factory) if affine else None)
        self.register_buffer(
            "bias", torch.zeros(num_features, **factory) if affine and bias else None
        )
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))
        self.register_buffer(
            "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
        )

    @property
    def track_running_stats(self) -> bool:
        return True

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # torchvision's and timm's FrozenBatchNorm2d save no num_batches_tracked: keep ours.
        key = prefix + "num_batches_tracked"
        if key not in state_dict:
            state_dict[key] = self.num_batches_tracked
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def __prepare_scriptable__(self) -> nn.Module:
        raise RuntimeError(
            f"l2bn: torch.jit.script does not support {type(self).__name__}; use "
            "torch.jit.trace or torch.export, or torch.compile"
        )

    def forward(self, input: Tensor) -> Tensor:
        return frozen_forward(
            input,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            self.eps,
            self.l2_eps,
            self.scale,
            self.num_features,
            self._expected_dims or None,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, affine={self.affine}, "
            f"l2_eps={self.l2_eps}, scale={self.scale}"
        )


def frozen_forward(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    l2_eps: float,
    scale: bool,
    num_features: int,
    expected_dims: tuple[int, ...] | None,
) -> Tensor:
    """Eval-mode L2BN (the core's functional path, ``training=False``). Registered with
    :func:`torch.fx.wrap` so that ``torch.fx.symbolic_trace`` records one call."""
    validate_input(input, num_features, False, expected_dims)
    return l2_batch_norm(
        input,
        running_mean,
        running_var,
        weight,
        bias,
        training=False,
        eps=eps,
        l2_eps=l2_eps,
        scale=scale,
    )


torch.fx.wrap("frozen_forward")


class FrozenL2BatchNorm1d(FrozenL2BatchNorm):
    """Frozen :class:`~l2bn.L2BatchNorm1d`: input ``(N, C)`` or ``(N, C, L)``."""

    _expected_dims = (2, 3)


class FrozenL2BatchNorm2d(FrozenL2BatchNorm):
    """Frozen :class:`~l2bn.L2BatchNorm2d`: input ``(N, C, H, W)``."""

    _expected_dims = (4,)


class FrozenL2BatchNorm3d(FrozenL2BatchNorm):
    """Frozen :class:`~l2bn.L2BatchNorm3d`: input ``(N, C, D, H, W)``."""

    _expected_dims = (5,)


def is_frozen_l2_batch_norm(module: nn.Module) -> bool:
    """True for every frozen L2BN layer (:class:`FrozenL2BatchNorm` and its subclasses)."""
    return isinstance(module, FrozenL2BatchNorm)


__all__ = [
    "FrozenL2BatchNorm",
    "FrozenL2BatchNorm1d",
    "FrozenL2BatchNorm2d",
    "FrozenL2BatchNorm3d",
    "is_frozen_l2_batch_norm",
]
