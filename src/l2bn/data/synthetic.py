"""Tiny labelled image sets written in the real on-disk formats, for tests and demos.

Each class gets its own random pattern plus noise, so a small network can learn them.
``write_idx_dataset`` (MNIST layout, torch only), ``write_cifar_dataset`` (python pickle
batches; needs numpy) and ``write_image_folder`` (PNG/JPEG tree; needs pillow).
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import torch
from torch import Tensor

from l2bn.data.cifar import CIFAR10, CIFAR100
from l2bn.data.idx import IDX_TYPES
from l2bn.data.mnist import SPLIT_STEMS


def synthetic_images(
    count: int, num_classes: int, shape: tuple[int, int, int], seed: int = 0
) -> tuple[Tensor, Tensor]:
    """``count`` uint8 images ``(C, H, W)`` (class pattern + noise) and balanced labels."""
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.rand((num_classes, *shape), generator=generator) * 200
    labels = torch.arange(count) % num_classes
    labels = labels[torch.randperm(count, generator=generator)]
    noise = torch.rand((count, *shape), generator=generator) * 55
    return (patterns[labels] + noise).to(torch.uint8), labels


def write_idx(path: str | Path, values: Tensor) -> Path:
    """Write ``values`` as an IDX file (gzipped when ``path`` ends with ``.gz``)."""
    path = Path(path)
    codes = {dtype: code for code, (dtype, _) in IDX_TYPES.items()}
    if values.dtype not in codes:
        raise TypeError(f"IDX cannot store {values.dtype}; valid: {list(codes)}")
    header = bytes([0, 0, codes[values.dtype], values.dim()])
    header += struct.pack(f">{values.dim()}I", *values.shape)
    body = values.contiguous().reshape(-1)
    if body.element_size() > 1:  # IDX is big-endian
        body = body.view(torch.uint8).view(-1, body.element_size()).flip(-1)
    data = header + bytes(body.contiguous().view(torch.uint8).numpy().tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_idx_dataset(
    root: str | Path,
    train: int = 40,
    test: int = 20,
    num_classes: int = 10,
    size: int = 28,
    gz: bool = True,
    seed: int = 0,
) -> Path:
    """The four MNIST-style IDX files of a tiny dataset in ``root``."""
    root = Path(root)
    for is_train, count in ((True, train), (False, test)):
        images, labels = synthetic_images(count, num_classes, (1, size, size), seed + is_train)
        image_stem, label_stem = SPLIT_STEMS[is_train]
        suffix = ".gz" if gz else ""
        write_idx(root / (image_stem + suffix), images[:, 0])
        write_idx(root / (label_stem + suffix), labels.to(torch.uint8))
    return root


def write_cifar_dataset(
    root: str | Path,
    variant: str = "cifar10",
    per_file: int = 20,
    num_classes: int | None = None,
    seed: int = 0,
) -> Path:
    """A tiny ``cifar-10-batches-py`` or ``cifar-100-python`` folder under ``root``."""
    if variant not in ("cifar10", "cifar100"):
        raise ValueError(f"variant must be 'cifar10' or 'cifar100', got {variant!r}")
    ten = variant == "cifar10"
    classes = num_classes or (10 if ten else 100)
    spec = CIFAR10 if ten else CIFAR100
    folder = Path(root) / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    files = spec.train_files + spec.test_files
    for i, name in enumerate(files):
        images, labels = synthetic_images(per_file, classes, (3, 32, 32), seed + i)
        batch = {b"batch_label": name.encode(), b"data": images.reshape(per_file, -1).numpy()}
        batch[b"filenames"] = [f"{name}_{j}.png".encode() for j in range(per_file)]
        if ten:
            batch[b"labels"] = labels.tolist()
        else:
            batch[b"fine_labels"] = labels.tolist()
            batch[b"coarse_labels"] = (labels % 20).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    if ten:
        meta = {b"label_names": [f"class{k}".encode() for k in range(10)]}
        meta_name = CIFAR10.meta_file
    else:
        meta = {
            b"fine_label_names": [f"fine{k}".encode() for k in range(100)],
            b"coarse_label_names": [f"coarse{k}".encode() for k in range(20)],
        }
        meta_name = CIFAR100.meta_file
    with open(folder / meta_name, "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return folder


def write_image_folder(
    root: str | Path,
    num_classes: int = 3,
    per_class: int = 4,
    size: int | tuple[int, int] = 16,
    ext: str = "png",
    splits: tuple[str, ...] = ("train", "val"),
    seed: int = 0,
) -> Path:
    """A tiny ``root/<split>/<class>/<image>.<ext>`` tree of RGB images."""
    from PIL import Image

    height, width = (size, size) if isinstance(size, int) else size
    root = Path(root)
    for s, split in enumerate(splits):
        count = num_classes * per_class
        images, labels = synthetic_images(count, num_classes, (3, height, width), seed + s)
        for j, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
            folder = root / split / f"class_{label:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = image.permute(1, 2, 0).contiguous().numpy()
            Image.fromarray(pixels).save(folder / f"img_{j:04d}.{ext}")
    return root
