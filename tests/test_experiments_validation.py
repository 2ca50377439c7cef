"""Validate before work: every bad name, value, folder or device is one line
``l2bn <command>: error: ...`` with exit code 2, before anything is written.

Each command runs on MNIST with an empty ``--data-root`` and no other place to find it:
should the check it tests be missing, the command stops at the data (exit code 1) instead
of training."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch

from l2bn.cli import main
from test_experiments_datasets import write_idx

CASES = {
    "unknown norm in --norms": (["compare", "--norms", "bn,nosuch"], "unknown norm 'nosuch'"),
    "norm kwarg": (["train", "--set", "norm_kwargs.foo=1"], "unexpected keyword argument 'foo'"),
    "bad YAML": (["train", "--config", "{bad}"], "bad.yaml: not valid YAML (line 3, column"),
    "runs dir is a file": (["train", "--runs-dir", "{file}"], "is a file"),
    "runs dir under a file": (["compare", "--runs-dir", "{file}/sub"], "is a file"),
    "unknown device": (["train", "--device", "nosuch"], "unknown device 'nosuch'"),
    "several seeds in train": (["train", "--seeds", "1,2"], "l2bn train runs one"),
    "bad --set value": (["compare", "--set", "lr=abc"], "lr must be a number, got 'abc'"),
    "bad --set key": (["train", "--set", "lr_max=1"], "unknown config key 'lr_max'"),
    "bad flag value": (["train", "--epochs", "x"], "--epochs: epochs must be an integer"),
    "unknown model": (["train", "--model", "nosuch"], "unknown model 'nosuch'"),
    "unknown dataset": (["train", "--dataset", "nosuch"], "unknown dataset 'nosuch'"),
    "unknown augmentation": (["train", "--set", "augment=nosuch"], "unknown augmentation"),
    "unknown placement": (["compare", "--placements", "all,nosuch"], "--placements: unknown"),
    "unknown preset": (["compare", "--preset", "nosuch"], "unknown preset 'nosuch'"),
    "--norm in compare": (["compare", "--norm", "lnbn"], "--norm: compare trains one variant"),
    "unknown --norm in compare": (["compare", "--norm", "foo"], "unknown norm 'foo'; valid"),
    "--set norm in compare": (["compare", "--set", "norm=ln"], "--set norm: compare trains"),
    "seed listed twice": (["compare", "--seeds", "121,121", "--jobs", "2"], "seed 121 listed"),
    "seed twice in train": (["train", "--seeds", "7,7"], "seed 7 listed twice"),
    # --overwrite deletes what --resume would continue: neither may silently win
    "--resume with --overwrite": (["train", "--resume", "--overwrite"], "either --resume (cont"),
    "norm listed twice": (["compare", "--norms", "bn,l2bn,BN"], "'BN' listed twice"),
    "negative --jobs": (["compare", "--jobs", "-1"], "--jobs: expected 0 (auto) or a positive"),
    # names are case-sensitive: BN would train into resnet20-BN, a variant apart from bn
    "--norms in upper case": (["compare", "--norms", "BN,L2BN"], "norm 'BN' must be written 'bn'"),
    "one of --norms in upper case": (["compare", "--norms", "bn,L2BN"], "must be written 'l2bn'"),
    "--norm in upper case": (["train", "--norm", "L2BN"], "norm 'L2BN' must be written 'l2bn'"),
    "--norm with a space": (["train", "--norm", " bn"], "norm ' bn' must be written 'bn'"),
    "--model in upper case": (["compare", "--model", "RESNET20"], "must be written 'resnet20'"),
    "--dataset in upper case": (["train", "--dataset", "MNIST"], "must be written 'mnist'"),
    "augment in upper case": (["train", "--set", "augment=None"], "must be written 'none'"),
    # NaN passes a `< 0` check: every float setting must be finite
    "NaN --lr": (["compare", "--lr", "nan"], "lr must be a finite number, got nan"),
    "NaN weight decay": (["train", "--set", "weight_decay=nan"], "weight_decay must be a finite"),
    "infinite momentum": (["compare", "--set", "momentum=inf"], "momentum must be a finite"),
    "NaN gamma": (["train", "--set", "gamma=.nan"], "gamma must be a finite number"),
    "negative gamma": (["train", "--set", "gamma=-0.1"], "gamma must be >= 0"),
    "infinite --epochs": (["train", "--epochs", "inf"], "epochs must be an integer, got 'inf'"),
    "negative seed": (["compare", "--seeds=121,-1"], "seeds must be in [0, 2**64 - 1]"),
    "negative --seed": (["train", "--seed", "-1"], "--seed: seeds must be in [0, 2**64 - 1]"),
    "seed past 2**64": (["train", "--seeds", str(2**64)], "seeds must be in [0, 2**64 - 1]"),
    # the name is one folder level under --runs-dir
    "empty --name": (["compare", "--name", ""], "name '' must be a plain folder name"),
    "--name with ..": (["compare", "--name", "../../escape"], "must be a plain folder name"),
    "absolute --name": (["train", "--name", "/abs/x"], "name '/abs/x' must be a plain folder"),
    "--name with a slash": (["train", "--name", "a/b"], "name 'a/b' must be a plain folder"),
}


@pytest.fixture
def no_data(tmp_path: Path, monkeypatch) -> list[str]:
    """Options that leave a command no dataset to train on (MNIST, an empty root)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.delenv("L2BN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(empty))
    return ["--dataset", "mnist", "--data-root", str(empty)]


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"l2bn {command}: error: "), err
    return err


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    case: str, tmp_path: Path, monkeypatch, capsys, no_data: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("epochs: 3\nlr: [0.1\nmodel: : x\n")
    (tmp_path / "file").write_text("not a folder")
    argv, expected = CASES[case]
    argv = [a.format(bad=tmp_path / "bad.yaml", file=tmp_path / "file") for a in argv]
    if "--runs-dir" not in argv:
        argv += ["--runs-dir", str(tmp_path / "runs")]
    argv[1:1] = no_data
    before = sorted(os.listdir(tmp_path))
    assert main(argv) == 2
    assert expected in _one_error_line(capsys, argv[0])
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_usage_error(tmp_path: Path, capsys, no_data) -> None:
    assert main(["train", *no_data, "--device", "cuda", "--runs-dir", str(tmp_path / "r")]) == 2
    assert "device 'cuda' requested, but" in _one_error_line(capsys, "train")


def test_runs_dir_without_write_permission(
    tmp_path: Path, monkeypatch, capsys, no_data: list[str]
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root may write anywhere: let the system say no
        real_mkdir = Path.mkdir

        def mkdir(self: Path, *args, **kwargs) -> None:
            if self.parent == locked:
                raise PermissionError(13, "Permission denied", str(self))
            real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", mkdir)
    assert main(["compare", *no_data, "--runs-dir", str(locked / "runs")]) == 2
    assert (
        f"runs folder {locked / 'runs'} (its existing parent {locked}) is not writable "
        "(Permission denied)"
    ) in _one_error_line(capsys, "compare")
    assert os.listdir(locked) == []


SYSTEM_FOLDERS = [
    ("--out", "/proc/l2bn-no-such/report", "report folder"),
    ("--runs-dir", "/sys/l2bn-no-such", "runs folder"),
]


@pytest.mark.parametrize(("option", "folder", "role"), SYSTEM_FOLDERS)
def test_folders_that_cannot_be_written_are_found_before_any_work(
    option: str, folder: str, role: str, tmp_path: Path, capsys, no_data: list[str]
) -> None:
    """/proc and /sys pass a permission check for root (os.access), but nothing can be
    created in them: found by trying, before any work (here: the missing data, exit 1)."""
    top = Path(*Path(folder).parts[:2])
    if not top.is_dir():
        pytest.skip(f"no {top} here")
    argv = ["compare", *no_data, "--runs-dir", str(tmp_path / "runs"), option, folder]
    assert main(argv) == 2
    err = _one_error_line(capsys, "compare")
    assert f"{role} {folder} (its existing parent" in err and "is not writable (" in err


def test_report_out_that_cannot_be_written_is_found_before_reading_runs(
    tmp_path: Path, capsys
) -> None:
    """`l2bn report --out /proc/...` is refused with exit 2 before the runs are read (here
    there are none: reading them first would say so, exit 1)."""
    if not Path("/proc").is_dir():
        pytest.skip("no /proc here")
    (tmp_path / "runs").mkdir()
    assert main(["report", str(tmp_path / "runs"), "--out", "/proc/l2bn-report"]) == 2
    err = _one_error_line(capsys, "report")
    assert "report folder /proc/l2bn-report" in err and "is not writable (" in err


def test_the_folder_check_leaves_nothing_behind(tmp_path: Path) -> None:
    from l2bn.experiments.preflight import check_output_dir

    check_output_dir(tmp_path / "a" / "b" / "c", "runs folder")
    check_output_dir(tmp_path / "d" / ".." / "e", "runs folder")
    (tmp_path / "kept").mkdir()
    check_output_dir(tmp_path / "kept", "report folder")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == [Path("kept")]


def test_tensorboard_missing_is_found_before_any_work(
    tmp_path: Path, monkeypatch, capsys, no_data: list[str]
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    for command in ("compare", "train"):
        argv = [command, *no_data, "--runs-dir", str(tmp_path / "runs"), "--tensorboard"]
        assert main(argv) == 2
        err = _one_error_line(capsys, command)
        assert "--tensorboard needs the tensorboard package" in err
        assert "pip install 'l2bn[tensorboard]'" in err
    assert sorted(os.listdir(tmp_path)) == ["empty"]


@pytest.mark.parametrize(
    ("command", "option", "expected"),
    [
        ("compare", "--train-subset=17", "train_subset 17 is larger than the train split"),
        ("train", "--train-subset=17", "train_subset 17 is larger than the train split"),
        ("compare", "--test-subset=9", "test_subset 9 is larger than the test split"),
        ("train", "--test-subset=9", "test_subset 9 is larger than the test split"),
    ],
)
def test_a_subset_larger_than_the_data_is_found_before_any_work(
    command: str, option: str, expected: str, tmp_path: Path, capsys
) -> None:
    """The split sizes are known once the data are read: before any run starts (compare)
    or anything is written (train); before, the run stopped after its directory was
    written (train subset) or after an epoch of training (test subset)."""
    root = write_idx(tmp_path / "data", n_train=16, n_test=8)
    runs = tmp_path / "runs"
    argv = [command, "--data-root", str(root), "--runs-dir", str(runs), "--epochs", "1"]
    argv += ["--seeds", "3", "--no-metrics", "--threads", "1", "--quiet"]
    argv += ["--train-subset=16", "--test-subset=8", option]  # the last one given counts
    assert main(argv) == 2
    assert f"{expected} of fashion-mnist (" in _one_error_line(capsys, command)
    assert not runs.exists()


def test_metrics_max_samples_past_the_train_split_takes_all_of_it(tmp_path: Path) -> None:
    """A maximum, not a subset: past the split's size it means every sample (before: the
    run stopped at the first evaluation, after an epoch of training)."""
    root = write_idx(tmp_path / "data", n_train=16, n_test=8)
    argv = ["train", "--data-root", str(root), "--runs-dir", str(tmp_path / "runs")]
    argv += ["--epochs", "1", "--seed", "3", "--threads", "1", "--quiet", "--test-subset=8"]
    assert main([*argv, "--set", "train_subset=null", "--set", "metrics_max_samples=100"]) == 0
    (metrics,) = (tmp_path / "runs").rglob("metrics.jsonl")
    assert '"iir_train": ' in metrics.read_text()


def test_sync_bn_in_one_process_warns_that_it_changes_nothing(
    tmp_path: Path, monkeypatch, capsys, no_data: list[str]
) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    argv = ["train", *no_data, "--runs-dir", str(tmp_path / "r"), "--sync-bn"]
    with pytest.warns(UserWarning, match="this is a single process") as caught:
        assert main(argv) == 1  # then stopped at the missing data
    assert str(caught[0].message).startswith("--sync-bn synchronizes the batch statistics")
    assert "changes nothing here" in str(caught[0].message)


def test_sync_bn_of_plain_batchnorm_on_cpu_under_torchrun_is_a_usage_error(
    tmp_path: Path, monkeypatch, capsys, no_data: list[str]
) -> None:
    """torch.nn.SyncBatchNorm runs on CUDA only: found on the meta model before any work
    (before: in the run, after its directory was written). L2BN layers synchronize."""
    from l2bn.experiments.config import ExperimentConfig
    from l2bn.experiments.preflight import check_sync_bn

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    argv = ["compare", *no_data, "--runs-dir", str(tmp_path / "r"), "--device", "cpu"]
    assert main([*argv, "--placements", "none,stage1", "--sync-bn"]) == 2
    err = _one_error_line(capsys, "compare")
    assert "--sync-bn: layer norm1 is a plain BatchNorm2d" in err and "[resnet20-bn]" in err
    assert not (tmp_path / "r").exists()
    check_sync_bn(ExperimentConfig(norm="l2bn", device="cpu"))


def test_compare_jobs_under_torchrun_is_a_usage_error(
    tmp_path: Path, monkeypatch, capsys, no_data: list[str]
) -> None:
    """Every worker of --jobs inherits the job's RANK and WORLD_SIZE and joins the job's
    process group: workers of different runs paired up (two norms: DDP's "same model across
    all ranks" error, then a hang)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    argv = ["compare", *no_data, "--runs-dir", str(tmp_path / "r"), "--device", "cpu"]
    assert main([*argv, "--jobs", "2"]) == 2
    err = _one_error_line(capsys, "compare")
    assert "--jobs 2" in err and "torchrun" in err
    assert not (tmp_path / "r").exists()


def test_l2bn_debug_shows_the_exception(tmp_path: Path, monkeypatch, no_data) -> None:
    from l2bn.experiments.errors import UsageError

    monkeypatch.setenv("L2BN_DEBUG", "1")
    with pytest.raises(UsageError, match="unknown norm"):
        main(["compare", *no_data, "--norms", "nosuch", "--runs-dir", str(tmp_path / "r")])


def test_explicit_data_root_is_used_alone_and_checked_before_writing(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    # complete data where the search order would find it must not stand in for --data-root
    monkeypatch.setenv("L2BN_DATA", str(tmp_path / "store"))
    write_idx(tmp_path / "store" / "fashion-mnist", n_train=16, n_test=8)
    empty = tmp_path / "empty"
    empty.mkdir()
    runs = tmp_path / "runs"
    base = ["train", "--threads", "1", "--runs-dir", str(runs), "--quiet"]
    assert main([*base, "--data-root", str(empty)]) == 1
    err = _one_error_line(capsys, "train")
    assert f"{empty} lacks train-images-idx3-ubyte[.gz]" in err and "t10k-labels" in err
    assert not runs.exists()
    # a dataset option the reader does not accept is a bad --set value
    assert main([*base, "--set", "dataset_kwargs={foo: 1}"]) == 2
    assert "got an option it does not accept" in _one_error_line(capsys, "train")
    assert not runs.exists()


def test_compare_refuses_to_add_another_configuration_to_a_name(
    tmp_path: Path, capsys, no_data: list[str]
) -> None:
    """A saved BN run at lr 0.1 under --name mix: an L2BN compare at lr 0.5 under the same
    name is refused before any work (the report would pair the two); at lr 0.1 it goes on
    (and stops at the missing data)."""
    import json

    from l2bn.experiments.commands import resolve_config
    from l2bn.experiments.commands.compare import configure
    from l2bn.experiments.runs import run_dir

    runs = tmp_path / "runs"
    common = ["--runs-dir", str(runs), "--name", "mix", "--seeds", "121", *no_data]
    parser = argparse.ArgumentParser()
    configure(parser)
    saved = resolve_config(parser.parse_args([*common, "--lr", "0.1"])).replace(norm="bn")
    directory = run_dir(runs, saved, 121)
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text(saved.to_yaml())
    (directory / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": 50.0}) + "\n")
    before = sorted(p.relative_to(runs) for p in runs.rglob("*"))
    assert main(["compare", *common, "--norms", "l2bn", "--lr", "0.5"]) == 2
    err = _one_error_line(capsys, "compare")
    assert "[mix/resnet20] lr: 0.1 (bn) vs 0.5 (l2bn)" in err and "another --name" in err
    assert sorted(p.relative_to(runs) for p in runs.rglob("*")) == before
    assert main(["compare", *common, "--norms", "l2bn", "--lr", "0.1"]) == 1  # no data
    assert "lr:" not in capsys.readouterr().err


def test_a_saved_config_the_checks_refuse_is_named_by_report(tmp_path: Path, capsys) -> None:
    """A run saved before the finiteness checks (here lr .nan) stops `l2bn report` with the
    file that holds it, not the bare check."""
    import json

    from l2bn.experiments.config import ExperimentConfig

    directory = tmp_path / "runs" / "old" / "resnet20-bn" / "seed1"
    directory.mkdir(parents=True)
    text = ExperimentConfig(name="old", seeds=[1]).to_yaml().replace("lr: 0.1", "lr: .nan")
    (directory / "config.yaml").write_text(text)
    (directory / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": 50.0}) + "\n")
    assert main(["report", str(tmp_path / "runs"), "--no-plots"]) == 1
    err = _one_error_line(capsys, "report")
    # The run is named as not read, with the reason (report.py lists unreadable runs).
    assert str(directory) in err
    assert "config.yaml is not a valid config (lr must be a finite number, got nan)" in err
