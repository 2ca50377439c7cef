"""Checks that run before the first run of a command starts, and before anything is written.

Each raises :class:`~l2bn.experiments.errors.UsageError` with one line naming the faulty
input: every name in the config (model, norm, placement, dataset, augmentation), the norm's
and model's keyword arguments (the model is built once on the ``meta`` device, which
allocates nothing), the device, and the folders a command will write to.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from l2bn._files import make_writable_dir
from l2bn.experiments.config import ExperimentConfig
from l2bn.experiments.errors import UsageError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N"


def _check_name(kind: str, name: str, valid: list[str]) -> None:
    """``name`` is one of ``valid``, spelled exactly: the registries would also take another
    case or spaces around it, but the name is used as written for the run directories and
    the report's rows, so ``BN`` would be a variant of its own, apart from ``bn``."""
    if name in valid:
        return
    canonical = {v.lower(): v for v in valid}.get(name.strip().lower())
    if canonical is not None:
        raise UsageError(
            f"{kind} {name!r} must be written {canonical!r}: names are case-sensitive "
            "(they name the run directories and the report's rows)"
        )
    raise UsageError(f"unknown {kind} {name!r}; valid names: {', '.join(valid)}")


def check_norm_name(name: str) -> None:
    """UsageError listing the valid names when ``name`` is no norm of ``l2bn.norms``."""
    from l2bn.norms import list_norms

    _check_name("norm", name, list_norms())


def check_names(config: ExperimentConfig) -> None:
    """Model, norm, dataset and augmentation names exist (placements and schedulers are
    checked by the config itself)."""
    from l2bn.data import list_augmentations, list_datasets
    from l2bn.models import list_models
    from l2bn.norms import list_norms

    _check_name("model", config.model, list_models())
    _check_name("norm", config.norm, list_norms())
    _check_name("dataset", config.dataset, list_datasets())
    _check_name("augmentation", config.augment, list_augmentations())


def check_model(config: ExperimentConfig) -> None:
    """The model builds with this norm, its ``norm_kwargs`` and the L2BN placement.

    Built on the ``meta`` device (no memory, no computation) with placeholder class and
    channel counts, which no builder checks against the data.
    """
    from l2bn.experiments.train import build_model

    try:
        with torch.device("meta"):
            build_model(config, num_classes=10, in_channels=3)
    except (TypeError, ValueError) as err:
        what = f"model {config.model!r} with norm {config.norm!r}"
        if config.norm_kwargs:
            what += f" and norm_kwargs {config.norm_kwargs}"
        if config.l2bn_layers != "all":
            what += f" placed in {config.l2bn_layers!r}"
        raise UsageError(f"{what} cannot be built: {err}") from None


def check_device(name: str) -> None:
    """``name`` is a device this torch can use: auto, cpu, or an existing CUDA device."""
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"unknown device {name!r}; valid: {DEVICE_CHOICES}") from None
    if device.type == "cpu":
        return
    if device.type != "cuda":
        raise UsageError(f"device {name!r} is not supported; valid: {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        why = (
            f"this torch ({torch.__version__}) was built without CUDA"
            if torch.version.cuda is None
            else "no CUDA GPU is visible"
        )
        raise UsageError(f"device {name!r} requested, but {why}; use --device cpu or auto")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UsageError(f"device {name!r} requested, but only {count} CUDA device(s) exist")


def check_output_dir(path: str | Path, what: str) -> None:
    """``path`` is a directory that files can be written to, or one that can be created.

    Checked by doing it, as a permission test cannot tell (root passes ``os.access`` for
    ``/proc`` or ``/sys``, a read-only mount passes it too): the missing folders are
    created, a probe file is written and removed in ``path``, and the folders created here
    are removed again, so that nothing is left behind. ``what`` (``runs folder``, ...)
    names the folder's role in the error.
    """
    path = Path(path).expanduser()
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        if existing == path:
            raise UsageError(f"{what} {path} is a file, not a directory")
        raise UsageError(f"{what} {path} cannot be created: {existing} is a file")
    missing = [path, *path.parents]
    missing = missing[: missing.index(existing)]  # deepest first
    try:
        make_writable_dir(path)
    except OSError as err:
        place = "" if existing == path else f" (its existing parent {existing})"
        reason = err.strerror or str(err)
        raise UsageError(f"{what} {path}{place} is not writable ({reason})") from None
    finally:
        for folder in missing:
            with contextlib.suppress(OSError):
                folder.rmdir()


def check_config(config: ExperimentConfig) -> None:
    """Names, model and device of one config."""
    check_names(config)
    check_model(config)
    check_device(config.device)


def check_world_size(config: ExperimentConfig) -> None:
    """Under torchrun, the total batch size divides among the processes."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if config.batch_size % world_size:
        raise UsageError(
            f"batch_size {config.batch_size} (the total over all processes, as in the paper) "
            f"is not divisible by the {world_size} processes"
        )


def check_tensorboard() -> None:
    """``--tensorboard`` can write its logs: the tensorboard package imports."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as err:
        raise UsageError(
            f"--tensorboard needs the tensorboard package ({err}): pip install 'l2bn[tensorboard]'"
        ) from None


def check_sync_bn(config: ExperimentConfig) -> None:
    """``--sync-bn`` can do what it says. Under torchrun on a CPU, a model with plain
    BatchNorm layers cannot be synchronized (torch.nn.SyncBatchNorm is CUDA only): a
    UsageError naming the layer. Outside torchrun there is one process, whose norms
    already see the whole batch, so the flag changes nothing: a warning says so."""
    import warnings

    from l2bn.experiments.distributed import convert_sync_norms, resolve_device
    from l2bn.experiments.runs import variant_name
    from l2bn.experiments.train import build_model

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        warnings.warn(
            "--sync-bn synchronizes the batch statistics of the processes of a torchrun job; "
            "this is a single process (WORLD_SIZE is not above 1), whose norms already see "
            "the whole batch, so --sync-bn changes nothing here",
            UserWarning,
            stacklevel=2,
        )
        return
    device = resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    with torch.device("meta"):
        model = build_model(config, num_classes=10, in_channels=3)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # layers left unsynchronized warn in the run
            convert_sync_norms(model, device)
    except ValueError as err:
        raise UsageError(f"{err} [{variant_name(config)}]") from None
