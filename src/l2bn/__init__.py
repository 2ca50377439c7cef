"""l2bn: the reference implementation of L2BN (batch normalization of l2-normalized samples).

The library needs torch alone; ``l2bn.experiments`` and the command line need the
``experiments`` extra.
"""

from l2bn import backends
from l2bn.convert import (
    ConversionReport,
    ConversionWarning,
    convert_bn_to_l2bn,
    convert_l2bn_to_bn,
    register_conversion,
)
from l2bn.freeze import freeze, unfreeze
from l2bn.frozen import (
    FrozenL2BatchNorm,
    FrozenL2BatchNorm1d,
    FrozenL2BatchNorm2d,
    FrozenL2BatchNorm3d,
    is_frozen_l2_batch_norm,
)
from l2bn.functional import DEFAULT_L2_EPS, l2_batch_norm
from l2bn.fusion import install_fusion_guards
from l2bn.kinds import L2BN_TYPES, is_l2bn_layer
from l2bn.layers import L2BatchNorm1d, L2BatchNorm2d, L2BatchNorm3d, is_l2_batch_norm
from l2bn.lazy import LazyL2BatchNorm1d, LazyL2BatchNorm2d, LazyL2BatchNorm3d
from l2bn.norm_act import FrozenL2BatchNormAct2d, L2BatchNormAct2d, SyncL2BatchNormAct
from l2bn.param_groups import param_groups
from l2bn.swa import update_bn
from l2bn.sync import SyncL2BatchNorm
from l2bn.sync_convert import convert_sync_batchnorm, convert_sync_l2batchnorm

# torch's fuse_conv_bn_eval / fuse_linear_bn_eval refuse L2BN layers (see l2bn.fusion).
install_fusion_guards()

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_L2_EPS",
    "L2BN_TYPES",
    "ConversionReport",
    "ConversionWarning",
    "FrozenL2BatchNorm",
    "FrozenL2BatchNorm1d",
    "FrozenL2BatchNorm2d",
    "FrozenL2BatchNorm3d",
    "FrozenL2BatchNormAct2d",
    "L2BatchNorm1d",
    "L2BatchNorm2d",
    "L2BatchNorm3d",
    "L2BatchNormAct2d",
    "LazyL2BatchNorm1d",
    "LazyL2BatchNorm2d",
    "LazyL2BatchNorm3d",
    "SyncL2BatchNorm",
    "SyncL2BatchNormAct",
    "__version__",
    "backends",
    "convert_bn_to_l2bn",
    "convert_l2bn_to_bn",
    "convert_sync_batchnorm",
    "convert_sync_l2batchnorm",
    "freeze",
    "is_frozen_l2_batch_norm",
    "is_l2_batch_norm",
    "is_l2bn_layer",
    "l2_batch_norm",
    "param_groups",
    "register_conversion",
    "unfreeze",
    "update_bn",
]
