"""The harness under ``torchrun`` (gloo, 2 processes): resume across world sizes both ways."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from l2bn import L2BatchNorm2d
from l2bn.experiments import checkpoint as ckpt
from l2bn.experiments.checkpoint import load_checkpoint_file, load_model_state
from l2bn.experiments.config import ExperimentConfig
from l2bn.experiments.metrics_log import read_metrics
from l2bn.experiments.train import build_model, train_run
from test_experiments_crash import Killed, kill_at
from test_experiments_datasets import tiny_config, write_idx


def _killed_in_epoch_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny L2BN run (batch 8, 2 epochs) whose epoch 1 ran in one process, killed while
    saving epoch 2; its directory, with its config in ``tmp_path / "config.yaml"``."""
    root = write_idx(tmp_path / "data", n_train=32, n_test=16)
    config = tiny_config(data_root=str(root), epochs=2, batch_size=8, norm="l2bn")
    directory = tmp_path / "run"
    monkeypatch.setattr(ckpt, "SAVE_STEP_HOOK", kill_at(2, "begin", directory))
    with pytest.raises(Killed):
        train_run(config, 3, directory, quiet=True)
    (tmp_path / "config.yaml").write_text(config.to_yaml())
    return directory


def _torchrun_train(directory: Path, *flags: str) -> subprocess.CompletedProcess:
    """``l2bn train`` of the run in ``directory`` under torchrun, 2 processes, with the
    config in ``directory.parent / "config.yaml"``."""
    config_path = directory.parent / "config.yaml"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "l2bn.cli", "train", "--config", str(config_path), "--run-dir"]
    cmd += [str(directory), "--quiet", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)


def _torchrun_resume(directory: Path, *flags: str) -> subprocess.CompletedProcess:
    """``l2bn train --resume`` of the run in ``directory`` under torchrun, 2 processes."""
    return _torchrun_train(directory, "--resume", *flags)


def test_torchrun_two_processes_resume_and_checkpoint_portability(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = _killed_in_epoch_2(tmp_path, monkeypatch)
    single = load_checkpoint_file(directory / "checkpoint.pt")
    assert single["world_size"] == 1 and single["epoch"] == 1

    result = _torchrun_resume(directory, "--sync-bn")
    assert result.returncode == 0, result.stderr[-3000:]

    state = load_checkpoint_file(directory / "checkpoint.pt")
    assert state["world_size"] == 2 and state["epoch"] == 2
    assert not any(key.startswith("module.") for key in state["model"])
    # batch 8 is the total: 4 per process, 32 / 8 = 4 steps per epoch in both set-ups
    assert state["scheduler"]["last_epoch"] == 4 + 4
    assert [row["epoch"] for row in read_metrics(directory / "metrics.jsonl")] == [1, 2]
    moved = any(
        not torch.equal(single["model"][k], state["model"][k])
        for k in single["model"]
        if k.endswith("weight")
    )
    assert moved

    # the distributed checkpoint loads in a single process and evaluates
    saved = ExperimentConfig.from_yaml((directory / "config.yaml").read_text())
    model = build_model(saved, 10, 1)
    load_model_state(model, state["model"])
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)


def test_torchrun_reuses_a_finished_run_only_with_its_norm_batch(tmp_path: Path) -> None:
    """A run finished in one process (batch 8: its norms see 8 samples) is not the run of a
    torchrun job of 2 processes without --sync-bn (each normalizes over its 4): refused,
    naming the norm batch, nothing retrained; with --sync-bn (8 again) it is reused."""
    root = write_idx(tmp_path / "data", n_train=32, n_test=16)
    config = tiny_config(data_root=str(root), epochs=1, batch_size=8, norm="l2bn")
    directory = tmp_path / "run"
    train_run(config, 3, directory, quiet=True)
    (tmp_path / "config.yaml").write_text(config.to_yaml())
    done = (directory / "done").read_text()
    stamp = (directory / "checkpoint.pt").stat().st_mtime_ns

    result = _torchrun_train(directory)
    assert result.returncode == 1, "a run of another norm batch was reported as this one"
    assert "norm_batch: 8 -> 4" in result.stderr and "--sync-bn setting" in result.stderr
    assert (directory / "done").read_text() == done
    assert (directory / "checkpoint.pt").stat().st_mtime_ns == stamp

    result = _torchrun_train(directory, "--sync-bn")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (directory / "done").read_text() == done
    assert (directory / "checkpoint.pt").stat().st_mtime_ns == stamp  # reused, not retrained


def test_torchrun_training_metrics_cover_every_rank(tmp_path: Path) -> None:
    """train_loss and train_acc are over the samples of all ranks, not rank 0's share.

    32 images, batch 8 in total, 4 per process: rank r takes the positions r, r + 2, ...
    of the epoch's order, so with --sync-bn each step sees the single process's batch and
    the two runs train the same model; their training metrics must agree.
    """
    root = write_idx(tmp_path / "data", n_train=32, n_test=16)
    config = tiny_config(data_root=str(root), epochs=1, batch_size=8, lr=0.01, weight_decay=0.0)
    train_run(config, 3, tmp_path / "single", quiet=True)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(config.to_yaml())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "l2bn.cli", "train", "--config", str(config_path), "--seed", "3"]
    cmd += ["--run-dir", str(tmp_path / "ddp"), "--quiet", "--sync-bn"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    (single,) = read_metrics(tmp_path / "single" / "metrics.jsonl")
    (ddp,) = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    assert ddp["test_loss"] == pytest.approx(single["test_loss"], rel=1e-4)  # same model
    assert ddp["train_loss"] == pytest.approx(single["train_loss"], rel=1e-4)
    assert ddp["train_acc"] == pytest.approx(single["train_acc"], abs=1e-9)


def test_torchrun_training_metrics_count_each_sample_once(tmp_path: Path) -> None:
    """31 images over 2 processes: the sampler pads rank 1 with a repeat of the epoch's
    first image, which must not count twice in train_loss and train_acc.

    LN has no batch statistics and lr 0 keeps the weights: every image gets the same
    logits in one process and under torchrun, so the metrics over the 31 images agree. The
    test set (15 images) is evaluated by rank 0 alone, each image once."""
    root = write_idx(tmp_path / "data", n_train=31, n_test=15)
    config = tiny_config(data_root=str(root), epochs=1, batch_size=8, norm="ln", lr=0.0)
    train_run(config, 3, tmp_path / "single", quiet=True)
    (tmp_path / "config.yaml").write_text(config.to_yaml())
    result = _torchrun_train(tmp_path / "ddp", "--seed", "3")
    assert result.returncode == 0, result.stderr[-3000:]

    (single,) = read_metrics(tmp_path / "single" / "metrics.jsonl")
    (ddp,) = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    assert ddp["train_loss"] == pytest.approx(single["train_loss"], rel=1e-6)
    assert ddp["train_acc"] == pytest.approx(single["train_acc"], abs=1e-9)
    assert ddp["test_acc"] == pytest.approx(single["test_acc"], abs=1e-9)  # all 15, once


def test_sync_conversion_keeps_l2bn_apart_from_bn() -> None:
    from torch import nn

    from l2bn import is_l2_batch_norm
    from l2bn.experiments.distributed import convert_sync_norms
    from l2bn.sync import SyncL2BatchNorm

    l2 = build_model(tiny_config(norm="l2bn"), 10, 1)
    norms_before = sum(is_l2_batch_norm(m) for m in l2.modules())
    converted = convert_sync_norms(l2, torch.device("cpu"))
    synced = [m for m in converted.modules() if isinstance(m, SyncL2BatchNorm)]
    assert len(synced) == norms_before > 0
    assert not any(type(m) in (nn.BatchNorm2d, L2BatchNorm2d) for m in converted.modules())
    bn = build_model(tiny_config(norm="bn"), 10, 1)
    with pytest.raises(ValueError, match=r"plain BatchNorm2d.*CUDA only"):
        convert_sync_norms(bn, torch.device("cpu"))
    assert not any(is_l2_batch_norm(m) for m in bn.modules())  # BN never becomes L2BN


@pytest.mark.parametrize("norm", ["sn", "bcn", "bin"])
def test_sync_conversion_says_mixed_norms_stay_per_process(norm: str) -> None:
    # SN, BCN and BIN keep batch statistics of their own: --sync-bn cannot synchronize them,
    # and must say so instead of training per-process statistics under a "synced" run.
    from l2bn.convert import ConversionWarning
    from l2bn.experiments.distributed import convert_sync_norms

    model = build_model(tiny_config(norm=norm), 10, 1)
    with pytest.warns(ConversionWarning, match=r"--sync-bn: layer .*not synchronized"):
        convert_sync_norms(model, torch.device("cpu"))


def test_resume_with_other_batch_statistics_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint whose BN layers saw the whole batch (one process, or torchrun with
    --sync-bn) resumed under torchrun without --sync-bn would go on normalizing over each
    process's share (4 of 8 samples): another training than the one the run started, so
    it is refused; with --sync-bn it resumes (the test above)."""
    directory = _killed_in_epoch_2(tmp_path, monkeypatch)
    before = (directory / "checkpoint.pt").read_bytes()
    result = _torchrun_resume(directory)
    assert result.returncode != 0, "resumed with per-process batch statistics"
    assert "--sync-bn" in result.stderr
    assert (directory / "checkpoint.pt").read_bytes() == before
