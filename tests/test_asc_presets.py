"""The acoustic presets encode paper section 4.2 and the recipes it cites."""

from __future__ import annotations

import pytest

from l2bn.experiments.presets import list_presets, load_preset
from l2bn.experiments.schedule import lr_at
from l2bn.models import list_models

# paper section 4.2: SGD momentum 0.9, cosine restarts between 0.1 and 1e-5 after
# epochs 3, 7, 15, 31, 63, 127, 255; batch 32; 126 epochs (ResNet-17), 255 (FCNN, fsFCNN);
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
    assert config.restart_epochs == [3, 7, 15, 31, 63, 127, 255]
    assert (config.augment, config.mixup_alpha, config.label_smoothing) == (augment, 0.4, 0.0)
    assert config.norm == "bn" and not config.metrics  # class maps: no flat embedding


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_schedule_restarts_at_0_1_and_ends_at_1e_5(name: str) -> None:
    config = load_preset(name)
    for restart in [0, *[e for e in config.restart_epochs if e < config.epochs]]:
        assert lr_at(config, restart) == pytest.approx(0.1)
        assert lr_at(config, restart + 0.999) < 0.1
    assert lr_at(config, config.epochs) == pytest.approx(1e-5)
    assert lr_at(config, 5.0) == pytest.approx((0.1 + 1e-5) / 2)  # middle of the 3-7 cycle
