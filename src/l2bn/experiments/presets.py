"""Named presets: YAML files shipped in ``l2bn/experiments/presets`` (supplement Table 1 rows,
the acoustic recipes of section 4.2, and CPU-scale Fashion-MNIST settings)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from l2bn.experiments.config import ExperimentConfig, load_config_text, yaml_problem

DEFAULT_PRESET = "fmnist-resnet20"


def _preset_files() -> dict[str, Path]:
    folder = resources.files("l2bn.experiments") / "presets"
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    }


def list_presets() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(_preset_files())


def preset_path(name: str) -> Path:
    files = _preset_files()
    if name not in files:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(sorted(files))}")
    return files[name]


def load_preset(name: str) -> ExperimentConfig:
    """The preset's config; its ``name`` field defaults to the preset name."""
    path = preset_path(name)
    config = ExperimentConfig.from_yaml(path.read_text(encoding="utf-8"))
    if config.name == "custom":
        config = config.replace(name=name)
    return config


def load_config_file(
    path: str | Path, base: ExperimentConfig | None = None, *, preset: str | None = None
) -> ExperimentConfig:
    """Overlay a YAML file on ``base`` (or on the preset the file names with ``preset:``).

    ``preset`` is a preset asked for explicitly (``--preset``): a file that names another
    one is a ValueError rather than silently replacing it."""
    import yaml

    path = Path(path)
    if not path.is_file():
        state = "is not a file" if path.exists() else "does not exist"
        raise FileNotFoundError(f"config file {path} {state}")
    try:
        data = load_config_text(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({yaml_problem(err)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must be a YAML mapping")
    named = data.pop("preset", None)
    if named is not None:
        if preset is not None and str(named) != preset:
            raise ValueError(
                f"{path} names preset {str(named)!r}, but --preset {preset} was given: "
                "drop one of them"
            )
        base = load_preset(str(named))
    merged = (base or ExperimentConfig()).to_dict()
    merged.update(data)
    try:
        return ExperimentConfig.from_dict(merged)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
