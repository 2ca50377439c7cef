"""Conv-BN folding refuses L2BN layers.

Folding a BatchNorm into the preceding convolution (or linear layer) works because eval-mode
BatchNorm is a fixed per-channel affine map. Eval-mode L2BN is not: each sample is first
divided by its own l2 norm (paper eq. 3), which depends on the convolution's output, so no
fixed weight and bias reproduce it.

The folding paths a model can reach select layers by exact type or by
``isinstance(m, _BatchNorm)`` (``torch.fx.experimental.optimization.fuse``,
``torch.ao.quantization.fuse_modules``, inductor's conv-BN passes) and never match L2BN,
which derives from ``_NormBase``. ``torch.nn.utils.fusion.fuse_conv_bn_eval`` and
``fuse_linear_bn_eval`` check nothing: given an L2BN layer they would return a layer that
computes plain BatchNorm. :func:`install_fusion_guards` (run when ``l2bn.layers`` is
imported, as it is by every L2BN layer) wraps them so
that they raise a ``TypeError`` that says why for an L2BN layer and behave exactly as before
for anything else; a layer is L2BN when its class sets ``l2bn_per_sample_norm = True`` (the
L2BN and frozen L2BN base classes do). Names bound before the layers are imported (``from
torch.nn.utils.fusion import fuse_conv_bn_eval`` in a script that imports l2bn later) keep
the unwrapped function.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

_GUARDED = {"fuse_conv_bn_eval": "convolution", "fuse_linear_bn_eval": "linear layer"}


def refuse_fold(bn: Any, into: str = "convolution") -> None:
    """Raise the error that says why an L2BN layer cannot be folded."""
    raise TypeError(
        f"l2bn: cannot fold {type(bn).__name__} into a {into}: L2BN divides each sample by "
        f"its own l2 norm, which depends on the {into}'s output, so no fixed weight and "
        "bias can reproduce it (in eval mode too); keep the L2BN layer unfused"
    )


def _guard(original: Callable[..., Any], into: str) -> Callable[..., Any]:
    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        bn = args[1] if len(args) > 1 else kwargs.get("bn")
        if getattr(type(bn), "l2bn_per_sample_norm", False):
            refuse_fold(bn, into)
        return original(*args, **kwargs)

    guarded._l2bn_guard = True  # type: ignore[attr-defined]
    return guarded


def install_fusion_guards() -> None:
    """Wrap torch's ``fuse_conv_bn_eval`` and ``fuse_linear_bn_eval`` (idempotent)."""
    import torch.nn.utils as nn_utils
    from torch.nn.utils import fusion

    for name, into in _GUARDED.items():
        original = getattr(fusion, name, None)
        if original is None:
            continue
        if not getattr(original, "_l2bn_guard", False):
            original = _guard(original, into)
            setattr(fusion, name, original)
        if getattr(nn_utils, name, None) is not None:
            setattr(nn_utils, name, original)


__all__ = ["install_fusion_guards", "refuse_fold"]
