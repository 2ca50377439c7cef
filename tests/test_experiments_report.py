"""The report from saved runs: Table 1 layout, the paired t-test line, CSV/markdown, PNGs."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
from scipy import stats

from l2bn.experiments.config import ExperimentConfig
from l2bn.experiments.runs import find_runs, run_dir, write_done
from l2bn.experiments.stats_tests import paired_t_test

SEEDS = (121, 122, 123)
# best accuracies per seed (the best is not at the last epoch for seed 122 of BN)
BEST = {"bn": {121: 90.0, 122: 90.5, 123: 89.8}, "l2bn": {121: 90.6, 122: 90.9, 123: 90.1}}
FINAL_IIR = {"bn": {121: 0.60, 122: 0.62, 123: 0.61}, "l2bn": {121: 0.55, 122: 0.58, 123: 0.54}}


def _write_run(root: Path, norm: str, seed: int) -> None:
    config = ExperimentConfig(name="demo", model="resnet20", norm=norm, epochs=3, seeds=[seed])
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


def test_paired_t_test_matches_scipy_and_gives_the_t_interval() -> None:
    base, cand = [1.0, 2.0, 3.0, 4.5], [1.5, 2.1, 3.9, 4.8]
    result = paired_t_test(base, cand, "x")
    reference = stats.ttest_rel(cand, base)
    assert result.t == pytest.approx(reference.statistic)
    assert result.p == pytest.approx(reference.pvalue)
    diffs = [c - b for b, c in zip(base, cand, strict=True)]
    half = stats.t.ppf(0.975, 3) * statistics.stdev(diffs) / 2.0
    assert result.ci_low == pytest.approx(statistics.fmean(diffs) - half)
    assert result.ci_high == pytest.approx(statistics.fmean(diffs) + half)
    assert "no test" in paired_t_test([1.0], [2.0], "x").describe()
    with pytest.raises(ValueError, match="equal lengths"):
        paired_t_test([1.0, 2.0], [1.0], "x")


def test_report_table_significance_and_plots(runs_root: Path, capsys) -> None:
    from l2bn.cli import main

    out = runs_root / "out"
    assert main(["report", str(runs_root), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    bn_acc = list(BEST["bn"].values())
    l2_acc = list(BEST["l2bn"].values())
    bn_line = next(line for line in text.splitlines() if line.startswith("resnet20  BN "))
    l2_line = next(line for line in text.splitlines() if line.startswith("resnet20  L2BN"))
    assert f"{statistics.fmean(bn_acc):.2f} ± {statistics.stdev(bn_acc):.2f}" in bn_line
    assert f"{statistics.fmean(l2_acc):.2f} ± {statistics.stdev(l2_acc):.2f}" in l2_line
    assert f"{statistics.fmean(FINAL_IIR['l2bn'].values()):.3f}" in l2_line
    expected = stats.ttest_rel(l2_acc, bn_acc)
    assert "L2BN vs BN (resnet20, 3 seed(s) paired" in text
    assert f"t(2) = {expected.statistic:.2f}, p = {expected.pvalue:.3f}" in text
    iir = stats.ttest_rel(list(FINAL_IIR["l2bn"].values()), list(FINAL_IIR["bn"].values()))
    assert (
        f"final IIR train: diff {statistics.fmean(FINAL_IIR['l2bn'].values()) - 0.61:+.3f}" in text
    )
    assert f"p = {iir.pvalue:.3f}" in text
    assert "Paired t-test" in text and "0.25" in text  # says which test and why
    with open(out / "report.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["norm"] for r in rows] == ["bn", "l2bn"]
    assert float(rows[1]["acc_mean"]) == pytest.approx(statistics.fmean(l2_acc), abs=1e-4)
    assert "| resnet20 | L2BN |" in (out / "report.md").read_text()
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
