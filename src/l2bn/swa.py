"""Recompute the running statistics of BatchNorm and L2BN layers (SWA's ``update_bn``).

``torch.optim.swa_utils.update_bn`` resets and recomputes the statistics of the layers that
are ``_BatchNorm`` instances; L2BN layers derive from ``_NormBase`` and are skipped by it, so
their statistics would stay those of the last trained weights. :func:`update_bn` is the same
procedure for BatchNorm and L2BN layers alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from l2bn.layers import _L2BatchNorm


@torch.no_grad()
def update_bn(loader: Iterable[Any], model: nn.Module, device: Any = None) -> None:
    """:func:`torch.optim.swa_utils.update_bn` for BatchNorm and L2BN layers.

    Resets the running statistics of every BatchNorm and (trainable) L2BN layer that tracks
    them, then runs ``model`` in training mode over ``loader`` once with a cumulative average
    (``momentum=None``); each batch is a tensor, or a list/tuple whose first element is the
    input. Momenta and the model's mode are restored. Frozen L2BN layers are left alone.
    """
    momenta: dict[nn.Module, float | None] = {}
    for module in model.modules():
        if isinstance(module, (_BatchNorm, _L2BatchNorm)) and module.track_running_stats:
            module.reset_running_stats()
            momenta[module] = module.momentum
    if not momenta:
        return
    was_training = model.training
    model.train()
    for module in momenta:
        module.momentum = None
    for batch in loader:
        if isinstance(batch, (list, tuple)):
            batch = batch[0]
        if device is not None:
            batch = batch.to(device)
        model(batch)
    for module, momentum in momenta.items():
        module.momentum = momentum
    model.train(was_training)


__all__ = ["update_bn"]
