"""Per-epoch metrics of a run as JSON lines (``metrics.jsonl``), one object per epoch.

Keys: epoch (1-based), lr (at the epoch's first step), train_loss, train_acc, test_loss,
test_acc, intra_train, intra_test, inter, iir_train, iir_test (angles in degrees, supplement
eqs. 2-3; IIR paper eq. 4; null when metrics are off or the epoch diverged), seconds (wall
time of the epoch), diverged (null, or what was NaN or infinite at the end of the epoch,
e.g. ``"training loss, weights not finite"``: the run stopped there), angles_undefined (null,
or why finite features gave the angles no value, e.g. features collapsed to zeros: the
angles are null and the run goes on). Non-finite numbers are written as null.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

METRIC_KEYS = (
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "intra_train",
    "intra_test",
    "inter",
    "iir_train",
    "iir_test",
    "seconds",
    "diverged",
    "angles_undefined",
)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def append_metrics(path: str | Path, row: dict[str, Any]) -> None:
    """Append one epoch's row (flushed and fsynced: a killed run keeps its finished epochs)."""
    line = json.dumps({key: _clean(row.get(key)) for key in METRIC_KEYS})
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All complete rows (a partially written last line is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def keep_epochs_before(path: str | Path, epoch: int) -> None:
    """Drop rows of epochs >= ``epoch`` (1-based): used when resuming from a checkpoint."""
    path = Path(path)
    if not path.exists():
        return
    kept = [row for row in read_metrics(path) if int(row.get("epoch", 0)) < epoch]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
    os.replace(tmp, path)
