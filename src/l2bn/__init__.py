"""l2bn: the reference implementation of L2BN (batch normalization of l2-normalized samples).

The library needs torch alone; ``l2bn.experiments`` and the command line need the
``experiments`` extra.
"""

from l2bn import backends
from l2bn.convert import convert_bn_to_l2bn, convert_l2bn_to_bn
from l2bn.functional import DEFAULT_L2_EPS, l2_batch_norm
from l2bn.layers import L2BatchNorm1d, L2BatchNorm2d, L2BatchNorm3d, is_l2_batch_norm
from l2bn.sync import SyncL2BatchNorm, convert_sync_l2batchnorm

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_L2_EPS",
    "L2BatchNorm1d",
    "L2BatchNorm2d",
    "L2BatchNorm3d",
    "SyncL2BatchNorm",
    "__version__",
    "backends",
    "convert_bn_to_l2bn",
    "convert_l2bn_to_bn",
    "convert_sync_l2batchnorm",
    "is_l2_batch_norm",
    "l2_batch_norm",
]
