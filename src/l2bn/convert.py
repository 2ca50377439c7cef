"""Swap BatchNorm and L2BN layers in any model (paper Table 4 needs a predicate)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from l2bn.layers import L2BatchNorm1d, L2BatchNorm2d, L2BatchNorm3d

Predicate = Callable[[str, nn.Module], bool]

_BN_TO_L2BN: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: L2BatchNorm1d,
    nn.BatchNorm2d: L2BatchNorm2d,
    nn.BatchNorm3d: L2BatchNorm3d,
}
_L2BN_TO_BN: dict[type[nn.Module], type[nn.Module]] = {v: k for k, v in _BN_TO_L2BN.items()}


def register_conversion(bn_type: type[nn.Module], l2bn_type: type[nn.Module]) -> None:
    """Add a BatchNorm class and its L2BN counterpart to both converters."""
    _BN_TO_L2BN[bn_type] = l2bn_type
    _L2BN_TO_BN[l2bn_type] = bn_type


def move_state(source: _BatchNorm, target: _BatchNorm) -> _BatchNorm:
    """Move parameters, buffers and mode into ``target``: the same objects, so optimizers
    and ``requires_grad`` carry over."""
    target.weight = source.weight
    target.bias = source.bias
    target.running_mean = source.running_mean
    target.running_var = source.running_var
    target.num_batches_tracked = source.num_batches_tracked
    target.train(source.training)
    if hasattr(source, "qconfig"):
        target.qconfig = source.qconfig
    return target


def _swap(
    module: nn.Module,
    table: dict[type[nn.Module], type[nn.Module]],
    predicate: Predicate | None,
    make: Callable[[type[nn.Module], _BatchNorm], _BatchNorm],
    prefix: str = "",
) -> nn.Module:
    target_type = table.get(type(module))
    if target_type is not None and (predicate is None or predicate(prefix, module)):
        return move_state(module, make(target_type, module))
    for name, child in module.named_children():
        new = _swap(child, table, predicate, make, f"{prefix}.{name}" if prefix else name)
        if new is not child:
            setattr(module, name, new)
    return module


def _factory_kwargs(module: _BatchNorm) -> dict[str, object]:
    """device, dtype and (when the affine layer has no bias) ``bias=False`` of ``module``."""
    ref = module.weight if module.weight is not None else module.running_mean
    kwargs: dict[str, object] = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    if module.affine and module.bias is None:
        kwargs["bias"] = False
    return kwargs


def convert_bn_to_l2bn(
    module: nn.Module,
    predicate: Predicate | None = None,
    *,
    l2_eps: float | None = None,
    scale: bool = True,
) -> nn.Module:
    """Replace every BatchNorm1d/2d/3d (and SyncBatchNorm) in ``module`` by its L2BN twin.

    ``predicate(qualified_name, layer) -> bool`` selects layers (paper Table 4); the
    parameters, buffers, device, dtype, mode and ``requires_grad`` are kept. Returns the
    converted module (a new object only when ``module`` itself is a BatchNorm).
    """
    _ensure_sync_registered()
    extra = {"scale": scale} if l2_eps is None else {"scale": scale, "l2_eps": l2_eps}

    def make(cls: type[nn.Module], bn: _BatchNorm) -> _BatchNorm:
        kwargs = dict(_factory_kwargs(bn), **extra)
        if isinstance(bn, nn.SyncBatchNorm):
            kwargs["process_group"] = bn.process_group
        return cls(
            bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, **kwargs
        )

    return _swap(module, _BN_TO_L2BN, predicate, make)


def convert_l2bn_to_bn(module: nn.Module, predicate: Predicate | None = None) -> nn.Module:
    """Replace every L2BN layer in ``module`` by the matching ``torch.nn`` BatchNorm."""
    _ensure_sync_registered()

    def make(cls: type[nn.Module], l2bn: _BatchNorm) -> _BatchNorm:
        kwargs = _factory_kwargs(l2bn)
        if cls is nn.SyncBatchNorm:
            kwargs["process_group"] = getattr(l2bn, "process_group", None)
        return cls(
            l2bn.num_features, l2bn.eps, l2bn.momentum, l2bn.affine, l2bn.track_running_stats,
            **kwargs,
        )  # fmt: skip

    return _swap(module, _L2BN_TO_BN, predicate, make)


def _ensure_sync_registered() -> None:
    """SyncBatchNorm <-> SyncL2BatchNorm, when the sync module is available."""
    with contextlib.suppress(ImportError):
        from l2bn import sync  # noqa: F401  (registers itself on import)


__all__ = [
    "Predicate",
    "convert_bn_to_l2bn",
    "convert_l2bn_to_bn",
    "move_state",
    "register_conversion",
]
