"""Kill a run at every step of saving a checkpoint, also in the first save after a fallback
from a damaged checkpoint: a loadable checkpoint survives every kill (once the run has
saved one), and the resumed run ends bit-identical to an uninterrupted one.

A kill is simulated in-process and deterministically: the save-step hook raises ``Killed``,
a BaseException that no handler of the harness catches, so the files are left exactly as a
``kill -9`` at that instant leaves them (the OS file lock is released either way).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from l2bn.experiments import checkpoint as ckpt
from l2bn.experiments.checkpoint import CheckpointError, load_checkpoint_file, set_aside
from l2bn.experiments.metrics_log import read_metrics
from l2bn.experiments.train import train_run
from test_experiments_datasets import tiny_config, write_idx

SEED = 3


class Killed(BaseException):
    """Stands for kill -9 at one step of save_checkpoint."""


def kill_at(epoch: int, step: str, directory: Path):
    def hook(name: str, saving: int) -> None:
        if (saving, name) == (epoch, step):
            if name == "written":  # a write cut short: the temporary file is torn
                (directory / "checkpoint.pt.tmp").write_bytes(b"torn")
            raise Killed(f"{step} of epoch {epoch}")

    return hook


def _loadable_epochs(directory: Path) -> list[int]:
    epochs = []
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        with contextlib.suppress(CheckpointError):
            epochs.append(int(load_checkpoint_file(directory / name)["epoch"]))
    return epochs


def _assert_same_result(a_dir: Path, b_dir: Path) -> None:
    a = load_checkpoint_file(a_dir / "checkpoint.pt")
    b = load_checkpoint_file(b_dir / "checkpoint.pt")
    assert a["epoch"] == b["epoch"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    strip = [
        {k: v for k, v in r.items() if k != "seconds"}
        for r in read_metrics(a_dir / "metrics.jsonl")
    ]
    assert strip == [
        {k: v for k, v in r.items() if k != "seconds"}
        for r in read_metrics(b_dir / "metrics.jsonl")
    ]


@pytest.mark.filterwarnings("ignore:checkpoint .* does not exist:RuntimeWarning")
def test_kill_at_every_save_step_then_resume_is_bit_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_idx(tmp_path / "data", n_train=32, n_test=16)
    config = tiny_config(data_root=str(root), epochs=3)
    straight = tmp_path / "straight"
    train_run(config, SEED, straight, quiet=True)

    run = tmp_path / "crashed"
    no_rotation = [s for s in ckpt.SAVE_STEPS if s != "rotated"]
    # epoch 1: no checkpoint to rotate yet; epoch 2: checkpoint.pt becomes checkpoint.prev.pt
    plan = [(1, step) for step in no_rotation] + [(2, step) for step in ckpt.SAVE_STEPS]
    for epoch, step in plan:
        monkeypatch.setattr(ckpt, "SAVE_STEP_HOOK", kill_at(epoch, step, run))
        with pytest.raises(Killed):
            train_run(config, SEED, run, quiet=True, resume=True)
        saved = _loadable_epochs(run)
        if epoch > 1 or step == "published":
            assert saved, f"no loadable checkpoint after a kill at {step} of epoch {epoch}"
        assert max(saved, default=0) >= epoch - 1, (epoch, step, saved)
    assert _loadable_epochs(run) == [2, 1]

    # checkpoint.pt (epoch 2) is damaged: the run falls back to checkpoint.prev.pt (epoch 1),
    # and is killed at every step of the first save after that fallback
    latest = run / "checkpoint.pt"
    latest.write_bytes(latest.read_bytes()[:300])
    torn = latest.read_bytes()
    for step in no_rotation:
        monkeypatch.setattr(ckpt, "SAVE_STEP_HOOK", kill_at(2, step, run))
        with pytest.warns(RuntimeWarning, match="previous good checkpoint"), pytest.raises(Killed):
            train_run(config, SEED, run, quiet=True, resume=True)
        assert load_checkpoint_file(run / "checkpoint.prev.pt")["epoch"] == 1, step
        # the damaged file is kept under another name, never rotated over the good one
        assert (run / "checkpoint.damaged-1.pt").read_bytes() == torn
        assert not (run / "checkpoint.damaged-2.pt").exists()

    monkeypatch.setattr(ckpt, "SAVE_STEP_HOOK", None)
    train_run(config, SEED, run, quiet=True, resume=True)
    _assert_same_result(straight, run)
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]


def test_set_aside_never_replaces_a_file(tmp_path: Path) -> None:
    for text in ("first", "second"):
        (tmp_path / "checkpoint.pt").write_text(text)
        set_aside(tmp_path / "checkpoint.pt")
    assert (tmp_path / "checkpoint.damaged-1.pt").read_text() == "first"
    assert (tmp_path / "checkpoint.damaged-2.pt").read_text() == "second"
    assert not (tmp_path / "checkpoint.pt").exists()
