"""torch.compile and torch.export of models with L2BN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from l2bn import L2BatchNorm2d, convert_bn_to_l2bn


def _model() -> nn.Module:
    torch.manual_seed(0)
    return convert_bn_to_l2bn(
        nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(6, 4),
        )
    )


@pytest.mark.slow
@pytest.mark.parametrize("training", [False, True])
def test_compile_matches_eager(training):
    eager = _model().train(training)
    compiled_model = _model().train(training)
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model)
    x = torch.randn(4, 3, 8, 8) * torch.linspace(0.5, 3, 4).view(-1, 1, 1, 1)
    y_eager, y_comp = eager(x), compiled(x)
    torch.testing.assert_close(y_comp, y_eager, rtol=1e-5, atol=1e-5)
    y_eager.sum().backward()
    y_comp.sum().backward()
    for (name, p), q in zip(eager.named_parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
    for a, b in zip(eager.buffers(), compiled_model.buffers(), strict=True):
        torch.testing.assert_close(b, a)


def test_export_eval_model():
    model = _model().eval()
    x = torch.randn(3, 3, 8, 8)
    exported = torch.export.export(model, (x,))
    x2 = torch.randn(3, 3, 8, 8) * 5
    torch.testing.assert_close(exported.module()(x2), model(x2))


def test_export_layer_with_dynamic_batch():
    layer = L2BatchNorm2d(4).eval()
    batch = torch.export.Dim("batch", min=1)
    exported = torch.export.export(
        layer, (torch.randn(2, 4, 5, 5),), dynamic_shapes={"input": {0: batch}}
    )
    x = torch.randn(7, 4, 5, 5)
    torch.testing.assert_close(exported.module()(x), layer(x))


def test_export_training_mode_under_no_grad():
    """Training mode under torch.no_grad is traceable too (no data-dependent branch),
    including inputs whose rows need the centred variance (offsets of 1e3)."""
    layer = L2BatchNorm2d(4).train()
    with torch.no_grad():
        exported = torch.export.export(layer, (torch.randn(3, 4, 5, 5),))
        x = torch.randn(3, 4, 5, 5) * 3 + 1
        x[:, 1] += 1e3
        eager = L2BatchNorm2d(4).train()
        torch.testing.assert_close(exported.module()(x), eager(x), rtol=1e-5, atol=1e-4)
