"""Converters to synchronized normalization for data-parallel training (``--sync-bn``).

:func:`convert_sync_l2batchnorm` turns BatchNorm and L2BN layers into
:class:`~l2bn.SyncL2BatchNorm`; :func:`convert_sync_batchnorm` is torch's
``SyncBatchNorm.convert_sync_batchnorm`` that keeps each layer's kind (L2BN stays L2BN).

The pre-normalized BatchNorms (LNBN, INBN, PNBN of :mod:`l2bn.norms.prenorm`, marked by
:func:`l2bn.fusion.prenorm_description`) have no synchronized counterpart: both converters
leave them unsynchronized with a ``ConversionWarning`` naming the layer (``TypeError`` with
``strict=True``), and :func:`install_sync_guard` (run when they are imported) makes torch's
``SyncBatchNorm.convert_sync_batchnorm`` do the same instead of turning them into a plain
``SyncBatchNorm`` that drops the pre-normalization.
"""

from __future__ import annotations

import functools
import threading
import warnings
from typing import Any

from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from l2bn.convert import (
    ConversionWarning,
    Predicate,
    _Walk,
    bn_to_l2bn_table,
    build_like,
    is_l2bn_kind,
    looks_like_batch_norm,
    other_norm_classes,
    source_type,
)
from l2bn.fusion import prenorm_description
from l2bn.layers import L2BatchNorm1d, L2BatchNorm2d, L2BatchNorm3d
from l2bn.norm_act import L2BatchNormAct2d, SyncL2BatchNormAct, timm_norm_act
from l2bn.sync import SyncL2BatchNorm


def _sync_tables() -> tuple[dict[type[nn.Module], type[nn.Module]], tuple[type[nn.Module], ...]]:
    """Source class -> synchronized L2BN class, and the L2BN sources among them."""
    l2_sources: tuple[type[nn.Module], ...] = (
        L2BatchNorm1d,
        L2BatchNorm2d,
        L2BatchNorm3d,
        SyncL2BatchNorm,
        L2BatchNormAct2d,
        SyncL2BatchNormAct,
    )
    table: dict[type[nn.Module], type[nn.Module]] = {}
    for source, target in bn_to_l2bn_table().items():
        if issubclass(source, LazyModuleMixin):
            continue
        table[source] = SyncL2BatchNormAct if _has_act(target) else SyncL2BatchNorm
    for source in l2_sources:
        table[source] = SyncL2BatchNormAct if _has_act(source) else SyncL2BatchNorm
    return table, l2_sources


def _has_act(cls: type[nn.Module]) -> bool:
    return issubclass(cls, (L2BatchNormAct2d, SyncL2BatchNormAct))


def _lazy_error(converter: str, path: str, module: nn.Module) -> ValueError:
    return ValueError(
        f"{converter}: {path or 'the root module'} is an uninitialized "
        f"{type(module).__name__}: run one forward pass first (it sets num_features), "
        "then synchronize"
    )


def convert_sync_l2batchnorm(
    module: nn.Module,
    process_group: Any | None = None,
    *,
    predicate: Predicate | None = None,
    strict: bool = False,
    return_report: bool = False,
) -> Any:
    """Replace BatchNorm and L2BN layers by SyncL2BatchNorm (SyncL2BatchNormAct for the
    norm-act kinds).

    Mirrors :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`: parameters and
    buffers are moved (same objects), mode, ``requires_grad``, ``l2_eps`` and ``scale``
    are kept (BatchNorm layers get the L2BN defaults), so are hooks (torch's converter
    drops them), and ``process_group`` is set on
    every converted layer. The classes converted are those of
    :func:`l2bn.convert_bn_to_l2bn` (``nn.BatchNorm1d/2d/3d``, ``nn.SyncBatchNorm``, timm's
    ``BatchNormAct2d`` and ``SyncBatchNormAct``) and the L2BN ones; an uninitialized lazy
    layer raises ``ValueError`` (run one forward first); frozen L2BN layers and other norms
    are left alone; any other BatchNorm class is left with a ``ConversionWarning``
    (``TypeError`` with ``strict=True``). ``predicate(qualified_name, layer) -> bool``
    restricts the conversion, as in :func:`l2bn.convert_bn_to_l2bn`; e.g. ``lambda _, m:
    is_l2_batch_norm(m)`` synchronizes the L2BN layers and leaves BatchNorm a BatchNorm.
    Returns the converted module (a new object when ``module`` itself is converted), or
    ``(module, ConversionReport)`` with ``return_report=True``.
    """
    name = "l2bn.convert_sync_l2batchnorm"
    table, _ = _sync_tables()
    walk = _Walk(name, predicate, strict)
    other_norms = other_norm_classes()

    def decide(path: str, m: nn.Module) -> nn.Module | None:
        target = table.get(source_type(m))
        if target is not None:
            if not walk.selected(path, m) or walk.reparametrized(path, m, "not synchronized"):
                return None
            extra = {"process_group": process_group, **_l2_options(m)}
            new = build_like(target, m, extra)
            new.process_group = process_group
            return walk.converted(path, m, new)
        if isinstance(m, LazyModuleMixin) and (looks_like_batch_norm(m) or is_l2bn_kind(m)):
            if walk.selected(path, m):
                raise _lazy_error(name, path, m)
            return None
        if is_l2bn_kind(m):
            return None
        if prenorm_description(m) is not None:
            if walk.selected(path, m):
                walk.unknown(
                    path, m, prenorm_left_reason(m), "exclude it with predicate, or " + _STRICT
                )
            return None
        if looks_like_batch_norm(m) and not isinstance(m, other_norms) and walk.selected(path, m):
            walk.unknown(
                path,
                m,
                "a BatchNorm class that l2bn does not know: left as it is (not synchronized)",
                "exclude it with predicate, or pass strict=True to make this an error",
            )
        return None

    return walk.finish(walk.run(module, decide), return_report)


def convert_sync_batchnorm(
    module: nn.Module,
    process_group: Any | None = None,
    *,
    strict: bool = False,
    return_report: bool = False,
) -> Any:
    """``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` that keeps each layer's kind.

    The one call for a ``--sync-bn`` training script: L2BN layers become
    :class:`SyncL2BatchNorm` (the timm-layout ones :class:`~l2bn.SyncL2BatchNormAct`),
    ``nn.BatchNorm1d/2d/3d`` become ``torch.nn.SyncBatchNorm`` and timm's ``BatchNormAct2d``
    timm's ``SyncBatchNormAct`` (as torch's and timm's converters do). Torch's and timm's
    converters leave L2BN layers unsynchronized (they compute L2BN, with each process's own
    batch statistics). Frozen layers, synchronized layers and other norms are left alone;
    an uninitialized lazy layer raises ``ValueError``; a BatchNorm subclass that l2bn does
    not know is left with a ``ConversionWarning`` (``TypeError`` with ``strict=True``)
    rather than turned into a plain ``SyncBatchNorm`` that would drop what the subclass
    adds. Every converted layer keeps its hooks; a layer whose weight or bias a
    reparametrization computes is left with a ``ConversionWarning``. Returns the converted
    module, or ``(module, ConversionReport)``.
    """
    name = "l2bn.convert_sync_batchnorm"
    table, l2_sources = _sync_tables()
    walk = _Walk(name, None, strict)
    other_norms = other_norm_classes()
    plain = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    norm_act = timm_norm_act()
    timm_kinds = tuple(
        getattr(norm_act, n) for n in ("BatchNormAct2d", "SyncBatchNormAct") if norm_act
    )

    def decide(path: str, m: nn.Module) -> nn.Module | None:
        kind = source_type(m)
        if isinstance(m, LazyModuleMixin) and (looks_like_batch_norm(m) or is_l2bn_kind(m)):
            raise _lazy_error(name, path, m)
        if kind in table and walk.reparametrized(path, m, "not synchronized"):
            return None
        if kind in l2_sources:
            new = build_like(table[kind], m, {"process_group": process_group, **_l2_options(m)})
            new.process_group = process_group
            return walk.converted(path, m, new)
        if kind in plain:
            new = nn.SyncBatchNorm.convert_sync_batchnorm(m, process_group)
            return walk.converted(path, m, new)
        if norm_act is not None and kind in timm_kinds:
            return walk.converted(path, m, norm_act.convert_sync_batchnorm(m, process_group))
        if prenorm_description(m) is not None:
            walk.unknown(path, m, prenorm_left_reason(m), _STRICT)
            return None
        if is_l2bn_kind(m) or not looks_like_batch_norm(m) or isinstance(m, other_norms):
            return None
        walk.unknown(
            path,
            m,
            "a BatchNorm class that l2bn does not know: left as it is (not synchronized)",
            "synchronize it yourself, or pass strict=True to make this an error",
        )
        return None

    return walk.finish(walk.run(module, decide), return_report)


_STRICT = "pass strict=True to make this an error"


def prenorm_left_reason(layer: nn.Module) -> str:
    """Why a pre-normalized BatchNorm (LNBN, INBN, PNBN) is left unsynchronized: the words of
    every warning that says so (both converters, torch's guarded one, ``--sync-bn``)."""
    return (
        f"a BatchNorm that applies {prenorm_description(layer)} to each sample first, which "
        "has no synchronized counterpart: left as it is (not synchronized; its BatchNorm "
        "statistics are each process's own); torch.nn.SyncBatchNorm would drop the "
        "pre-normalization"
    )


_GUARD_STATE = threading.local()


def install_sync_guard() -> None:
    """Make ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` leave the pre-normalized
    BatchNorms (LNBN, INBN, PNBN) as they are, with a ``ConversionWarning`` naming each,
    instead of turning them into a plain ``SyncBatchNorm``; anything else converts exactly
    as before (idempotent)."""
    original = nn.SyncBatchNorm.__dict__["convert_sync_batchnorm"]
    func = original.__func__
    if getattr(func, "_l2bn_guard", False):
        return

    @functools.wraps(func)
    def guarded(cls: type, module: nn.Module, process_group: Any | None = None) -> nn.Module:
        if prenorm_description(module) is not None:
            if not getattr(_GUARD_STATE, "depth", 0):
                _warnprenorm_left_reason("", module)
            return module
        if not getattr(_GUARD_STATE, "depth", 0):  # the outermost call: name every layer left
            for path, child in module.named_modules():
                if prenorm_description(child) is not None:
                    _warnprenorm_left_reason(path, child)
        _GUARD_STATE.depth = getattr(_GUARD_STATE, "depth", 0) + 1
        try:
            return func(cls, module, process_group)
        finally:
            _GUARD_STATE.depth -= 1

    guarded._l2bn_guard = True  # type: ignore[attr-defined]
    nn.SyncBatchNorm.convert_sync_batchnorm = classmethod(guarded)  # type: ignore[assignment]


def _warnprenorm_left_reason(path: str, layer: nn.Module) -> None:
    warnings.warn(
        f"torch.nn.SyncBatchNorm.convert_sync_batchnorm: {path or 'the root module'} is a "
        f"{type(layer).__name__}, {prenorm_left_reason(layer)}",
        ConversionWarning,
        stacklevel=3,
    )


def _l2_options(layer: nn.Module) -> dict[str, Any]:
    return {k: getattr(layer, k) for k in ("l2_eps", "scale") if hasattr(layer, k)}


__all__ = [
    "convert_sync_batchnorm",
    "convert_sync_l2batchnorm",
    "install_sync_guard",
    "prenorm_left_reason",
]
