"""Issue 13: a timm model built from BatchNormAct2d trains with L2BN everywhere."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import l2bn
from _timm import import_timm


@pytest.mark.parametrize("name", ["test_efficientnet", "regnetx_002"])
def test_converted_timm_model_trains_with_l2bn_everywhere(name, one_thread):
    timm = import_timm()
    torch.manual_seed(0)
    bn_model = timm.create_model(name, pretrained=False, num_classes=4)
    bn_layers = [n for n, m in bn_model.named_modules() if isinstance(m, _BatchNorm)]
    assert bn_layers
    assert any(type(m) is timm.layers.BatchNormAct2d for m in bn_model.modules())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, report = l2bn.convert_bn_to_l2bn(copy.deepcopy(bn_model), return_report=True)
    l2_layers = [n for n, m in model.named_modules() if l2bn.is_l2_batch_norm(m)]
    assert l2_layers == bn_layers and len(report.converted) == len(bn_layers)
    assert not any(isinstance(m, _BatchNorm) for m in model.modules())
    # Activations kept: the same act modules in the same places.
    acts = {n: type(m) for n, m in bn_model.named_modules() if n.endswith(".act")}
    assert acts == {n: type(m) for n, m in model.named_modules() if n.endswith(".act")}

    x = torch.randn(6, 3, 32, 32) * torch.logspace(-1, 1, 6).view(-1, 1, 1, 1)
    y = torch.randint(0, 4, (6,))
    with torch.no_grad():
        assert (model(x) - bn_model(x)).abs().max() > 1e-3
    opt = torch.optim.SGD(l2bn.param_groups(model, 1e-4), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    model.eval()
    assert torch.isfinite(model(x)).all()
    # The recipes of a timm training script keep it L2BN.
    synced = timm.layers.convert_sync_batchnorm(model)
    assert [n for n, m in synced.named_modules() if l2bn.is_l2_batch_norm(m)] == bn_layers
    back = l2bn.convert_l2bn_to_bn(model)
    assert [n for n, m in back.named_modules() if isinstance(m, _BatchNorm)] == bn_layers
