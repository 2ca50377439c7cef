"""LazyL2BatchNorm1d/2d/3d: L2BN whose ``num_features`` is read from the first input.

The counterparts of :class:`torch.nn.LazyBatchNorm1d/2d/3d`, built the same way (torch's
``_LazyNormBase`` on top of the L2BN layer): the parameters and buffers stay uninitialized
until the first forward, which sets ``num_features`` from ``input.shape[1]`` and turns the
layer into an :class:`~l2bn.L2BatchNorm2d` (``cls_to_become``) — an L2BN layer, never a
BatchNorm. :func:`l2bn.convert_bn_to_l2bn` converts an uninitialized ``nn.LazyBatchNorm*d``
into one of these.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.nn.modules.batchnorm import _LazyNormBase

from l2bn.functional import DEFAULT_L2_EPS, checked_l2_eps, checked_scale
from l2bn.layers import L2BatchNorm1d, L2BatchNorm2d, L2BatchNorm3d


class _LazyL2Init:
    """``__init__`` of the lazy layers: torch's lazy signature plus ``l2_eps`` and ``scale``."""

    def __init__(
        self,
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
        super().__init__(  # type: ignore[call-arg]
            eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )
        self.l2_eps = checked_l2_eps(l2_eps)
        self.scale = checked_scale(scale)

    def initialize_parameters(self, input: Tensor) -> None:
        """torch's initialization, then ``num_features`` where torch leaves it 0.

        torch sets ``num_features = C`` (``input`` of shape ``(N, C, *)``) only while a
        tensor is uninitialized: not for a layer without any (``affine=False,
        track_running_stats=False``), nor for one whose tensors ``load_state_dict``
        materialized. BatchNorm ignores ``num_features``; the L2BN layers check the input's
        channels against it. It is then the loaded tensors' size (the forward rejects an
        input with another channel count), else ``C``.
        """
        super().initialize_parameters(input)  # type: ignore[misc]
        if self.num_features == 0:
            tensors = (self.weight, self.bias, self.running_mean, self.running_var)
            loaded = next((t for t in tensors if t is not None), None)
            self.num_features = input.shape[1] if loaded is None else loaded.shape[0]


class LazyL2BatchNorm1d(_LazyL2Init, _LazyNormBase, L2BatchNorm1d):
    """:class:`~l2bn.L2BatchNorm1d` with ``num_features`` inferred from the first input."""

    cls_to_become = L2BatchNorm1d  # type: ignore[assignment]


class LazyL2BatchNorm2d(_LazyL2Init, _LazyNormBase, L2BatchNorm2d):
    """:class:`~l2bn.L2BatchNorm2d` with ``num_features`` inferred from the first input."""

    cls_to_become = L2BatchNorm2d  # type: ignore[assignment]


class LazyL2BatchNorm3d(_LazyL2Init, _LazyNormBase, L2BatchNorm3d):
    """:class:`~l2bn.L2BatchNorm3d` with ``num_features`` inferred from the first input."""

    cls_to_become = L2BatchNorm3d  # type: ignore[assignment]


__all__ = ["LazyL2BatchNorm1d", "LazyL2BatchNorm2d", "LazyL2BatchNorm3d"]
