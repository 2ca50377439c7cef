"""Name -> model builder, with the norm layer chosen by name or factory.

A builder registered with :func:`register_model` takes
``(num_classes, in_channels, norm_layer, **kwargs)``, where ``norm_layer`` is always
a factory ``f(num_features) -> nn.Module`` (names are resolved here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from l2bn.norms.registry import NormLayer, get_norm_layer

ModelBuilder = Callable[..., nn.Module]

_BUILDERS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator adding a builder ``(num_classes, in_channels, norm_layer, **kw)`` as ``name``."""
    key = name.strip().lower()

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if key in _BUILDERS and _BUILDERS[key] is not builder:
            raise ValueError(f"model {key!r} is already registered")
        _BUILDERS[key] = builder
        return builder

    return decorator


def list_models() -> list[str]:
    """The names accepted by :func:`create_model`, in registration order."""
    return list(_BUILDERS)


def create_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    norm_layer: str | NormLayer = "bn",
    norm_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build model ``name`` with ``norm_layer`` (a name of :func:`l2bn.norms.list_norms` or
    a factory ``f(num_features) -> nn.Module``) in place of every normalization layer.

    ``norm_kwargs`` go to the named norm (e.g. ``{"channels_per_group": 4}``); other
    keyword arguments go to the model builder. The classification layer is
    ``model.classifier`` (an ``nn.Linear``).
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    key = name.strip().lower()
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    if num_classes < 1 or in_channels < 1:
        raise ValueError(
            f"num_classes and in_channels must be positive, got {num_classes} and {in_channels}"
        )
    factory = get_norm_layer(norm_layer, **(norm_kwargs or {}))
    return _BUILDERS[key](num_classes, in_channels, factory, **kwargs)
