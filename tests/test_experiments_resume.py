"""Kill a run mid-epoch and resume: bit-identical weights; damaged checkpoints are handled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from l2bn.cli import main as cli_main
from l2bn.experiments.checkpoint import (
    CheckpointError,
    load_checkpoint_file,
    load_latest_checkpoint,
)
from l2bn.experiments.metrics_log import read_metrics
from l2bn.experiments.runs import is_done
from l2bn.experiments.train import KILL_ENV, RunExistsError, train_run
from test_experiments_datasets import tiny_config, write_idx


def _train_cli(config_path: Path, directory: Path, *extra: str, kill_at: str | None = None):
    """``l2bn train`` in a subprocess (so that it can be killed)."""
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    if kill_at:
        env[KILL_ENV] = kill_at
    cmd = [sys.executable, "-m", "l2bn.cli", "train", "--config", str(config_path)]
    cmd += ["--run-dir", str(directory), "--quiet", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_killed_run_resumes_to_bit_identical_weights(tmp_path: Path, capsys) -> None:
    root = write_idx(tmp_path / "data", n_train=80, n_test=16)
    config = tiny_config(
        data_root=str(root),
        epochs=3,
        norm="l2bn",
        augment="cifar",
        mixup_alpha=0.4,
        label_smoothing=0.1,
    )
    config_path = tmp_path / "config.yaml"
    config_path.write_text(config.to_yaml())

    straight = tmp_path / "straight"
    train_run(config, 3, straight, quiet=True)

    killed = tmp_path / "killed"
    first = _train_cli(config_path, killed, kill_at="1:2")  # epoch 2 (0-based 1), step 3
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert not is_done(killed)
    assert load_checkpoint_file(killed / "checkpoint.pt")["epoch"] == 1
    cli_args = ["train", "--config", str(config_path), "--run-dir", str(killed), "--quiet"]
    assert cli_main(cli_args) == 1  # no --resume: refuses to restart silently
    assert "--resume" in capsys.readouterr().err
    assert cli_main([*cli_args, "--resume"]) == 0
    assert is_done(killed)

    a = load_checkpoint_file(straight / "checkpoint.pt")
    b = load_checkpoint_file(killed / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 3
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    rows_a = read_metrics(straight / "metrics.jsonl")
    rows_b = read_metrics(killed / "metrics.jsonl")
    assert [r["epoch"] for r in rows_b] == [1, 2, 3]
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in rows_a]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in rows_b]


def _run_two_epochs(tmp_path: Path) -> tuple[Path, object]:
    root = write_idx(tmp_path / "data", n_train=32, n_test=16)
    config = tiny_config(data_root=str(root), epochs=2)
    directory = tmp_path / "run"
    train_run(config, 3, directory, quiet=True)
    return directory, config


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_checkpoint_clear_error_and_previous_kept(tmp_path: Path, damage: str) -> None:
    directory, config = _run_two_epochs(tmp_path)
    latest, previous = directory / "checkpoint.pt", directory / "checkpoint.prev.pt"
    assert load_checkpoint_file(previous)["epoch"] == 1
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00junk" * 50)
    with pytest.raises(CheckpointError, match=r"checkpoint .*checkpoint\.pt is truncated"):
        load_checkpoint_file(latest)
    with pytest.warns(RuntimeWarning, match=r"previous good checkpoint .*checkpoint\.prev\.pt"):
        state = load_latest_checkpoint(directory)
    assert state["epoch"] == 1 and previous.exists()

    # resuming a longer run starts from the previous good checkpoint (epoch 1)
    (directory / "done").unlink()
    longer = config.replace(epochs=2)
    with pytest.warns(RuntimeWarning, match="previous good checkpoint"):
        train_run(longer, 3, directory, quiet=True, resume=True)
    rows = read_metrics(directory / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert load_checkpoint_file(latest)["epoch"] == 2


def test_both_checkpoints_bad_is_an_error_naming_both(tmp_path: Path) -> None:
    directory, _ = _run_two_epochs(tmp_path)
    (directory / "checkpoint.pt").write_bytes(b"bad")
    (directory / "checkpoint.prev.pt").write_bytes(b"worse")
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt.*checkpoint\.prev\.pt"):
        load_latest_checkpoint(directory)


def test_unfinished_run_is_not_restarted_without_resume(tmp_path: Path) -> None:
    directory, config = _run_two_epochs(tmp_path)
    (directory / "done").unlink()
    with pytest.raises(RunExistsError, match="--resume"):
        train_run(config, 3, directory, quiet=True, resume=False)
    with pytest.raises(RunExistsError, match="different config"):
        train_run(config.replace(lr=0.5), 3, directory, quiet=True)
