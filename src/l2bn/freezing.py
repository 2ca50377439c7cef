"""``l2bn.freeze`` / ``unfreeze``: swap the L2BN layers of a model for frozen ones and back.

The L2BN counterparts of torchvision's ``FrozenBatchNorm2d`` swap and timm's
``freeze_batch_norm_2d`` (see :mod:`l2bn.frozen` for the frozen layers).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from l2bn.convert import Predicate, check_module, move_hooks
from l2bn.frozen import (
    FrozenL2BatchNorm,
    FrozenL2BatchNorm1d,
    FrozenL2BatchNorm2d,
    FrozenL2BatchNorm3d,
)
from l2bn.fusion import guard_reparameterization, prenorm_description
from l2bn.layers import L2BatchNorm1d, L2BatchNorm2d, L2BatchNorm3d, _L2BatchNorm
from l2bn.norm_act import FrozenL2BatchNormAct2d, L2BatchNormAct2d, SyncL2BatchNormAct
from l2bn.sync import SyncL2BatchNorm


def _tables() -> tuple[dict[type[nn.Module], type[nn.Module]], dict[type[nn.Module], type]]:
    freezing: dict[type[nn.Module], type[nn.Module]] = {
        L2BatchNorm1d: FrozenL2BatchNorm1d,
        L2BatchNorm2d: FrozenL2BatchNorm2d,
        L2BatchNorm3d: FrozenL2BatchNorm3d,
        SyncL2BatchNorm: FrozenL2BatchNorm,
        L2BatchNormAct2d: FrozenL2BatchNormAct2d,
        SyncL2BatchNormAct: FrozenL2BatchNormAct2d,
    }
    unfreezing: dict[type[nn.Module], type] = {
        FrozenL2BatchNorm1d: L2BatchNorm1d,
        FrozenL2BatchNorm2d: L2BatchNorm2d,
        FrozenL2BatchNorm3d: L2BatchNorm3d,
        FrozenL2BatchNorm: SyncL2BatchNorm,
        FrozenL2BatchNormAct2d: L2BatchNormAct2d,
    }
    return freezing, unfreezing


def _move_act(source: nn.Module, target: nn.Module) -> None:
    for name in ("drop", "act"):
        child = getattr(source, name, None)
        if isinstance(child, nn.Module):
            target.add_module(name, child)


def _frozen_from(layer: _L2BatchNorm, cls: type[nn.Module], path: str) -> nn.Module:
    if layer.running_mean is None or layer.running_var is None:
        raise ValueError(
            f"l2bn.freeze: {path or 'the module'} ({type(layer).__name__}) has no running "
            "statistics (track_running_stats=False), so there is nothing to freeze it to; "
            "exclude it with predicate"
        )
    ref = layer.running_mean
    frozen = cls(
        layer.num_features,
        layer.eps,
        affine=layer.affine,
        device=ref.device,
        dtype=ref.dtype,
        l2_eps=layer.l2_eps,
        scale=layer.scale,
        momentum=layer.momentum,
        process_group=getattr(layer, "process_group", None),
    )
    with torch.no_grad():
        # Copies of the affine parameters: an optimizer that still holds them cannot move
        # the frozen layer. The statistics are the layer's own buffers.
        frozen.weight = None if layer.weight is None else layer.weight.detach().clone()
        frozen.bias = None if layer.bias is None else layer.bias.detach().clone()
    frozen.running_mean = layer.running_mean
    frozen.running_var = layer.running_var
    if layer.num_batches_tracked is not None:
        frozen.num_batches_tracked = layer.num_batches_tracked
    frozen.train(layer.training)
    _move_act(layer, frozen)
    if isinstance(frozen, FrozenL2BatchNormAct2d):
        # One frozen norm-act class serves both norm-act layers: remember which, so that
        # unfreeze gives a SyncL2BatchNormAct its synchronization back.
        frozen.synchronized = isinstance(layer, SyncL2BatchNorm)
    return frozen


def _unfrozen_from(frozen: FrozenL2BatchNorm, cls: type, path: str) -> nn.Module:
    if cls is L2BatchNormAct2d and getattr(frozen, "synchronized", False):
        cls = SyncL2BatchNormAct
    ref = frozen.running_mean
    kwargs: dict[str, Any] = {"device": ref.device, "dtype": ref.dtype}
    if frozen.affine and frozen.bias is None:
        kwargs["bias"] = False
    if "process_group" in inspect.signature(cls).parameters:
        kwargs["process_group"] = frozen.process_group
    layer = cls(
        frozen.num_features,
        frozen.eps,
        frozen.momentum,
        frozen.affine,
        True,
        l2_eps=frozen.l2_eps,
        scale=frozen.scale,
        **kwargs,
    )
    with torch.no_grad():
        if frozen.weight is not None:
            layer.weight.copy_(frozen.weight)
        if frozen.bias is not None:
            layer.bias.copy_(frozen.bias)
    layer.running_mean = frozen.running_mean
    layer.running_var = frozen.running_var
    layer.num_batches_tracked = frozen.num_batches_tracked
    layer.train(frozen.training)
    _move_act(frozen, layer)
    return layer


def _swap(
    module: nn.Module,
    table: dict[type[nn.Module], type],
    make: Callable[[Any, type, str], nn.Module],
    predicate: Predicate | None,
    on_other: Callable[[str, nn.Module], None] | None,
    prefix: str = "",
) -> nn.Module:
    target = table.get(type(module))
    if target is not None:
        if predicate is None or predicate(prefix, module):
            new = make(module, target, prefix)
            move_hooks(module, new)  # as every converter does: the layer's hooks stay on it
            return new
        return module
    if on_other is not None:
        on_other(prefix, module)
    for name, child in module.named_children():
        new = _swap(child, table, make, predicate, on_other, f"{prefix}.{name}" if prefix else name)
        if new is not child:
            setattr(module, name, new)
    return module


def freeze(module: nn.Module, predicate: Predicate | None = None) -> nn.Module:
    """Replace the L2BN layers of ``module`` by frozen ones (see :class:`FrozenL2BatchNorm`).

    ``L2BatchNorm1d/2d/3d`` become ``FrozenL2BatchNorm1d/2d/3d``, ``SyncL2BatchNorm``
    becomes ``FrozenL2BatchNorm``, the timm-layout ``L2BatchNormAct2d`` and
    ``SyncL2BatchNormAct`` become ``FrozenL2BatchNormAct2d`` (keeping ``drop`` and
    ``act``). ``predicate(qualified_name, layer) -> bool`` selects layers. The frozen
    layers hold copies of the affine parameters and the layers' own running statistics;
    they have no parameters left, so build the optimizer after freezing. Plain BatchNorm
    layers are left as they are, with a warning: freeze them with torchvision or timm
    (``timm.layers.freeze_batch_norm_2d`` leaves L2BN layers alone); LNBN, INBN and PNBN
    (:mod:`l2bn.norms.prenorm`) are left too, with a warning that those would make them plain
    BatchNorm. Returns the module (a
    new object when ``module`` itself is an L2BN layer).
    """
    check_module("l2bn.freeze", module)
    freezing, _ = _tables()
    plain: list[str] = []

    unknown: list[str] = []
    prenorm: list[str] = []

    def on_other(path: str, m: nn.Module) -> None:
        if predicate is not None and not isinstance(m, (_BatchNorm, _L2BatchNorm)):
            return
        if predicate is not None and not predicate(path, m):
            return
        if prenorm_description(m) is not None:
            prenorm.append(f"{path or '<root>'} ({type(m).__name__})")
        elif isinstance(m, _BatchNorm):
            plain.append(f"{path or '<root>'} ({type(m).__name__})")
        elif isinstance(m, _L2BatchNorm):  # a subclass freeze does not know, or lazy
            unknown.append(f"{path or '<root>'} ({type(m).__name__})")

    out = _swap(module, freezing, _frozen_from, predicate, on_other)
    guard_reparameterization(out)  # frozen L2BN cannot be folded either (l2bn.fusion)
    if plain:
        warnings.warn(
            "l2bn.freeze froze the L2BN layers only; these BatchNorm layers keep training: "
            + ", ".join(plain)
            + ". Freeze them with timm.layers.freeze_batch_norm_2d or torchvision's "
            "FrozenBatchNorm2d (both leave L2BN layers alone).",
            stacklevel=2,
        )
    if prenorm:
        warnings.warn(
            "l2bn.freeze froze the L2BN layers only; these BatchNorm layers, which normalize "
            "each sample first (LNBN, INBN, PNBN), keep training: "
            + ", ".join(prenorm)
            + ". Do not freeze them with timm.layers.freeze_batch_norm_2d or torchvision's "
            "FrozenBatchNorm2d, which would make them plain BatchNorm (the pre-normalization "
            "dropped); keep them in eval mode with requires_grad_(False) instead.",
            stacklevel=2,
        )
    if unknown:
        warnings.warn(
            "l2bn.freeze does not know these L2BN classes, which keep training: "
            + ", ".join(unknown)
            + " (an uninitialized lazy layer: run one forward first).",
            stacklevel=2,
        )
    return out


def unfreeze(module: nn.Module, predicate: Predicate | None = None) -> nn.Module:
    """Turn the frozen L2BN layers of ``module`` back into trainable L2BN layers.

    The inverse of :func:`freeze`: ``FrozenL2BatchNorm1d/2d/3d`` become
    ``L2BatchNorm1d/2d/3d``, ``FrozenL2BatchNorm`` a ``SyncL2BatchNorm`` (with the process
    group it had), ``FrozenL2BatchNormAct2d`` an ``L2BatchNormAct2d``, or the
    ``SyncL2BatchNormAct`` it was frozen from (with its process group); weight and bias
    become new parameters (build the optimizer afterwards), the running statistics and
    ``momentum`` are those of the frozen layer.
    """
    check_module("l2bn.unfreeze", module)
    _, unfreezing = _tables()
    out = _swap(module, unfreezing, _unfrozen_from, predicate, None)
    guard_reparameterization(out)
    return out


__all__ = ["freeze", "unfreeze"]
