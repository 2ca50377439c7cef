"""One experiment's settings: a dataclass that round-trips through YAML.

The fields cover the training settings of the supplement's Table 1 (optimizer, learning-rate
schedule, weight decay, batch size, epochs, warm-up, mixup, label smoothing) and the
acoustic-scene recipe of section 4.2 (cosine decay with restarts), plus the CPU-scale knobs
(subsets, threads, metrics budget).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

SCHEDULERS = ("cosine", "multistep", "cosine_restarts")
PLACEMENTS = ("none", "all", "classifier", "stage1", "stage2-3")
MAX_SEED = 2**64 - 1


@dataclass
class ExperimentConfig:
    """The resolved configuration of one experiment (all seeds share it).

    ``batch_size`` is the total over all processes (the paper's BS); under torchrun each of
    the N processes takes ``batch_size / N`` samples per step.
    """

    name: str = "custom"
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    model: str = "resnet20"
    norm: str = "bn"
    norm_kwargs: dict[str, Any] = field(default_factory=dict)
    l2bn_layers: str = "all"
    epochs: int = 1
    batch_size: int = 128
    eval_batch_size: int | None = None
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    scheduler: str = "cosine"
    min_lr: float = 0.0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: int = 0
    restart_epochs: list[int] = field(default_factory=list)
    augment: str = "none"
    mixup_alpha: float = 0.0
    mixup_per_sample: bool = False
    label_smoothing: float = 0.0
    seeds: list[int] = field(default_factory=lambda: [121, 122, 123, 124, 125])
    train_subset: int | None = None
    test_subset: int | None = None
    metrics: bool = True
    metrics_max_samples: int | None = None
    num_workers: int = 0
    device: str = "auto"
    threads: int | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent setting."""
        _check_run_name(self.name)
        for name in _float_fields():
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(
                f"unknown scheduler {self.scheduler!r}; valid: {', '.join(SCHEDULERS)}"
            )
        if self.l2bn_layers not in PLACEMENTS:
            raise ValueError(
                f"unknown l2bn_layers {self.l2bn_layers!r}; valid: {', '.join(PLACEMENTS)}"
            )
        if self.l2bn_layers != "all" and self.norm != "l2bn":
            raise ValueError(
                f"l2bn_layers={self.l2bn_layers!r} places L2BN in some layers of a BN model "
                f"(Table 4); it needs norm 'l2bn', got {self.norm!r}"
            )
        positive = ("epochs", "batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        nonnegative = ("lr", "min_lr", "weight_decay", "momentum", "gamma", "mixup_alpha")
        for name in (*nonnegative, "warmup_epochs"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})"
            )
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        outside = [seed for seed in self.seeds if not 0 <= seed <= MAX_SEED]
        if outside:
            # torch.manual_seed takes -1 as 2**64 - 1: a negative seed would alias another
            raise ValueError(
                f"seeds must be in [0, 2**64 - 1] (torch.manual_seed's range), got {outside[0]}"
            )
        twice = sorted({seed for seed in self.seeds if self.seeds.count(seed) > 1})
        if twice:
            raise ValueError(
                f"seed {', '.join(str(seed) for seed in twice)} listed twice in seeds "
                f"{','.join(str(seed) for seed in self.seeds)}"
            )
        for name in ("train_subset", "test_subset", "metrics_max_samples", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or null, got {value}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or null, got {self.threads}")
        if sorted(self.milestones) != list(self.milestones):
            raise ValueError(f"milestones must be increasing, got {self.milestones}")
        restarts = list(self.restart_epochs)
        if sorted(set(restarts)) != restarts or any(e <= 0 for e in restarts):
            raise ValueError(f"restart_epochs must be positive and increasing, got {restarts}")
        if self.scheduler == "cosine_restarts" and not restarts:
            raise ValueError("scheduler 'cosine_restarts' needs restart_epochs (e.g. [3, 7, 15])")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML-safe) with the fields in declaration order."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        """Build from a dict, coercing strings such as ``"5e-4"`` to the field types."""
        unknown = sorted(set(data) - set(field_names()))
        if unknown:
            raise ValueError(
                f"unknown config key(s) {', '.join(unknown)}; valid: {', '.join(field_names())}"
            )
        return cls(**{key: coerce(key, value) for key, value in data.items()})

    def replace(self, **changes: Any) -> ExperimentConfig:
        """A copy with some fields changed (coerced and validated)."""
        merged = self.to_dict()
        merged.update(changes)
        return ExperimentConfig.from_dict(merged)

    def to_yaml(self) -> str:
        from l2bn.experiments import yaml_text

        # yaml_text's dumper: a string such as '1e5' is quoted, so that from_yaml (which
        # reads 1e5 as a number) gives it back.
        return yaml_text.dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @classmethod
    def from_yaml(cls, text: str) -> ExperimentConfig:
        data = load_config_text(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"a config must be a YAML mapping, got {type(data).__name__}")
        return cls.from_dict(data)


def load_config_text(text: str) -> Any:
    """A config document (``config.yaml``, a ``--config`` file) as YAML: the free-form
    mappings (``norm_kwargs``, ``dataset_kwargs``), which reach the layers and datasets as
    read, with numbers in exponent notation as numbers (:mod:`l2bn.experiments.yaml_text`);
    every other entry as PyYAML reads it (YAML 1.1), which the typed fields convert, so that
    a string field keeps ``1e5`` as written. Raises ``yaml.YAMLError`` on invalid YAML."""
    import yaml

    from l2bn.experiments import yaml_text

    data = yaml.safe_load(text)
    if isinstance(data, dict) and any(key in _mapping_fields() for key in data):
        numbers = yaml_text.load(text)
        for key in _mapping_fields():
            if key in data:
                data[key] = numbers[key]
    return data


@functools.cache
def _mapping_fields() -> tuple[str, ...]:
    """The fields of free-form options (``dict`` typed)."""
    return tuple(name for name in field_names() if typing.get_origin(_field_type(name)) is dict)


def _check_run_name(name: str) -> None:
    """``name`` is the first folder level under the runs directory: one plain folder name."""
    unsafe = (
        not name.strip()
        or name in (".", "..")
        or any(sep in name for sep in ("/", "\\", "\0"))
        or os.path.isabs(name)
    )
    if unsafe:
        raise ValueError(
            f"name {name!r} must be a plain folder name (the first level under the runs "
            "directory): not empty, not '.' or '..', without '/' or '\\'"
        )


@functools.cache
def _float_fields() -> tuple[str, ...]:
    return tuple(name for name in field_names() if _field_type(name) in (float, float | None))


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(ExperimentConfig)]


def _field_type(name: str) -> Any:
    return typing.get_type_hints(ExperimentConfig)[name]


def _coerce_to(kind: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        is_null = value is None or (
            isinstance(value, str) and value.lower() in ("null", "none", "~")
        )
        if is_null and type(None) in options:
            return None
        inner = [t for t in options if t is not type(None)]
        return _coerce_to(inner[0], value, name)
    if origin is list:
        (item,) = typing.get_args(kind)
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list, got {value!r}")
        return [_coerce_to(item, v, name) for v in value]
    if origin is dict:
        if isinstance(value, str):
            from l2bn.experiments import yaml_text

            value = yaml_text.load(value) or {}
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    if kind is bool:
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("true", "yes", "on", "1"):
                return True
            if lowered in ("false", "no", "off", "0"):
                return False
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value  # exact, also beyond float precision (seeds up to 2**64 - 1)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return int(value)  # exact; "1e3" goes on below
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an integer, got {value!r}") from None
        if not math.isfinite(as_float) or as_float != int(as_float):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(as_float)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(f"{name} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    if kind is str:
        if value is None or isinstance(value, (dict, list)):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return str(value)
    return value


def coerce(name: str, value: Any) -> Any:
    """Convert ``value`` (from YAML or the command line) to the type of field ``name``."""
    if name not in field_names():
        raise ValueError(f"unknown config key {name!r}; valid: {', '.join(field_names())}")
    return _coerce_to(_field_type(name), value, name)


def parse_assignment(text: str) -> tuple[str, Any]:
    """Split ``key=value`` (the ``--set`` syntax); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise ValueError(f"--set expects key=value, got {text!r}")
    if key.startswith("norm_kwargs.") and key != "norm_kwargs.":
        return key, _yaml_value(text, raw, numbers=True)
    if key not in field_names():
        raise ValueError(
            f"--set {text}: unknown config key {key!r}; valid: {', '.join(field_names())}"
        )
    # Exponent notation as numbers for the free-form mappings only (load_config_text).
    numbers = key in _mapping_fields()
    value = _yaml_value(text, raw, numbers=numbers) if raw.strip() else ""
    try:
        return key, coerce(key, value)
    except ValueError as err:
        raise ValueError(f"--set {text}: {err}") from None


def _yaml_value(text: str, raw: str, *, numbers: bool) -> Any:
    """``raw`` read as YAML; with ``numbers``, exponent notation as numbers
    (:mod:`l2bn.experiments.yaml_text`)."""
    import yaml

    from l2bn.experiments import yaml_text

    try:
        return yaml_text.load(raw) if numbers else yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ValueError(
            f"--set {text}: the value is not valid YAML ({yaml_problem(err)})"
        ) from None


def apply_assignments(config: ExperimentConfig, assignments: list[str]) -> ExperimentConfig:
    """Apply ``--set key=value`` strings (``norm_kwargs.NAME=value`` sets one norm kwarg)."""
    data = config.to_dict()
    for text in assignments:
        key, value = parse_assignment(text)
        if key.startswith("norm_kwargs."):
            data["norm_kwargs"] = {**data["norm_kwargs"], key.split(".", 1)[1]: value}
        else:
            data[key] = value
    return ExperimentConfig.from_dict(data)


def yaml_problem(err: Exception) -> str:
    """A YAML parse error in one line: where (line, column) and what."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).split("\n")[0]
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
