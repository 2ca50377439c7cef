"""Datasets, augmentations and deterministic loaders for the L2BN experiments.

* :func:`load_dataset` reads ``fashion-mnist``, ``mnist`` (IDX), ``cifar10``, ``cifar100``
  (python pickles), ``imagefolder`` and ``imagenet`` (image-folder trees); the acoustic
  module adds ``dcase2020-1a`` when present. :func:`list_datasets` names them all.
* :func:`build_loader` yields ``(images, labels)`` batches that depend only on
  ``(seed, epoch, rank)``; augmentations ``none``, ``cifar``, ``imagenet`` (and ``asc``).
* :func:`mixup`, :func:`smooth_targets` and :func:`soft_cross_entropy` for the RegNet recipe.

Needs torch alone, except CIFAR (numpy, to unpickle) and image folders (pillow).
"""

from l2bn.data import augment as _augment  # noqa: F401  (registers the augmentations)
from l2bn.data import cifar as _cifar  # noqa: F401  (registers cifar10, cifar100)
from l2bn.data import imagefolder as _imagefolder  # noqa: F401  (imagefolder, imagenet)
from l2bn.data import mnist as _mnist  # noqa: F401  (registers mnist, fashion-mnist)
from l2bn.data.base import InMemoryImageDataset
from l2bn.data.imagefolder import ImageFolderDataset
from l2bn.data.loader import EpochLoader, build_loader
from l2bn.data.registry import (
    Augmentation,
    get_augmentation,
    list_augmentations,
    list_datasets,
    load_dataset,
    locate_dataset,
    register_augmentation,
    register_dataset,
)
from l2bn.data.targets import mixup, smooth_targets, soft_cross_entropy

__all__ = [
    "Augmentation",
    "EpochLoader",
    "ImageFolderDataset",
    "InMemoryImageDataset",
    "build_loader",
    "get_augmentation",
    "list_augmentations",
    "list_datasets",
    "load_dataset",
    "locate_dataset",
    "mixup",
    "register_augmentation",
    "register_dataset",
    "smooth_targets",
    "soft_cross_entropy",
]
