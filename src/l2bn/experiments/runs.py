"""Run directories: ``<runs>/<name>/<model>-<norm>[-<placement>]/seed<k>/``, where ``<name>``
is the config's ``name`` (by default the preset's).

A run directory holds ``config.yaml`` (the resolved config), ``fingerprint.json`` (the run's
identity, :mod:`l2bn.experiments.identity`), ``metrics.jsonl``, ``checkpoint.pt`` (and
``checkpoint.prev.pt``; ``checkpoint.damaged-N.pt`` for checkpoints that failed to load),
``lock`` (:mod:`l2bn.experiments.run_lock`), optional ``tensorboard/`` logs and, once
finished, a ``done`` marker (JSON summary).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l2bn.experiments.config import ExperimentConfig

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_CHECKPOINT_FILE = "checkpoint.prev.pt"
DONE_FILE = "done"
IDENTITY_FILE = "fingerprint.json"
_PATH_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def norm_variant(config: ExperimentConfig) -> str:
    """``<norm>``, then each of its ``norm_kwargs`` as ``-<key>=<value>`` in key order, then
    ``-<placement>`` when L2BN is placed in some layers only: ``l2bn``,
    ``l2bn-l2_eps=1e-06``, ``l2bn-stage1``. Runs that differ in any of these get different
    names (and directories). Characters other than letters, digits and ``._+-`` in a value
    are written ``_``; two values that meet that way share a directory, whose recorded
    identity then refuses the other run (never a silent mix)."""
    name = config.norm
    for key, value in sorted(config.norm_kwargs.items()):
        name += f"-{key}={_PATH_UNSAFE.sub('_', str(value))}"
    if config.l2bn_layers != "all":
        name += f"-{config.l2bn_layers}"
    return name


def variant_name(config: ExperimentConfig) -> str:
    """``<model>-<norm variant>`` (:func:`norm_variant`): ``resnet20-l2bn-stage1``."""
    return f"{config.model}-{norm_variant(config)}"


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
    """A run found on disk: where it is, its config, seed and metric rows.

    ``seed`` is the seed the run recorded (``fingerprint.json``, ``config.yaml``, ``done``),
    never its directory's name. ``identity`` is the identity stored in ``fingerprint.json``
    (None when the run has none) and ``recorded`` that file's other entries, if any;
    ``summary`` is the ``done`` marker's JSON (None while unfinished).
    """

    directory: Path
    config: ExperimentConfig
    seed: int
    rows: list[dict[str, Any]]
    done: bool
    identity: dict[str, Any] | None = None
    recorded: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None

    @property
    def variant(self) -> str:
        return variant_name(self.config)

    @property
    def epochs_done(self) -> int:
        return len(self.rows)

    @property
    def diverged_epoch(self) -> int | None:
        """The epoch (1-based) at which the run diverged (a non-finite loss, weight or
        feature; see ``l2bn.experiments.train``), or None."""
        for index, row in enumerate(self.rows, start=1):
            if row.get("diverged"):
                return int(row.get("epoch") or index)
        return None

    @property
    def diverged_reason(self) -> str:
        """What was not finite when the run diverged ("" when it did not)."""
        epoch = self.diverged_epoch
        if epoch is None:
            return ""
        reason = self.rows[epoch - 1].get("diverged") if epoch <= len(self.rows) else None
        return reason if isinstance(reason, str) else "not finite"

    def describe(self) -> str:
        """``resnet20-l2bn seed 123`` (the run's variant and recorded seed)."""
        return f"{self.variant} seed {self.seed}"


@dataclass
class RunScan:
    """What a search for runs found: the runs, and the directories left out with why."""

    records: list[RunRecord]
    ignored: list[tuple[Path, str]] = field(default_factory=list)


def fingerprint(identity: dict[str, Any]) -> str:
    """SHA-256 of the identity's canonical JSON: what ``fingerprint.json`` and checkpoints
    store (:mod:`l2bn.experiments.identity` uses this one definition). Changing it would
    orphan every saved run."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_json(path: Path) -> tuple[Any, str]:
    """(the file's JSON or None, a problem or "") for an optional file."""
    if not path.is_file():
        return None, ""
    try:
        return json.loads(path.read_text(encoding="utf-8")), ""
    except (OSError, ValueError) as err:
        return None, f"{path.name} is not readable JSON ({err})"


def _config_disagreement(identity: dict[str, Any], config: ExperimentConfig) -> list[str]:
    """``"lr: 0.05 vs 0.1"`` for every setting that ``fingerprint.json`` (what the run was
    trained with) and ``config.yaml`` (what the report shows and pairs by) give differently:
    every identity field that is a config field. A ``threads`` left unset in ``config.yaml``
    stands for the count the run recorded."""
    saved = config.to_dict()
    differ = []
    for key, value in identity.items():
        if key not in saved or (key == "threads" and saved[key] is None):
            continue
        if json.loads(json.dumps(saved[key])) != value:  # tuples as the JSON's lists
            differ.append(f"{key}: {value!r} vs {saved[key]!r}")
    return differ


def _metrics_problem(
    rows: list[Any], config: ExperimentConfig, summary: dict[str, Any] | None
) -> str:
    """Why ``metrics.jsonl`` is not the record of the run (``""`` when it is): its rows must
    be epochs 1, 2, ... in order, at most the planned epochs, and the last one the final
    row that the ``done`` marker recorded (when it recorded one)."""
    numbers = [row.get("epoch") if isinstance(row, dict) else None for row in rows]
    if numbers != list(range(1, len(rows) + 1)):
        shown = ", ".join(str(n) for n in numbers[:10]) + (", ..." if len(numbers) > 10 else "")
        return (
            f"{METRICS_FILE} holds epochs {shown}, not 1 to {len(rows)} in order (edited "
            "after the run?)"
        )
    if len(rows) > config.epochs:
        return (
            f"{METRICS_FILE} holds {len(rows)} epochs, {CONFIG_FILE} plans {config.epochs} "
            "(edited after the run?)"
        )
    final = summary.get("final") if summary is not None else None
    if isinstance(final, dict) and final and final != rows[-1]:
        return (
            f"the last epoch in {METRICS_FILE} is not the final epoch its {DONE_FILE} marker "
            "recorded (edited after the run finished?)"
        )
    return ""


def inspect_run_dir(directory: str | Path) -> tuple[RunRecord | None, str]:
    """The run saved in ``directory`` and ``""``, or None and why it cannot be reported.

    The seed comes from what the run recorded: ``fingerprint.json`` (its identity, when the
    file is intact), ``config.yaml`` (``seeds``: the run's one seed) and the ``done``
    marker; they must agree. The directory's name plays no part.
    """
    from l2bn.experiments.metrics_log import read_metrics

    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        return None, f"no {CONFIG_FILE}"
    import yaml

    try:
        config = ExperimentConfig.from_yaml(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError, yaml.YAMLError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0]
        return None, f"{CONFIG_FILE} is not a valid config ({first})"
    stored, problem = _read_json(directory / IDENTITY_FILE)
    if problem:
        return None, problem
    identity: dict[str, Any] | None = None
    recorded: dict[str, Any] = {}
    if stored is not None:
        try:
            identity = dict(stored["identity"])
            intact = fingerprint(identity) == stored["fingerprint"]
        except (KeyError, TypeError, ValueError):
            intact = False
        if not intact:
            return None, f"{IDENTITY_FILE} is damaged (its fingerprint does not match)"
        recorded = {k: v for k, v in stored.items() if k not in ("identity", "fingerprint")}
    summary, problem = _read_json(directory / DONE_FILE)
    if problem:
        return None, problem
    if summary is not None and not isinstance(summary, dict):
        return None, f"{DONE_FILE} is not a JSON object"
    seeds: dict[str, int] = {}
    if identity is not None and "seed" in identity:
        seeds[IDENTITY_FILE] = identity["seed"]
    if len(config.seeds) == 1:
        seeds[CONFIG_FILE] = config.seeds[0]
    if summary is not None and "seed" in summary:
        seeds[DONE_FILE] = summary["seed"]
    if not seeds:
        return None, (
            f"its seed is not recorded ({CONFIG_FILE} lists seeds "
            f"{', '.join(str(s) for s in config.seeds)}, and there is no {IDENTITY_FILE})"
        )
    if len({json.dumps(v) for v in seeds.values()}) > 1:
        said = ", ".join(f"{name} {value!r}" for name, value in seeds.items())
        return None, f"its files disagree on the seed ({said})"
    seed = next(iter(seeds.values()))
    if not isinstance(seed, int) or isinstance(seed, bool):
        return None, f"its recorded seed {seed!r} is not an integer"
    if identity is not None:
        differ = _config_disagreement(identity, config)
        if differ:
            return None, f"{IDENTITY_FILE} and {CONFIG_FILE} disagree ({'; '.join(differ)})"
    rows = read_metrics(directory / METRICS_FILE)
    if not rows:
        return None, "no finished epoch yet"
    problem = _metrics_problem(rows, config, summary)
    if problem:
        return None, problem
    done = summary is not None
    return RunRecord(directory, config, seed, rows, done, identity, recorded, summary), ""


def load_run(directory: str | Path) -> RunRecord | None:
    """The run saved in ``directory``, or None when it cannot be reported (no config or no
    metrics yet, or files that disagree: :func:`inspect_run_dir` says why)."""
    return inspect_run_dir(directory)[0]


def scan_runs(root: str | Path) -> RunScan:
    """Every run directory under ``root`` (any depth: any folder holding a run's file), and
    those that cannot be reported, each with the reason."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"runs directory {root} does not exist")
    markers = (CONFIG_FILE, IDENTITY_FILE, METRICS_FILE, DONE_FILE, CHECKPOINT_FILE)
    folders = sorted({path.parent for name in markers for path in root.rglob(name)})
    scan = RunScan([])
    for folder in folders:
        record, why = inspect_run_dir(folder)
        if record is not None:
            scan.records.append(record)
        else:
            scan.ignored.append((folder, why))
    return scan


def find_runs(root: str | Path) -> list[RunRecord]:
    """Every run directory under ``root`` (any depth) that has a config and metrics
    (:func:`scan_runs` also says which directories were left out, and why)."""
    return scan_runs(root).records
