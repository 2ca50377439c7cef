"""Recompute the running statistics of every batch-statistics norm (SWA's ``update_bn``).

``torch.optim.swa_utils.update_bn`` resets and recomputes the statistics of the layers that
are ``_BatchNorm`` instances; L2BN layers derive from ``_NormBase`` and the mixed norms of
:mod:`l2bn.norms` (SN, BCN, BIN) from ``nn.Module``, so it skips them and their statistics
would stay those of the last trained weights. :func:`update_bn` is the same procedure for
BatchNorm and for every class that sets ``l2bn_batch_running_stats = True``: its running
statistics follow BatchNorm's rule (``momentum=None`` is a cumulative average) and
``reset_running_stats()`` resets them. Frozen L2BN layers do not set it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@torch.no_grad()
def update_bn(loader: Iterable[Any], model: nn.Module, device: Any = None) -> None:
    """:func:`torch.optim.swa_utils.update_bn` for BatchNorm, L2BN and the mixed norms.

    Resets the running statistics of every layer that :func:`_recomputes_running_stats`
    (BatchNorm, trainable L2BN, SN, BCN, BIN, tracking them), then runs ``model`` in training
    mode over ``loader`` once with a cumulative average (``momentum=None``); each batch is a
    tensor, or a list/tuple whose first element is the input. Momenta and the model's mode are
    restored. Frozen L2BN layers are left alone.
    """
    momenta: dict[nn.Module, float | None] = {}
    for module in model.modules():
        if _recomputes_running_stats(module):
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


def _recomputes_running_stats(module: nn.Module) -> bool:
    """True for a layer whose running statistics :func:`update_bn` resets and recomputes: a
    ``_BatchNorm``, or a class that sets ``l2bn_batch_running_stats = True`` (trainable L2BN,
    SN, BCN, BIN), that tracks running statistics."""
    marked = bool(getattr(type(module), "l2bn_batch_running_stats", False))
    return (marked or isinstance(module, _BatchNorm)) and bool(module.track_running_stats)


__all__ = ["update_bn"]
