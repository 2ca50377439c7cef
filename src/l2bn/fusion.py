"""Conv-BN folding refuses L2BN layers and the pre-normalized BatchNorms (LNBN, INBN, PNBN).

Folding a BatchNorm into the preceding convolution (or linear layer) works because eval-mode
BatchNorm is a fixed per-channel affine map. Eval-mode L2BN is not: each sample is first
divided by its own l2 norm (paper eq. 3), which depends on the convolution's output, so no
fixed weight and bias reproduce it. Nor are the paper's LNBN, INBN and PNBN (Table 3,
:mod:`l2bn.norms.prenorm`): they normalize each sample (LayerNorm, InstanceNorm,
PositionalNorm without affine) before their BatchNorm.

:func:`fold_refusal` is the one place that decides which layers cannot be folded: those whose
class sets ``l2bn_per_sample_norm = True`` (every L2BN layer, trainable or frozen) or
``l2bn_prenorm`` (a description of the per-sample pre-normalization: LNBN, INBN, PNBN).

The folding paths a model can reach select layers by exact type or by
``isinstance(m, _BatchNorm)`` (``torch.fx.experimental.optimization.fuse``,
``torch.ao.quantization.fuse_modules``, inductor's conv-BN passes) and never match L2BN,
which derives from ``_NormBase``, nor LNBN / INBN / PNBN (exact types; symbolic tracing goes
through their forward, which ``fuse`` cannot fold). ``torch.nn.utils.fusion.fuse_conv_bn_eval``
and ``fuse_linear_bn_eval`` check nothing: given such a layer they would return a layer that
computes plain BatchNorm. :func:`install_fusion_guards` (run by ``import l2bn``, and again,
idempotently, when ``l2bn.layers`` or ``l2bn.norms`` is imported) wraps them so that they
raise a ``TypeError`` that says why for a layer
:func:`fold_refusal` refuses and behave exactly as before for anything else. Names bound
before ``import l2bn`` (``from torch.nn.utils.fusion import fuse_conv_bn_eval`` in a script
that imports l2bn later) keep the unwrapped function.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

_GUARDED = {"fuse_conv_bn_eval": "convolution", "fuse_linear_bn_eval": "linear layer"}


def prenorm_description(layer: Any) -> str | None:
    """The per-sample pre-normalization of an LNBN / INBN / PNBN layer (its class's
    ``l2bn_prenorm``), or ``None`` for any other layer."""
    description = getattr(type(layer), "l2bn_prenorm", None)
    return description if isinstance(description, str) and description else None


def fold_refusal(layer: Any, into: str = "convolution") -> str | None:
    """Why ``layer`` cannot be folded into the preceding ``into``, or ``None`` when it can.

    The one place that decides: every L2BN layer (class marker ``l2bn_per_sample_norm``)
    and every BatchNorm that normalizes each sample first (class marker ``l2bn_prenorm``).
    """
    if getattr(type(layer), "l2bn_per_sample_norm", False):
        return _l2bn_reason(into)
    prenorm = prenorm_description(layer)
    if prenorm is not None:
        return (
            f"it applies {prenorm} to each sample before its BatchNorm, which depends on the "
            f"{into}'s output, so no fixed weight and bias can reproduce it (in eval mode "
            "too); keep the layer unfused"
        )
    return None


def refuse_fold(bn: Any, into: str = "convolution") -> None:
    """Raise the error that says why ``bn`` (a layer :func:`fold_refusal` refuses, L2BN
    when it accepts it) cannot be folded."""
    reason = fold_refusal(bn, into) or _l2bn_reason(into)
    raise TypeError(f"l2bn: cannot fold {type(bn).__name__} into a {into}: {reason}")


def _l2bn_reason(into: str) -> str:
    return (
        f"L2BN divides each sample by its own l2 norm, which depends on the {into}'s output, "
        "so no fixed weight and bias can reproduce it (in eval mode too); keep the L2BN layer "
        "unfused"
    )


def _guard(original: Callable[..., Any], into: str) -> Callable[..., Any]:
    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        bn = args[1] if len(args) > 1 else kwargs.get("bn")
        if fold_refusal(bn, into) is not None:
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


__all__ = ["fold_refusal", "install_fusion_guards", "prenorm_description", "refuse_fold"]
