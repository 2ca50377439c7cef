"""collect_features: the input of the classification layer, in eval mode, mode restored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from l2bn.analysis import collect_features


class Net(nn.Module):
    """Features (with BatchNorm, so eval vs train mode shows), then `classifier`."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Linear(16, 3)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x).flatten(1))


def loader(n_batches: int = 3, batch: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 1, 6, 6, generator=g), torch.randint(0, 3, (batch,), generator=g))
        for _ in range(n_batches)
    ]


def test_captures_the_classifier_input_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = Net()
    model.features[1].running_mean.fill_(0.3)  # eval and train BN now give different outputs
    data = loader()
    model.train()
    stats_before = model.features[1].running_mean.clone()
    feats, labels = collect_features(model, data)
    assert feats.shape == (15, 16) and feats.dtype == torch.float32
    assert labels.dtype == torch.int64
    torch.testing.assert_close(labels, torch.cat([y for _, y in data]))
    model.eval()
    with torch.no_grad():
        expected = torch.cat([model.embed(x).flatten(1) for x, _ in data])
    torch.testing.assert_close(feats, expected)
    assert not feats.requires_grad
    torch.testing.assert_close(model.features[1].running_mean, stats_before)


def test_restores_every_module_mode() -> None:
    model = Net().train()
    model.features[1].eval()  # a mixed state must come back as it was
    collect_features(model, loader(1))
    assert model.training and model.classifier.training and model.features[0].training
    assert not model.features[1].training
    model.eval()
    collect_features(model, loader(1))
    assert not any(m.training for m in model.modules())


def test_layer_by_name_or_module_and_default_last_linear() -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 2))
    data = [(torch.randn(4, 6), torch.tensor([0, 1, 0, 1]))]
    default, _ = collect_features(mlp, data)
    assert default.shape == (4, 5)  # input of the last Linear
    by_name, _ = collect_features(mlp, data, layer="2")
    by_module, _ = collect_features(mlp, data, layer=mlp[2])
    expected = mlp[1](mlp[0](data[0][0])).detach()
    torch.testing.assert_close(by_name, expected)
    torch.testing.assert_close(by_module, expected)


def test_captures_the_input_before_the_classifier_changes_it_in_place() -> None:
    """A classification layer that modifies its input in place (here an in-place ReLU
    in front of the Linear) must not change what is recorded: the features are the
    input as it enters the layer, negative values included."""

    class InPlaceHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Linear(6, 8)
            self.classifier = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(8, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.features(x))

    torch.manual_seed(0)
    model = InPlaceHead()
    data = [(torch.randn(4, 6), torch.tensor([0, 1, 2, 0]))]
    feats, _ = collect_features(model, data)
    with torch.no_grad():
        expected = model.features(data[0][0])
    assert bool((expected < 0).any())
    torch.testing.assert_close(feats, expected)


def test_max_samples_truncates() -> None:
    feats, labels = collect_features(Net(), loader(4, 5), max_samples=7)
    assert feats.shape[0] == labels.shape[0] == 7


def test_bad_layers_are_reported() -> None:
    with pytest.raises(ValueError, match=r"no module 'head'.*classifier"):
        collect_features(Net(), loader(1), layer="head")
    with pytest.raises(ValueError, match="not a submodule"):
        collect_features(Net(), loader(1), layer=nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        collect_features(nn.Sequential(nn.Flatten()), loader(1))
    shared = nn.Linear(4, 4)
    twice = nn.Sequential(shared, nn.ReLU(), shared)
    with pytest.raises(RuntimeError, match="ran 2 times"):
        collect_features(twice, [(torch.randn(2, 4), torch.tensor([0, 1]))])
    model = Net().train()
    with pytest.raises(TypeError, match=r"\(images, labels\)"):
        collect_features(model, [torch.randn(2, 1, 6, 6)])
    assert model.training  # restored after an error too


@pytest.mark.parametrize(
    "targets",
    [torch.tensor([0.7, 1.9, 0.2, 1.0, 2.5]), [0.5, 1.0, 2.0, 0.0, 1.0], torch.ones(5).bool()],
)
def test_non_integer_labels_are_refused(targets) -> None:
    """Labels must be class indices, as for angle_metrics: float labels (soft or mixed
    targets, regression values) are not rounded down to some class silently."""
    images = torch.randn(5, 1, 6, 6)
    with pytest.raises(TypeError, match="integers"):
        collect_features(Net(), [(images, targets)])
