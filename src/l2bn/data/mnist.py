"""MNIST and Fashion-MNIST from their IDX files, held in memory as tensors.

Files: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
and ``t10k-labels-idx1-ubyte``, each gzipped (``.gz``) or raw (the ``name.idx3-ubyte``
spelling is accepted too). Searched in a folder and in its ``raw/`` and torchvision-style
``MNIST/raw`` / ``FashionMNIST/raw`` sub-folders; see :mod:`l2bn.data.paths` for the order.
Both splits are read from one folder, the first that holds a whole split (images and
labels): a split that folder lacks is an error naming where it was found instead, never
read from another copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from l2bn.data.base import InMemoryImageDataset
from l2bn.data.download import by_hand, fetch, removed_if_left_empty
from l2bn.data.idx import read_idx
from l2bn.data.paths import (
    candidate_dirs,
    download_dir,
    find_dir,
    how_to_get,
    missing_in_root,
    not_found,
)
from l2bn.data.registry import register_dataset

SPLIT_STEMS = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class IdxSpec:
    name: str
    classes: tuple[str, ...]
    mean: float
    std: float
    subdirs: tuple[str, ...]
    system_dirs: tuple[str, ...]
    mirrors: tuple[str, ...]
    md5: dict[str, str]  # of the official .gz files, checked after a download
    by_hand: str  # which files to get, from where, into what (see paths.how_to_get)

    @property
    def how_to_get(self) -> str:
        """The remedy when the files are missing: by hand, with a data root, or downloaded."""
        return how_to_get(self.name, self.by_hand, downloadable=True)


FASHION_MNIST = IdxSpec(
    name="fashion-mnist",
    classes=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    mean=0.2860,
    std=0.3530,
    subdirs=("", "raw", "FashionMNIST/raw", "fashion-mnist"),
    system_dirs=("/usr/share/datasets/fashion-mnist",),
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    md5={
        "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    by_hand=(
        "Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the "
        "four IDX .gz files from https://github.com/zalandoresearch/fashion-mnist in a folder"
    ),
)

MNIST = IdxSpec(
    name="mnist",
    classes=tuple(str(d) for d in range(10)),
    mean=0.1307,
    std=0.3081,
    subdirs=("", "raw", "MNIST/raw", "mnist"),
    system_dirs=(),
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    md5={
        "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    by_hand=(
        "Put the four IDX .gz files from https://ossci-datasets.s3.amazonaws.com/mnist/ in a folder"
    ),
)


def _find_file(folder: Path, stem: str) -> Path | None:
    dotted = stem.replace("-idx", ".idx")
    for name in (stem + ".gz", stem, dotted + ".gz", dotted):
        if (folder / name).is_file():
            return folder / name
    return None


def _has_split(folder: Path, train: bool) -> bool:
    return all(_find_file(folder, stem) is not None for stem in SPLIT_STEMS[train])


def _search_dirs(spec: IdxSpec, root: str | Path | None) -> list[Path]:
    return candidate_dirs(spec.name, root, spec.system_dirs)


def _expected(spec: IdxSpec) -> str:
    stems = SPLIT_STEMS[True] + SPLIT_STEMS[False]
    return f"{spec.name} IDX files ({', '.join(s + '[.gz]' for s in stems)})"


def _holds_a_split(folder: Path) -> bool:
    return _has_split(folder, True) or _has_split(folder, False)


def _files(folder: Path, stems: tuple[str, ...]) -> list[str]:
    """The names of the files of ``stems`` that ``folder`` holds."""
    return [found.name for stem in stems if (found := _find_file(folder, stem)) is not None]


def _incomplete_copy(spec: IdxSpec, copy: Path, train: bool, dirs: list[Path]) -> str:
    """Why ``copy`` (the first folder holding a whole split) cannot give the ``train`` split,
    naming the files it holds and the other folders that hold that split."""
    split = "train" if train else "test"
    lacking = [f"{stem}[.gz]" for stem in SPLIT_STEMS[train] if _find_file(copy, stem) is None]
    folders = [d / sub if sub else d for d in dirs for sub in spec.subdirs]
    others = [str(f) for f in folders if f != copy and _has_split(f, train)]
    found = f"; the {split} split is in {', '.join(others)}" if others else ""
    return (
        f"{spec.name}: {copy} lacks {', '.join(lacking)}, which the {split} split needs. "
        f"{copy} is the first folder searched that holds a whole split (it has "
        f"{', '.join(_files(copy, SPLIT_STEMS[True] + SPLIT_STEMS[False]))}), and both splits "
        f"are read from that one folder, never from two copies{found}. Put the four files in "
        f"one folder. {spec.how_to_get}"
    )


def find_copy(spec: IdxSpec, root: str | Path | None = None) -> Path | None:
    """The folder of the copy of ``spec`` that is used: the first searched that holds a
    whole split (images and labels), or None."""
    return find_dir(_search_dirs(spec, root), spec.subdirs, _holds_a_split)


def locate_idx(spec: IdxSpec, root: str | Path | None = None, train: bool | None = None) -> Path:
    """The folder holding the split's files (both splits when ``train`` is None): the one
    copy that :func:`find_copy` picks for both splits. FileNotFoundError if there is no
    copy, or if that copy lacks the split (naming where the split was found instead)."""
    dirs = _search_dirs(spec, root)
    copy = find_copy(spec, root)
    if copy is None:
        if root is not None:
            # both splits belong in a data root: name every file it lacks
            stems = [*SPLIT_STEMS[True], *SPLIT_STEMS[False]]

            def lacking(folder: Path) -> list[str]:
                return [f"{s}[.gz]" for s in stems if _find_file(folder, s) is None]

            raise missing_in_root(spec.name, root, spec.subdirs, lacking, spec.how_to_get)
        raise not_found(_expected(spec), dirs, spec.how_to_get)
    for split in (True, False) if train is None else (train,):
        if not _has_split(copy, split):
            raise FileNotFoundError(_incomplete_copy(spec, copy, split, dirs))
    return copy


def download_idx(spec: IdxSpec, root: str | Path | None = None) -> Path:
    """Download the missing gzipped IDX files into the copy in use (:func:`find_copy`), so
    that it gets both splits, else into ``root`` (or the default download folder)."""
    dest = find_copy(spec, root)
    if dest is None:
        dest = Path(root).expanduser() if root is not None else download_dir(spec.name)
    missing = [s for s in SPLIT_STEMS[True] + SPLIT_STEMS[False] if _find_file(dest, s) is None]
    with removed_if_left_empty(dest):
        for stem in missing:
            try:
                fetch(stem + ".gz", spec.mirrors, dest, md5=spec.md5[stem])
            except ConnectionError as err:
                lacking = [s + ".gz" for s in missing if _find_file(dest, s) is None]
                what = f"download {', '.join(lacking)} from {spec.mirrors[0]}"
                raise ConnectionError(f"{err}\n{by_hand(what, dest)}") from err
    return dest


def read_idx_split(folder: Path, train: bool, spec: IdxSpec) -> InMemoryImageDataset:
    """Read one split from ``folder`` and check shapes, counts and label range."""
    image_path, label_path = (_find_file(folder, stem) for stem in SPLIT_STEMS[train])
    if image_path is None or label_path is None:
        raise not_found(_expected(spec), [folder], spec.how_to_get)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.dim() != 3 or images.dtype != torch.uint8:
        raise ValueError(
            f"{image_path}: expected unsigned-byte images (N, H, W), "
            f"got {images.dtype} {tuple(images.shape)}"
        )
    if labels.dim() != 1:
        raise ValueError(f"{label_path}: expected labels (N,), got shape {tuple(labels.shape)}")
    if labels.numel() != images.shape[0]:
        raise ValueError(
            f"{folder}: {images.shape[0]} images in {image_path.name} but "
            f"{labels.numel()} labels in {label_path.name}"
        )
    return InMemoryImageDataset(
        images.unsqueeze(1),
        labels.long(),
        spec.classes,
        (spec.mean,),
        (spec.std,),
        source=str(image_path),
    )


def load_idx_dataset(
    spec: IdxSpec, root: str | Path | None = None, train: bool = True, download: bool = False
) -> InMemoryImageDataset:
    """Find (or, with ``download=True``, fetch) and read one split of ``spec``."""
    try:
        folder = locate_idx(spec, root, train)
    except FileNotFoundError:
        if not download:
            raise
        folder = download_idx(spec, root)
    return read_idx_split(folder, train, spec)


def _fashion_locate(root: str | Path | None) -> Path:
    return locate_idx(FASHION_MNIST, root)


def _mnist_locate(root: str | Path | None) -> Path:
    return locate_idx(MNIST, root)


@register_dataset("fashion-mnist", locate=_fashion_locate)
def fashion_mnist(root: str | Path | None = None, train: bool = True, **kwargs: Any):
    """Fashion-MNIST (Xiao et al. 2017): 60000/10000 grey 28x28 images, 10 classes."""
    return load_idx_dataset(FASHION_MNIST, root, train, **kwargs)


@register_dataset("mnist", locate=_mnist_locate)
def mnist(root: str | Path | None = None, train: bool = True, **kwargs: Any):
    """MNIST (LeCun et al. 1998): 60000/10000 grey 28x28 digit images, 10 classes."""
    return load_idx_dataset(MNIST, root, train, **kwargs)
