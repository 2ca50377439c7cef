"""L2BatchNorm1d/2d/3d: drop-in replacements for :class:`torch.nn.BatchNorm1d/2d/3d`.

L2BN (Wang et al., "L2BN: Enhancing Batch Normalization by Equalizing the L2 Norms of
Features", https://arxiv.org/abs/2207.02625) l2-normalizes each sample's whole feature
(eq. 3) and then batch-normalizes it (eq. 2). The layers take BatchNorm's constructor
(plus ``l2_eps`` and ``scale``) and keep its parameters, buffers, ``state_dict`` keys and
running-statistics rules.

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
from l2bn.functional import (
    DEFAULT_L2_EPS,
    checked_l2_batch_norm,
    checked_l2_eps,
    checked_scale,
    validate_input,
)
from l2bn.fusion import install_fusion_guards
from l2bn.fx_leaf import as_fx_leaf


class _L2BatchNorm(_NormBase):
    """Shared base: l2-normalize each sample (eq. 1/3), then batch-normalize (eq. 2)."""

    _expected_dims: tuple[int, ...] = ()
    l2bn_per_sample_norm = True  # marks every L2BN layer (see l2bn.kinds.is_l2bn_layer)
    l2bn_batch_running_stats = True  # l2bn.update_bn recomputes its statistics (l2bn.swa)

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
        self.l2_eps = checked_l2_eps(l2_eps)
        self.scale = checked_scale(scale)

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
        traced = as_fx_leaf(self, input)  # torch.fx: one call of the layer (fx_leaf.py)
        if traced is not None:
            return traced
        try:
            # Straight from the module's tables: Module.__getattr__ costs ~0.4 us a name.
            # A member moved out of its table (torch.nn.utils.parametrize, weight_norm) is
            # read as an attribute instead.
            params, buffers = self._parameters, self._buffers
            weight, bias = params["weight"], params["bias"]
            running_mean, running_var = buffers["running_mean"], buffers["running_var"]
            num_batches_tracked = buffers["num_batches_tracked"]
        except KeyError:
            weight, bias = self.weight, self.bias
            running_mean, running_var = self.running_mean, self.running_var
            num_batches_tracked = self.num_batches_tracked
        return layer_forward(
            input,
            weight,
            bias,
            running_mean,
            running_var,
            num_batches_tracked,
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
    ``torch.fx.symbolic_trace`` records one call where it traces a layer's forward (the
    traced root; a submodule is recorded as a call of the module, ``l2bn.fx_leaf``).
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


_ARGS = """
    Args:
        num_features: ``C``, the number of channels of the input.
        eps: added to the batch variance for numerical stability (eq. 2). Default: 1e-5.
        momentum: weight of the current batch in the running statistics, or None for a
            cumulative average (as BatchNorm). Default: 0.1.
        affine: learnable per-channel ``gamma`` (weight) and ``beta`` (bias). Default: True.
        track_running_stats: keep running mean and variance for eval mode; without them
            eval mode uses batch statistics, as BatchNorm. Default: True.
        device, dtype: of the parameters and buffers. Input of another floating dtype is
            accepted (BatchNorm raises for it unless the input is float16/bfloat16 and the
            layer float32): the output keeps the input's dtype, see
            :func:`l2bn.l2_batch_norm`.
        l2_eps: lower bound of each sample's l2 norm (eq. 3): a sample whose norm is below
            it is divided by ``l2_eps`` and passes no gradient through its norm. Default:
            1e-12, as :func:`torch.nn.functional.normalize`.
        scale: divide by ``||x_n|| / sqrt(D)`` (default, the scaled form of eq. 3, values
            at unit scale) instead of ``||x_n||`` (values of size ``1/sqrt(D)``, where BN's
            ``eps`` is no longer negligible; see the README).
        bias: keyword-only; ``False`` keeps the weight without a bias (torch >= 2.6).

    Raises:
        ValueError: for input of the wrong dimension or channel count, one value per
            channel in training, ``eps <= 0`` in training, ``eps < 0`` in eval mode (as
            BatchNorm), or ``l2_eps < 0``.
        TypeError: for non-tensor, integer, bool or complex input.
        RuntimeError: from :func:`torch.jit.script` (use :func:`torch.jit.trace` or
            :func:`torch.export.export`).
"""


class L2BatchNorm1d(_L2BatchNorm):
    __doc__ = (
        r"""L2BN over ``(N, C)`` (paper eq. 1) or ``(N, C, L)`` input (eq. 3 over C*L values).

    For each sample ``x_n`` with ``D`` values (``D = C`` or ``C * L``),
    ``xh_n = sqrt(D) * x_n / max(||x_n||_2, l2_eps)`` (eq. 3, ``scale=True``), then
    ``y = gamma * (xh - mean) / sqrt(var + eps) + beta`` with the per-channel mean and
    biased variance of ``xh`` over the batch (and length) in training mode, the running
    statistics in eval mode (eq. 2).
"""
        + _ARGS
        + r"""
    Shape:
        - Input: ``(N, C)`` or ``(N, C, L)``.
        - Output: same shape (and memory layout) as the input.

    Example::

        >>> layer = l2bn.L2BatchNorm1d(64)
        >>> y = layer(torch.randn(32, 64))
    """
    )

    _expected_dims = (2, 3)


class L2BatchNorm2d(_L2BatchNorm):
    __doc__ = (
        r"""L2BN over ``(N, C, H, W)`` input: each sample's whole ``C*H*W`` feature map.

    ``xh_n = sqrt(D) * x_n / max(||x_n||_2, l2_eps)`` with ``D = C * H * W`` (paper eq. 3,
    ``scale=True``), then ``y = gamma * (xh - mean) / sqrt(var + eps) + beta`` with the
    per-channel statistics of ``xh`` over ``(N, H, W)`` in training mode and the running
    statistics in eval mode (eq. 2). Eval mode still normalizes each sample by its own
    norm.
"""
        + _ARGS
        + r"""
    Shape:
        - Input: ``(N, C, H, W)``, contiguous or channels_last.
        - Output: same shape and memory layout as the input.

    Example::

        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), l2bn.L2BatchNorm2d(16))
        >>> y = model(torch.randn(8, 3, 32, 32))
    """
    )

    _expected_dims = (4,)


class L2BatchNorm3d(_L2BatchNorm):
    __doc__ = (
        r"""L2BN over ``(N, C, D, H, W)`` input: each sample's whole ``C*D*H*W`` feature.

    As :class:`L2BatchNorm2d` with ``D = C * D * H * W`` values per sample (paper eq. 3).
"""
        + _ARGS
        + r"""
    Shape:
        - Input: ``(N, C, D, H, W)``, contiguous or channels_last_3d.
        - Output: same shape and memory layout as the input.

    Example::

        >>> y = l2bn.L2BatchNorm3d(8)(torch.randn(4, 8, 5, 6, 7))
    """
    )

    _expected_dims = (5,)


L2_BATCH_NORMS: tuple[type[_L2BatchNorm], ...] = (L2BatchNorm1d, L2BatchNorm2d, L2BatchNorm3d)


def is_l2_batch_norm(module: torch.nn.Module) -> bool:
    """True for every L2BN layer (any dimensionality, synchronized or not)."""
    return isinstance(module, _L2BatchNorm)


# torch's fuse_conv_bn_eval / fuse_linear_bn_eval refuse L2BN layers (see l2bn.fusion).
install_fusion_guards()
