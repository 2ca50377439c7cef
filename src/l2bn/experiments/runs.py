"""Run directories: ``<runs>/<name>/<model>-<norm>[-<placement>]/seed<k>/``, where ``<name>``
is the config's ``name`` (by default the preset's).

A run directory holds ``config.yaml`` (the resolved config), ``fingerprint.json`` (the run's
identity, :mod:`l2bn.experiments.identity`), ``metrics.jsonl``, ``checkpoint.pt`` (and
``checkpoint.prev.pt``; ``checkpoint.damaged-N.pt`` for checkpoints that failed to load),
``lock`` (:mod:`l2bn.experiments.run_lock`), optional ``tensorboard/`` logs and, once
finished, a ``done`` marker (JSON summary).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l2bn.experiments.config import ExperimentConfig

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_CHECKPOINT_FILE = "checkpoint.prev.pt"
DONE_FILE = "done"


def variant_name(config: ExperimentConfig) -> str:
    """``<model>-<norm>``, plus ``-<placement>`` when L2BN is placed in some layers only."""
    name = f"{config.model}-{config.norm}"
    if config.l2bn_layers != "all":
        name += f"-{config.l2bn_layers}"
    return name


def run_dir(root: str | Path, config: ExperimentConfig, seed: int) -> Path:
    return Path(root) / config.name / variant_name(config) / f"seed{seed}"


def is_done(directory: str | Path) -> bool:
    return (Path(directory) / DONE_FILE).is_file()


def write_done(directory: str | Path, summary: dict[str, Any]) -> None:
    path = Path(directory) / DONE_FILE
    tmp = path.with_name(DONE_FILE + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class RunRecord:
    """A run found on disk: where it is, its config, seed and metric rows."""

    directory: Path
    config: ExperimentConfig
    seed: int
    rows: list[dict[str, Any]]
    done: bool

    @property
    def variant(self) -> str:
        return variant_name(self.config)


def load_run(directory: str | Path) -> RunRecord | None:
    """The run saved in ``directory``, or None when it has no config or no metrics yet."""
    from l2bn.experiments.metrics_log import read_metrics

    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file() or not directory.name.startswith("seed"):
        return None
    try:
        seed = int(directory.name[len("seed") :])
    except ValueError:
        return None
    try:
        config = ExperimentConfig.from_yaml(config_path.read_text(encoding="utf-8"))
    except ValueError as err:  # e.g. a value the config no longer accepts (NaN lr)
        raise ValueError(f"{config_path}: {err}") from None
    rows = read_metrics(directory / METRICS_FILE)
    if not rows:
        return None
    return RunRecord(directory, config, seed, rows, is_done(directory))


def find_runs(root: str | Path) -> list[RunRecord]:
    """Every run directory under ``root`` (any depth) that has a config and metrics."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"runs directory {root} does not exist")
    records = [load_run(path.parent) for path in sorted(root.rglob(CONFIG_FILE))]
    return [record for record in records if record is not None]
