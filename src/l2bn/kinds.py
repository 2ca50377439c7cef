"""Which modules are L2BN layers: the classes to add to a recipe's ``isinstance`` check.

L2BN layers derive from torch's ``_NormBase``, not ``_BatchNorm`` (so that BatchNorm
rewriters leave them alone). Recipes that *should* reach them but select layers with
``isinstance(m, _BatchNorm)`` — SWA's ``update_bn``, FSDP's mixed-precision exemption,
torchvision's ``split_normalization_params``, ``norm_eval``-style "BN layers to eval" loops —
need these classes added, e.g. ``isinstance(m, (_BatchNorm, *l2bn.L2BN_TYPES))``.
"""

from __future__ import annotations

from torch import nn

from l2bn.frozen import FrozenL2BatchNorm
from l2bn.layers import _L2BatchNorm

L2BN_TYPES: tuple[type[nn.Module], ...] = (_L2BatchNorm, FrozenL2BatchNorm)
"""Base classes of every L2BN layer: trainable (``L2BatchNorm*d``, ``SyncL2BatchNorm``,
the lazy and timm-layout ones) and frozen (``FrozenL2BatchNorm*``)."""


def is_l2bn_layer(module: nn.Module) -> bool:
    """True for every L2BN layer, trainable or frozen (see :data:`L2BN_TYPES`): the classes
    that set ``l2bn_per_sample_norm = True``."""
    return bool(getattr(type(module), "l2bn_per_sample_norm", False))


__all__ = ["L2BN_TYPES", "is_l2bn_layer"]
