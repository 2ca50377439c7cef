"""l2bn: the reference implementation of L2BN (batch normalization of l2-normalized samples).

The library needs torch alone; ``l2bn.experiments`` and the command line need the
``experiments`` extra. ``import l2bn`` registers every operator of the package with torch
(below); the public names are imported on first use (PEP 562). Importing ``l2bn.layers``
(which any L2BN layer does) makes torch's conv-BN folding refuse L2BN layers (see
:mod:`l2bn.fusion`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Every operator of the package is registered by ``import l2bn``, as the first L2BN call
# would: ``torch.ops.l2bn.*`` (l2bn._C, with the fake and autograd registrations of
# l2bn._impl.cpu) and, where the Triton backend is usable (triton importable, and a CUDA
# device or TRITON_INTERPRET=1), ``torch.ops.l2bn_triton.*``. Without it,
# ``torch.export.load`` of a program holding them fails after ``import l2bn`` and
# ``torch.ops.l2bn.cpu_isa()`` does not exist yet. This imports torch, so every ``l2bn.*``
# module does (a package's __init__ runs before any of its modules): the ``l2bn`` command
# is therefore the top-level module ``l2bn_cli``, outside this package, which keeps
# ``l2bn --help`` free of torch.
from l2bn._impl import dispatch as _dispatch  # noqa: F401 (loads the backends)
from l2bn.fusion import install_fusion_guards as _install_fusion_guards

# torch's fuse_conv_bn_eval / fuse_linear_bn_eval refuse L2BN layers from here on, also
# under names bound after ``import l2bn`` but before the first layer module is imported
# (l2bn.fusion imports only torch).
_install_fusion_guards()

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "backends": "l2bn.backends",
    "ConversionReport": "l2bn.convert",
    "ConversionWarning": "l2bn.convert",
    "convert_bn_to_l2bn": "l2bn.convert",
    "convert_l2bn_to_bn": "l2bn.convert",
    "register_conversion": "l2bn.convert",
    "freeze": "l2bn.freezing",
    "unfreeze": "l2bn.freezing",
    "FrozenL2BatchNorm": "l2bn.frozen",
    "FrozenL2BatchNorm1d": "l2bn.frozen",
    "FrozenL2BatchNorm2d": "l2bn.frozen",
    "FrozenL2BatchNorm3d": "l2bn.frozen",
    "is_frozen_l2_batch_norm": "l2bn.frozen",
    "DEFAULT_L2_EPS": "l2bn.functional",
    "l2_batch_norm": "l2bn.functional",
    "L2BN_TYPES": "l2bn.kinds",
    "is_l2bn_layer": "l2bn.kinds",
    "L2BatchNorm1d": "l2bn.layers",
    "L2BatchNorm2d": "l2bn.layers",
    "L2BatchNorm3d": "l2bn.layers",
    "is_l2_batch_norm": "l2bn.layers",
    "LazyL2BatchNorm1d": "l2bn.lazy",
    "LazyL2BatchNorm2d": "l2bn.lazy",
    "LazyL2BatchNorm3d": "l2bn.lazy",
    "FrozenL2BatchNormAct2d": "l2bn.norm_act",
    "L2BatchNormAct2d": "l2bn.norm_act",
    "SyncL2BatchNormAct": "l2bn.norm_act",
    "param_groups": "l2bn.weight_decay",
    "update_bn": "l2bn.swa",
    "SyncL2BatchNorm": "l2bn.sync",
    "convert_sync_batchnorm": "l2bn.sync_convert",
    "convert_sync_l2batchnorm": "l2bn.sync_convert",
}

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

if TYPE_CHECKING:
    from l2bn import backends
    from l2bn.convert import (
        ConversionReport,
        ConversionWarning,
        convert_bn_to_l2bn,
        convert_l2bn_to_bn,
        register_conversion,
    )
    from l2bn.freezing import freeze, unfreeze
    from l2bn.frozen import (
        FrozenL2BatchNorm,
        FrozenL2BatchNorm1d,
        FrozenL2BatchNorm2d,
        FrozenL2BatchNorm3d,
        is_frozen_l2_batch_norm,
    )
    from l2bn.functional import DEFAULT_L2_EPS, l2_batch_norm
    from l2bn.kinds import L2BN_TYPES, is_l2bn_layer
    from l2bn.layers import L2BatchNorm1d, L2BatchNorm2d, L2BatchNorm3d, is_l2_batch_norm
    from l2bn.lazy import LazyL2BatchNorm1d, LazyL2BatchNorm2d, LazyL2BatchNorm3d
    from l2bn.norm_act import FrozenL2BatchNormAct2d, L2BatchNormAct2d, SyncL2BatchNormAct
    from l2bn.swa import update_bn
    from l2bn.sync import SyncL2BatchNorm
    from l2bn.sync_convert import convert_sync_batchnorm, convert_sync_l2batchnorm
    from l2bn.weight_decay import param_groups


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'l2bn' has no attribute {name!r}")
    imported = importlib.import_module(module)
    value = imported if name == "backends" else getattr(imported, name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
