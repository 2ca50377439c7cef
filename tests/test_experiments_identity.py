"""Run identity: a run directory is reused or resumed only by the run it was made for.

Changed hyperparameters are refused (naming the fields and the ways forward), --overwrite
starts afresh, and a checkpoint of another run (seed, configuration or architecture) is
refused naming the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from l2bn.cli import main
from l2bn.experiments import checkpoint as ckpt
from l2bn.experiments.checkpoint import CheckpointError, load_checkpoint_file
from l2bn.experiments.identity import RunMismatchError, fingerprint, run_identity
from l2bn.experiments.metrics_log import read_metrics
from l2bn.experiments.runs import is_done
from l2bn.experiments.train import train_run
from test_experiments_crash import Killed, kill_at
from test_experiments_datasets import tiny_config, write_idx


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_identity_covers_what_changes_results_and_nothing_else() -> None:
    base = tiny_config()
    same = fingerprint(run_identity(base, 3))
    for execution_only in (
        {"threads": 2},
        {"device": "auto"},
        {"data_root": "/elsewhere"},
        {"num_workers": 2},
        {"name": "other"},
        {"seeds": [3, 4]},
    ):
        assert fingerprint(run_identity(base.replace(**execution_only), 3)) == same
    for result_field in (
        {"lr": 0.01},
        {"epochs": 3},
        {"norm": "bn"},
        {"train_subset": 8},
        {"augment": "cifar"},
        {"weight_decay": 0.0},
        {"metrics_max_samples": 8},
    ):
        assert fingerprint(run_identity(base.replace(**result_field), 3)) != same
    assert fingerprint(run_identity(base, 4)) != same
    assert run_identity(base, 3)["torch_version"] == str(torch.__version__)


def test_compare_refuses_changed_hyperparameters_then_overwrite(tmp_path: Path, capsys) -> None:
    root = write_idx(tmp_path / "data", n_train=32, n_test=16)
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_config(name="tiny", data_root=str(root), epochs=1, seeds=[5]).to_yaml())
    runs = tmp_path / "runs"
    args = ["compare", "--config", str(config), "--runs-dir", str(runs), "--norms", "bn"]
    args += ["--jobs", "1", "--no-plots", "--quiet"]
    assert main(args) == 0
    run = runs / "tiny" / "resnet20-bn" / "seed5"
    stamp = (run / "checkpoint.pt").stat().st_mtime_ns
    capsys.readouterr()

    for change, field in ((["--lr", "0.01"], "lr: 0.05 -> 0.01"), (["--epochs", "2"], "epochs")):
        assert main([*args, *change]) == 1
        err = _error_line(capsys)
        assert field in err and "--overwrite" in err and "--runs-dir" in err
        assert (run / "checkpoint.pt").stat().st_mtime_ns == stamp  # nothing retrained

    assert main([*args, "--lr", "0.01", "--overwrite"]) == 0
    assert "lr: 0.01" in (run / "config.yaml").read_text()
    assert (run / "checkpoint.pt").stat().st_mtime_ns != stamp
    assert read_metrics(run / "metrics.jsonl")[0]["lr"] == pytest.approx(0.01)


def test_directory_without_fingerprint_is_not_reused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(tiny_config().to_yaml())
    (run / "done").write_text("{}")
    with pytest.raises(RunMismatchError, match=r"fingerprint\.json"):
        train_run(tiny_config(), 3, run, quiet=True)


def _unfinished(config, seed: int, directory: Path, monkeypatch) -> None:
    """A run killed while saving its second epoch: checkpoint.pt holds epoch 1."""
    monkeypatch.setattr(ckpt, "SAVE_STEP_HOOK", kill_at(2, "begin", directory))
    with pytest.raises(Killed):
        train_run(config, seed, directory, quiet=True)
    monkeypatch.setattr(ckpt, "SAVE_STEP_HOOK", None)


def test_checkpoint_of_another_seed_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    root = write_idx(tmp_path / "data", n_train=32, n_test=16)
    config = tiny_config(data_root=str(root), epochs=2)
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(config.to_yaml())
    other, mine = tmp_path / "seed122", tmp_path / "seed121"
    train_run(config, 122, other, quiet=True)
    _unfinished(config, 121, mine, monkeypatch)
    (mine / "checkpoint.pt").write_bytes((other / "checkpoint.pt").read_bytes())

    args = ["train", "--config", str(config_path), "--seed", "121", "--run-dir", str(mine)]
    assert main([*args, "--resume", "--quiet"]) == 1
    err = _error_line(capsys)
    assert f"checkpoint {mine / 'checkpoint.pt'} belongs to seed 122" in err
    assert not is_done(mine)


def test_checkpoint_of_another_architecture_names_the_file(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    from l2bn.models import create_model

    root = write_idx(tmp_path / "data", n_train=32, n_test=16)
    config = tiny_config(data_root=str(root), epochs=2)
    run = tmp_path / "run"
    _unfinished(config, 3, run, monkeypatch)
    path = run / "checkpoint.pt"
    state = load_checkpoint_file(path)
    state["model"] = create_model("resnet32", num_classes=10, in_channels=1).state_dict()
    torch.save(state, path)

    with pytest.raises(CheckpointError, match=r"another architecture") as err:
        train_run(config, 3, run, quiet=True, resume=True)
    assert str(path) in str(err.value) and len(str(err.value).splitlines()) == 1
