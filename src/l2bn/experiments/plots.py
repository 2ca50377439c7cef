"""Training curves in the style of the paper's figures, one PNG per figure and model.

* ``<model>_accuracy_loss.png``: test accuracy and training loss per epoch (Figure 6).
* ``<model>_angles.png``: intra-angle (train) and inter-angle per epoch (Figure 1).
* ``<model>_iir.png``: IIR on training and test data per epoch (Figure 7, supplement Fig. 1).

Every panel draws each norm (BN and L2BN, or the norms compared) as the mean over seeds
with a band from the lowest to the highest seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from l2bn.experiments.report import VariantSummary

FIGURES: dict[str, tuple[tuple[str, str], ...]] = {
    "accuracy_loss": (("test_acc", "test accuracy (%)"), ("train_loss", "training loss")),
    "angles": (("intra_train", "intra-angle, train (deg)"), ("inter", "inter-angle (deg)")),
    "iir": (("iir_train", "IIR, train"), ("iir_test", "IIR, test")),
}


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


def plot_curves(summaries: list[VariantSummary], out_dir: str | Path) -> list[Path]:
    """Write the three figures for every (preset, model); returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out_dir = Path(out_dir)
    groups: dict[tuple[str, str], list[VariantSummary]] = {}
    for s in summaries:
        groups.setdefault((s.preset, s.model), []).append(s)
    written = []
    multi_preset = len({preset for preset, _ in groups}) > 1
    for (preset, model), variants in groups.items():
        for figure, panels in FIGURES.items():
            curves = {(v.label, key): _curve(v, key) for v in variants for key, _ in panels}
            if all(c is None for c in curves.values()):
                continue
            fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8))
            for ax, (key, title) in zip(axes, panels, strict=True):
                for v in variants:
                    curve = curves[(v.label, key)]
                    if curve is None:
                        continue
                    epochs, mean, low, high = curve
                    (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=v.label)
                    if len(v.seeds) > 1:
                        ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
                ax.set_xlabel("epoch")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_title(title)
                ax.grid(alpha=0.3)
                ax.legend()
            seeds = max(len(v.seeds) for v in variants)
            fig.suptitle(f"{model} ({preset}): mean over {seeds} seed(s), band = min..max")
            fig.tight_layout()
            stem = f"{preset}_{model}" if multi_preset else model
            path = out_dir / f"{stem}_{figure}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written
