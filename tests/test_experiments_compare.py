"""``l2bn compare``: norms x seeds in worker processes, the report, and no repeated runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from l2bn.cli import main
from l2bn.experiments.metrics_log import read_metrics
from test_experiments_datasets import write_idx


def test_compare_runs_each_variant_then_skips_finished_runs(tmp_path: Path, capsys) -> None:
    root = write_idx(tmp_path / "data", n_train=32, n_test=16)
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "name: tiny\nmodel: resnet20\nepochs: 1\nbatch_size: 16\nlr: 0.05\n"
        f"seeds: [5]\ntrain_subset: null\ntest_subset: null\ndata_root: {root}\n"
        "metrics: true\nmetrics_max_samples: 16\ndevice: cpu\n"
    )
    runs = tmp_path / "runs"
    args = ["compare", "--config", str(config), "--runs-dir", str(runs), "--jobs", "2"]
    assert main(args) == 0
    first = capsys.readouterr()
    dirs = sorted(runs.glob("tiny/*/seed*"))
    assert [d.relative_to(runs).as_posix() for d in dirs] == [
        "tiny/resnet20-bn/seed5",
        "tiny/resnet20-l2bn/seed5",
    ]
    assert all((d / "done").is_file() for d in dirs)
    assert "L2BN vs BN (resnet20, 1 seed(s) paired: 5)" in first.out
    assert (runs / "tiny" / "report" / "resnet20_iir.png").is_file()
    # L2BN really differs from BN with the same seed (same data order and init)
    bn = read_metrics(runs / "tiny/resnet20-bn/seed5/metrics.jsonl")[0]
    l2 = read_metrics(runs / "tiny/resnet20-l2bn/seed5/metrics.jsonl")[0]
    assert bn["train_loss"] != l2["train_loss"]
    assert bn["iir_train"] is not None and bn["iir_train"] != l2["iir_train"]

    stamps = {d: (d / "checkpoint.pt").stat().st_mtime_ns for d in dirs}
    assert main([*args, "--no-plots"]) == 0
    second = capsys.readouterr()
    assert "2 already finished" in second.err
    assert {d: (d / "checkpoint.pt").stat().st_mtime_ns for d in dirs} == stamps
    assert "L2BN vs BN" in second.out


def test_compare_placements_plan_and_missing_data_message(tmp_path: Path, capsys) -> None:
    from l2bn.experiments.commands.compare import plan_variants
    from l2bn.experiments.config import ExperimentConfig
    from l2bn.experiments.runs import variant_name

    base = ExperimentConfig(model="resnet56")
    names = [variant_name(v) for v in plan_variants(base, "bn", "none,classifier,stage1,all")]
    assert names == [
        "resnet56-bn",
        "resnet56-l2bn-classifier",
        "resnet56-l2bn-stage1",
        "resnet56-l2bn",
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(
        [
            "compare",
            "--data-root",
            str(empty),
            "--runs-dir",
            str(tmp_path / "r"),
            "--set",
            "dataset=mnist",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "l2bn compare: error:" in err and str(empty) in err


def _tiny_compare(tmp_path: Path, seeds: str = "5") -> list[str]:
    root = write_idx(tmp_path / "data", n_train=32, n_test=16)
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "name: tiny\nmodel: resnet20\nepochs: 1\nbatch_size: 16\nlr: 0.05\n"
        f"seeds: [{seeds}]\ntrain_subset: null\ntest_subset: null\ndata_root: {root}\n"
        "metrics: false\ndevice: cpu\n"
    )
    return ["compare", "--config", str(config), "--runs-dir", str(tmp_path / "runs")]


def test_compare_overwrite_retrains_finished_runs(tmp_path: Path, capsys) -> None:
    args = [*_tiny_compare(tmp_path), "--norms", "bn", "--jobs", "1", "--threads", "1"]
    args += ["--no-plots"]
    assert main([*args, "--quiet"]) == 0
    run = tmp_path / "runs" / "tiny" / "resnet20-bn" / "seed5"
    stamp = (run / "checkpoint.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*args]) == 0
    assert "1 already finished" in capsys.readouterr().err
    assert (run / "checkpoint.pt").stat().st_mtime_ns == stamp
    assert main([*args, "--overwrite"]) == 0  # retrains the finished run
    assert "0 already finished" in capsys.readouterr().err
    assert (run / "checkpoint.pt").stat().st_mtime_ns != stamp
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == [1]
    assert main([*args, "--dry-run", "--overwrite"]) == 0
    assert f"# run: {run} (to be deleted and trained afresh" in capsys.readouterr().out
    assert (run / "done").is_file()


def test_compare_threads_do_not_depend_on_the_runs_left_to_do(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    import torch
    import yaml

    from l2bn.experiments.config import ExperimentConfig
    from l2bn.experiments.train import train_run

    args = [*_tiny_compare(tmp_path, "5, 6"), "--norms", "l2bn", "--no-plots", "--quiet"]
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main([*args, "--dry-run"]) == 0
        # The resolved config, with the norms list that compare runs in place of one norm.
        resolved = yaml.safe_load(capsys.readouterr().out)
        assert resolved.pop("norms") == ["l2bn"]
        config = ExperimentConfig.from_yaml(yaml.safe_dump(resolved))
        # seed 5 finished as the first command (2 runs: --jobs 2, 1 thread each) left it;
        # seed 6 never started
        run5 = tmp_path / "runs" / "tiny" / "resnet20-l2bn" / "seed5"
        train_run(config.replace(norm="l2bn", threads=1), 5, run5, quiet=True)
        assert main(args) == 0  # one run left: it still gets the planned 1 thread
        run6 = tmp_path / "runs" / "tiny" / "resnet20-l2bn" / "seed6"
        assert (run6 / "done").is_file()
        assert "threads: 1" in (run6 / "config.yaml").read_text()
        capsys.readouterr()
        assert main([*args, "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert out.count("(done; threads 1)") == 2, out
    finally:
        torch.set_num_threads(threads)


def _tiny_config(tmp_path: Path, **fields) -> Path:
    root = write_idx(tmp_path / "data", n_train=32, n_test=16)
    settings = {
        "name": "tiny",
        "model": "resnet20",
        "epochs": 1,
        "batch_size": 16,
        "lr": 0.05,
        "seeds": "[5]",
        "train_subset": "null",
        "test_subset": "null",
        "data_root": str(root),
        "metrics": "true",
        "metrics_max_samples": 16,
        "device": "cpu",
        "threads": 1,
        **fields,
    }
    config = tmp_path / "tiny.yaml"
    config.write_text("".join(f"{k}: {v}\n" for k, v in settings.items()))
    return config


def test_a_diverged_run_is_recorded_and_stops(tmp_path: Path) -> None:
    """At lr 1e30 the first epoch ends with NaN loss and weights: the epoch is recorded as
    diverged (angles null, no exception from the angle metrics), the run stops there and
    is finished as diverged; resumed from that epoch's checkpoint it trains nothing more."""
    import json

    from l2bn.experiments.config import ExperimentConfig
    from l2bn.experiments.train import train_run

    text = _tiny_config(tmp_path, epochs=2, lr="1.0e+30").read_text()
    config = ExperimentConfig.from_yaml(text).replace(norm="bn")
    run = tmp_path / "run"
    summary = train_run(config, 5, run, quiet=True)
    (row,) = read_metrics(run / "metrics.jsonl")
    assert "training loss" in row["diverged"] and "weights" in row["diverged"]
    assert row["iir_train"] is None and row["train_loss"] is None
    done = json.loads((run / "done").read_text())
    assert (done["diverged_epoch"], done["epochs"]) == (1, 2) == (summary["diverged_epoch"], 2)
    # killed after the diverged epoch's checkpoint, before its done marker: resuming
    # trains no further epoch on NaN weights
    stamp = (run / "checkpoint.pt").stat().st_mtime_ns
    (run / "done").unlink()
    assert train_run(config, 5, run, quiet=True)["diverged_epoch"] == 1
    assert len(read_metrics(run / "metrics.jsonl")) == 1
    assert (run / "checkpoint.pt").stat().st_mtime_ns == stamp


def test_collapsed_features_leave_the_angles_undefined_and_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finite classifier features that give the angles no value (here all zero, as after a
    collapse) raised from the angle metrics and stopped the run: the epoch now records null
    angles with the reason, and the next epoch trains."""
    import l2bn.analysis
    from l2bn.experiments.config import ExperimentConfig
    from l2bn.experiments.train import train_run

    collect = l2bn.analysis.collect_features

    def zero_features(*args, **kwargs):
        features, labels = collect(*args, **kwargs)
        return torch.zeros_like(features), labels

    monkeypatch.setattr(l2bn.analysis, "collect_features", zero_features)
    text = _tiny_config(tmp_path, epochs=2).read_text()
    config = ExperimentConfig.from_yaml(text).replace(norm="l2bn")
    train_run(config, 5, tmp_path / "run", quiet=True)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert row["iir_train"] is None and row["inter"] is None and not row["diverged"]
        assert "at least two classes" in row["angles_undefined"]


def test_compare_reports_diverged_runs(tmp_path: Path, capsys) -> None:
    """Both arms diverge: the comparison finishes (exit 0) and says so; a rerun trains
    nothing again."""
    config = _tiny_config(tmp_path, epochs=2, lr="1.0e+30")
    runs = tmp_path / "runs"
    args = ["compare", "--config", str(config), "--runs-dir", str(runs), "--jobs", "1"]
    assert main([*args, "--no-plots", "--quiet"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "BN seed 5: diverged at epoch 1 (training loss" in out
    assert "L2BN seed 5: diverged at epoch 1" in out
    assert "L2BN vs BN (resnet20): not compared" in out
    bn = runs / "tiny" / "resnet20-bn" / "seed5"
    stamp = (bn / "checkpoint.pt").stat().st_mtime_ns
    assert main([*args, "--no-plots"]) == 0
    assert "2 already finished" in capsys.readouterr().err
    assert (bn / "checkpoint.pt").stat().st_mtime_ns == stamp


def test_compare_removes_its_old_report_before_training_again(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """Retraining (here with --overwrite at another lr), interrupted: the report folder no
    longer holds the old report as if it described the runs."""
    import l2bn.experiments.train

    config = _tiny_config(tmp_path)
    runs = tmp_path / "runs"
    args = ["compare", "--config", str(config), "--runs-dir", str(runs), "--jobs", "1"]
    assert main([*args, "--no-plots", "--quiet"]) == 0
    report = runs / "tiny" / "report"
    (report / "mine.txt").write_text("kept")
    assert (report / "report.txt").is_file()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(l2bn.experiments.train, "train_run", interrupted)
    assert main([*args, "--no-plots", "--quiet", "--lr", "0.01", "--overwrite"]) == 130
    capsys.readouterr()
    assert sorted(p.name for p in report.iterdir()) == ["mine.txt"]


def test_train_command_says_when_its_run_diverged(tmp_path: Path, capsys) -> None:
    config = _tiny_config(tmp_path, lr="1.0e+30", metrics="false")
    run = tmp_path / "run"
    argv = ["train", "--config", str(config), "--norm", "bn", "--seed", "5"]
    assert main([*argv, "--run-dir", str(run)]) == 0
    assert "; diverged at epoch 1 (" in capsys.readouterr().err


def test_compare_refuses_two_entries_that_build_one_layer(tmp_path: Path, capsys) -> None:
    """``--norms gn,gn-cpg4`` with ``channels_per_group`` 4 for every norm lists one variant
    twice: refused before anything is planned or written, naming both entries and the
    layer."""
    runs = tmp_path / "runs"
    args = [*_tiny_compare(tmp_path), "--norms", "gn,gn-cpg4", "--dry-run"]
    assert main([*args, "--set", "norm_kwargs.channels_per_group=4"]) == 2
    err = capsys.readouterr().err
    assert "--norms: 'gn' and 'gn-cpg4' build one layer (GN-cpg4)" in err, err
    assert not runs.exists()


def test_compare_reports_the_variants_in_the_order_it_lists_them(tmp_path: Path, capsys) -> None:
    """``--norms l2bn,bn``: the table lists L2BN, then BN (the run folders sort the other
    way, as does the paper)."""
    args = [*_tiny_compare(tmp_path), "--norms", "l2bn,bn", "--jobs", "1", "--threads", "1"]
    assert main([*args, "--no-plots", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("resnet20  ")] == ["L2BN", "BN"]
