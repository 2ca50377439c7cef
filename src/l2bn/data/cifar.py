"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) from the standard python pickle folders.

``cifar-10-batches-py``: ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` (keys
``b'data'`` uint8 (N, 3072) and ``b'labels'``) and ``batches.meta`` (``b'label_names'``).
``cifar-100-python``: ``train``, ``test`` (``b'data'``, ``b'fine_labels'``,
``b'coarse_labels'``) and ``meta`` (``b'fine_label_names'``, ``b'coarse_label_names'``).
The folder may be given itself or its parent. Held in memory as tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from l2bn.data.base import InMemoryImageDataset
from l2bn.data.download import by_hand, extract_tar, fetch, removed_if_left_empty
from l2bn.data.paths import (
    candidate_dirs,
    download_dir,
    find_dir,
    how_to_get,
    missing_in_root,
    not_found,
)
from l2bn.data.registry import register_dataset
from l2bn.data.safe_pickle import load_array_pickle

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


@dataclass(frozen=True)
class CifarSpec:
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    archive: str
    archive_md5: str


CIFAR10 = CifarSpec(
    name="cifar10",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    meta_file="batches.meta",
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    archive="cifar-10-python.tar.gz",
    archive_md5="c58f30108f718f92721af3b95e74349a",
)
CIFAR100 = CifarSpec(
    name="cifar100",
    folder="cifar-100-python",
    train_files=("train",),
    test_files=("test",),
    meta_file="meta",
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    archive="cifar-100-python.tar.gz",
    archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
)
MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)


def _by_hand(spec: CifarSpec) -> str:
    return (
        f"Expected the folder {spec.folder}/ with files "
        f"{', '.join(spec.train_files + spec.test_files)}: extract {spec.archive} from "
        "https://www.cs.toronto.edu/~kriz/cifar.html into a folder"
    )


def _how_to_get(spec: CifarSpec) -> str:
    return how_to_get(spec.name, _by_hand(spec), downloadable=True)


def locate_cifar(spec: CifarSpec, root: str | Path | None = None) -> Path:
    """The ``cifar-*`` folder holding every batch file of ``spec``."""
    dirs = candidate_dirs(spec.name, root)

    def complete(folder: Path) -> bool:
        return all((folder / f).is_file() for f in spec.train_files + spec.test_files)

    found = find_dir(dirs, ("", spec.folder), complete)
    if found is None and root is not None:

        def lacking(folder: Path) -> list[str]:
            return [f for f in spec.train_files + spec.test_files if not (folder / f).is_file()]

        raise missing_in_root(spec.name, root, ("", spec.folder), lacking, _how_to_get(spec))
    if found is None:
        raise not_found(f"{spec.name} python batches", dirs, _how_to_get(spec))
    return found


def download_cifar(spec: CifarSpec, root: str | Path | None = None) -> Path:
    """Download and extract the official archive into ``root`` (or the download folder)."""
    dest = Path(root).expanduser() if root is not None else download_dir(spec.name)
    with removed_if_left_empty(dest):
        try:
            archive = fetch(spec.archive, MIRRORS, dest, md5=spec.archive_md5)
        except ConnectionError as err:
            what = f"download {MIRRORS[0]}{spec.archive} and extract it"
            raise ConnectionError(f"{err}\n{by_hand(what, dest)}") from err
        try:
            extract_tar(archive, dest)
        finally:
            archive.unlink(missing_ok=True)
    return locate_cifar(spec, dest)


def _field(batch: Any, key: bytes, path: Path) -> Any:
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    value = batch.get(key, batch.get(key.decode()))
    if value is None:
        keys = ", ".join(repr(k) for k in batch)
        raise ValueError(f"{path}: missing key {key!r} (found keys: {keys})")
    return value


def _is_integer(value: object) -> bool:
    """A Python or numpy integer (what the CIFAR pickles hold as labels)."""
    return isinstance(value, int) or type(value).__name__.startswith(("int", "uint"))


def _read_batch(path: Path, label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    batch = load_array_pickle(path)
    raw_data, raw_labels = _field(batch, b"data", path), _field(batch, label_key, path)
    try:
        data = torch.as_tensor(raw_data)
        values = list(raw_labels)
        # Integers only: a float label (1.7) would otherwise be truncated to 1 in silence.
        bad = next((v for v in values if isinstance(v, bool) or not _is_integer(v)), None)
        if bad is not None:
            raise TypeError(f"found {bad!r} of type {type(bad).__name__}")
        labels = torch.as_tensor(values, dtype=torch.int64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"{path}: b'data' must be a uint8 array and {label_key!r} a list of ints ({err})"
        ) from err
    if data.dtype != torch.uint8 or data.dim() != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"{path}: b'data' must be uint8 of shape (N, 3072), "
            f"got {data.dtype} {tuple(data.shape)}"
        )
    if labels.numel() != data.shape[0]:
        raise ValueError(f"{path}: {data.shape[0]} images but {labels.numel()} labels")
    return data.reshape(-1, 3, 32, 32), labels


def _class_names(folder: Path, spec: CifarSpec, key: bytes, count: int) -> list[str]:
    meta_path = folder / spec.meta_file
    if meta_path.is_file():
        names = _field(load_array_pickle(meta_path), key, meta_path)
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if spec is CIFAR10:
        return list(CIFAR10_CLASSES)
    return [str(i) for i in range(count)]


def load_cifar(
    spec: CifarSpec,
    root: str | Path | None = None,
    train: bool = True,
    coarse: bool = False,
    download: bool = False,
) -> InMemoryImageDataset:
    """Read the train or test split of CIFAR-10/100 into memory (``download=True``: fetch
    the official archive first if the files are not found)."""
    try:
        folder = locate_cifar(spec, root)
    except FileNotFoundError:
        if not download:
            raise
        folder = download_cifar(spec, root)
    if spec is CIFAR10:
        if coarse:
            raise ValueError("coarse labels exist only for cifar100")
        label_key, names_key, count = b"labels", b"label_names", 10
    else:
        label_key = b"coarse_labels" if coarse else b"fine_labels"
        names_key = b"coarse_label_names" if coarse else b"fine_label_names"
        count = 20 if coarse else 100
    parts = [
        _read_batch(folder / f, label_key) for f in (spec.train_files if train else spec.test_files)
    ]
    images = torch.cat([p[0] for p in parts]).contiguous()
    labels = torch.cat([p[1] for p in parts])
    classes = _class_names(folder, spec, names_key, count)
    return InMemoryImageDataset(images, labels, classes, spec.mean, spec.std, source=str(folder))


def _cifar10_locate(root: str | Path | None) -> Path:
    return locate_cifar(CIFAR10, root)


def _cifar100_locate(root: str | Path | None) -> Path:
    return locate_cifar(CIFAR100, root)


@register_dataset("cifar10", locate=_cifar10_locate)
def cifar10(root: str | Path | None = None, train: bool = True, **kwargs: Any):
    """CIFAR-10: 50000/10000 colour 32x32 images, 10 classes."""
    return load_cifar(CIFAR10, root, train, **kwargs)


@register_dataset("cifar100", locate=_cifar100_locate)
def cifar100(root: str | Path | None = None, train: bool = True, **kwargs: Any):
    """CIFAR-100: 50000/10000 colour 32x32 images, 100 fine (or 20 coarse) classes."""
    return load_cifar(CIFAR100, root, train, **kwargs)
