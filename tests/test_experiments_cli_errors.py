"""Errors while working are one line with no traceback: Ctrl-C (with how to resume), a
full disk, damaged or hostile checkpoints (without torch's weights_only advice)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from l2bn.cli import main
from l2bn.experiments import checkpoint as ckpt
from l2bn.experiments.checkpoint import CheckpointError, load_checkpoint_file
from l2bn.experiments.runs import is_done
from test_experiments_datasets import tiny_config, write_idx


def _train_args(tmp_path: Path, epochs: int = 1) -> tuple[list[str], Path]:
    root = write_idx(tmp_path / "data", n_train=16, n_test=8)
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_config(data_root=str(root), epochs=epochs).to_yaml())
    run = tmp_path / "run"
    return ["train", "--config", str(config), "--run-dir", str(run), "--quiet"], run


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_ctrl_c_says_how_to_resume(tmp_path: Path, monkeypatch, capsys) -> None:
    args, run = _train_args(tmp_path, epochs=2)

    def interrupt(step: str, epoch: int) -> None:
        if (epoch, step) == (2, "begin"):
            raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "SAVE_STEP_HOOK", interrupt)
    assert main(args) == 130
    err = _one_line(capsys)
    assert err.startswith("l2bn train: interrupted.") and "--resume" in err
    monkeypatch.setattr(ckpt, "SAVE_STEP_HOOK", None)
    assert main([*args, "--resume"]) == 0 and is_done(run)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_is_one_line_and_keeps_nothing_half_written(tmp_path: Path, capsys) -> None:
    args, run = _train_args(tmp_path)
    run.mkdir()
    (run / "checkpoint.pt.tmp").symlink_to("/dev/full")  # every write: No space left
    assert main(args) == 1
    err = _one_line(capsys)
    assert f"could not write checkpoint {run / 'checkpoint.pt.tmp'}" in err
    assert "No space left on device" in err and "--resume" in err
    assert not os.path.lexists(run / "checkpoint.pt.tmp")
    assert not (run / "checkpoint.pt").exists() and not is_done(run)


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_checkpoint_messages_never_advise_weights_only_false(tmp_path: Path) -> None:
    hostile = tmp_path / "hostile.pt"
    torch.save({"format_version": ckpt.FORMAT_VERSION, "x": _Exploit(tmp_path / "pwned")}, hostile)
    with pytest.raises(CheckpointError, match="holds a Python object") as err:
        load_checkpoint_file(hostile)
    assert "weights_only" not in str(err.value) and str(hostile) in str(err.value)
    assert not (tmp_path / "pwned").exists()

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00junk" * 50)
    with pytest.raises(CheckpointError, match="truncated or corrupted") as err:
        load_checkpoint_file(garbage)
    assert "weights_only" not in str(err.value)


@pytest.mark.parametrize("command", ["train", "compare"])
def test_missing_data_is_one_line_in_the_command_lines_words(
    command: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    # No CIFAR-100 anywhere: the error says how to get it, as the command line spells it
    # (--data-root, `l2bn data --download`) and as Python does (root=, download=True).
    monkeypatch.setenv("L2BN_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    argv = [command, "--preset", "cifar100-vgg", "--runs-dir", str(tmp_path / "runs"), "--quiet"]
    assert main(argv) == 1
    err = _one_line(capsys)
    assert err.startswith(f"l2bn {command}: error: cifar100 python batches not found"), err
    assert "--data-root (command line) or root= (Python)" in err
    assert "`l2bn data --download cifar100` or download=True" in err
    assert "pass root=" not in err
