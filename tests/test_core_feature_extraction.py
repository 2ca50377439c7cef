"""torchvision's ``create_feature_extractor`` (FX-based) on a converted ResNet.

torchvision's wheel does not import beside the CPU torch (its compiled operators are built
for CUDA); ``feature_extraction`` itself is pure Python and is loaded from the installed
files (see ``tests/_timm.py``), which is all this test needs.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
import types

import pytest
import torch

from _timm import _missing, _torchvision_pure_python
from l2bn import L2BatchNorm2d, convert_bn_to_l2bn
from l2bn.models import create_model


def _feature_extraction() -> types.ModuleType:
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        _missing("torchvision is not installed")
    _torchvision_pure_python()
    torchvision = sys.modules["torchvision"]
    if "torchvision.models" not in sys.modules and not hasattr(torchvision, "__version__"):
        # torchvision.models/__init__ imports every model (and compiled ops): skip it.
        models = types.ModuleType("torchvision.models")
        models.__path__ = [f"{torchvision.__path__[0]}/models"]
        sys.modules["torchvision.models"] = models
        torchvision.models = models
    return importlib.import_module("torchvision.models.feature_extraction")


@pytest.mark.parametrize("training", [False, True])
def test_create_feature_extractor_on_a_converted_resnet(training):
    fx = _feature_extraction()
    torch.manual_seed(0)
    model = convert_bn_to_l2bn(create_model("resnet20", num_classes=10)).train(training)
    reference = copy.deepcopy(model)
    nodes = {"layer1": "early", "layer3": "late"}
    train_nodes, eval_nodes = fx.get_graph_node_names(model)
    # Each L2BN layer is one node named by its module path, as a BatchNorm layer's is.
    assert "norm1" in train_nodes and "norm1" in eval_nodes
    assert "layer1.0.norm1" in train_nodes
    extractor = fx.create_feature_extractor(model, return_nodes=nodes).train(training)
    modules = dict(extractor.named_modules())
    layer_calls = [
        n
        for n in extractor.graph.nodes
        if n.op == "call_module" and isinstance(modules[n.target], L2BatchNorm2d)
    ]
    assert layer_calls, "L2BN layers were not recorded as one call each"
    x = torch.randn(4, 3, 16, 16) * torch.logspace(-1, 1, 4).view(-1, 1, 1, 1)
    captured = {}
    hooks = [
        reference.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, key=key: captured.__setitem__(key, out)
        )
        for name, key in nodes.items()
    ]
    reference(x)
    for hook in hooks:
        hook.remove()
    out = extractor(x)
    for key in nodes.values():
        torch.testing.assert_close(out[key], captured[key], rtol=1e-5, atol=1e-5)
