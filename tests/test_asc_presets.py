"""The acoustic presets encode paper section 4.2 and the recipes it cites."""

from __future__ import annotations

import math

import pytest
import torch

from l2bn.experiments.presets import list_presets, load_preset
from l2bn.experiments.schedule import build_scheduler, lr_at
from l2bn.models import list_models

# paper section 4.2: SGD momentum 0.9, cosine restarts between 0.1 and 1e-5 (the recipe's
# LR_WarmRestart: cycles of 2, 4, 8, ... epochs); batch 32; 126 epochs (ResNet-17), 255 (FCNN,
# fsFCNN);
# mixup 0.4; ResNet-17 weight decay 1e-3, FCNN/fsFCNN none (their recipe's wd=0).
EXPECTED = {
    "asc-resnet17": ("asc_resnet17", 126, 1e-3, "asc"),
    "asc-fcnn": ("fcnn", 255, 0.0, "asc_specaugment"),
    "asc-fsfcnn": ("fsfcnn", 255, 0.0, "asc_specaugment"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_matches_section_4_2(name: str) -> None:
    assert name in list_presets()
    config = load_preset(name)
    model, epochs, weight_decay, augment = EXPECTED[name]
    assert config.name == name and config.dataset == "dcase2020-1a"
    assert config.model == model and model in list_models()
    assert (config.epochs, config.batch_size, config.lr, config.min_lr) == (epochs, 32, 0.1, 1e-5)
    assert (config.momentum, config.nesterov) == (0.9, False)
    assert config.weight_decay == weight_decay
    assert config.scheduler == "cosine_restarts"
    restarts = [2, 6, 14, 30, 62, 126] + ([254] if name == "asc-resnet17" else [])
    assert config.restart_epochs == restarts
    assert (config.augment, config.mixup_alpha, config.label_smoothing) == (augment, 0.4, 0.0)
    assert config.norm == "bn" and not config.metrics  # class maps: no flat embedding


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_schedule_restarts_at_0_1_and_ends_at_1e_5(name: str) -> None:
    config = load_preset(name)
    for restart in [0, *[e for e in config.restart_epochs if e < config.epochs]]:
        assert lr_at(config, restart) == pytest.approx(0.1)
        assert lr_at(config, restart + 0.999) < 0.1
    assert lr_at(config, config.epochs) == pytest.approx(1e-5)
    assert lr_at(config, 4.0) == pytest.approx((0.1 + 1e-5) / 2)  # middle of the 2-6 cycle


def _keras_lr_warm_restart(epochs: int, nbatch: int) -> list[float]:
    """The per-batch learning rates of the recipe's Keras callback ``LR_WarmRestart``
    (McDonnell & Gao; Hu et al.; the L2BN authors' ASC_L2BN scripts) with ``Tmult=2``,
    ``epochs_restart=[3, 7, 15, 31, 63, 127, 255]``, 0.1 and 1e-5, as its code computes them:
    ``on_epoch_begin`` gets 0-based epochs, ``on_batch_begin`` 0-based batches."""
    restarts = [3, 7, 15, 31, 63, 127, 255]
    low, high, tmult, start, lrs = 1e-5, 0.1, 2, 0, []
    for epoch in range(epochs):
        current = epoch if epoch + 1 < restarts[0] else epoch + 1
        if current in restarts:
            start, tmult = current, 2 * tmult
        for batch in range(nbatch):
            pts = current + batch / nbatch - start
            lrs.append(low + 0.5 * (high - low) * (1 + math.cos(pts / tmult * math.pi)))
    return lrs


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_schedule_is_the_recipes_lr_warm_restart(name: str) -> None:
    """Every step's learning rate is the Keras recipe's (cycles of 2, 4, ..., 64 epochs,
    i.e. torch's CosineAnnealingWarmRestarts(T_0=2, T_mult=2) at fractional epochs)."""
    config = load_preset(name)
    steps_per_epoch = 5
    epochs = min(config.epochs, 126)  # FCNNs: their last cycle (126-254) ends with the run
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=config.lr)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    reference = torch.optim.SGD([param], lr=config.lr)
    sgdr = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        reference, T_0=2, T_mult=2, eta_min=1e-5
    )
    got, torch_lrs = [], []
    for step in range(epochs * steps_per_epoch):
        got.append(optimizer.param_groups[0]["lr"])
        sgdr.step(step / steps_per_epoch)
        torch_lrs.append(reference.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    keras = _keras_lr_warm_restart(epochs, steps_per_epoch)
    assert got == pytest.approx(keras, abs=1e-12)
    assert got == pytest.approx(torch_lrs, abs=1e-12)
