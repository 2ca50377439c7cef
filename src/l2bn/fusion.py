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

Model code folds its own BatchNorms too, by hand: timm's ``reparameterize_model`` calls each
block's ``fuse`` / ``reparameterize`` / ``switch_to_deploy`` (RepViT, MobileOne, FastViT,
RepVGG, ...), and those read the norm's tensors without a class check, so they would fold an
L2BN layer as BatchNorm without a word. :func:`guard_reparameterization` (run by every
converter of l2bn, and by ``freeze`` / ``unfreeze``) shadows such a method, on each module
that has a refused layer below it, with a :class:`FoldRefused` that raises the
``TypeError``; ``convert_l2bn_to_bn`` gives the method back. L2BN layers placed in such a
block without an l2bn converter (built in by the model's own code) are not guarded.
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


# --- re-parameterization methods of model code ---------------------------------------------

# The methods by which model code folds its BatchNorms for deployment: timm's
# ``reparameterize_model`` calls the first of them that a child module has (``fuse`` in
# RepViT, LeViT, TinyViT, EfficientViT-MSRA, SHViT, iFormer, EfficientViM;
# ``reparameterize`` in MobileOne, FastViT, RepVGG (byobnet), NextViT, RepGhost;
# ``switch_to_deploy`` in the original RepVGG code), and some models' own ``fuse()`` walks
# the same way. They read a norm layer's ``weight``, ``bias``, ``running_mean``,
# ``running_var`` and ``eps`` directly, with no class check, so an L2BN layer below one of
# them would be folded silently as if it were BatchNorm.
REPARAMETERIZATION_METHODS = ("fuse", "reparameterize", "switch_to_deploy")


class FoldRefused:
    """Stands in for a module's re-parameterization method (an instance attribute that
    shadows the class's method) while a layer that cannot be folded sits below it.

    Calling it raises the ``TypeError`` of :func:`refuse_fold`, naming the module, the
    method and the layer. Picklable and copyable (plain strings), so a model keeps it
    through ``copy.deepcopy`` and ``torch.save``.
    """

    def __init__(self, owner: str, method: str, layer_path: str, layer_cls: str) -> None:
        self.owner = owner
        self.method = method
        self.layer_path = layer_path
        self.layer_cls = layer_cls

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"l2bn: {self.owner}.{self.method}() would fold the {self.layer_cls} layer "
            f"{self.layer_path!r} below it into a convolution or linear layer as if it were "
            f"BatchNorm (timm's reparameterize_model, a model's fuse()): "
            f"{_l2bn_reason('convolution')}; to deploy, convert the layers back with "
            "l2bn.convert_l2bn_to_bn first (which gives the method back), or leave the "
            "model unfused"
        )

    def __repr__(self) -> str:
        return f"<l2bn refusal of {self.owner}.{self.method}() ({self.layer_path!r})>"


def guard_reparameterization(model: Any) -> None:
    """Refuse every re-parameterization method that would fold a layer :func:`fold_refusal`
    refuses, and give back those that no longer would (after ``convert_l2bn_to_bn``).

    For each module of ``model`` (``model`` included) whose class defines one of
    :data:`REPARAMETERIZATION_METHODS`: where a refused layer lies below it, that method is
    shadowed on the instance by a :class:`FoldRefused`; where none does, a shadow left by
    an earlier call is removed. Every converter of l2bn calls this on the model it returns.
    """
    for path, module in model.named_modules(remove_duplicate=False):
        methods = [
            name
            for name in REPARAMETERIZATION_METHODS
            if callable(getattr(type(module), name, None))
        ]
        if not methods:
            continue
        below = next(
            (
                (sub_path, sub)
                for sub_path, sub in module.named_modules()
                if sub is not module and fold_refusal(sub) is not None
            ),
            None,
        )
        for name in methods:
            current = module.__dict__.get(name)
            if below is None:
                if isinstance(current, FoldRefused):
                    del module.__dict__[name]
            elif current is None or isinstance(current, FoldRefused):
                owner = f"{type(module).__name__} {path!r}" if path else type(module).__name__
                module.__dict__[name] = FoldRefused(owner, name, below[0], type(below[1]).__name__)


__all__ = [
    "REPARAMETERIZATION_METHODS",
    "FoldRefused",
    "fold_refusal",
    "guard_reparameterization",
    "install_fusion_guards",
    "prenorm_description",
    "refuse_fold",
]
