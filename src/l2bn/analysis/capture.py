"""Capture the input of a model's classification layer (the features of section 4.1).

The paper measures intra- and inter-angles on the features that enter the classification
layer ("only meaningful for the classification layer"); :func:`collect_features` records
them with a forward pre-hook.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from l2bn._classification import classification_layer


def find_classifier(model: nn.Module, layer: str | nn.Module | None = None) -> nn.Module:
    """The module whose input is captured.

    ``layer`` may be a module of ``model``, or its qualified name (as in
    ``model.named_modules()``). Default: ``model.classifier`` if that attribute is a
    module, else the last ``nn.Linear`` registered in ``model``.
    """
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError("l2bn.analysis: layer is not a submodule of model")
        return layer
    if isinstance(layer, str):
        modules = dict(model.named_modules())
        if layer not in modules:
            names = [n for n in modules if n]
            shown = ", ".join(names[:30]) + (", ..." if len(names) > 30 else "")
            raise ValueError(f"l2bn.analysis: model has no module {layer!r}; valid names: {shown}")
        return modules[layer]
    if layer is not None:
        raise TypeError(f"l2bn.analysis: layer must be a str, an nn.Module or None, got {layer!r}")
    classifier = classification_layer(model)
    if classifier is None:
        raise ValueError(
            "l2bn.analysis: model has no `classifier` attribute and no nn.Linear; "
            "pass layer= (a module name or a module)"
        )
    return classifier


@torch.no_grad()
def collect_features(
    model: nn.Module,
    loader: Iterable[Any],
    layer: str | nn.Module | None = None,
    device: torch.device | str | None = None,
    max_samples: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Run ``model`` over ``loader`` and return the classifier's inputs and the labels.

    ``loader`` yields ``(images, labels)`` batches. The model runs in eval mode under
    ``torch.no_grad``; the train/eval mode of every submodule is restored afterwards.
    Batches are moved to ``device`` (default: the device of the model's first parameter
    or buffer, else CPU); the results stay there. At most ``max_samples`` samples are
    kept. Returns ``(features float32 (N, d), labels int64 (N,))``, each captured input
    flattened to ``(batch, d)``.
    """
    if max_samples is not None and max_samples < 0:
        raise ValueError(f"l2bn.analysis: max_samples must be >= 0, got {max_samples}")
    target = find_classifier(model, layer)
    device = torch.device(device) if device is not None else _model_device(model)
    captured: list[Tensor] = []

    def hook(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        # A pre-hook, and a copy: the input as it enters the layer, which the layer (e.g.
        # an in-place ReLU at its start) could otherwise change before it is read.
        if not inputs or not isinstance(inputs[0], Tensor):
            raise TypeError("l2bn.analysis: the captured layer's first input is not a tensor")
        captured.append(inputs[0].detach().clone())

    modes = {m: m.training for m in model.modules()}
    handle = target.register_forward_pre_hook(hook)
    features: list[Tensor] = []
    labels: list[Tensor] = []
    kept = 0
    try:
        model.eval()
        for batch in loader:
            if max_samples is not None and kept >= max_samples:
                break
            images, targets = _split_batch(batch)
            captured.clear()
            model(images.to(device))
            if len(captured) != 1:
                raise RuntimeError(
                    f"l2bn.analysis: the captured layer ran {len(captured)} times in one "
                    "forward pass; pass layer= to choose a layer that runs exactly once"
                )
            x = captured[0].flatten(1).float()
            y = torch.as_tensor(targets)
            if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                raise TypeError(f"l2bn.analysis: labels must be integers, got {y.dtype}")
            y = y.to(device=x.device, dtype=torch.int64).flatten()
            if y.shape[0] != x.shape[0]:
                raise ValueError(
                    f"l2bn.analysis: batch of {y.shape[0]} labels for {x.shape[0]} features"
                )
            if max_samples is not None:
                x, y = x[: max_samples - kept], y[: max_samples - kept]
            features.append(x)
            labels.append(y)
            kept += x.shape[0]
    finally:
        handle.remove()
        for module, training in modes.items():
            module.training = training
    if not features:
        return torch.empty(0, 0, device=device), torch.empty(0, dtype=torch.int64, device=device)
    return torch.cat(features), torch.cat(labels)


def _split_batch(batch: Any) -> tuple[Tensor, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(
        f"l2bn.analysis: the loader must yield (images, labels) batches, got {type(batch).__name__}"
    )


def _model_device(model: nn.Module) -> torch.device:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")
