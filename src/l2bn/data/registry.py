"""Name -> dataset reader and name -> augmentation registries.

Readers register with :func:`register_dataset`, augmentations with
:func:`register_augmentation`. The built-in readers (MNIST, Fashion-MNIST, CIFAR,
ImageFolder/ImageNet) and augmentations are registered when ``l2bn.data`` is imported;
the optional acoustic module ``l2bn.data.dcase`` is imported the first time a name is
looked up, and its absence is tolerated.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

OPTIONAL_MODULES = ("l2bn.data.dcase",)

DatasetFactory = Callable[..., Any]
Locator = Callable[[str | Path | None], Path]
AugmentFn = Callable[[Tensor, Any], Tensor]


@dataclass(frozen=True)
class DatasetEntry:
    """A registered reader: ``factory(root=None, train=True, **kwargs)`` and an optional
    ``locate(root)`` returning where the files are (raising FileNotFoundError otherwise)."""

    name: str
    factory: DatasetFactory
    locate: Locator | None = None


@dataclass(frozen=True)
class Augmentation:
    """A registered augmentation.

    ``train_fn(images (B, C, H, W) float, generator) -> images`` is applied to training
    batches; ``eval_fn`` (same signature, default: identity) to evaluation batches.
    ``full_image=True`` asks lazy datasets to pass each image at its stored size (one at a
    time, ``B = 1``) instead of the dataset's fixed-size view, e.g. for random-resized crops.
    """

    name: str
    train_fn: AugmentFn
    eval_fn: AugmentFn | None = None
    full_image: bool = False

    def __call__(self, images: Tensor, generator: Any, train: bool = True) -> Tensor:
        fn = self.train_fn if train else self.eval_fn
        return images if fn is None else fn(images, generator)


class DatasetOptionError(TypeError, ValueError):
    """A dataset option (``dataset_kwargs``) the reader does not accept: a TypeError for
    callers of :func:`load_dataset`, a ValueError (a bad setting) for the command line."""


_DATASETS: dict[str, DatasetEntry] = {}
_AUGMENTATIONS: dict[str, Augmentation] = {}
_optional_loaded = False


def _check_name(name: object, kind: str) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"{kind} name must be a non-empty str, got {name!r}")
    return name.lower()


def register_dataset(
    name: str, *, locate: Locator | None = None
) -> Callable[[DatasetFactory], DatasetFactory]:
    """Decorator registering ``factory(root=None, train=True, **kwargs) -> dataset``."""
    key = _check_name(name, "dataset")

    def decorator(factory: DatasetFactory) -> DatasetFactory:
        if key in _DATASETS and _DATASETS[key].factory is not factory:
            raise ValueError(f"dataset {key!r} is already registered")
        _DATASETS[key] = DatasetEntry(key, factory, locate)
        return factory

    return decorator


def register_augmentation(
    name: str, *, eval_fn: AugmentFn | None = None, full_image: bool = False
) -> Callable[[AugmentFn], AugmentFn]:
    """Decorator registering ``fn(images float (B, C, H, W), generator) -> images``.

    The decorated function is the training augmentation; ``eval_fn`` (optional) is applied
    at evaluation. See :class:`Augmentation` for ``full_image``.
    """
    key = _check_name(name, "augmentation")

    def decorator(fn: AugmentFn) -> AugmentFn:
        if key in _AUGMENTATIONS and _AUGMENTATIONS[key].train_fn is not fn:
            raise ValueError(f"augmentation {key!r} is already registered")
        _AUGMENTATIONS[key] = Augmentation(key, fn, eval_fn, full_image)
        return fn

    return decorator


def _load_optional_modules() -> None:
    global _optional_loaded
    if _optional_loaded:
        return
    _optional_loaded = True
    for module_name in OPTIONAL_MODULES:
        try:
            importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                warnings.warn(f"{module_name} not loaded: {err}", RuntimeWarning, stacklevel=3)
        except Exception as err:  # a broken plug-in must not hide the other datasets
            warnings.warn(f"{module_name} not loaded: {err!r}", RuntimeWarning, stacklevel=3)


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    _load_optional_modules()
    return sorted(_DATASETS)


def list_augmentations() -> list[str]:
    """Names accepted by ``build_loader(augment=...)``, sorted."""
    _load_optional_modules()
    return sorted(_AUGMENTATIONS)


def get_dataset_entry(name: str) -> DatasetEntry:
    """The registry entry of ``name``; ValueError listing the valid names otherwise."""
    key = _check_name(name, "dataset")
    _load_optional_modules()
    if key not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(_DATASETS))}")
    return _DATASETS[key]


def get_augmentation(name: str | Augmentation | None) -> Augmentation:
    """The augmentation called ``name`` (None means "none")."""
    if isinstance(name, Augmentation):
        return name
    key = _check_name(name or "none", "augmentation")
    _load_optional_modules()
    if key not in _AUGMENTATIONS:
        valid = ", ".join(sorted(_AUGMENTATIONS))
        raise ValueError(f"unknown augmentation {name!r}; valid names: {valid}")
    return _AUGMENTATIONS[key]


def load_dataset(name: str, root: str | Path | None = None, train: bool = True, **kwargs: Any):
    """Read dataset ``name`` (train or test split) from ``root`` or the default places.

    Every dataset has ``num_classes``, ``in_channels``, ``image_size``, ``classes``,
    ``mean``/``std``, ``len()`` and ``ds[i] -> (float32 CHW normalized tensor, int label)``.
    Missing or malformed files raise FileNotFoundError/ValueError saying what was expected
    and where it was looked for.
    """
    entry = get_dataset_entry(name)
    try:
        return entry.factory(root=root, train=train, **kwargs)
    except TypeError as err:
        if "unexpected keyword argument" in str(err) and kwargs:
            raise DatasetOptionError(
                f"dataset {entry.name!r} got an option it does not accept ({err}); "
                f"options given: {', '.join(sorted(kwargs))}"
            ) from err
        raise


def locate_dataset(name: str, root: str | Path | None = None) -> Path | None:
    """Where the files of ``name`` are (FileNotFoundError if absent); None if the reader
    cannot tell without loading."""
    entry = get_dataset_entry(name)
    return None if entry.locate is None else entry.locate(root)
