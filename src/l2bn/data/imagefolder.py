"""Image-folder trees (``root/train/<class>/*.JPEG``, ``root/val/<class>/...``), e.g. ImageNet.

Images are read lazily, one file per item, with PIL (imported on first read). Class
names are the sorted sub-folders of ``train/`` (so train and val share label numbers); the
val split must have the same class folders. Hidden entries (names starting with ``.``, such
as ``.ipynb_checkpoints/`` or macOS's ``._x.JPEG``) are neither classes nor images.
An item is the image normalized per channel and, when ``image_size`` is set, resized so
its shorter side is ``resize`` and centre-cropped to ``image_size`` (ImageNet: 256 / 224).
:meth:`ImageFolderDataset.read_full` gives the image at its stored size, for augmentations
such as random-resized crops.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from l2bn.data.base import check_channel_constants, uint8_to_normalized
from l2bn.data.paths import candidate_dirs, find_dir, how_to_get, not_found
from l2bn.data.registry import register_dataset
from l2bn.data.transforms import resize_center_crop

IMAGE_EXTENSIONS = (
    ".jpeg",
    ".jpg",
    ".png",
    ".bmp",
    ".ppm",
    ".pgm",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLIT_DIRS = {True: ("train",), False: ("val", "validation", "test")}
_PIL_MODES = {1: "L", 3: "RGB"}


def _is_hidden(name: str) -> bool:
    """Dot-names (``.ipynb_checkpoints``, ``.DS_Store``, ``._x.JPEG``) are not data."""
    return name.startswith(".")


def _image_names(folder: Path) -> list[str]:
    """Sorted names of the visible image files in ``folder`` (one ``scandir``, no stat per
    file)."""
    with os.scandir(folder) as entries:
        return sorted(
            e.name
            for e in entries
            if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            and not _is_hidden(e.name)
            and e.is_file()
        )


def _split_dir(root: Path, train: bool) -> Path | None:
    for name in SPLIT_DIRS[train]:
        if (root / name).is_dir():
            return root / name
    return None


def _class_dirs(folder: Path) -> list[Path]:
    """The class folders of a split: its visible sub-folders, sorted by name."""
    dirs = (d for d in folder.iterdir() if not _is_hidden(d.name) and d.is_dir())
    return sorted(dirs, key=lambda d: d.name)


def _folders(names: list[str], shown: int = 5) -> str:
    """``class folders 'a', 'b' and 3 more`` (at most ``shown`` names)."""
    text = ", ".join(repr(name) for name in names[:shown])
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"class folder{'s' if len(names) > 1 else ''} {text}{more}"


def _check_same_classes(split: Path, reference: Path, classes: list[str]) -> list[Path]:
    """The class folders of ``split``; ValueError unless they are those of ``reference``
    (labels are numbered by ``reference``'s classes: a class folder that only one split
    has would give the splits different classes). A split without class folders passes,
    for the error on its missing images, which names loose images."""
    class_dirs = _class_dirs(split)
    names = {d.name for d in class_dirs}
    extra = sorted(names - set(classes))
    lacking = [name for name in classes if name not in names]
    if not class_dirs or (not extra and not lacking):
        return class_dirs
    parts = [f"{split} has {_folders(extra)} that {reference} lacks"] if extra else []
    if lacking:
        parts.append(f"{split} lacks {_folders(lacking)} of {reference}")
    raise ValueError(
        f"{'; '.join(parts)}. Both splits must have the same class folders (the "
        f"{len(classes)} classes of {reference} number the labels of both)"
    )


def _loose_hint(folder: Path) -> str:
    loose = _image_names(folder)[:3]
    if not loose:
        return ""
    return (
        f" (found loose images such as {', '.join(loose)}: sort them into one folder per "
        "class, e.g. with the ImageNet validation ground truth)"
    )


def scan_image_folder(root: Path, train: bool) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names (from ``train/``) and ``(path, label)`` pairs of the split, sorted."""
    split = _split_dir(root, train)
    if split is None:
        raise FileNotFoundError(
            f"{root}: no {' or '.join(SPLIT_DIRS[train])}/ folder (expected "
            f"{root}/{SPLIT_DIRS[train][0]}/<class>/<image>)"
        )
    reference = _split_dir(root, True) or split
    classes = [d.name for d in _class_dirs(reference)]
    if not classes:
        raise ValueError(f"{reference}: no class sub-folders{_loose_hint(reference)}")
    index = {name: i for i, name in enumerate(classes)}
    samples: list[tuple[str, int]] = []
    for class_dir in _check_same_classes(split, reference, classes):
        label = index[class_dir.name]
        samples += [(os.path.join(class_dir, name), label) for name in _image_names(class_dir)]
    if not samples:
        raise ValueError(
            f"{split}: no images with extensions {', '.join(IMAGE_EXTENSIONS)} in class "
            f"folders{_loose_hint(split)}"
        )
    return classes, samples


def read_image(path: str, channels: int) -> Tensor:
    """Decode an image file into a uint8 tensor ``(C, H, W)``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert(_PIL_MODES[channels])
            width, height = img.size
            data = bytearray(img.tobytes())
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: cannot decode image ({err})") from err
    return torch.frombuffer(data, dtype=torch.uint8).view(height, width, channels).permute(2, 0, 1)


class ImageFolderDataset(torch.utils.data.Dataset):
    """A lazily read ``root/<split>/<class>/<image>`` tree; see the module docstring."""

    def __init__(
        self,
        root: str | Path,
        train: bool = True,
        image_size: int | None = None,
        resize: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        channels: int = 3,
    ) -> None:
        if channels not in _PIL_MODES:
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        if image_size is not None and (resize or image_size) < image_size:
            raise ValueError(f"resize ({resize}) must be >= image_size ({image_size})")
        self.root = Path(root)
        self.train = train
        self.channels = channels
        self.resize = resize or image_size
        self._crop = image_size
        self.mean, self.std = check_channel_constants(mean, std, channels)
        self.classes, self.samples = scan_image_folder(self.root, train)
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.int64)
        self._image_size: int | tuple[int, int] | None = image_size

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.channels

    @property
    def image_size(self) -> int | tuple[int, int]:
        """The item size: ``image_size`` if given, else the first image's stored size."""
        if self._image_size is None:
            height, width = read_image(self.samples[0][0], self.channels).shape[1:]
            self._image_size = int(height) if height == width else (int(height), int(width))
        return self._image_size

    def __len__(self) -> int:
        return len(self.samples)

    def read_full(self, index: int) -> Tensor:
        """The normalized float32 image ``(C, H, W)`` at its stored size."""
        path, _ = self.samples[index]
        return uint8_to_normalized(read_image(path, self.channels), self.mean, self.std)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.read_full(index)
        if self._crop is not None:
            image = resize_center_crop(image[None], self.resize, self._crop)[0]
        return image, self.samples[index][1]

    def __repr__(self) -> str:
        return (
            f"ImageFolderDataset(root={str(self.root)!r}, train={self.train}, n={len(self)}, "
            f"classes={self.num_classes}, image_size={self._crop}, resize={self.resize})"
        )


def _how_to_get(name: str) -> str:
    return how_to_get(
        name,
        "Expected an image-folder tree: a folder with train/<class>/<image> and "
        "val/<class>/<image>",
    )


def locate_image_folder(name: str, root: str | Path | None = None) -> Path:
    """The first candidate folder that has a ``train/`` or ``val/`` sub-folder."""
    dirs = candidate_dirs(name, root)

    def complete(folder: Path) -> bool:
        return _split_dir(folder, True) is not None or _split_dir(folder, False) is not None

    found = find_dir(dirs, ("",), complete)
    if found is None:
        raise not_found(f"{name} image folder", dirs, _how_to_get(name))
    return found


def _imagefolder_locate(root: str | Path | None) -> Path:
    return locate_image_folder("imagefolder", root)


def _imagenet_locate(root: str | Path | None) -> Path:
    return locate_image_folder("imagenet", root)


@register_dataset("imagefolder", locate=_imagefolder_locate)
def imagefolder(root: str | Path | None = None, train: bool = True, **kwargs: Any):
    """Any ``train/<class>`` + ``val/<class>`` tree; ``image_size``/``resize`` optional."""
    return ImageFolderDataset(locate_image_folder("imagefolder", root), train, **kwargs)


@register_dataset("imagenet", locate=_imagenet_locate)
def imagenet(root: str | Path | None = None, train: bool = True, **kwargs: Any):
    """ImageNet-1K as an image folder; items are 224x224 centre crops of the 256 resize."""
    kwargs.setdefault("image_size", 224)
    kwargs.setdefault("resize", 256)
    return ImageFolderDataset(locate_image_folder("imagenet", root), train, **kwargs)
