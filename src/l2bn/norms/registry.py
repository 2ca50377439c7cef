"""Name -> normalization-layer factory, for (N, C, H, W) feature maps.

``create_norm("gn", 64, channels_per_group=4)`` builds one layer;
``get_norm_layer("l2bn")`` returns ``f(num_features) -> nn.Module`` for model builders.
Names follow the paper: ``bn``, ``l2bn``; Table 3's ``lnbn``, ``inbn``, ``pnbn``;
Table 5's ``ln``, ``in``, ``gn`` (``gn-cpg4`` / ``gn-cpg8`` fix ``channels_per_group``),
``sn``, ``bcn``, ``bin``. ``canonical_norm`` gives one spelling per layer (``gn`` with
``channels_per_group=4`` is ``gn-cpg4``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import nn

from l2bn.layers import L2BatchNorm2d
from l2bn.norms.batch_channel import BatchChannelNorm2d
from l2bn.norms.batch_instance import BatchInstanceNorm2d
from l2bn.norms.group import group_norm_2d, instance_norm_2d, layer_norm_2d
from l2bn.norms.prenorm import (
    InstanceNormBatchNorm2d,
    LayerNormBatchNorm2d,
    PositionNormBatchNorm2d,
)
from l2bn.norms.switchable import SwitchableNorm2d

NormLayer = Callable[[int], nn.Module]
"""A norm-layer factory: ``num_features -> nn.Module``."""

_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "bn": nn.BatchNorm2d,
    "l2bn": L2BatchNorm2d,
    "lnbn": LayerNormBatchNorm2d,
    "inbn": InstanceNormBatchNorm2d,
    "pnbn": PositionNormBatchNorm2d,
    "ln": layer_norm_2d,
    "in": instance_norm_2d,
    "gn": group_norm_2d,
    "sn": SwitchableNorm2d,
    "bcn": BatchChannelNorm2d,
    "bin": BatchInstanceNorm2d,
}

_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "gn-cpg4": ("gn", {"channels_per_group": 4}),
    "gn-cpg8": ("gn", {"channels_per_group": 8}),
}


def list_norms() -> list[str]:
    """Every accepted norm name (canonical names first, then aliases)."""
    return [*_FACTORIES, *_ALIASES]


def _resolve(name: str) -> tuple[Callable[..., nn.Module], dict[str, Any]]:
    if not isinstance(name, str):
        raise TypeError(
            f"norm must be a name (str) or a callable num_features -> nn.Module, "
            f"got {type(name).__name__}"
        )
    key = name.strip().lower()
    if key in _ALIASES:
        base, preset = _ALIASES[key]
        return _FACTORIES[base], dict(preset)
    if key in _FACTORIES:
        return _FACTORIES[key], {}
    raise ValueError(f"unknown norm {name!r}; valid names: {', '.join(list_norms())}")


def canonical_norm(
    name: str, norm_kwargs: dict[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """The one spelling of the layer that ``name`` with ``norm_kwargs`` builds: an alias's
    options are merged under the given ones, and options that are an alias's are folded
    into its name. ``("gn", {"channels_per_group": 4})`` and ``("gn-cpg4", {})`` are both
    ``("gn-cpg4", {})``; ``("gn-cpg4", {"channels_per_group": 8})`` is ``("gn-cpg8", {})``.
    A name that is no norm here is returned as given."""
    options = dict(norm_kwargs or {})
    key = name.strip().lower()
    if key in _ALIASES:
        name, preset = _ALIASES[key]
        options = {**preset, **options}
    elif key in _FACTORIES:
        name = key
    for alias, (base, preset) in _ALIASES.items():
        if name == base and all(options.get(k) == v for k, v in preset.items()):
            rest = {k: v for k, v in options.items() if k not in preset}
            return alias, rest
    return name, options


def create_norm(name: str, num_features: int, **kwargs: Any) -> nn.Module:
    """Build the norm ``name`` for ``num_features`` channels (kwargs go to its constructor)."""
    factory, preset = _resolve(name)
    return factory(num_features, **{**preset, **kwargs})


def get_norm_layer(name: str | NormLayer, **kwargs: Any) -> NormLayer:
    """The factory ``f(num_features) -> nn.Module`` for ``name``; a callable is returned as is."""
    if callable(name):
        if kwargs:
            raise ValueError("keyword arguments are only accepted with a norm name")
        return name
    factory, preset = _resolve(name)
    return functools.partial(factory, **{**preset, **kwargs})
