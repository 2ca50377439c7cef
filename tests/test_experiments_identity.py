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
from l2bn.experiments.identity import (
    RunMismatchError,
    fingerprint,
    run_identity,
    source_version,
)
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
        {"data_root": "/elsewhere"},
        {"num_workers": 2},
        {"name": "other"},
        {"seeds": [3, 4]},
        {"notes": "x"},
        *([] if torch.cuda.is_available() else [{"device": "auto"}]),
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
        {"threads": 2},  # a CPU run's numbers depend on its thread count
    ):
        assert fingerprint(run_identity(base.replace(**result_field), 3)) != same
    assert fingerprint(run_identity(base, 4)) != same
    identity = run_identity(base, 3)
    assert identity["torch_version"] == str(torch.__version__)
    assert identity["device_type"] == "cpu" and identity["threads"] == 1
    assert identity["aten_cpu_capability"] == torch.backends.cpu.get_cpu_capability().lower()
    assert identity["l2bn_source"] == source_version()
    # unset threads: this process's torch threads (what such a run uses)
    assert run_identity(base.replace(threads=None), 3)["threads"] == torch.get_num_threads()


def test_identity_names_the_norm_batch_when_not_the_whole_batch() -> None:
    # batch 16: one process and torchrun with --sync-bn normalize over 16 samples, torchrun
    # without it over each process's share
    base = tiny_config()
    single = run_identity(base, 3)
    assert "norm_batch" not in single  # as before: runs of one process stay valid
    assert run_identity(base, 3, world_size=2, sync_bn=True) == single
    assert run_identity(base, 3, sync_bn=True) == single
    per_process = run_identity(base, 3, world_size=2)
    assert per_process["norm_batch"] == 8 and fingerprint(per_process) != fingerprint(single)
    assert run_identity(base, 3, world_size=4)["norm_batch"] == 4


@pytest.mark.parametrize("norm", ["sn", "bcn", "bin", "lnbn", "inbn", "pnbn"])
def test_sync_bn_leaves_the_norm_batch_per_process_for_norms_it_cannot_synchronize(norm):
    # --sync-bn leaves these layers normalizing over each process's share (a
    # ConversionWarning): a torchrun --sync-bn run of them is not the one-process run.
    config = tiny_config().replace(norm=norm)
    single = run_identity(config, 3)
    synced = run_identity(config, 3, world_size=2, sync_bn=True)
    assert synced["norm_batch"] == 8 and fingerprint(synced) != fingerprint(single)
    assert synced == run_identity(config, 3, world_size=2)


@pytest.mark.parametrize("norm", ["bn", "l2bn", "gn"])
def test_sync_bn_keeps_the_whole_batch_for_norms_it_synchronizes(norm):
    config = tiny_config().replace(norm=norm)
    assert run_identity(config, 3, world_size=2, sync_bn=True) == run_identity(config, 3)


def _as_before_the_norm_batch_identity(run: Path, world_size: int, norm_batch: int | None) -> None:
    """Make the finished run in ``run`` look written before the identity named the norm
    batch: a ``done`` marker without it, a checkpoint recording the job it ran in."""
    import json

    summary = json.loads((run / "done").read_text())
    summary.pop("norm_batch", None)
    (run / "done").write_text(json.dumps(summary))
    state = load_checkpoint_file(run / "checkpoint.pt")
    state["world_size"] = world_size
    state.pop("norm_batch", None)
    if norm_batch is not None:
        state["norm_batch"] = norm_batch
    torch.save(state, run / "checkpoint.pt")


def test_finished_run_from_before_the_norm_batch_identity(tmp_path: Path) -> None:
    from l2bn.experiments.identity import inspect_run

    root = write_idx(tmp_path / "data", n_train=32, n_test=16)
    config = tiny_config(data_root=str(root), epochs=1)  # batch 16
    run = tmp_path / "run"
    train_run(config, 3, run, quiet=True)
    assert '"norm_batch": 16' in (run / "done").read_text()
    single, per_process = run_identity(config, 3), run_identity(config, 3, world_size=2)

    _as_before_the_norm_batch_identity(run, 1, None)  # one process, norm batch not recorded
    assert inspect_run(run, single).same  # still reused
    state = inspect_run(run, per_process)
    assert not state.same and state.differing == ["norm_batch: 16 -> 8"]

    # a torchrun job of 2 processes without --sync-bn: its fingerprint names no norm batch
    _as_before_the_norm_batch_identity(run, 2, 8)
    assert inspect_run(run, per_process).same
    state = inspect_run(run, single)
    assert not state.same and state.differing[0].startswith("norm_batch: 8 -> 16 (recorded")
    with pytest.raises(RunMismatchError, match=r"norm_batch: 8 -> 16 .*--sync-bn setting"):
        train_run(config, 3, run, quiet=True)


def test_fingerprint_has_one_definition_and_keeps_its_values() -> None:
    """The report (runs.py) checks fingerprint.json with the function that writes it
    (identity.py), and the hash of an identity is what it was when the runs on disk were
    written: a changed value would orphan them (pinned before the two copies were made
    one)."""
    from l2bn.experiments import identity, runs

    assert identity.fingerprint is runs.fingerprint
    assert identity.IDENTITY_FILE == runs.IDENTITY_FILE == "fingerprint.json"
    known = {
        "seed": 121,
        "name_does_not_matter": None,
        "lr": 0.1,
        "norm": "l2bn",
        "norm_kwargs": {"eps": 0.001},
        "seeds_list": [1, 2],
        "nesterov": True,
        "threads": 1,
        "l2bn_source": "git:0123456789abcdef",
        "label": "\u00dcn\u00efcode \u03bc",
    }
    pinned = "21182394c106e13910eb123d294d9a79996e0a0e4da026ffb38d6475a83b6211"
    assert fingerprint(known) == pinned
    assert fingerprint(dict(reversed(known.items()))) == pinned  # key order plays no part


def test_identity_names_the_code_and_the_backend(monkeypatch) -> None:
    from l2bn import backends
    from l2bn.experiments import identity as ident

    base = tiny_config()
    expected = "cpu" if backends.available("cpu") else "pytorch"
    assert run_identity(base, 3)["l2bn_backend"] == expected
    with backends.flags(cpu=False):
        off = run_identity(base, 3)
    assert off["l2bn_backend"] == "pytorch" and off["l2bn_cpu_isa"] is None
    if backends.available("cpu"):
        assert fingerprint(off) != fingerprint(run_identity(base, 3))
        assert run_identity(base, 3)["l2bn_cpu_isa"] == str(torch.ops.l2bn.cpu_isa())
    monkeypatch.setattr(ident, "source_version", lambda: "git:0123456789abcdef")
    one = fingerprint(run_identity(base, 3))
    monkeypatch.setattr(ident, "source_version", lambda: "git:fedcba9876543210")
    assert fingerprint(run_identity(base, 3)) != one


def test_git_source_tracks_the_tree_and_uncommitted_changes(tmp_path: Path) -> None:
    import shutil
    import subprocess

    from l2bn.experiments.identity import git_source

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo, package = tmp_path / "repo", tmp_path / "repo" / "src" / "pkg"
    package.mkdir(parents=True)
    (repo / "README").write_text("docs\n")
    (package / "code.py").write_text("x = 1\n")
    assert git_source(package) is None  # not a git work tree

    def git(*args: str) -> None:
        env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "HOME": str(tmp_path)}
        env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "one")
    clean = git_source(package)
    assert clean is not None and clean.startswith("git:") and "dirty" not in clean
    (repo / "README").write_text("other docs\n")  # outside the package: same code
    git("commit", "-q", "-am", "docs only")
    assert git_source(package) == clean
    (package / "code.py").write_text("x = 2\n")
    first = git_source(package)
    assert first is not None and first.startswith(clean + "+dirty:")
    (package / "code.py").write_text("x = 3\n")
    second = git_source(package)
    assert second is not None and second.startswith(clean + "+dirty:") and second != first
    (package / "new.py").write_text("y = 1\n")  # an untracked file counts too
    assert git_source(package) not in (first, second)
    git("add", "-A")
    git("commit", "-q", "-m", "two")
    committed = git_source(package)
    assert committed is not None and "dirty" not in committed and committed != clean


def test_finished_run_of_another_backend_or_code_is_not_reused(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    from l2bn import backends
    from l2bn.experiments import identity as ident

    root = write_idx(tmp_path / "data", n_train=32, n_test=16)
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_config(name="tiny", data_root=str(root), epochs=1, seeds=[5]).to_yaml())
    runs = tmp_path / "runs"
    args = ["compare", "--config", str(config), "--runs-dir", str(runs), "--norms", "l2bn"]
    args += ["--jobs", "1", "--no-plots", "--quiet"]
    with backends.flags(cpu=False):  # as L2BN_DISABLE_FUSED=1
        assert main(args) == 0
    run = runs / "tiny" / "resnet20-l2bn" / "seed5"
    stamp = (run / "checkpoint.pt").stat().st_mtime_ns
    capsys.readouterr()
    if backends.available("cpu"):
        assert main(args) == 1
        err = _error_line(capsys)
        assert "l2bn_backend: 'pytorch' -> 'cpu'" in err and "--overwrite" in err
    before = ident.source_version()
    monkeypatch.setattr(ident, "source_version", lambda: "git:fedcba9876543210+dirty:00")
    with backends.flags(cpu=False):
        assert main(args) == 1
    err = _error_line(capsys)
    assert f"l2bn_source: {before!r} -> 'git:fedcba9876543210+dirty:00'" in err
    assert (run / "checkpoint.pt").stat().st_mtime_ns == stamp  # nothing retrained


def test_a_source_change_is_named_without_the_threads_it_did_not_change(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """A finished run started with 1 thread (the count compare chose); after a source change
    the same command, where a new run would get 2 threads, refuses it naming the source
    alone: a run left without a threads setting keeps its own count, whatever else differs
    (the count was compared as if the run were trained afresh). ``--dry-run`` shows that
    count; ``--overwrite`` trains afresh with the count a new run gets."""
    from l2bn.experiments import identity as ident

    root = write_idx(tmp_path / "data", n_train=32, n_test=16)
    config = tmp_path / "tiny.yaml"
    settings = {"name": "tiny", "data_root": str(root), "epochs": 1, "seeds": [5], "threads": None}
    config.write_text(tiny_config(**settings).to_yaml())
    runs = tmp_path / "runs"
    args = ["compare", "--config", str(config), "--runs-dir", str(runs), "--norms", "bn"]
    args += ["--jobs", "1", "--no-plots", "--quiet"]
    run = runs / "tiny" / "resnet20-bn" / "seed5"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert main(args) == 0
        capsys.readouterr()
        torch.set_num_threads(2)  # a new run would now take 2
        monkeypatch.setattr(ident, "source_version", lambda: "git:fedcba9876543210+dirty:00")
        assert main(args) == 1
        err = _error_line(capsys)
        assert "l2bn_source: " in err and "threads" not in err, err
        assert main([*args, "--dry-run"]) == 0
        assert "(holds another configuration; threads 1)" in capsys.readouterr().out
        assert main([*args, "--dry-run", "--overwrite"]) == 0
        assert "trained afresh: --overwrite; threads 2)" in capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)
    assert "threads: 1" in (run / "config.yaml").read_text()


def test_resumed_run_keeps_the_threads_it_started_with(tmp_path: Path, monkeypatch, capsys) -> None:
    root = write_idx(tmp_path / "data", n_train=32, n_test=16)
    config = tiny_config(data_root=str(root), epochs=2, threads=None)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _unfinished(config, 3, tmp_path / "run", monkeypatch)  # started with 1 thread
        train_run(config.replace(threads=1), 3, tmp_path / "straight", quiet=True)
        torch.set_num_threads(2)  # a new run would now take 2
        summary = train_run(config, 3, tmp_path / "run", quiet=True)
    finally:
        torch.set_num_threads(threads)
    assert summary["epochs"] == 2 and is_done(tmp_path / "run")
    assert "threads: 1" in (tmp_path / "run" / "config.yaml").read_text()
    strip = [
        {k: v for k, v in r.items() if k != "seconds"}
        for r in read_metrics(tmp_path / "straight" / "metrics.jsonl")
    ]
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    # an explicit other count for a started run is refused, naming it
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(config.to_yaml())
    args = ["train", "--config", str(config_path), "--run-dir", str(tmp_path / "run")]
    assert main([*args, "--threads", "2", "--quiet"]) == 1
    err = _error_line(capsys)
    assert "threads: 1 -> 2" in err and "leave out --threads" in err
    assert main([*args, "--quiet"]) == 0  # without it: the run's own count, reused
    # --overwrite trains it afresh, also at another count
    assert main([*args, "--threads", "2", "--quiet", "--overwrite"]) == 0
    assert "threads: 2" in (tmp_path / "run" / "config.yaml").read_text()
    assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 2


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


def test_runs_that_differ_in_norm_options_get_their_own_directories(tmp_path: Path, capsys) -> None:
    """A sweep over an L2BN option (``--set norm_kwargs.l2_eps=...``) trains one run per
    value, each in its own directory that records its value, instead of the second run
    finding the first one's directory and being refused as another configuration."""
    import yaml

    root = write_idx(tmp_path / "data", n_train=32, n_test=16)
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_config(name="tiny", data_root=str(root), epochs=1, seeds=[5]).to_yaml())
    runs = tmp_path / "runs"
    base = ["train", "--config", str(config), "--runs-dir", str(runs), "--norm", "l2bn"]
    base += ["--quiet"]
    for value in ("1e-6", "1e-3"):
        assert main([*base, "--set", f"norm_kwargs.l2_eps={value}"]) == 0, capsys.readouterr()
    folders = sorted(p.name for p in (runs / "tiny").iterdir())
    assert folders == ["resnet20-l2bn-l2_eps=0.001", "resnet20-l2bn-l2_eps=1e-06"]
    for value in (1e-6, 1e-3):
        run = runs / "tiny" / f"resnet20-l2bn-l2_eps={value}" / "seed5"
        assert is_done(run)
        recorded = yaml.safe_load((run / "config.yaml").read_text())
        assert recorded["norm_kwargs"] == {"l2_eps": value}
