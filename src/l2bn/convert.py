"""Swap BatchNorm and L2BN layers in any model (paper Table 4 needs a predicate).

Every BatchNorm kind is handled explicitly, by exact class (README, "Using L2BN with DDP,
timm, torchvision, fusion and freezing"):

==================================  =========================================
BatchNorm                           L2BN
==================================  =========================================
``nn.BatchNorm1d/2d/3d``            ``L2BatchNorm1d/2d/3d``
``nn.SyncBatchNorm``                ``SyncL2BatchNorm``
``nn.LazyBatchNorm1d/2d/3d``        ``LazyL2BatchNorm1d/2d/3d`` (uninitialized)
timm ``BatchNormAct2d``             ``L2BatchNormAct2d`` (same ``drop``, ``act``)
timm ``SyncBatchNormAct``           ``SyncL2BatchNormAct`` (same ``drop``, ``act``)
==================================  =========================================

plus what :func:`register_conversion` adds. Any other BatchNorm class (a ``_BatchNorm``
subclass, or a class named like a BatchNorm, such as torchvision's ``FrozenBatchNorm2d``)
is left as it is with a warning naming its class and path, or refused with
``strict=True``; the norms of :mod:`l2bn.norms` (LNBN, INBN, PNBN) are other norms and are
left alone quietly. Both converters can return a :class:`ConversionReport` of what they
converted and what they left, and log a summary (logger ``l2bn.convert``, level INFO).

A converted layer keeps the hooks registered on the layer it replaces (:func:`move_hooks`,
for every converter of l2bn). A layer whose weight or bias is computed by a
reparametrization (``torch.nn.utils.parametrize``, including
``torch.nn.utils.parametrizations.weight_norm``, or the older
``torch.nn.utils.weight_norm`` / ``spectral_norm``) is left as it is with a warning, or
refused with ``strict=True``: remove the reparametrization, convert, and apply it again.
"""

from __future__ import annotations

import inspect
import logging
import sys
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.utils import parametrize

from l2bn.frozen import is_frozen_l2_batch_norm
from l2bn.fusion import guard_reparameterization
from l2bn.kinds import is_l2bn_layer
from l2bn.layers import L2BatchNorm1d, L2BatchNorm2d, L2BatchNorm3d
from l2bn.lazy import LazyL2BatchNorm1d, LazyL2BatchNorm2d, LazyL2BatchNorm3d
from l2bn.norm_act import L2BatchNormAct2d, SyncL2BatchNormAct, timm_norm_act
from l2bn.sync import SyncL2BatchNorm

Predicate = Callable[[str, nn.Module], bool]

logger = logging.getLogger("l2bn.convert")

_BN_TO_L2BN: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: L2BatchNorm1d,
    nn.BatchNorm2d: L2BatchNorm2d,
    nn.BatchNorm3d: L2BatchNorm3d,
}
_L2BN_TO_BN: dict[type[nn.Module], type[nn.Module]] = {v: k for k, v in _BN_TO_L2BN.items()}


class ConversionWarning(UserWarning):
    """A converter left a BatchNorm-like layer that it does not know as it was."""


def register_conversion(bn_type: type[nn.Module], l2bn_type: type[nn.Module]) -> None:
    """Add a BatchNorm class and its L2BN counterpart to both converters.

    ``l2bn_type`` is built with the BatchNorm constructor's arguments (``num_features``,
    ``eps``, ``momentum``, ``affine``, ``track_running_stats``, and ``device``, ``dtype``,
    ``process_group``, ``l2_eps``, ``scale`` when it accepts them); parameters and buffers,
    and ``drop``/``act`` children, are then moved over.
    """
    _BN_TO_L2BN[bn_type] = l2bn_type
    _L2BN_TO_BN[l2bn_type] = bn_type


def move_state(source: _NormBase, target: _NormBase) -> _NormBase:
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


# --- hooks -------------------------------------------------------------------------------

# nn.Module's per-module hook tables (id -> hook, or id -> flag for the *_with_kwargs and
# *_always_called ones); ids come from one global counter, so they never collide.
_HOOK_TABLES = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_pre_hooks",
    "_backward_hooks",
    "_state_dict_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


def _bound_to(hook: Any, module: nn.Module) -> bool:
    """A hook that is a method of ``module`` itself (a lazy layer's parameter inference):
    machinery of that layer, which the new layer has its own of."""
    inner = getattr(hook, "hook", hook)  # torch wraps some state_dict hooks
    return getattr(inner, "__self__", None) is module


def move_hooks(source: nn.Module, target: nn.Module) -> None:
    """Give ``target`` the hooks registered on ``source`` (forward, forward pre-, backward,
    backward pre-, state_dict and load_state_dict hooks, in their order, after
    ``target``'s own).

    Every converter of l2bn calls this for each layer it replaces (torch's
    ``SyncBatchNorm.convert_sync_batchnorm`` drops them). Where ``target`` has no hook of a
    kind, it takes over ``source``'s table of that kind (the same dict), so the handles
    that registered them still remove them. Hooks that are methods of ``source`` (its own
    machinery) are not carried; a load_state_dict pre-hook registered with the module
    argument is given ``target``.
    """
    own = {
        hook_id
        for name in _HOOK_TABLES
        for hook_id, hook in getattr(source, name, {}).items()
        if _bound_to(hook, source)
    }
    for name in _HOOK_TABLES:
        theirs = getattr(source, name, None)
        ours = getattr(target, name, None)
        if not theirs or ours is None:
            continue
        carried = {k: v for k, v in theirs.items() if k not in own}
        for hook in carried.values():
            if getattr(hook, "with_module", False):  # torch's _WrappedHook: calls hook(module, ...)
                hook.module = weakref.ref(target)
        if ours or len(carried) != len(theirs):
            ours.update(carried)  # the handles no longer reach these copies
        else:
            setattr(target, name, theirs)
    if getattr(target, "_is_full_backward_hook", None) is None:
        target._is_full_backward_hook = getattr(source, "_is_full_backward_hook", None)


# --- reparametrized layers ----------------------------------------------------------------


def source_type(module: nn.Module) -> type[nn.Module]:
    """``module``'s class; for a module of ``torch.nn.utils.parametrize``, the class it had
    before its first parametrization."""
    return parametrize.type_before_parametrizations(module)


def reparametrized_tensors(module: nn.Module) -> list[str]:
    """The tensors of ``module`` computed by a reparametrization rather than stored: those
    of ``torch.nn.utils.parametrize`` (``parametrizations.weight_norm``, ...), and a
    ``weight``/``bias`` that is neither a parameter nor a buffer (the older
    ``torch.nn.utils.weight_norm`` and ``spectral_norm``, which recompute it before each
    forward). A converter cannot move them as they are."""
    if parametrize.is_parametrized(module):
        return list(module.parametrizations)
    return [
        name
        for name in ("weight", "bias")
        if getattr(module, name, None) is not None
        and name not in module._parameters
        and name not in module._buffers
    ]


# --- what a converter did ---------------------------------------------------------------


@dataclass(frozen=True)
class Converted:
    path: str
    source: str
    target: str


@dataclass(frozen=True)
class Left:
    path: str
    cls: str
    reason: str


@dataclass
class ConversionReport:
    """The layers a converter replaced (``converted``) and the BatchNorm-like or L2BN
    layers it left as they were (``left``), each with its qualified name (``""`` for the
    root module)."""

    converter: str
    converted: list[Converted] = field(default_factory=list)
    left: list[Left] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """``"Source -> Target"`` -> number of layers."""
        out: dict[str, int] = {}
        for c in self.converted:
            key = f"{c.source} -> {c.target}"
            out[key] = out.get(key, 0) + 1
        return out

    def __str__(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in self.counts().items()) or "none"
        lines = [f"{self.converter}: converted {len(self.converted)} layers ({kinds})"]
        lines += [f"  left {x.path or '<root>'} ({x.cls}): {x.reason}" for x in self.left]
        return "\n".join(lines)


def _name(cls: type) -> str:
    return cls.__name__


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# --- building a layer of another kind -----------------------------------------------------

_SIGNATURES: dict[type, frozenset[str]] = {}


def _accepts(cls: type) -> frozenset[str]:
    if cls not in _SIGNATURES:
        _SIGNATURES[cls] = frozenset(inspect.signature(cls).parameters)
    return _SIGNATURES[cls]


def _move_children(source: nn.Module, target: nn.Module) -> None:
    """Keep a norm-act layer's ``drop`` and ``act`` (the same modules)."""
    for name in ("drop", "act"):
        child = getattr(source, name, None)
        if isinstance(child, nn.Module):
            target.add_module(name, child)


def build_like(
    target_type: type[nn.Module], source: nn.Module, extra: dict[str, Any] | None = None
) -> nn.Module:
    """A ``target_type`` layer with ``source``'s hyper-parameters, device and dtype, holding
    ``source``'s parameters, buffers, mode and ``drop``/``act`` children (same objects).

    ``extra`` (e.g. ``l2_eps``, ``scale``, ``process_group``) is passed on where the
    constructor accepts it.
    """
    accepts = _accepts(target_type)
    kwargs: dict[str, Any] = {}
    ref = source.weight if source.weight is not None else source.running_mean
    if ref is not None and "device" in accepts:
        kwargs.update(device=ref.device, dtype=ref.dtype)
    if "process_group" in accepts:
        kwargs["process_group"] = getattr(source, "process_group", None)
    kwargs.update({k: v for k, v in (extra or {}).items() if k in accepts})
    hyper = (source.eps, source.momentum, source.affine, source.track_running_stats)
    if issubclass(target_type, LazyModuleMixin):
        target = target_type(*hyper, **kwargs)
    else:
        target = target_type(source.num_features, *hyper, **kwargs)
    move_state(source, target)
    _move_children(source, target)
    return target


# --- the kinds of layers ------------------------------------------------------------------


def _timm_classes() -> dict[str, type[nn.Module]]:

    norm_act = timm_norm_act()
    if norm_act is None:
        return {}
    names = ("BatchNormAct2d", "SyncBatchNormAct", "FrozenBatchNormAct2d")
    return {n: getattr(norm_act, n) for n in names if hasattr(norm_act, n)}


def bn_to_l2bn_table() -> dict[type[nn.Module], type[nn.Module]]:
    """Every BatchNorm class the converters know, with its L2BN counterpart."""

    table: dict[type[nn.Module], type[nn.Module]] = {
        nn.SyncBatchNorm: SyncL2BatchNorm,
        nn.LazyBatchNorm1d: LazyL2BatchNorm1d,
        nn.LazyBatchNorm2d: LazyL2BatchNorm2d,
        nn.LazyBatchNorm3d: LazyL2BatchNorm3d,
    }
    timm = _timm_classes()
    if "BatchNormAct2d" in timm:
        table[timm["BatchNormAct2d"]] = L2BatchNormAct2d
    if "SyncBatchNormAct" in timm:
        table[timm["SyncBatchNormAct"]] = SyncL2BatchNormAct
    table.update(_BN_TO_L2BN)
    return table


def _l2bn_to_bn_table() -> dict[type[nn.Module], type[nn.Module] | str]:
    """L2BN class -> BatchNorm class, or the name of the timm class it needs."""

    table: dict[type[nn.Module], type[nn.Module] | str] = {
        SyncL2BatchNorm: nn.SyncBatchNorm,
        LazyL2BatchNorm1d: nn.LazyBatchNorm1d,
        LazyL2BatchNorm2d: nn.LazyBatchNorm2d,
        LazyL2BatchNorm3d: nn.LazyBatchNorm3d,
        L2BatchNormAct2d: "BatchNormAct2d",
        SyncL2BatchNormAct: "SyncBatchNormAct",
    }
    table.update(_L2BN_TO_BN)
    return table


_OTHER_NORMS: list[type[nn.Module]] = []


def register_other_norm(cls: type[nn.Module]) -> None:
    """Declare a BatchNorm subclass that is another normalization (the paper's LNBN, INBN,
    PNBN): the converters leave it alone without a warning."""
    if cls not in _OTHER_NORMS:
        _OTHER_NORMS.append(cls)


def other_norm_classes() -> tuple[type[nn.Module], ...]:
    """The classes given to :func:`register_other_norm`."""
    return tuple(_OTHER_NORMS)


def looks_like_batch_norm(module: nn.Module) -> bool:
    """A ``_BatchNorm`` instance, or a module whose class is named like a BatchNorm
    (torchvision's ``FrozenBatchNorm2d``, timm's ``FrozenBatchNormAct2d``, ...)."""
    return isinstance(module, _BatchNorm) or "BatchNorm" in type(module).__name__


def is_l2bn_kind(module: nn.Module) -> bool:

    return is_l2bn_layer(module)


# --- the walk -----------------------------------------------------------------------------


def check_module(converter: str, module: Any) -> None:
    """``TypeError`` naming ``converter`` when ``module`` is not an ``nn.Module`` instance
    (a class, a function, None), which would otherwise fail deep inside the walk."""
    if not isinstance(module, nn.Module):
        what = f"the class {module.__name__}" if isinstance(module, type) else repr(module)
        raise TypeError(
            f"{converter}: expected a torch.nn.Module instance (a model or a layer), got {what}"
        )


def _is_compiled_wrapper(module: nn.Module) -> bool:
    """Whether ``module`` is what ``torch.compile(layer)`` returns (torch._dynamo's
    ``OptimizedModule``; not imported here: only a loaded dynamo can have made one)."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return eval_frame is not None and isinstance(module, eval_frame.OptimizedModule)


class _Walk:
    def __init__(self, converter: str, predicate: Predicate | None, strict: bool) -> None:
        self.report = ConversionReport(converter)
        self.predicate = predicate
        self.strict = strict

    def selected(self, path: str, module: nn.Module) -> bool:
        if self.predicate is None or self.predicate(path, module):
            return True
        self.report.left.append(Left(path, _name(type(module)), "excluded by the predicate"))
        return False

    def converted(self, path: str, old: nn.Module, new: nn.Module) -> nn.Module:
        """Record the replacement of ``old`` by ``new``, which takes ``old``'s hooks."""
        if new is not old:
            move_hooks(old, new)
        self.report.converted.append(Converted(path, _name(type(old)), _name(type(new))))
        return new

    def reparametrized(self, path: str, module: nn.Module, left_as: str) -> bool:
        """True (after a warning, or ``TypeError`` when strict) when ``module`` cannot be
        converted because a reparametrization computes its weight or bias."""
        names = reparametrized_tensors(module)
        if not names:
            return False
        self.unknown(
            path,
            module,
            f"whose {' and '.join(names)} {'is' if len(names) == 1 else 'are'} computed by a "
            "reparametrization (torch.nn.utils.parametrize, or the older "
            f"torch.nn.utils.weight_norm / spectral_norm): left as it is ({left_as})",
            "remove it first (torch.nn.utils.parametrize.remove_parametrizations, "
            "torch.nn.utils.remove_weight_norm or remove_spectral_norm), convert, then "
            "apply it again to the new layer; or exclude the layer with predicate",
        )
        return True

    def unknown(self, path: str, module: nn.Module, what: str, advice: str) -> None:
        where = path or "the root module"
        cls = source_type(module)
        message = f"{self.report.converter}: {where} is a {_qualname(cls)}, {what}; {advice}"
        if self.strict:
            raise TypeError(message)
        self.report.left.append(Left(path, _name(cls), what))
        warnings.warn(message, ConversionWarning, stacklevel=2)

    def run(
        self,
        module: nn.Module,
        decide: Callable[[str, nn.Module], nn.Module | None],
        prefix: str = "",
    ) -> nn.Module:
        if not prefix:
            check_module(self.report.converter, module)
        new = decide(prefix, module)
        if new is not None:
            return new
        for name, child in module.named_children():
            replaced = self.run(child, decide, f"{prefix}.{name}" if prefix else name)
            if replaced is not child:
                setattr(module, name, replaced)
                if name == "_orig_mod" and _is_compiled_wrapper(module):
                    # torch.compile(layer) binds its forward to the old layer's __call__:
                    # rebind it, or the wrapper keeps running the old layer.
                    module._initialize()
        return module

    def finish(self, module: nn.Module, return_report: bool) -> Any:
        # timm's reparameterize_model and models' fuse() would fold L2BN as BatchNorm.
        guard_reparameterization(module)
        if self.report.converted or self.report.left:
            logger.info("%s", self.report)
        return (module, self.report) if return_report else module


def convert_bn_to_l2bn(
    module: nn.Module,
    predicate: Predicate | None = None,
    *,
    l2_eps: float | None = None,
    scale: bool = True,
    strict: bool = False,
    return_report: bool = False,
) -> Any:
    """Replace every BatchNorm layer in ``module`` by its L2BN twin (table in the module doc).

    ``predicate(qualified_name, layer) -> bool`` selects layers (paper Table 4); the
    parameters, buffers, device, dtype, mode, ``requires_grad``, hooks and a norm-act
    layer's ``drop``/``act`` are kept. A layer whose weight or bias a reparametrization
    computes (``weight_norm``, ``torch.nn.utils.parametrize``) is left with a
    :class:`ConversionWarning` (``TypeError`` with ``strict=True``): remove it, convert,
    apply it again. A BatchNorm-like layer of a class the converter does not
    know is left as it is with a :class:`ConversionWarning` naming its class and path (it
    still computes BatchNorm), or raises ``TypeError`` with ``strict=True``; exclude it with
    ``predicate`` or add its class with :func:`register_conversion`. A module with no
    BatchNorm (nor L2BN) layer at all gets a :class:`ConversionWarning`. Returns the converted
    module (a new object only when ``module`` itself is a BatchNorm), or
    ``(module, ConversionReport)`` with ``return_report=True``.
    """
    table = bn_to_l2bn_table()
    other_norms = other_norm_classes()
    extra: dict[str, Any] = {"scale": scale}
    if l2_eps is not None:
        extra["l2_eps"] = l2_eps
    walk = _Walk("l2bn.convert_bn_to_l2bn", predicate, strict)

    def decide(path: str, m: nn.Module) -> nn.Module | None:
        target = table.get(source_type(m))
        if target is not None:
            if not walk.selected(path, m) or walk.reparametrized(path, m, "still BatchNorm"):
                return None
            return walk.converted(path, m, build_like(target, m, extra))
        if is_l2bn_kind(m) or not looks_like_batch_norm(m):
            return None
        if isinstance(m, other_norms):
            walk.report.left.append(Left(path, _name(type(m)), "another norm of l2bn.norms"))
            return None
        if walk.selected(path, m):
            walk.unknown(
                path,
                m,
                "a BatchNorm class that l2bn does not know: left as it is (still BatchNorm)",
                "convert it with l2bn.register_conversion(cls, l2bn_cls), exclude it with "
                "predicate, or pass strict=True to make this an error",
            )
        return None

    out = walk.run(module, decide)
    report = walk.report
    if not report.converted and not report.left and not any(map(is_l2bn_kind, out.modules())):
        warnings.warn(
            f"l2bn.convert_bn_to_l2bn: the {type(module).__name__} holds no BatchNorm layer "
            "(nor an L2BN one): nothing converted, it normalizes as before",
            ConversionWarning,
            stacklevel=2,
        )
    return walk.finish(out, return_report)


def convert_l2bn_to_bn(
    module: nn.Module,
    predicate: Predicate | None = None,
    *,
    strict: bool = False,
    return_report: bool = False,
) -> Any:
    """Replace every L2BN layer in ``module`` by the matching BatchNorm (the table in the
    module doc, read right to left; the timm-layout layers become timm's classes, which
    needs timm); hooks are kept, and reparametrized layers are left as in
    :func:`convert_bn_to_l2bn`. A frozen L2BN layer, or an L2BN subclass the converter
    does not know, is left as it is with a :class:`ConversionWarning` (``TypeError`` with
    ``strict=True``); :func:`l2bn.unfreeze` makes frozen layers convertible. Returns the
    module, or ``(module, ConversionReport)`` with ``return_report=True``.
    """

    table = _l2bn_to_bn_table()
    walk = _Walk("l2bn.convert_l2bn_to_bn", predicate, strict)

    def decide(path: str, m: nn.Module) -> nn.Module | None:
        target = table.get(source_type(m))
        if target is None:
            if is_frozen_l2_batch_norm(m):
                if walk.selected(path, m):
                    walk.unknown(
                        path,
                        m,
                        "a frozen L2BN layer: left as it is (still L2BN)",
                        "unfreeze it first with l2bn.unfreeze, or exclude it with predicate",
                    )
            elif is_l2bn_kind(m) and walk.selected(path, m):
                walk.unknown(
                    path,
                    m,
                    "an L2BN class that l2bn does not know: left as it is (still L2BN)",
                    "add it with l2bn.register_conversion(bn_cls, cls), or exclude it with "
                    "predicate",
                )
            return None
        if not walk.selected(path, m) or walk.reparametrized(path, m, "still L2BN"):
            return None
        if isinstance(target, str):
            norm_act = timm_norm_act(load=True)
            if norm_act is None:
                raise RuntimeError(
                    f"l2bn.convert_l2bn_to_bn: {path or 'the root module'} is a "
                    f"{type(m).__name__}, whose BatchNorm twin is timm's {target}, and timm "
                    "cannot be imported; install timm, or exclude the layer with predicate"
                )
            target = getattr(norm_act, target)
        return walk.converted(path, m, build_like(target, m))

    return walk.finish(walk.run(module, decide), return_report)


__all__ = [
    "ConversionReport",
    "ConversionWarning",
    "Predicate",
    "build_like",
    "convert_bn_to_l2bn",
    "convert_l2bn_to_bn",
    "move_hooks",
    "move_state",
    "register_conversion",
]
