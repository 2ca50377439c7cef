"""Presets against the supplement's Table 1, config parsing and overrides, LR schedules."""

from __future__ import annotations

import math

import pytest
import yaml

from l2bn.experiments.config import ExperimentConfig, apply_assignments
from l2bn.experiments.presets import list_presets, load_config_file, load_preset
from l2bn.experiments.schedule import build_scheduler, lr_at

# Supplement section B, Table 1, transcribed: (LR, scheduler, min_lr, milestones, gamma, WD,
# BS, epochs, warm-up), plus mixup 0.5 / label smoothing 0.1 for RegNet (section B text).
TABLE1 = {
    "cifar100-resnet": ("cifar100", 0.1, "cosine", 0.0, [], 5e-4, 128, 200, 0),
    "cifar100-densenet": ("cifar100", 0.1, "multistep", None, [150, 225], 1e-4, 64, 300, 0),
    "cifar100-vgg": ("cifar100", 0.1, "cosine", 0.0, [], 5e-4, 128, 200, 0),
    "cifar100-regnet": ("cifar100", 0.5, "cosine", 0.0, [], 5e-4, 512, 200, 5),
    "cifar100-resnext": ("cifar100", 0.1, "cosine", 0.0, [], 5e-4, 128, 300, 0),
    "imagenet-resnet": ("imagenet", 0.2, "cosine", 0.0, [], 5e-5, 256, 100, 0),
    "imagenet-resnext": ("imagenet", 0.2, "cosine", 0.0, [], 5e-5, 256, 100, 0),
}
MODEL_FAMILY = {
    "cifar100-resnet": "resnet",
    "cifar100-densenet": "densenet",
    "cifar100-vgg": "vgg",
    "cifar100-regnet": "regnet",
    "cifar100-resnext": "resnext",
    "imagenet-resnet": "resnet",
    "imagenet-resnext": "resnext",
}


@pytest.mark.parametrize("name", sorted(TABLE1))
def test_preset_equals_supplement_table1_row(name: str) -> None:
    dataset, lr, scheduler, min_lr, milestones, wd, bs, epochs, warmup = TABLE1[name]
    config = load_preset(name)
    assert config.name == name
    assert config.dataset == dataset
    assert config.model.startswith(MODEL_FAMILY[name])
    assert config.lr == lr
    assert config.scheduler == scheduler
    if scheduler == "multistep":
        assert config.milestones == milestones and config.gamma == 0.1
    else:
        assert config.min_lr == min_lr
    assert config.weight_decay == wd
    assert config.batch_size == bs
    assert config.epochs == epochs
    assert config.warmup_epochs == warmup
    assert config.momentum == 0.9 and config.nesterov is True
    assert config.seeds == [121, 122, 123, 124, 125]
    assert config.augment == ("imagenet" if dataset == "imagenet" else "cifar")
    regnet = name == "cifar100-regnet"
    assert config.mixup_alpha == (0.5 if regnet else 0.0)
    assert config.label_smoothing == (0.1 if regnet else 0.0)


def test_every_shipped_preset_loads_and_the_main_job_is_bn_vs_resnet20() -> None:
    names = list_presets()
    assert set(TABLE1) <= set(names)
    for name in names:
        load_preset(name)
    main = load_preset("fmnist-resnet20")
    assert main.dataset == "fashion-mnist" and main.model == "resnet20"
    assert len(main.seeds) == 3 and main.metrics


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="cifar100-resnet"):
        load_preset("nope")


def test_yaml_round_trip_and_coercion() -> None:
    config = load_preset("cifar100-regnet")
    assert ExperimentConfig.from_yaml(config.to_yaml()) == config
    # PyYAML reads 1e-4 (no dot) as a string: it must still become a float
    parsed = ExperimentConfig.from_yaml("weight_decay: 1e-4\nseeds: 7\ntrain_subset: null\n")
    assert parsed.weight_decay == 1e-4 and parsed.seeds == [7] and parsed.train_subset is None


def test_bad_values_give_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown config key.*valid:"):
        ExperimentConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match=r"scheduler.*cosine"):
        ExperimentConfig(scheduler="linear")
    with pytest.raises(ValueError, match="epochs must be an integer"):
        ExperimentConfig.from_dict({"epochs": "ten"})
    with pytest.raises(ValueError, match="needs norm 'l2bn'"):
        ExperimentConfig(norm="gn", l2bn_layers="stage1")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    "field", ["lr", "min_lr", "momentum", "weight_decay", "gamma", "mixup_alpha", "label_smoothing"]
)
def test_every_float_setting_must_be_finite(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        ExperimentConfig(**{field: value})
    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        ExperimentConfig.from_yaml(f"{field}: {value}")


def test_integers_seeds_and_names() -> None:
    for text in ("inf", "nan", ".inf", "1.5"):
        with pytest.raises(ValueError, match="epochs must be an integer"):
            ExperimentConfig.from_dict({"epochs": text})
    # seeds cover torch.manual_seed's range exactly, big ones without a float's rounding
    big = 2**64 - 1
    assert ExperimentConfig.from_dict({"seeds": f"0,{big}"}).seeds == [0, big]
    for seeds in ([-1], [2**64], "-5"):
        with pytest.raises(ValueError, match=r"seeds must be in \[0, 2\*\*64 - 1\]"):
            ExperimentConfig.from_dict({"seeds": seeds})
    assert ExperimentConfig(name="my-run.v2").name == "my-run.v2"
    for name in ("", " ", ".", "..", "../x", "a/b", "/abs", "a\\b"):
        with pytest.raises(ValueError, match="must be a plain folder name"):
            ExperimentConfig(name=name)


def test_set_overrides_and_config_file(tmp_path) -> None:
    base = load_preset("cifar100-resnet")
    changed = apply_assignments(
        base, ["epochs=3", "weight_decay=1e-4", "seeds=1,2", "norm_kwargs.channels_per_group=4"]
    )
    assert changed.epochs == 3 and changed.weight_decay == 1e-4 and changed.seeds == [1, 2]
    assert changed.norm_kwargs == {"channels_per_group": 4}
    with pytest.raises(ValueError, match="key=value"):
        apply_assignments(base, ["epochs"])
    path = tmp_path / "over.yaml"
    path.write_text("preset: cifar100-vgg\nepochs: 5\n")
    from_file = load_config_file(path)
    assert from_file.model == "vgg16" and from_file.epochs == 5 and from_file.lr == 0.1


def test_numbers_in_exponent_notation_reach_the_layers_as_numbers(tmp_path) -> None:
    """YAML 1.1 (PyYAML) reads ``1e-3`` as a string. The typed fields converted it back, but
    ``norm_kwargs`` and ``dataset_kwargs`` go to the layers as read: ``--set
    norm_kwargs.eps=1e-3`` gave L2BN the string ``'1e-3'`` (a TypeError inside its forward).
    Every way in (``--set``, a config file, a mapping given to ``--set``) reads a float; a
    quoted value stays a string."""
    base = load_preset("fmnist-resnet20")
    changed = apply_assignments(
        base, ["norm_kwargs.eps=1e-3", "norm_kwargs.l2_eps=1E-6", "dataset_kwargs={a: 2.5e3}"]
    )
    assert changed.norm_kwargs == {"eps": 1e-3, "l2_eps": 1e-6}
    assert changed.dataset_kwargs == {"a": 2500.0}
    path = tmp_path / "over.yaml"
    path.write_text("norm: l2bn\nnorm_kwargs: {eps: 1e-3, l2_eps: -3e+2, tag: '1e-3'}\n")
    from_file = load_config_file(path)
    assert from_file.norm_kwargs == {"eps": 1e-3, "l2_eps": -300.0, "tag": "1e-3"}
    assert ExperimentConfig.from_yaml(changed.to_yaml()) == changed  # round trip

    import torch

    from l2bn.models import create_model

    model = create_model(
        changed.model,
        num_classes=10,
        in_channels=1,
        norm_layer="l2bn",
        norm_kwargs=changed.norm_kwargs,
    )
    assert model(torch.randn(4, 1, 28, 28)).shape == (4, 10)  # a string eps raised here


def test_strings_that_look_like_exponent_numbers_round_trip_through_yaml() -> None:
    """``to_yaml`` wrote the string ``'1e5'`` unquoted (a string under YAML 1.1), which
    :mod:`l2bn.experiments.yaml_text` reads back as the float 100000.0: a run's
    ``config.yaml`` did not give back its config (a string option became a number)."""
    config = ExperimentConfig(
        name="1e5",
        notes="2E3",
        norm_kwargs={"tag": "1e-3", "eps": 1e-3},
        dataset_kwargs={"file": "5e10", "n": 3},
    )
    assert ExperimentConfig.from_yaml(config.to_yaml()) == config


def test_string_fields_keep_exponent_like_text_as_written(tmp_path) -> None:
    """Exponent notation is read as a number for the options that reach the layers as read
    (``norm_kwargs``, ``dataset_kwargs``); a string field keeps its text: ``--set
    name=1e5`` named the run folder ``100000.0`` (``'1e5'`` before), and so did ``name:
    1e5`` in a config file or in an existing run's ``config.yaml`` (written unquoted)."""
    base = ExperimentConfig()
    changed = apply_assignments(base, ["name=1e5", "notes=2E3", "norm_kwargs.eps=1e-3"])
    assert (changed.name, changed.notes, changed.norm_kwargs) == ("1e5", "2E3", {"eps": 1e-3})
    path = tmp_path / "over.yaml"
    path.write_text("name: 1e5\nnotes: 2E3\nlr: 1e-2\nnorm_kwargs: {eps: 1e-3}\n")
    for config in (load_config_file(path), ExperimentConfig.from_yaml(path.read_text())):
        assert (config.name, config.notes, config.lr) == ("1e5", "2E3", 0.01)
        assert config.norm_kwargs == {"eps": 1e-3}


def test_dry_run_prints_yaml_that_parses_back_to_the_same_config(tmp_path, capsys) -> None:
    from l2bn.cli import main

    over = tmp_path / "o.yaml"
    over.write_text("batch_size: 32\n")
    args = ["train", "--preset", "cifar100-densenet", "--config", str(over), "--epochs", "7"]
    assert main([*args, "--set", "lr=0.05", "--dry-run"]) == 0
    printed = ExperimentConfig.from_dict(yaml.safe_load(capsys.readouterr().out))
    expected = load_preset("cifar100-densenet").replace(batch_size=32, epochs=7, lr=0.05)
    assert printed == expected
    assert not (tmp_path / "runs").exists()


def test_a_config_files_preset_never_overrides_an_explicit_preset(tmp_path, capsys) -> None:
    """``--preset A --config FILE`` with ``preset: B`` in FILE resolved to B: refused now;
    the same preset twice, or the file's alone, still work."""
    from l2bn.cli import main

    over = tmp_path / "c1.yaml"
    over.write_text("preset: fmnist-resnet20\nepochs: 2\n")
    dry = ["--config", str(over), "--runs-dir", str(tmp_path / "runs"), "--dry-run"]
    for command in ("compare", "train"):
        assert main([command, "--preset", "cifar100-resnet", *dry]) == 2
        err = capsys.readouterr().err
        assert f"l2bn {command}: error: {over} names preset 'fmnist-resnet20', but --preset " in err
        assert "cifar100-resnet was given" in err
    for given in ([], ["--preset", "fmnist-resnet20"]):
        assert main(["train", *given, *dry]) == 0
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["dataset"] == "fashion-mnist" and printed["epochs"] == 2
    assert not (tmp_path / "runs").exists()


def test_compare_dry_run_prints_the_norms_it_runs(tmp_path, capsys) -> None:
    """Not the preset's single ``norm``, which compare replaces with each of --norms."""
    from l2bn.cli import main

    runs = ["--runs-dir", str(tmp_path / "runs")]
    assert main(["compare", *runs, "--norms", "l2bn", "--dry-run"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["norms"] == ["l2bn"] and "norm" not in printed
    assert printed["l2bn_layers"] == "all" and printed["model"] == "resnet20"
    assert main(["compare", *runs, "--placements", "none,stage1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    printed = yaml.safe_load(out)
    assert printed["placements"] == ["none", "stage1"]
    assert "norm" not in printed and "l2bn_layers" not in printed
    assert "resnet20-bn/seed121" in out and "resnet20-l2bn-stage1/seed121" in out


def _config(**kw) -> ExperimentConfig:
    return ExperimentConfig(**{"epochs": 10, "lr": 0.1, **kw})


def test_cosine_multistep_warmup_and_restarts() -> None:
    cos = _config(scheduler="cosine", min_lr=0.0)
    assert lr_at(cos, 0) == pytest.approx(0.1)
    assert lr_at(cos, 5) == pytest.approx(0.05)
    assert lr_at(cos, 10) == pytest.approx(0.0, abs=1e-12)
    step = _config(scheduler="multistep", milestones=[3, 6], gamma=0.1)
    assert [round(lr_at(step, e), 6) for e in (0, 2.9, 3, 5, 6, 9)] == [
        0.1,
        0.1,
        0.01,
        0.01,
        0.001,
        0.001,
    ]
    warm = _config(scheduler="cosine", warmup_epochs=2)
    assert lr_at(warm, 1) == pytest.approx(0.05)
    assert lr_at(warm, 2) == pytest.approx(0.1)
    assert lr_at(warm, 6) == pytest.approx(0.05)
    restarts = _config(scheduler="cosine_restarts", restart_epochs=[3, 7, 15], min_lr=1e-5)
    assert lr_at(restarts, 0) == pytest.approx(0.1)
    assert lr_at(restarts, 2.999) == pytest.approx(1e-5, abs=1e-6)
    assert lr_at(restarts, 3) == pytest.approx(0.1)
    assert lr_at(restarts, 5) == pytest.approx(1e-5 + (0.1 - 1e-5) * 0.5)
    assert lr_at(restarts, 7) == pytest.approx(0.1)
    assert lr_at(restarts, 10) == pytest.approx(1e-5, abs=1e-9)


def test_scheduler_steps_per_iteration_and_round_trips_its_state() -> None:
    import torch

    from l2bn.experiments.checkpoint import scheduler_state

    config = _config(scheduler="cosine", epochs=2)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=config.lr)
    sched = build_scheduler(opt, config, steps_per_epoch=4)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(config, i / 4) for i in range(6)])
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    sched2 = build_scheduler(opt2, config, steps_per_epoch=4)
    sched2.load_state_dict(scheduler_state(sched))
    opt2.load_state_dict(opt.state_dict())
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(lr_at(config, 7 / 4))
    assert not math.isnan(opt2.param_groups[0]["lr"])
