"""Training curves in the style of the paper's figures, one PNG per figure and model.

* ``<model>_accuracy_loss.png``: test accuracy and training loss per epoch (Figure 6).
* ``<model>_angles.png``: intra-angle on train and test data and inter-angle per epoch
  (Figure 1, plus the test intra-angle of Table 1).
* ``<model>_iir.png``: IIR on training and test data per epoch (Figure 7, supplement Fig. 1).

Every panel draws each norm (BN and L2BN, or the norms compared) as the mean over seeds
with a band from the lowest to the highest seed, over the variant's finished runs (those
the report summarizes: no unfinished or diverged run). ``marks`` (from the report's per-epoch
paired tests) puts a star on a norm's curve at every epoch where its paired difference
from the baseline is significant after Holm's adjustment over the epochs.

This module imports :mod:`l2bn.experiments.summary` only; the report imports it, never the
other way round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from l2bn.experiments.summary import VariantSummary

FIGURES: dict[str, tuple[tuple[str, str], ...]] = {
    "accuracy_loss": (("test_acc", "test accuracy (%)"), ("train_loss", "training loss")),
    "angles": (
        ("intra_train", "intra-angle, train (deg)"),
        ("intra_test", "intra-angle, test (deg)"),
        ("inter", "inter-angle (deg)"),
    ),
    "iir": (("iir_train", "IIR, train"), ("iir_test", "IIR, test")),
}
# (preset, model, variant label, metric key) -> epochs (1-based) to mark
Marks = Mapping[tuple[str, str, str, str], Sequence[int]]


def _curve(variant: VariantSummary, key: str) -> tuple[Any, Any, Any, Any] | None:
    import numpy as np

    series = []
    for seed in variant.seeds:
        values = [row.get(key) for row in variant.runs[seed].rows]
        series.append([np.nan if v is None else float(v) for v in values])
    if not series:
        return None
    length = min(len(s) for s in series)
    if length == 0:
        return None
    data = np.array([s[:length] for s in series], dtype=float)
    if np.isnan(data).all():
        return None
    epochs = np.arange(1, length + 1)
    return epochs, np.nanmean(data, 0), np.nanmin(data, 0), np.nanmax(data, 0)


def plot_curves(
    summaries: list[VariantSummary], out_dir: str | Path, marks: Marks | None = None
) -> list[Path]:
    """Write the three figures for every (preset, model); returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    marks = marks or {}
    out_dir = Path(out_dir)
    groups: dict[tuple[str, str], list[VariantSummary]] = {}
    for s in summaries:
        groups.setdefault((s.preset, s.model), []).append(s)
    written = []
    multi_preset = len({preset for preset, _ in groups}) > 1
    for (preset, model), variants in groups.items():
        baseline = next((v.label for v in variants if v.is_baseline), None)
        for figure, panels in FIGURES.items():
            curves = {(v.label, key): _curve(v, key) for v in variants for key, _ in panels}
            if all(c is None for c in curves.values()):
                continue
            fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8))
            any_marked = False
            for ax, (key, title) in zip(axes, panels, strict=True):
                for v in variants:
                    curve = curves[(v.label, key)]
                    if curve is None:
                        continue
                    epochs, mean, low, high = curve
                    (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=v.label)
                    if len(v.seeds) > 1:
                        ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
                    marked = [e for e in marks.get((preset, model, v.label, key), ()) if
                              1 <= e <= len(epochs)]  # fmt: skip
                    if marked:
                        any_marked = True
                        ax.plot(
                            marked,
                            [mean[e - 1] for e in marked],
                            linestyle="none",
                            marker="*",
                            markersize=11,
                            markeredgecolor="black",
                            color=line.get_color(),
                            label=f"{v.label}: Holm p < 0.05 vs {baseline}",
                        )
                ax.set_xlabel("epoch")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_title(title)
                ax.grid(alpha=0.3)
                ax.legend(fontsize="small")
            counts = {v.label: len(v.seeds) for v in variants if v.seeds}
            if len(set(counts.values())) == 1:
                seeds = f"{next(iter(counts.values()))} seed(s)"
            else:  # each curve is the mean over its own variant's finished seeds
                seeds = "seeds (" + ", ".join(f"{k} {n}" for k, n in counts.items()) + ")"
            title = f"{model} ({preset}): mean over {seeds}, band = min..max"
            tested = any((preset, model, v.label, k) in marks for v in variants for k, _ in panels)
            if tested and baseline:
                title += (
                    f"; * = paired difference from {baseline} significant (Holm over epochs)"
                    if any_marked
                    else f"; no epoch differs significantly from {baseline} (Holm)"
                )
            fig.suptitle(title, fontsize="medium")
            fig.tight_layout()
            stem = f"{preset}_{model}" if multi_preset else model
            path = out_dir / f"{stem}_{figure}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written
