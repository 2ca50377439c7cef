"""The report from saved runs: Table 1 layout, tests, claims, CSV/markdown, PNGs."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
from scipy import stats

from l2bn.experiments.config import ExperimentConfig
from l2bn.experiments.runs import find_runs, run_dir, write_done

SEEDS = (121, 122, 123)
# best accuracies per seed (the best is not at the last epoch for seed 122 of BN)
BEST = {"bn": {121: 90.0, 122: 90.5, 123: 89.8}, "l2bn": {121: 90.6, 122: 90.9, 123: 90.1}}
FINAL_IIR = {"bn": {121: 0.60, 122: 0.62, 123: 0.61}, "l2bn": {121: 0.55, 122: 0.58, 123: 0.54}}


def _write_run(root: Path, norm: str, seed: int, **settings) -> None:
    config = ExperimentConfig(
        name="demo", model="resnet20", norm=norm, epochs=3, seeds=[seed], **settings
    )
    directory = run_dir(root, config, seed)
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text(config.to_yaml())
    best = BEST[norm][seed]
    accs = [best - 5.0, best, best - 0.3] if seed == 122 else [best - 5.0, best - 1.0, best]
    rows = []
    for epoch, acc in enumerate(accs, start=1):
        iir = FINAL_IIR[norm][seed] + 0.1 * (3 - epoch)
        rows.append(
            {
                "epoch": epoch,
                "lr": 0.1,
                "train_loss": 1.0 / epoch,
                "train_acc": acc + 1,
                "test_loss": 1.2 / epoch,
                "test_acc": acc,
                "intra_train": 30.0 - epoch,
                "intra_test": 32.0 - epoch,
                "inter": 40.0 + epoch,
                "iir_train": iir,
                "iir_test": iir + 0.05,
                "seconds": 1.0,
            }
        )
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_done(directory, {"seed": seed})


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    for norm in ("bn", "l2bn"):
        for seed in SEEDS:
            _write_run(tmp_path / "runs", norm, seed)
    return tmp_path / "runs"


def test_report_table_significance_and_plots(runs_root: Path, capsys) -> None:
    from l2bn.cli import main

    out = runs_root / "out"
    assert main(["report", str(runs_root), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    # The first line names the experiment and the data the numbers come from.
    assert text.splitlines()[0] == "Experiment: demo; data: fashion-mnist (full splits)"
    bn_acc = list(BEST["bn"].values())
    l2_acc = list(BEST["l2bn"].values())
    bn_line = next(line for line in text.splitlines() if line.startswith("resnet20  BN "))
    l2_line = next(line for line in text.splitlines() if line.startswith("resnet20  L2BN"))
    assert f"{statistics.fmean(bn_acc):.2f} ± {statistics.stdev(bn_acc):.2f}" in bn_line
    assert f"{statistics.fmean(l2_acc):.2f} ± {statistics.stdev(l2_acc):.2f}" in l2_line
    assert f"{statistics.fmean(FINAL_IIR['l2bn'].values()):.3f}" in l2_line
    expected = stats.ttest_rel(l2_acc, bn_acc)
    interval = expected.confidence_interval()
    assert "L2BN vs BN (resnet20, 3 seed(s) paired: 121, 122, 123), Holm over 3" in text
    acc_row = next(line for line in text.splitlines() if line.startswith("best accuracy (pp)"))
    diff = statistics.fmean(l2_acc) - statistics.fmean(bn_acc)
    assert acc_row.split()[3:7] == [
        f"{diff:+.3f}",
        f"[{interval.low:+.3f},",
        f"{interval.high:+.3f}]",
        f"{diff / statistics.stdev([c - b for b, c in zip(bn_acc, l2_acc, strict=True)]):+.2f}",
    ]
    assert f"{expected.statistic:+.2f}  {expected.pvalue:.3f}" in acc_row
    iir = stats.ttest_rel(list(FINAL_IIR["l2bn"].values()), list(FINAL_IIR["bn"].values()))
    iir_row = next(line for line in text.splitlines() if line.startswith("IIR train"))
    iir_diff = statistics.fmean(FINAL_IIR["l2bn"].values()) - 0.61
    assert f"{iir_diff:+.4f}" in iir_row and f"{iir.pvalue:.3f}" in iir_row
    # intra/inter angles equal on every seed in this fixture: said, not tested
    assert "intra-angle train: identical on every seed: t undefined (zero variance)" in text
    assert "Wilcoxon signed-rank: not run with 3 pair(s)" in text
    assert "paired t-test" in text and "0.25 with 3 pairs" in text  # which test and why
    claims = text[text.index("Claims of the paper, tested:") :]
    assert "raises accuracy: same direction, not significant" in claims
    assert "seeds for 80% power:" in claims and "at the observed effect" in claims
    assert "no row for resnet20 on fashion-mnist" in " ".join(text.split())
    assert "Per-epoch paired t-tests" in text
    with open(out / "report.csv") as fh:
        rows = list(csv.DictReader(fh))
    summary = [r for r in rows if r["section"] == "summary" and r["quantity"] == "best_acc"]
    assert [r["norm"] for r in summary] == ["bn", "l2bn"]
    assert float(summary[1]["mean"]) == pytest.approx(statistics.fmean(l2_acc), abs=1e-4)
    acc_test = next(r for r in rows if r["section"] == "test" and r["quantity"] == "best_acc")
    assert float(acc_test["p"]) == pytest.approx(expected.pvalue, rel=1e-5)
    assert float(acc_test["ci_low"]) == pytest.approx(interval.low, rel=1e-5)
    assert acc_test["verdict"] == "same direction, not significant"
    assert acc_test["seeds_80_observed"] != ""
    epochs = [r for r in rows if r["section"] == "epoch" and r["quantity"] == "iir_train"]
    assert [r["epoch"] for r in epochs] == ["1", "2", "3"]
    markdown = (out / "report.md").read_text()
    assert "| resnet20 | L2BN |" in markdown and "## Claims of the paper, tested" in markdown
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["resnet20_accuracy_loss.png", "resnet20_angles.png", "resnet20_iir.png"]
    assert all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_find_runs_and_missing_folder(runs_root: Path, tmp_path: Path) -> None:
    records = find_runs(runs_root)
    assert sorted((r.config.norm, r.seed) for r in records) == sorted(
        (n, s) for n in ("bn", "l2bn") for s in SEEDS
    )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_runs(tmp_path / "nowhere")


def test_report_refuses_runs_that_differ_in_more_than_the_norm(tmp_path: Path, capsys) -> None:
    """BN at lr 0.1 and L2BN at lr 0.5 under one name (two compare calls): no "L2BN vs BN"
    tests; the refusal names the setting, its values and which runs hold them."""
    from l2bn.cli import main

    root = tmp_path / "runs"
    for seed in SEEDS:
        _write_run(root, "bn", seed, lr=0.1)
        _write_run(root, "l2bn", seed, lr=0.5)
    out = tmp_path / "out"
    assert main(["report", str(root), "--out", str(out), "--no-plots"]) == 2
    captured = capsys.readouterr()
    assert "L2BN vs BN" not in captured.out
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("l2bn report: error: "), err
    assert "[demo/resnet20] lr: 0.1 (bn) vs 0.5 (l2bn)" in err
    assert "--name" in err
    assert not out.exists()


def test_report_names_the_seeds_when_one_variant_mixes_settings(tmp_path: Path) -> None:
    from l2bn.experiments.identity import IncomparableRunsError
    from l2bn.experiments.report import write_report

    root = tmp_path / "runs"
    for seed in SEEDS:
        _write_run(root, "bn", seed)
        _write_run(root, "l2bn", seed, weight_decay=0.0 if seed == 123 else 5e-4)
    with pytest.raises(
        IncomparableRunsError,
        match=r"weight_decay: .*\(bn, l2bn seed 121, 122\) "
        r"vs 0\.0 \(l2bn seed 123\)",
    ):
        write_report(find_runs(root), tmp_path / "out", plots=False)


def test_report_keeps_models_and_names_apart(runs_root: Path, tmp_path: Path) -> None:
    """Different names or models are never compared with each other: they may differ."""
    from l2bn.experiments.report import write_report

    config = ExperimentConfig(name="other", model="resnet20", norm="bn", epochs=3, lr=0.5)
    directory = run_dir(runs_root, config, 121)
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text(config.to_yaml())
    (directory / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": 50.0}) + "\n")
    result = write_report(find_runs(runs_root), tmp_path / "out", plots=False)
    assert "L2BN vs BN" in result["text"]


def test_report_header_names_the_subsets(tmp_path: Path, capsys) -> None:
    from l2bn.cli import main

    for norm in ("bn", "l2bn"):
        _write_run(tmp_path / "runs", norm, 121, train_subset=300, test_subset=200)
    assert main(["report", str(tmp_path / "runs"), "--no-plots"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "Experiment: demo; data: fashion-mnist (train subset 300, test subset 200)"
