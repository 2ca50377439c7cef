"""The backbones of the paper's experiments, each taking any norm layer.

``create_model(name, num_classes=..., in_channels=..., norm_layer=...)``,
``list_models()`` and ``register_model(name)``. One module per family; modules named
``asc_*`` in this package (the acoustic models) are imported and register themselves.
"""

import importlib
import pkgutil

from l2bn.models.registry import create_model, list_models, register_model

FAMILIES = ("cifar_resnet", "densenet", "vgg", "resnext", "regnet", "imagenet_resnet")
"""The image-classification families (Tables 1 and 2), imported in the paper's order."""

for _family in FAMILIES:
    importlib.import_module(f"{__name__}.{_family}")
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
    if _info.name.startswith("asc_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["FAMILIES", "create_model", "list_models", "register_model"]
