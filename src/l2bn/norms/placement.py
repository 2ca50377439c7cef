"""L2BN in selected layers only: the placements of Table 4 (ResNet-56 on CIFAR100).

The model is built with plain BatchNorm and then converted with
:func:`l2bn.convert_bn_to_l2bn` and a predicate. Our reading of Table 4:

* ``"none"``: the BN baseline; ``"all"``: every BatchNorm;
* ``"classifier"`` ("only classification layer"): the BatchNorm whose output feeds the
  classification layer, i.e. the last BatchNorm before it. In the CIFAR ResNet it
  is the second BN of the last residual block: its output, plus the shortcut, through
  ReLU and global pooling, is the classifier's input, the feature whose angles the
  paper measures. The classification layer is ``model.classifier`` (else the last
  ``nn.Linear``, as the angle metrics take it) and the BN is the last one registered
  before it, registration order being the order of execution for every model of
  :mod:`l2bn.models`. The acoustic models have norms after their classification layer
  (on the class maps): those are not it. A model with no classification layer: the
  last BatchNorm;
* ``"stage1"`` / ``"stage2-3"`` ("ResStage 1" / "ResStage 2-3"): the BatchNorms inside
  the residual stages ``layer1`` / ``layer2`` and ``layer3``. The stem's BN (after the
  first convolution, outside any residual stage) is in neither.
"""

from __future__ import annotations

import re

from torch import nn

from l2bn._classification import classification_layer
from l2bn.convert import Predicate, convert_bn_to_l2bn

PLACEMENTS = ("none", "all", "classifier", "stage1", "stage2-3")

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_STAGES = {"stage1": ("layer1",), "stage2-3": ("layer2", "layer3")}
_CIFAR_STAGES = ("layer1", "layer2", "layer3")
_STAGE_NAME = re.compile(r"layer\d+")


def _norm_feeding_classifier(model: nn.Module) -> str:
    """The name of the last BatchNorm registered before the classification layer (the
    last BatchNorm when the model has no such layer)."""
    classifier = classification_layer(model)
    names: list[str] = []
    for name, m in model.named_modules():
        if m is classifier:
            break
        if type(m) in _BATCH_NORMS:
            names.append(name)
    if not names:
        raise ValueError(
            "placement 'classifier': the model has no BatchNorm layer before its "
            "classification layer"
        )
    return names[-1]


def placement_predicate(model: nn.Module, where: str) -> Predicate:
    """The ``convert_bn_to_l2bn`` predicate selecting the BatchNorms of placement ``where``."""
    if where not in PLACEMENTS:
        raise ValueError(f"unknown placement {where!r}; valid placements: {', '.join(PLACEMENTS)}")
    if where == "none":
        return lambda name, module: False
    if where == "all":
        return lambda name, module: True
    if where == "classifier":
        feeding = _norm_feeding_classifier(model)
        return lambda name, module: name == feeding
    stages = _STAGES[where]
    children = dict(model.named_children())
    missing = [s for s in stages if s not in children]
    if missing:
        raise ValueError(
            f"placement {where!r} needs residual stages named {', '.join(stages)} "
            f"(as in l2bn.models' CIFAR ResNets); the model has no {', '.join(missing)}"
        )
    extra = sorted(n for n in children if _STAGE_NAME.fullmatch(n) and n not in _CIFAR_STAGES)
    if extra:
        raise ValueError(
            f"placement {where!r} is defined for the three residual stages "
            f"({', '.join(_CIFAR_STAGES)}) of l2bn.models' CIFAR ResNets (paper Table 4); "
            f"this model also has {', '.join(extra)}, which neither 'stage1' nor 'stage2-3' "
            "would convert: use 'all', or a predicate with l2bn.convert_bn_to_l2bn"
        )
    prefixes = tuple(f"{s}." for s in stages)
    return lambda name, module: name.startswith(prefixes)


def apply_l2bn(
    model: nn.Module, where: str, *, l2_eps: float | None = None, scale: bool = True
) -> nn.Module:
    """Convert the BatchNorms of placement ``where`` (see :data:`PLACEMENTS`) to L2BN."""
    predicate = placement_predicate(model, where)
    if where == "none":
        return model
    return convert_bn_to_l2bn(model, predicate, l2_eps=l2_eps, scale=scale)
