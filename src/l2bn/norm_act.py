"""L2BN followed by a drop and an activation, in the layout of timm's ``BatchNormAct2d``.

timm's EfficientNet, MobileNet, RegNet, NFNet-style and many other models use
``timm.layers.BatchNormAct2d`` (BatchNorm2d, then ``self.drop``, then ``self.act``) for
every norm. :class:`L2BatchNormAct2d` is its L2BN twin: the same constructor (plus
``l2_eps`` and ``scale``), the same children ``drop`` and ``act``, the same ``state_dict``
keys, so that :func:`l2bn.convert_bn_to_l2bn` turns every such layer into L2BN and keeps
its activation. :class:`SyncL2BatchNormAct` is the twin of timm's ``SyncBatchNormAct`` and
:class:`FrozenL2BatchNormAct2d` of ``FrozenBatchNormAct2d``.

timm stays optional: these classes work without it (an activation is then given as a
module class or instance); with timm installed, an activation may also be named
(``act_layer="silu"``), as in timm.
"""

from __future__ import annotations

import inspect
import sys
from types import ModuleType
from typing import Any

from torch import Tensor, nn

from l2bn.frozen import FrozenL2BatchNorm2d
from l2bn.functional import DEFAULT_L2_EPS
from l2bn.fx_leaf import as_fx_leaf
from l2bn.layers import L2BatchNorm2d
from l2bn.sync import SyncL2BatchNorm


def timm_norm_act(load: bool = False) -> ModuleType | None:
    """``timm.layers.norm_act`` when timm is already imported (or, with ``load``, can be).

    Without ``load`` nothing is imported: a model that holds timm layers has imported timm.
    """
    module = sys.modules.get("timm.layers.norm_act")
    if module is None and load:
        try:
            import timm.layers.norm_act as module
        except Exception:  # not installed, or broken (e.g. a torchvision that fails to import)
            return None
    return module


def create_act(
    act_layer: Any,
    act_kwargs: dict[str, Any] | None = None,
    inplace: bool = True,
    apply_act: bool = True,
) -> nn.Module:
    """The activation module of a norm-act layer, as timm's ``BatchNormAct2d`` makes it."""
    if not apply_act or act_layer is None:
        return nn.Identity()
    if isinstance(act_layer, nn.Module):
        return act_layer
    kwargs = dict(act_kwargs or {})
    norm_act = timm_norm_act(load=isinstance(act_layer, str))
    if norm_act is not None:
        kwargs.setdefault("inplace", inplace)
        act = norm_act.create_act_layer(act_layer, **kwargs)
        return nn.Identity() if act is None else act
    if isinstance(act_layer, str):
        raise ValueError(
            f"l2bn: an activation given by name ({act_layer!r}) needs timm; pass a module "
            "class such as torch.nn.SiLU instead"
        )
    try:
        accepts_inplace = "inplace" in inspect.signature(act_layer).parameters
    except (TypeError, ValueError):
        accepts_inplace = False
    if accepts_inplace:
        kwargs.setdefault("inplace", inplace)
    return act_layer(**kwargs)


class L2BatchNormAct2d(L2BatchNorm2d):
    """L2BatchNorm2d, then ``drop``, then ``act``: timm's ``BatchNormAct2d`` with L2BN.

    Constructor of ``timm.layers.BatchNormAct2d`` plus ``l2_eps`` and ``scale`` (see
    :class:`l2bn.L2BatchNorm2d`); ``drop`` and ``act`` are ``nn.Identity`` when absent.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        apply_act: bool = True,
        act_layer: Any = nn.ReLU,
        act_kwargs: dict[str, Any] | None = None,
        inplace: bool = True,
        drop_layer: type[nn.Module] | None = None,
        device: Any = None,
        dtype: Any = None,
        l2_eps: float = DEFAULT_L2_EPS,
        scale: bool = True,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device=device,
            dtype=dtype,
            l2_eps=l2_eps,
            scale=scale,
            bias=bias,
        )
        self.drop = drop_layer() if drop_layer is not None else nn.Identity()
        self.act = create_act(act_layer, act_kwargs, inplace, apply_act)

    def forward(self, input: Tensor) -> Tensor:
        traced = as_fx_leaf(self, input)  # torch.fx: one call of the whole layer
        if traced is not None:
            return traced
        return self.act(self.drop(super().forward(input)))


class SyncL2BatchNormAct(SyncL2BatchNorm):
    """:class:`~l2bn.SyncL2BatchNorm`, then ``drop``, then ``act``: timm's
    ``SyncBatchNormAct`` with L2BN. What the sync converters make of an
    :class:`L2BatchNormAct2d` (or of timm's ``BatchNormAct2d``/``SyncBatchNormAct``)."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any | None = None,
        device: Any = None,
        dtype: Any = None,
        l2_eps: float = DEFAULT_L2_EPS,
        scale: bool = True,
        *,
        bias: bool = True,
        apply_act: bool = True,
        act_layer: Any = nn.ReLU,
        act_kwargs: dict[str, Any] | None = None,
        inplace: bool = True,
        drop_layer: type[nn.Module] | None = None,
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            process_group,
            device=device,
            dtype=dtype,
            l2_eps=l2_eps,
            scale=scale,
            bias=bias,
        )
        self.drop = drop_layer() if drop_layer is not None else nn.Identity()
        self.act = create_act(act_layer, act_kwargs, inplace, apply_act)

    def forward(self, input: Tensor) -> Tensor:
        traced = as_fx_leaf(self, input)  # torch.fx: one call of the whole layer
        if traced is not None:
            return traced
        return self.act(self.drop(super().forward(input)))


class FrozenL2BatchNormAct2d(FrozenL2BatchNorm2d):
    """:class:`~l2bn.FrozenL2BatchNorm2d`, then ``drop``, then ``act``: timm's
    ``FrozenBatchNormAct2d`` with L2BN; what :func:`l2bn.freeze` makes of an
    :class:`L2BatchNormAct2d` or a :class:`SyncL2BatchNormAct`.

    The positional arguments are those of timm's ``FrozenBatchNormAct2d`` (``apply_act``
    third, not ``affine``), then ``l2_eps`` and ``scale``; ``affine`` is keyword-only.
    """

    # True when frozen from a SyncL2BatchNormAct: l2bn.unfreeze then gives that class back.
    synchronized = False

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        apply_act: bool = True,
        act_layer: Any = nn.ReLU,
        act_kwargs: dict[str, Any] | None = None,
        inplace: bool = True,
        drop_layer: type[nn.Module] | None = None,
        device: Any = None,
        dtype: Any = None,
        l2_eps: float = DEFAULT_L2_EPS,
        scale: bool = True,
        *,
        affine: bool = True,
        bias: bool = True,
        momentum: float | None = 0.1,
        process_group: Any = None,
    ) -> None:
        super().__init__(
            num_features,
            eps,
            affine,
            device,
            dtype,
            l2_eps,
            scale,
            bias=bias,
            momentum=momentum,
            process_group=process_group,
        )
        self.drop = drop_layer() if drop_layer is not None else nn.Identity()
        self.act = create_act(act_layer, act_kwargs, inplace, apply_act)

    def forward(self, input: Tensor) -> Tensor:
        return self.act(self.drop(super().forward(input)))


__all__ = ["FrozenL2BatchNormAct2d", "L2BatchNormAct2d", "SyncL2BatchNormAct", "create_act"]
