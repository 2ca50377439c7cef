"""l2bn: the reference implementation of L2BN (batch normalization of l2-normalized samples).

The library needs torch alone; ``l2bn.experiments`` and the command line need the
``experiments`` extra. The public names below are imported on first use (PEP 562), so that
``import l2bn.cli`` (the ``l2bn`` command) does not import torch: ``l2bn --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "DEFAULT_L2_EPS": "l2bn.functional",
    "l2_batch_norm": "l2bn.functional",
    "L2BatchNorm1d": "l2bn.layers",
    "L2BatchNorm2d": "l2bn.layers",
    "L2BatchNorm3d": "l2bn.layers",
    "is_l2_batch_norm": "l2bn.layers",
    "convert_bn_to_l2bn": "l2bn.convert",
    "convert_l2bn_to_bn": "l2bn.convert",
    "SyncL2BatchNorm": "l2bn.sync",
    "convert_sync_l2batchnorm": "l2bn.sync",
}

__all__ = [
    "DEFAULT_L2_EPS",
    "L2BatchNorm1d",
    "L2BatchNorm2d",
    "L2BatchNorm3d",
    "SyncL2BatchNorm",
    "__version__",
    "convert_bn_to_l2bn",
    "convert_l2bn_to_bn",
    "convert_sync_l2batchnorm",
    "is_l2_batch_norm",
    "l2_batch_norm",
]

if TYPE_CHECKING:
    from l2bn.convert import convert_bn_to_l2bn, convert_l2bn_to_bn
    from l2bn.functional import DEFAULT_L2_EPS, l2_batch_norm
    from l2bn.layers import L2BatchNorm1d, L2BatchNorm2d, L2BatchNorm3d, is_l2_batch_norm
    from l2bn.sync import SyncL2BatchNorm, convert_sync_l2batchnorm


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'l2bn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
