"""Optimizer parameter groups without weight decay on norm parameters and biases.

The common recipe "no weight decay on norm parameters" selects them in many ways. timm's
``param_groups_weight_decay`` (every parameter with ``ndim <= 1``) reaches L2BN; torchvision's
``split_normalization_params`` (``isinstance`` on ``_BatchNorm``, ``LayerNorm``, ...) does not,
since L2BN derives from ``_NormBase``. :func:`param_groups` reaches every L2BN layer whatever
its base class (README, "Using L2BN with DDP, timm, torchvision, fusion and freezing").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.utils import parametrize

from l2bn.kinds import L2BN_TYPES

NORM_TYPES: tuple[type[nn.Module], ...] = (
    *L2BN_TYPES,
    _NormBase,  # BatchNorm, SyncBatchNorm, InstanceNorm (and L2BN)
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
"""Modules whose parameters :func:`param_groups` puts in the group without weight decay."""


def is_norm_layer(module: nn.Module, extra: tuple[type[nn.Module], ...] = ()) -> bool:
    """A norm layer: an instance of :data:`NORM_TYPES` (or ``extra``), or any module whose
    class name contains ``Norm`` (the norms of timm, of :mod:`l2bn.norms`, ...)."""
    return isinstance(module, (*NORM_TYPES, *extra)) or "Norm" in type(module).__name__


def _own_parameters(module: nn.Module) -> Iterator[tuple[str, str, nn.Parameter]]:
    """``(tensor name, path under module, parameter)`` for the parameters that hold
    ``module``'s own tensors: its direct parameters and, for a tensor that
    ``torch.nn.utils.parametrize`` computes, the stored ``original`` (``original0``, ...)
    under ``parametrizations.<name>``, which is a child module's parameter."""
    for name, param in module.named_parameters(recurse=False):
        yield name, name, param
    if parametrize.is_parametrized(module):
        for tensor, stored in module.parametrizations.items():
            for name, param in stored.named_parameters(recurse=False):
                yield tensor, f"parametrizations.{tensor}.{name}", param


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    no_decay_types: Iterable[type[nn.Module]] = (),
    no_decay_names: Iterable[str] = (),
    bias_decay: bool = False,
) -> list[dict[str, Any]]:
    """Two optimizer groups: ``weight_decay`` for the weights, ``0.0`` for the parameters of
    norm layers (every L2BN layer included, see :func:`is_norm_layer`) and for biases.

    ``no_decay_types`` adds module classes whose parameters get no decay;
    ``no_decay_names`` adds parameters by qualified name (e.g. a model's
    ``no_weight_decay()`` set); ``bias_decay=True`` decays the biases of non-norm layers.
    Parameters that do not require gradients are left out; a parameter shared by several
    modules appears once. Empty groups are dropped. Use as
    ``torch.optim.SGD(l2bn.param_groups(model, 5e-4), lr=0.1, momentum=0.9)``.
    """
    extra = tuple(no_decay_types)
    names = set(no_decay_names)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        norm = is_norm_layer(module, extra)
        prefix = f"{module_name}." if module_name else ""
        for name, path, param in _own_parameters(module):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            named = prefix + name in names or prefix + path in names
            is_bias = name == "bias" and not bias_decay
            (no_decay if norm or is_bias or named else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]] or groups[:1]


__all__ = ["NORM_TYPES", "is_norm_layer", "param_groups"]
