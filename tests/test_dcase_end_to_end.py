"""Features, loading and training steps end to end on a generated folder in the official layout.

Two scenes, 10 s clips (the real clip length: 423 feature frames, so the 400-frame crop of
augmentation ``asc`` really crops): the reader computes and caches the features, the
project's deterministic loader batches them, and an L2BN model takes SGD steps; once through
the data API by hand, once through the training harness (``train_run``) with the
``asc-fcnn`` preset's recipe and a narrow FCNN registered for the test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from l2bn import is_l2_batch_norm
from l2bn.data import build_loader, load_dataset, mixup, soft_cross_entropy
from l2bn.models import create_model, register_model
from l2bn.models.asc_fcnn import build_fcnn
from test_dcase_reader import write_layout

SCENES = ("airport", "tram")


TRAINING_BATCHES: list[tuple[int, ...]] = []


def _count_training_batch(module, inputs) -> None:
    if module.training:
        TRAINING_BATCHES.append(tuple(inputs[0].shape))


@register_model("test_asc_narrow_fcnn")
def narrow_fcnn(num_classes: int, in_channels: int, norm_layer, **kwargs):
    model = build_fcnn(num_classes, in_channels, norm_layer, widths=(4, 8, 8))
    model.register_forward_pre_hook(_count_training_batch)
    return model


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = (
        tmp_path_factory.mktemp("tau2020") / "TAU-urban-acoustic-scenes-2020-mobile-development"
    )
    return write_layout(folder, {True: 2, False: 1}, seconds=10.0, classes=SCENES)


def test_features_loader_and_two_sgd_steps(root: Path) -> None:
    train = load_dataset("dcase2020-1a", root=root.parent, train=True)  # finds the official name
    test = load_dataset("dcase2020-1a", root=root, train=False)
    assert (len(train), len(test)) == (4, 2)
    assert train.image_size == (128, 423)
    loader = build_loader(train, batch_size=2, train=True, seed=121, augment="asc")
    assert len(loader) == 2
    torch.manual_seed(0)
    model = create_model("fcnn", num_classes=10, norm_layer="l2bn", widths=(4, 8, 8))
    assert any(is_l2_batch_norm(m) for m in model.modules())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    generator = torch.Generator().manual_seed(0)
    steps = 0
    for images, labels in loader:
        assert images.shape == (2, 3, 128, 400) and labels.dtype == torch.int64
        assert set(labels.tolist()) <= {train.classes.index(s) for s in SCENES}
        mixed, targets = mixup(images, labels, 10, 0.4, generator)
        loss = soft_cross_entropy(model(mixed), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
        steps += 1
    assert steps == 2
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    model.eval()
    with torch.no_grad():
        images, labels = next(iter(build_loader(test, batch_size=2, train=False, seed=0)))
        assert images.shape == (2, 3, 128, 423)  # evaluation: the full clip
        assert model(images).shape == (2, 10)
    assert any((root / "l2bn_cache").rglob("*.pt"))


def test_two_training_steps_through_the_harness(root: Path, tmp_path: Path) -> None:
    from l2bn.experiments.presets import load_preset
    from l2bn.experiments.train import train_run

    config = load_preset("asc-fcnn").replace(
        model="test_asc_narrow_fcnn",
        norm="l2bn",
        data_root=str(root),
        epochs=1,
        batch_size=2,
        metrics=False,
        device="cpu",
    )
    assert (config.augment, config.mixup_alpha, config.scheduler) == (
        "asc_specaugment",
        0.4,
        "cosine_restarts",
    )
    TRAINING_BATCHES.clear()
    train_run(config, seed=121, directory=tmp_path / "run", quiet=True)
    assert TRAINING_BATCHES == [(2, 3, 128, 400)] * 2  # two SGD steps on 400-frame crops
    (line,) = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    row = json.loads(line)
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["test_loss"])
    assert 0.0 <= row["test_acc"] <= 100.0
