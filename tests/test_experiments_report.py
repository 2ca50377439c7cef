"""The report from saved runs: Table 1 layout, tests, claims, CSV/markdown, PNGs."""

from __future__ import annotations

import csv
import json
import math
import shutil
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


def _metrics_row(epoch: int, acc: float, iir_train: float, iir_test: float) -> dict:
    """One epoch's metrics.jsonl row: test accuracy ``acc``, the given IIRs, and losses and
    angles that follow the epoch."""
    return {
        "epoch": epoch,
        "lr": 0.1,
        "train_loss": 1.0 / epoch,
        "train_acc": acc + 1,
        "test_loss": 1.2 / epoch,
        "test_acc": acc,
        "intra_train": 30.0 - epoch,
        "intra_test": 32.0 - epoch,
        "inter": 40.0 + epoch,
        "iir_train": iir_train,
        "iir_test": iir_test,
        "seconds": 1.0,
    }


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
        rows.append(_metrics_row(epoch, acc, iir, iir + 0.05))
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


def _rows(norm: str, seed: int, epochs: int, diverged_at: int | None = None) -> list[dict]:
    rows = []
    for epoch in range(1, epochs + 1):
        acc = BEST[norm][seed] - (epochs - epoch)
        iir_train = FINAL_IIR[norm][seed] + 0.1 * (epochs - epoch)
        row = _metrics_row(epoch, acc, iir_train, FINAL_IIR[norm][seed] + 0.05)
        row["diverged"] = None
        if epoch == diverged_at:
            row.update(dict.fromkeys(("test_loss", "intra_train", "intra_test", "inter"), None))
            row.update(iir_train=None, iir_test=None, diverged="training loss, weights not finite")
            rows.append(row)
            break
        rows.append(row)
    return rows


def _write_recorded_run(
    directory: Path,
    norm: str,
    seed: int,
    *,
    epochs_done: int = 3,
    done: bool = True,
    diverged_at: int | None = None,
    identity_extra: dict | None = None,
    **settings,
) -> Path:
    """A run as ``l2bn train`` leaves it: config.yaml, fingerprint.json (its identity, plus
    ``identity_extra``), metrics.jsonl and, when ``done``, the done marker; the directory's
    name is whatever the caller chose."""
    from l2bn.experiments.identity import run_identity, write_identity

    config = ExperimentConfig(
        name="demo", model="resnet20", norm=norm, epochs=3, seeds=[seed], **settings
    )
    directory.mkdir(parents=True)
    write_identity(directory, {**run_identity(config, seed), **(identity_extra or {})})
    (directory / "config.yaml").write_text(config.to_yaml())
    rows = _rows(norm, seed, epochs_done, diverged_at)
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if done:
        summary = {"seed": seed, "epochs": 3}
        if diverged_at:
            summary.update(diverged=rows[-1]["diverged"], diverged_epoch=diverged_at)
        write_done(directory, summary)
    return directory


def test_report_pairs_by_the_recorded_seed_not_the_directory_name(tmp_path: Path) -> None:
    """A run's seed is what it recorded: an L2BN run of seed 999 kept in a folder named
    seed121 is not BN seed 121's partner, and a run in a folder whose name is not
    seed<k> is found. Directories that cannot be read are named, with why."""
    from l2bn.experiments.report import write_report

    root = tmp_path / "runs"
    for seed in (121, 122):
        _write_recorded_run(root / "demo" / "resnet20-bn" / f"seed{seed}", "bn", seed)
    BEST["l2bn"][999], FINAL_IIR["l2bn"][999] = 91.0, 0.5
    _write_recorded_run(root / "demo" / "resnet20-l2bn" / "seed121", "l2bn", 999)
    _write_recorded_run(root / "mine" / "l2bn-second-try", "l2bn", 122)
    damaged = _write_recorded_run(root / "demo" / "resnet20-l2bn" / "seed123", "l2bn", 123)
    (damaged / "done").write_text(json.dumps({"seed": 124}))
    started = root / "demo" / "resnet20-l2bn" / "seed125"
    started.mkdir()
    (started / "config.yaml").write_text(ExperimentConfig(name="demo", seeds=[125]).to_yaml())

    text = write_report(find_runs(root), tmp_path / "out", plots=False)["text"]
    assert "L2BN vs BN (resnet20, 1 seed(s) paired: 122)" in text

    from l2bn.experiments.runs import scan_runs

    scan = scan_runs(root)
    assert sorted((r.config.norm, r.seed) for r in scan.records) == [
        ("bn", 121),
        ("bn", 122),
        ("l2bn", 122),
        ("l2bn", 999),
    ]
    assert dict(scan.ignored) == {
        damaged: "its files disagree on the seed (fingerprint.json 123, config.yaml 123, done 124)",
        started: "no finished epoch yet",
    }
    text = write_report(scan.records, tmp_path / "out", plots=False, ignored=scan.ignored)["text"]
    flat = " ".join(text.split())
    assert "L2BN vs BN (resnet20, 1 seed(s) paired: 122)" in flat
    assert "left out: seed 121: no L2BN run" in flat and "seed 999: no BN run" in flat
    assert f"{damaged}: not read: its files disagree on the seed" in flat
    assert f"{started}: not read: no finished epoch yet" in flat


def test_report_command_finds_a_run_dir_of_any_name(tmp_path: Path, capsys) -> None:
    from l2bn.cli import main

    root = tmp_path / "runs"
    _write_recorded_run(root / "x" / "bn-run", "bn", 121)
    _write_recorded_run(root / "x" / "l2bn-run", "l2bn", 121)
    assert main(["report", str(root), "--no-plots"]) == 0
    assert "L2BN vs BN (resnet20, 1 seed(s) paired: 121)" in capsys.readouterr().out


def test_unfinished_runs_are_named_not_compared(tmp_path: Path, capsys) -> None:
    """L2BN seed 123 killed after epoch 1 of 3: not tested against BN's epoch 3; the tests
    pair the finished seeds, the report names the unfinished run, report.csv carries the
    epochs summarized and every run's status."""
    from l2bn.cli import main

    root = tmp_path / "runs"
    for seed in SEEDS:
        _write_recorded_run(root / "demo" / "resnet20-bn" / f"seed{seed}", "bn", seed)
        finished = seed != 123
        _write_recorded_run(
            root / "demo" / "resnet20-l2bn" / f"seed{seed}",
            "l2bn",
            seed,
            epochs_done=3 if finished else 1,
            done=finished,
        )
    out = tmp_path / "out"
    assert main(["report", str(root), "--out", str(out), "--no-plots"]) == 0
    text = capsys.readouterr().out
    flat = " ".join(text.split())
    assert "L2BN vs BN (resnet20, 2 seed(s) paired: 121, 122)" in flat
    assert "left out: seed 123: L2BN unfinished (1 of 3 epochs)" in flat
    assert "Runs left out of the table and the tests: L2BN seed 123: unfinished (1 of 3" in flat
    l2_line = next(line for line in text.splitlines() if line.startswith("resnet20  L2BN"))
    assert l2_line.split()[2:4] == ["2", "3"]  # seeds, epochs: the finished runs only
    with open(out / "report.csv") as fh:
        rows = list(csv.DictReader(fh))
    summary = [r for r in rows if r["section"] == "summary" and r["quantity"] == "best_acc"]
    assert [(r["norm"], r["epochs"], r["seeds"]) for r in summary] == [
        ("bn", "3", "121 122 123"),
        ("l2bn", "3", "121 122"),
    ]
    test = next(r for r in rows if r["section"] == "test" and r["quantity"] == "best_acc")
    assert (test["epochs"], test["seeds"]) == ("3", "121 122")
    runs = {(r["norm"], r["seeds"]): r for r in rows if r["section"] == "run"}
    assert (runs[("l2bn", "123")]["status"], runs[("l2bn", "123")]["epochs"]) == (
        "unfinished",
        "1",
    )
    assert runs[("bn", "123")]["status"] == "finished"

    # nothing finished at all: an error naming the runs, not a report of partial epochs
    lone = tmp_path / "lone"
    _write_recorded_run(lone / "a", "bn", 121, epochs_done=1, done=False)
    assert main(["report", str(lone), "--no-plots"]) == 1
    err = capsys.readouterr().err
    assert "no finished runs to report" in err and "BN seed 121: unfinished (1 of 3" in err


def test_diverged_runs_are_shown_as_diverged(tmp_path: Path) -> None:
    from l2bn.experiments.report import write_report
    from l2bn.experiments.runs import find_runs

    root = tmp_path / "runs"
    for seed in SEEDS:
        _write_recorded_run(root / "bn" / str(seed), "bn", seed)
        _write_recorded_run(
            root / "l2bn" / str(seed), "l2bn", seed, diverged_at=2 if seed == 123 else None
        )
    result = write_report(find_runs(root), tmp_path / "out", plots=False)
    text = result["text"]
    flat = " ".join(text.split())
    l2_line = next(line for line in text.splitlines() if line.startswith("resnet20  L2BN"))
    assert "2 (+1 diverged)" in l2_line
    assert "L2BN seed 123: diverged at epoch 2 (training loss, weights not finite)" in flat
    assert "paired: 121, 122)" in flat
    assert "left out: seed 123: L2BN diverged at epoch 2" in flat

    # every L2BN seed diverged: the row says so and nothing is tested
    for seed in SEEDS:
        shutil.rmtree(root / "l2bn" / str(seed))
        _write_recorded_run(root / "l2bn" / str(seed), "l2bn", seed, diverged_at=1)
    text = write_report(find_runs(root), tmp_path / "out", plots=False)["text"]
    l2_line = next(line for line in text.splitlines() if line.startswith("resnet20  L2BN"))
    assert l2_line.split()[2:7] == ["0", "(+3", "diverged)", "-", "diverged"]
    flat = " ".join(text.split())
    assert "L2BN vs BN (resnet20): not compared, no seed has a finished run of both" in flat
    assert "Claims of the paper" not in text


def test_report_states_the_settings_and_where_runs_differ(tmp_path: Path) -> None:
    from l2bn.experiments.report import write_report
    from l2bn.experiments.runs import find_runs

    root = tmp_path / "runs"
    for seed in SEEDS:
        _write_recorded_run(
            root / "bn" / str(seed), "bn", seed, threads=1, identity_extra={"commit": "abc123"}
        )
        _write_recorded_run(
            root / "l2bn" / str(seed),
            "l2bn",
            seed,
            threads=2 if seed == 123 else 1,
            identity_extra={"commit": "abc123"},
        )
    out = tmp_path / "out"
    text = write_report(find_runs(root), out, plots=False)["text"]
    flat = " ".join(text.split())
    assert "lr 0.1, momentum 0.9, nesterov true, weight_decay 0.0005, scheduler cosine" in flat
    assert "batch_size 128" in flat and "augment none" in flat
    assert "norm layers: resnet20-bn: norm bn, l2bn_layers all; resnet20-l2bn: norm l2bn" in flat
    assert "metrics true, metrics_max_samples null" in flat
    assert "l2bn_version " in flat and "torch_version " in flat and "commit abc123" in flat
    assert "threads differs (below)" in flat
    differ = "threads: 1 (resnet20-bn, resnet20-l2bn seed 121, 122) vs 2 (resnet20-l2bn seed 123)"
    assert differ in flat
    with open(out / "report.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["section"] == "setting"]
    threads = [(r["value"], r["variant"]) for r in rows if r["quantity"] == "threads"]
    assert threads == [
        ("1", "resnet20-bn, resnet20-l2bn seed 121, 122"),
        ("2", "resnet20-l2bn seed 123"),
    ]
    assert ("lr", "0.1", "") in [(r["quantity"], r["value"], r["variant"]) for r in rows]

    # runs without fingerprint.json (older l2bn): said, not guessed
    bare = tmp_path / "bare"
    for norm in ("bn", "l2bn"):
        _write_run(bare, norm, 121)
    text = write_report(find_runs(bare), tmp_path / "out2", plots=False)["text"]
    assert "l2bn_version not recorded" in " ".join(text.split())


def test_a_mean_over_fewer_seeds_says_over_how_many(runs_root: Path, tmp_path: Path) -> None:
    """L2BN seed 122 finished, but its features collapsed at the last epoch: its angles are
    null there (angles_undefined). The table's Seeds column says 3; its angle means are
    over seeds 121 and 123 only, and must say so (n=2 of 3) and which seed lacks them."""
    from l2bn.experiments.report import write_report

    run = runs_root / "demo" / "resnet20-l2bn" / "seed122"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows[-1].update(dict.fromkeys(("intra_train", "intra_test", "inter", "iir_train")))
    rows[-1].update(iir_test=None, angles_undefined="every feature is zero")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    text = write_report(find_runs(runs_root), tmp_path / "out", plots=False)["text"]
    l2_line = next(line for line in text.splitlines() if line.startswith("resnet20  L2BN"))
    mean = statistics.fmean(FINAL_IIR["l2bn"][s] for s in (121, 123))
    assert f"{mean:.3f} (n=2 of 3)" in l2_line
    assert l2_line.split()[2] == "3" and l2_line.count("(n=2 of 3)") == 5  # not accuracy
    flat = " ".join(text.split())
    assert (
        "L2BN (resnet20): intra-angle train, intra-angle test, inter-angle, IIR train, IIR "
        "test averaged over 2 of 3 finished seeds (n=2 of 3); no value at the final epoch "
        "for seed 122: angles undefined (every feature is zero)"
    ) in flat
    bn_line = next(line for line in text.splitlines() if line.startswith("resnet20  BN "))
    assert "(n=" not in bn_line
    # the tests' note says why the paired test could not run (it said "metrics off?")
    assert (
        "IIR train: not measured on every paired seed (L2BN seed 122: angles undefined "
        "(every feature is zero))"
    ) in flat
    with open(tmp_path / "out" / "report.csv") as fh:
        summary = [r for r in csv.DictReader(fh) if r["section"] == "summary"]
    iir = next(r for r in summary if r["norm"] == "l2bn" and r["quantity"] == "iir_train")
    assert (iir["n"], iir["seeds"]) == ("2", "121 123")
    assert float(iir["mean"]) == pytest.approx(mean)
    assert "mean over 2 of 3 finished seeds" in iir["note"] and "seed 122" in iir["note"]
    acc = next(r for r in summary if r["norm"] == "l2bn" and r["quantity"] == "best_acc")
    assert (acc["n"], acc["note"]) == ("3", "")


def test_report_folder_holds_only_the_current_report(runs_root: Path, tmp_path: Path) -> None:
    """Figures of an earlier report that this one does not draw are removed (the manifest
    lists what a report wrote); files the report never wrote stay."""
    from l2bn.experiments.report import MANIFEST, clear_report, write_report
    from l2bn.experiments.runs import find_runs

    out = tmp_path / "out"
    out.mkdir()
    (out / "my_notes.txt").write_text("mine")
    first = write_report(find_runs(runs_root), out, plots=True)
    assert sorted(p.name for p in first["plots"]) == [
        "resnet20_accuracy_loss.png",
        "resnet20_angles.png",
        "resnet20_iir.png",
    ]
    write_report(find_runs(runs_root), out, plots=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "my_notes.txt",
        "report.csv",
        MANIFEST,
        "report.md",
        "report.txt",
    ]
    # before runs change (compare retraining), the old report goes
    assert sorted(clear_report(out)) == ["report.csv", "report.md", "report.txt"]
    assert [p.name for p in out.iterdir()] == ["my_notes.txt"]

    # a folder from an older l2bn (no manifest): its stray figure is named, not deleted
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "resnet20_angles.png").write_bytes(b"old")
    with pytest.warns(RuntimeWarning, match=r"resnet20_angles\.png, not written by this report"):
        write_report(find_runs(runs_root), legacy, plots=False)
    assert (legacy / "resnet20_angles.png").read_bytes() == b"old"


def test_readme_says_what_the_main_jobs_angle_metrics_are_computed_from() -> None:
    """The preset's metrics_max_samples caps the training and the test features alike: the
    README's main job names both counts, not the accuracy's 2,000-image test subset."""
    from l2bn.experiments.presets import load_preset
    from l2bn.experiments.report_settings import metrics_samples

    config = load_preset("fmnist-resnet20")
    described = metrics_samples(config)
    assert described == (
        "angles and IIR from the classifier inputs of 1000 training images and 1000 test "
        "images (fixed, class-balanced subsets)"
    )
    full = config.replace(train_subset=None, test_subset=None, metrics_max_samples=500)
    assert metrics_samples(full) == (
        "angles and IIR from the classifier inputs of 500 training images (a fixed, "
        "class-balanced subset) and the first 500 test images (in the test set's order)"
    )
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    main_job = " ".join(readme[readme.index("## The main job") :].split("\n## ")[0].split())
    n_train = min(config.train_subset, config.metrics_max_samples)
    n_test = min(config.test_subset, config.metrics_max_samples)
    assert "2,000-image test subset; intra-angle" in main_job
    assert f"from the classifier inputs of {n_train:,} training and {n_test:,} test images" in (
        main_job
    )
    assert "IIR on train and test data, on a fixed 2,000-image test subset" not in main_job


def test_a_refused_report_removes_the_previous_one(runs_root: Path, tmp_path: Path, capsys):
    """A report that refuses (one run in two directories; every run's metrics edited, so
    none is left to report) must not leave the previous, successful report in its folder,
    where it would pass for a report of the runs as they are now: it is removed, and the
    error says so. Files the report never wrote stay."""
    from l2bn.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "my_notes.txt").write_text("mine")
    args = ["report", str(runs_root), "--out", str(out), "--no-plots"]
    assert main(args) == 0
    assert (out / "report.txt").is_file()
    capsys.readouterr()

    copy = runs_root / "copy-of-l2bn-121"
    shutil.copytree(runs_root / "demo" / "resnet20-l2bn" / "seed121", copy)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "two run directories hold the same run" in err
    assert f"the previous report in {out} (report.csv, report.md, report.txt) was removed" in err
    assert sorted(p.name for p in out.iterdir()) == ["my_notes.txt"]

    shutil.rmtree(copy)
    assert main(args) == 0 and (out / "report.txt").is_file()
    capsys.readouterr()
    for directory in runs_root.glob("demo/*/seed*"):
        with open(directory / "metrics.jsonl", "a") as fh:  # a 4th epoch of 3 planned
            fh.write(json.dumps(_metrics_row(4, 99.0, 0.1, 0.1)) + "\n")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "no runs with metrics found" in err and "holds 4 epochs" in err
    assert f"the previous report in {out} (report.csv, report.md, report.txt) was removed" in err
    assert sorted(p.name for p in out.iterdir()) == ["my_notes.txt"]


def test_one_run_in_two_directories_is_refused(tmp_path: Path, capsys) -> None:
    """L2BN seed 121 in two directories (a copy, or two --run-dir): which one to pair with
    BN seed 121 is ambiguous, so the report stops (exit 2) naming both, and writes nothing."""
    from l2bn.cli import main

    root = tmp_path / "runs"
    _write_recorded_run(root / "bn", "bn", 121)
    _write_recorded_run(root / "l2bn-a", "l2bn", 121)
    _write_recorded_run(root / "l2bn-b", "l2bn", 121)
    out = tmp_path / "out"
    assert main(["report", str(root), "--out", str(out), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "two run directories hold the same run (resnet20-l2bn seed 121" in err
    assert str(root / "l2bn-a") in err and str(root / "l2bn-b") in err
    assert not out.exists()


def test_paper_block_summarizes_the_paired_seeds_it_names(tmp_path: Path, monkeypatch) -> None:
    """BN has a finished seed 123 that L2BN lacks: the paper block ("ours: 2 seed(s)")
    gives both arms' means over the two paired seeds, so that they differ by its "diff
    ours"; BN's third seed (80.0) stays in the main table only."""
    from l2bn.experiments.claims import compare_to_baseline
    from l2bn.experiments.report import paper_block
    from l2bn.experiments.summary import summarize

    monkeypatch.setitem(BEST["bn"], 123, 80.0)
    root = tmp_path / "runs"
    for norm, seeds in (("bn", SEEDS), ("l2bn", SEEDS[:2])):
        for seed in seeds:
            _write_run(root, norm, seed, dataset="cifar100")
    (comp,) = compare_to_baseline(summarize(find_runs(root)))
    heading, rows, _ = paper_block(comp)
    assert "ours: 3 epochs, 2 seed(s)" in heading
    acc = next(row for row in rows if row[0] == "best accuracy")
    bn, l2 = [BEST["bn"][s] for s in SEEDS[:2]], [BEST["l2bn"][s] for s in SEEDS[:2]]
    assert acc[1] == f"{statistics.fmean(bn):.2f} ± {statistics.stdev(bn):.2f}"
    assert acc[3] == f"{statistics.fmean(l2):.2f} ± {statistics.stdev(l2):.2f}"
    assert acc[5] == f"{statistics.fmean(l2) - statistics.fmean(bn):+.2f}"


def test_a_run_whose_metrics_were_edited_after_it_finished_is_not_reported(
    tmp_path: Path, monkeypatch
) -> None:
    """metrics.jsonl changed after the run finished: an epoch appended (a 4th of 3, with
    the best accuracy), epochs renumbered (1, 3, 3: epoch 2 gone, epoch 3 twice), another
    run's file copied in (its last epoch is not the one the done marker recorded). Each
    run is named with why, and none of its numbers enters the table or the tests."""
    from l2bn.experiments.report import write_report
    from l2bn.experiments.runs import scan_runs

    monkeypatch.setitem(BEST["bn"], 124, 90.2)
    monkeypatch.setitem(BEST["l2bn"], 124, 95.0)
    monkeypatch.setitem(FINAL_IIR["bn"], 124, 0.6)
    monkeypatch.setitem(FINAL_IIR["l2bn"], 124, 0.5)
    root = tmp_path / "runs"
    runs = {}
    for seed in (*SEEDS, 124):
        _write_recorded_run(root / "bn" / str(seed), "bn", seed)
        runs[seed] = _write_recorded_run(root / "l2bn" / str(seed), "l2bn", seed)

    def rewrite(directory: Path, rows: list[dict]) -> None:
        (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    rows = _rows("l2bn", 121, 3)
    rewrite(runs[121], [*rows, {**rows[-1], "epoch": 4, "test_acc": 99.0}])
    rows = _rows("l2bn", 122, 3)
    rewrite(runs[122], [rows[0], rows[2], rows[2]])
    write_done(runs[123], {"seed": 123, "epochs": 3, "final": _rows("l2bn", 123, 3)[-1]})
    rewrite(runs[123], _rows("l2bn", 124, 3))

    scan = scan_runs(root)
    why = dict(scan.ignored)
    assert why[runs[121]].startswith("metrics.jsonl holds 4 epochs, config.yaml plans 3 (edited")
    assert why[runs[122]].startswith("metrics.jsonl holds epochs 1, 3, 3, not 1 to 3 in order")
    assert why[runs[123]].startswith("the last epoch in metrics.jsonl is not the final epoch")
    text = write_report(scan.records, tmp_path / "out", plots=False, ignored=scan.ignored)["text"]
    flat = " ".join(text.split())
    assert "L2BN vs BN (resnet20, 1 seed(s) paired: 124)" in flat
    l2_line = next(line for line in text.splitlines() if line.startswith("resnet20  L2BN"))
    assert l2_line.split()[2:5] == ["1", "3", "95.00"]
    assert f"{runs[121]}: not read: metrics.jsonl holds 4 epochs" in flat


def test_a_run_whose_config_yaml_was_edited_is_not_reported(tmp_path: Path) -> None:
    """L2BN seed 121 was trained with lr 0.05 (its fingerprint.json says so); config.yaml,
    edited since, says 0.1 like the other runs. Pairing it with BN seed 121 would compare
    two learning rates, and the settings block would state the wrong one: the run is left
    out, named with the settings that disagree."""
    from l2bn.experiments.report import write_report
    from l2bn.experiments.runs import scan_runs

    root = tmp_path / "runs"
    for seed in SEEDS:
        _write_recorded_run(root / "bn" / str(seed), "bn", seed, threads=1)
        lr = 0.05 if seed == 121 else 0.1
        _write_recorded_run(root / "l2bn" / str(seed), "l2bn", seed, threads=1, lr=lr)
    edited = root / "l2bn" / "121"
    config = ExperimentConfig(
        name="demo", model="resnet20", norm="l2bn", epochs=3, seeds=[121], threads=1, lr=0.1
    )
    (edited / "config.yaml").write_text(config.to_yaml())

    scan = scan_runs(root)
    assert dict(scan.ignored) == {
        edited: "fingerprint.json and config.yaml disagree (lr: 0.05 vs 0.1)"
    }
    text = write_report(scan.records, tmp_path / "out", plots=False, ignored=scan.ignored)["text"]
    assert "L2BN vs BN (resnet20, 2 seed(s) paired: 122, 123)" in " ".join(text.split())


def test_variants_that_differ_in_their_norm_options_are_told_apart(tmp_path: Path) -> None:
    """L2BN with its default options and L2BN with eps 0.001 (``l2bn train --run-dir`` puts
    both in one folder): two variants, so two labels. The table rows and the tests say which
    is which, and each figure draws each variant's own curve under its own label."""
    import matplotlib.axes

    from l2bn.experiments.report import write_report

    root = tmp_path / "runs"
    for seed in SEEDS:
        _write_recorded_run(root / "bn" / str(seed), "bn", seed)
        _write_recorded_run(root / "l2bn" / str(seed), "l2bn", seed)
        eps = _write_recorded_run(
            root / "l2bn-eps" / str(seed), "l2bn", seed, norm_kwargs={"eps": 0.001}
        )
        rows = [{**row, "test_acc": row["test_acc"] - 10.0} for row in _rows("l2bn", seed, 3)]
        (eps / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plotted = []
    original = matplotlib.axes.Axes.plot

    def plot(self, x, y, *args, **kwargs):
        plotted.append((self, kwargs.get("label"), [float(v) for v in y]))
        return original(self, x, y, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(matplotlib.axes.Axes, "plot", plot)
        text = write_report(find_runs(root), tmp_path / "out")["text"]
    lines = text.splitlines()
    assert any(line.startswith("resnet20  L2BN(eps=0.001)  3") for line in lines)
    assert any(line.startswith("resnet20  L2BN  ") for line in lines)
    flat = " ".join(text.split())
    assert "L2BN(eps=0.001) vs BN (resnet20, 3 seed(s) paired" in flat
    assert "L2BN vs BN (resnet20, 3 seed(s) paired" in flat
    curves = {label: y for ax, label, y in plotted if ax.get_title() == "test accuracy (%)"}
    for label, shift in (("L2BN", 0.0), ("L2BN(eps=0.001)", -10.0)):
        epochs = zip(*(_rows("l2bn", seed, 3) for seed in SEEDS), strict=True)
        expected = [statistics.fmean(r["test_acc"] for r in rows) + shift for rows in epochs]
        assert curves[label] == pytest.approx(expected)


def test_a_report_of_several_names_says_which_rows_and_tests_are_whose(tmp_path: Path) -> None:
    """Runs of two experiment names, ``demo`` (lr 0.1) and ``fast`` (lr 0.5, its accuracies
    5 points lower), in one report: each table row and each test names its experiment, so
    that the two "resnet20 BN" rows and the two "L2BN vs BN" tests can be told apart."""
    from l2bn.experiments.report import write_report

    root = tmp_path / "runs"
    for seed in SEEDS:
        for norm in ("bn", "l2bn"):
            _write_recorded_run(root / "demo" / norm / str(seed), norm, seed)
            fast = _write_recorded_run(root / "fast" / norm / str(seed), norm, seed, lr=0.5)
            config = ExperimentConfig(
                name="fast", model="resnet20", norm=norm, epochs=3, seeds=[seed], lr=0.5
            )
            (fast / "config.yaml").write_text(config.to_yaml())
            rows = [{**r, "test_acc": r["test_acc"] - 5.0} for r in _rows(norm, seed, 3)]
            (fast / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = write_report(find_runs(root), tmp_path / "out", plots=False)["text"]
    lines = text.splitlines()
    bn = [statistics.fmean(BEST["bn"][s] - shift for s in SEEDS) for shift in (0.0, 5.0)]
    demo = next(line for line in lines if line.startswith("demo/resnet20  BN "))
    fast = next(line for line in lines if line.startswith("fast/resnet20  BN "))
    assert f"{bn[0]:.2f} ±" in demo and f"{bn[1]:.2f} ±" in fast
    flat = " ".join(text.split())
    for name in ("demo", "fast"):
        assert f"L2BN vs BN ({name}/resnet20, 3 seed(s) paired: 121, 122, 123)" in flat
        assert f"L2BN vs BN ({name}/resnet20, 3 seed(s)):" in flat
        assert f"L2BN vs BN ({name}/resnet20): test accuracy" in flat


def test_figure_titles_count_the_seeds_of_each_curve(tmp_path: Path) -> None:
    """BN has 3 finished seeds, L2BN 2 (seed 123 unfinished): the figures' curves are means
    over 3 and 2 seeds, and their title says so (not "mean over 3 seed(s)" for both)."""
    import matplotlib.figure

    from l2bn.experiments.report import write_report

    root = tmp_path / "runs"
    for seed in SEEDS:
        _write_recorded_run(root / "bn" / str(seed), "bn", seed)
        _write_recorded_run(root / "l2bn" / str(seed), "l2bn", seed, done=seed != 123)
    titles = []
    original = matplotlib.figure.Figure.suptitle

    def suptitle(self, text, *args, **kwargs):
        titles.append(text)
        return original(self, text, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(matplotlib.figure.Figure, "suptitle", suptitle)
        write_report(find_runs(root), tmp_path / "out")
    assert len(titles) == 3
    assert all(t.startswith("resnet20 (demo): mean over seeds (BN 3, L2BN 2)") for t in titles)


def test_one_layer_spelled_two_ways_is_one_variant_and_two_layers_have_two_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``gn-cpg4`` and ``gn`` with ``channels_per_group`` 4 build one layer: their runs are one
    variant (one GN-cpg4 row and one test, over the seeds of both), and one seed under both
    spellings is one run in two directories. ``gn`` with 8 channels per group is GN-cpg8,
    and an option given as a string is labelled apart from the number."""
    from l2bn.experiments.report import write_report
    from l2bn.experiments.summary import DuplicateRunError, norm_label

    for norm in ("gn", "gn-cpg4"):
        monkeypatch.setitem(BEST, norm, BEST["l2bn"])
        monkeypatch.setitem(FINAL_IIR, norm, FINAL_IIR["l2bn"])
    root = tmp_path / "runs"
    for seed in SEEDS:
        _write_recorded_run(root / "bn" / str(seed), "bn", seed)
        cpg8 = {"channels_per_group": 8}
        _write_recorded_run(root / "cpg8" / str(seed), "gn", seed, norm_kwargs=cpg8)
    _write_recorded_run(root / "alias" / "121", "gn-cpg4", 121)
    _write_recorded_run(root / "alias" / "122", "gn-cpg4", 122)
    cpg4 = {"channels_per_group": 4}
    _write_recorded_run(root / "spelled" / "123", "gn", 123, norm_kwargs=cpg4)
    text = write_report(find_runs(root), tmp_path / "out", plots=False)["text"]
    labels = [line.split()[1] for line in text.splitlines() if line.startswith("resnet20  ")]
    assert sorted(labels) == ["BN", "GN-cpg4", "GN-cpg8"]
    flat = " ".join(text.split())
    assert "GN-cpg4 vs BN (resnet20, 3 seed(s) paired: 121, 122, 123)" in flat
    assert flat.count("GN-cpg4 vs BN (resnet20, 3 seed(s)):") == 1
    _write_recorded_run(root / "spelled" / "121", "gn", 121, norm_kwargs=cpg4)
    with pytest.raises(DuplicateRunError, match="two run directories hold the same run"):
        write_report(find_runs(root), tmp_path / "out", plots=False)

    assert norm_label("gn-cpg4", "all", {"channels_per_group": 8}) == "GN-cpg8"
    assert norm_label("gn", "all", {"channels_per_group": 16}) == "GN-cpg16"
    assert norm_label("gn", "all", {**cpg4, "eps": 0.001}) == "GN-cpg4(eps=0.001)"
    assert norm_label("l2bn", "stage1", {"eps": "0.001"}) == "L2BN(eps='0.001') [stage1]"


def test_rows_come_in_the_experiments_order_not_the_order_found_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs kept in folders whose names sort L2BN, LN, L2BN with eps 0.001, BN: the table,
    the tests and report.csv list BN first, LN, then L2BN (the paper's tables' order), the
    variant the paper has no row for after its own norm, by label. Given the experiment's
    own order (``l2bn compare --norms l2bn,ln,bn``), the rows follow that."""
    from l2bn.experiments.report import write_report
    from l2bn.experiments.summary import summarize

    monkeypatch.setitem(BEST, "ln", BEST["l2bn"])
    monkeypatch.setitem(FINAL_IIR, "ln", FINAL_IIR["l2bn"])
    root = tmp_path / "runs"
    for seed in SEEDS:
        _write_recorded_run(root / "a" / str(seed), "l2bn", seed)
        _write_recorded_run(root / "b" / str(seed), "ln", seed)
        eps = {"eps": 0.001}
        _write_recorded_run(root / "c" / str(seed), "l2bn", seed, norm_kwargs=eps)
        _write_recorded_run(root / "d" / str(seed), "bn", seed)
    records = find_runs(root)
    assert [r.config.norm for r in records[::3]] == ["l2bn", "ln", "l2bn", "bn"]
    out = tmp_path / "out"
    text = write_report(records, out, plots=False)["text"]
    labels = [line.split()[1] for line in text.splitlines() if line.startswith("resnet20  ")]
    assert labels == ["BN", "LN", "L2BN", "L2BN(eps=0.001)"]
    tests = [line.split(" vs ")[0] for line in text.splitlines() if " seed(s) paired" in line]
    assert tests == ["LN", "L2BN", "L2BN(eps=0.001)"]
    with open(out / "report.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["section"] == "summary"]
    assert list(dict.fromkeys(r["variant"] for r in rows)) == labels
    # the same runs found in another order make the same report
    assert write_report(records[::-1], out, plots=False)["text"] == text

    def config(norm: str) -> ExperimentConfig:
        return ExperimentConfig(name="demo", model="resnet20", norm=norm, epochs=3)

    listed = [config("l2bn"), config("ln"), config("bn")]
    summaries = summarize(records, order=listed)
    assert [s.label for s in summaries] == ["L2BN", "LN", "BN", "L2BN(eps=0.001)"]


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_runs_dir_that_is_no_folder_is_a_bad_argument(kind: str, tmp_path: Path, capsys) -> None:
    from l2bn.cli import main

    runs = tmp_path / "runs"
    if kind == "file":
        runs.write_text("not a folder")
    assert main(["report", str(runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    state = "does not exist" if kind == "missing" else "is not a directory"
    assert err == f"l2bn report: error: runs directory {runs} {state}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if kind == "missing" else ["runs"])


def test_seeds_needed_are_written_as_exact_counts_in_the_csv() -> None:
    """report.csv wrote seed counts through the 6-significant-digit number format:
    1,234,567 seeds became 1.23457e+06."""
    from l2bn.experiments.report import _count

    assert _count(1234567.0) == "1234567"
    assert _count(7.0) == "7"
    assert _count(math.inf) == "inf"
    assert _count(math.nan) == "" and _count(None) == ""
