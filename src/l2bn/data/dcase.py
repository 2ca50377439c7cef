"""DCASE 2020 task 1a (TAU Urban Acoustic Scenes 2020 Mobile) reader: paper section 4.2.

Reads the official development layout::

    root/
      evaluation_setup/fold1_train.csv     (train=True)
      evaluation_setup/fold1_evaluate.csv  (train=False)
      audio/airport-lisbon-1000-40000-a.wav ...

The lists are tab-separated with a header naming ``filename`` and ``scene_label``;
filenames are relative to ``root``. Items are ``(features (3, 128, 423) float32, label)``:
the log-mel recipe of :mod:`l2bn.data.dcase_features`, whose public functions
:func:`log_mel` and :func:`clip_features` are re-exported here (features are already in
[0, 1]: ``mean``/``std`` are 0/1, no further normalization). Labels follow the sorted
class names, as the recipes' ``np.unique``.

The scaled log-mel of each clip is cached on disk as ``<cache folder>/<tag>/<filename>.pt``
(cache folder: ``cache_dir``, default ``root/l2bn_cache``), where ``<tag>`` names the
:class:`~l2bn.data.dcase_features.FeatureRecipe` (recipe version, sample rate, duration and a
digest of every feature parameter), so each configuration has its own entries. An entry
stores the recipe's parameters and the WAV's resolved path, size and modification time, and
is reused only when all of them match: an entry of another configuration, of another copy of
the dataset (two roots sharing one ``cache_dir``: same file names, sizes and times, other
audio) or of an earlier cache format is never returned (the clip is recomputed and its entry
overwritten; the old ``root/l2bn_cache/<recipe>`` folders of the first format are ignored and
may be deleted). Deltas are computed when an item is read (cheap).
WAVs are read with ``soundfile`` (imported when first needed).

Registered as dataset ``dcase2020-1a``, with the augmentations ``asc`` (random 400-frame
crops) and ``asc_specaugment`` (masks + crops) of :mod:`l2bn.data.dcase_augment`.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from l2bn.data import dcase_augment
from l2bn.data.dcase_features import (
    DURATION,
    N_MELS,
    SAMPLE_RATE,
    FeatureRecipe,
    clip_features,
    clip_samples,
    expected_frames,
    log_mel,
    stack_deltas,
)
from l2bn.data.paths import candidate_dirs, find_dir, how_to_get, not_found
from l2bn.data.registry import register_augmentation, register_dataset

__all__ = [
    "CLASSES",
    "Dcase2020Task1a",
    "check_wav",
    "clip_features",
    "load_dcase2020_1a",
    "locate",
    "log_mel",
    "read_split",
    "read_wav",
]

NAME = "dcase2020-1a"
CLASSES = (
    "airport",
    "bus",
    "metro",
    "metro_station",
    "park",
    "public_square",
    "shopping_mall",
    "street_pedestrian",
    "street_traffic",
    "tram",
)
SPLITS = {True: "fold1_train.csv", False: "fold1_evaluate.csv"}
DEVELOPMENT_DIR = "TAU-urban-acoustic-scenes-2020-mobile-development"
HOW_TO_GET = how_to_get(
    NAME,
    "Download TAU Urban Acoustic Scenes 2020 Mobile, development dataset "
    "(https://zenodo.org/record/3819968: the audio.*.zip and meta.zip archives) and unzip "
    "them into a folder",
)


@dataclass(frozen=True)
class ClipEntry:
    """One row of a split list: the WAV path, its label index, and where it was listed."""

    path: Path
    label: int
    source: str  # "<csv file>:<line>"


def _is_layout(path: Path) -> bool:
    return (path / "evaluation_setup").is_dir()


def locate(root: str | os.PathLike[str] | None = None) -> Path:
    """The dataset folder: ``root``, ``$L2BN_DATA/dcase2020-1a``, ``$L2BN_DATA``, each also
    with the official folder name ``TAU-urban-acoustic-scenes-2020-mobile-development``."""
    dirs = candidate_dirs(NAME, root)
    found = find_dir(dirs, ("", DEVELOPMENT_DIR), _is_layout)
    if found is None:
        raise not_found(
            "DCASE 2020 task 1a (a folder with evaluation_setup/ and audio/)", dirs, HOW_TO_GET
        )
    return found


def read_split(csv_path: Path, root: Path) -> list[ClipEntry]:
    """Parse an ``evaluation_setup`` list; ValueError naming the file and line otherwise."""
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"{csv_path} not found: the DCASE 2020 task 1a lists are expected in "
            f"{root / 'evaluation_setup'} ({HOW_TO_GET})"
        )
    try:
        lines = csv_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{csv_path}: not a UTF-8 text file ({err})") from None
    if not lines or not lines[0].strip():
        raise ValueError(f"{csv_path}:1: empty file; expected a header 'filename<TAB>scene_label'")
    header = [h.strip() for h in lines[0].split("\t")]
    if "filename" not in header or "scene_label" not in header:
        raise ValueError(
            f"{csv_path}:1: expected a tab-separated header with columns 'filename' and "
            f"'scene_label', got {lines[0]!r}"
        )
    name_col, label_col = header.index("filename"), header.index("scene_label")
    label_index = {name: i for i, name in enumerate(CLASSES)}
    entries: list[ClipEntry] = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")]
        while len(fields) > len(header) and not fields[-1]:
            fields.pop()  # trailing tabs
        where = f"{csv_path}:{number}"
        if len(fields) != len(header):
            raise ValueError(
                f"{where}: expected {len(header)} tab-separated fields ({', '.join(header)}), "
                f"got {len(fields)}: {line!r}"
            )
        filename, label = fields[name_col], fields[label_col]
        if not filename.lower().endswith(".wav"):
            raise ValueError(f"{where}: expected a .wav filename, got {filename!r}")
        if label not in label_index:
            raise ValueError(
                f"{where}: unknown scene label {label!r}; valid labels: {', '.join(CLASSES)}"
            )
        entries.append(ClipEntry(root / filename, label_index[label], where))
    if not entries:
        raise ValueError(f"{csv_path}: the list has a header but no clips")
    return entries


def _check_files(entries: Sequence[ClipEntry], csv_path: Path) -> None:
    missing = [e for e in entries if not e.path.is_file()]
    if missing:
        shown = "\n".join(f"  - {e.path} (listed at {e.source})" for e in missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(
            f"{len(missing)} of the {len(entries)} audio files listed in {csv_path} are "
            f"missing:\n{shown}{more}"
        )


UNSET_CHUNK_SIZE = 0xFFFFFFFF
"""The size field of a RIFF chunk that a streaming writer leaves unset (the size unknown)."""


def wav_shortfall(path: Path) -> str | None:
    """Why the RIFF/WAVE file at ``path`` is truncated (its ``data`` chunk declares more
    bytes than the file holds), else None (also for other formats, which libsndfile checks).

    libsndfile reads a truncated WAV as the shorter clip that is there, without an error.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
            return None
        offset = 12
        while True:
            f.seek(offset)
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            declared = int.from_bytes(chunk[4:], "little")
            offset += 8
            if chunk[:4] == b"data":
                held = size - offset
                if declared != UNSET_CHUNK_SIZE and declared > held:
                    return f"its data chunk declares {declared} bytes, the file holds {held}"
                return None
            offset += declared + (declared & 1)


def check_wav(path: Path, sample_rate: int, source: str = "") -> None:
    """What :func:`read_wav` checks before decoding, from the headers alone: the file opens as
    audio, is not truncated (shorter than its header says), holds samples, at
    ``sample_rate``; a ``ValueError`` naming ``path`` (and ``source``, where it is listed)
    otherwise."""
    import soundfile

    listed = f" (listed at {source})" if source else ""
    try:
        shortfall = wav_shortfall(path)
    except OSError as err:
        raise ValueError(f"{path}{listed}: cannot read the audio file ({err})") from None
    if shortfall is not None:
        raise ValueError(
            f"{path}{listed}: truncated audio file ({shortfall}); copy or download it again"
        )
    try:
        info = soundfile.info(str(path))
    except RuntimeError as err:  # soundfile.LibsndfileError and friends
        raise ValueError(f"{path}{listed}: cannot read the audio file ({err})") from None
    if info.samplerate != sample_rate:
        raise ValueError(
            f"{path}{listed}: sample rate {info.samplerate} Hz, expected {sample_rate} Hz "
            "(the recipe's frame count and mel bands assume it)"
        )
    if info.frames == 0:
        raise ValueError(f"{path}{listed}: the audio file has no samples")


def read_wav(path: Path, sample_rate: int, duration: float | None, source: str = "") -> Tensor:
    """The first ``duration`` seconds of a WAV as float64 ``(channels, samples)``; a file
    that :func:`check_wav` rejects (e.g. truncated after its header) is a ``ValueError``."""
    import soundfile

    check_wav(path, sample_rate, source)
    listed = f" (listed at {source})" if source else ""
    try:
        stop = None if duration is None else clip_samples(sample_rate, duration)
        data, _ = soundfile.read(str(path), stop=stop, dtype="float64", always_2d=True)
    except RuntimeError as err:  # soundfile.LibsndfileError and friends
        raise ValueError(f"{path}{listed}: cannot read the audio file ({err})") from None
    if data.shape[0] == 0:
        raise ValueError(f"{path}{listed}: the audio file has no samples")
    return torch.from_numpy(data.T.copy())


CACHE_FORMAT = 3
"""Layout of a cache entry; entries of another format are never returned (format 1 was keyed
on the recipe tag and the WAV's size and time alone, format 2 added the recipe's parameters
but not the WAV's path, so two roots sharing a ``cache_dir`` shared entries)."""


class FeatureCache:
    """Scaled log-mel spectrograms of one :class:`FeatureRecipe` on disk, one ``.pt`` file per
    clip (written atomically) under ``parent/<recipe.tag>``."""

    def __init__(self, parent: Path, root: Path, recipe: FeatureRecipe) -> None:
        self.recipe = recipe
        self.folder = parent / recipe.tag
        self.root = root
        self.enabled = True

    def entry_path(self, wav: Path) -> Path:
        try:
            relative = wav.relative_to(self.root)
        except ValueError:
            relative = Path(wav.name)
        return self.folder / relative.with_suffix(".pt")

    def _stamp(self, wav: Path) -> dict[str, object]:
        """What identifies an entry: the cache format, the recipe, and the WAV (its resolved
        path, so another root's file of the same name, size and time does not match)."""
        stat = wav.stat()
        return {
            "format": CACHE_FORMAT,
            "recipe": self.recipe.params(),
            "wav": str(wav.resolve()),
            "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        }

    def load(self, wav: Path) -> Tensor | None:
        path = self.entry_path(wav)
        if not self.enabled or not path.is_file():
            return None
        expected = self._stamp(wav)
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            stamp = {k: saved[k] for k in expected}
            features = saved["log_mel"]
        except Exception:  # unreadable or foreign file: recompute and overwrite
            return None
        return features if stamp == expected else None

    def save(self, wav: Path, features: Tensor) -> None:
        if not self.enabled:
            return
        path = self.entry_path(wav)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({**self._stamp(wav), "log_mel": features.contiguous()}, tmp)
            os.replace(tmp, path)
        except OSError as err:
            self.enabled = False
            warnings.warn(
                f"cannot write the feature cache in {self.folder} ({err}); features will be "
                "recomputed on every read (pass cache_dir= to choose a writable folder)",
                RuntimeWarning,
                stacklevel=3,
            )
            tmp.unlink(missing_ok=True)


class Dcase2020Task1a(torch.utils.data.Dataset):
    """TAU Urban Acoustic Scenes 2020 Mobile, fold 1 (paper section 4.2, Table 6).

    ``train=True`` reads ``fold1_train.csv`` (13,962 clips in the official set), ``False``
    ``fold1_evaluate.csv`` (2,968). ``cache=False`` disables the disk cache; ``cache_dir``
    moves it (entries go to ``cache_dir/<recipe tag>/``, one folder per configuration);
    ``in_memory=True`` also keeps every scaled log-mel in RAM once read (about 3 GB of
    float32 for the full training list; each DataLoader worker holds its own). Items are
    ``(float32 (3, 128, 423), label)`` for 10 s clips; shorter clips give fewer frames
    (batches need equal lengths: every official clip is 10 s).
    """

    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)
    num_classes = len(CLASSES)
    in_channels = 3

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        train: bool = True,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        cache: bool = True,
        sample_rate: int = SAMPLE_RATE,
        duration: float = DURATION,
        in_memory: bool = False,
    ) -> None:
        self.root = locate(root)
        self.train = bool(train)
        self.csv_path = self.root / "evaluation_setup" / SPLITS[self.train]
        self.entries = read_split(self.csv_path, self.root)
        _check_files(self.entries, self.csv_path)
        self.recipe = FeatureRecipe(sample_rate, float(duration))
        self.sample_rate = self.recipe.sample_rate
        self.duration = float(duration)
        parent = Path(cache_dir) if cache_dir is not None else self.root / "l2bn_cache"
        self.cache = FeatureCache(parent, self.root, self.recipe)
        self.cache.enabled = bool(cache)
        self.classes = list(CLASSES)
        self.labels = torch.tensor([e.label for e in self.entries], dtype=torch.int64)
        self._memory: dict[int, Tensor] | None = {} if in_memory else None

    @property
    def image_size(self) -> tuple[int, int]:
        """``(mel bands, frames)`` of a full-length clip: ``(128, 423)`` for 10 s."""
        return (N_MELS, expected_frames(self.sample_rate, self.duration))

    @property
    def files(self) -> list[Path]:
        return [e.path for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def scaled_log_mel(self, index: int) -> Tensor:
        """The cached (or freshly computed) per-clip scaled log-mel ``(128, frames)``."""
        if self._memory is not None and index in self._memory:
            return self._memory[index]
        entry = self.entries[index]
        features = self.cache.load(entry.path)
        if features is None:
            features = self._compute(entry)
        if self._memory is not None:
            self._memory[index] = features
        return features

    def _compute(self, entry: ClipEntry) -> Tensor:
        waveform = read_wav(entry.path, self.sample_rate, self.duration, entry.source)
        try:
            features = self.recipe.compute(waveform)
        except ValueError as err:
            raise ValueError(f"{entry.path} (listed at {entry.source}): {err}") from None
        self.cache.save(entry.path, features)
        return features

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        scaled = self.scaled_log_mel(index)
        if scaled.shape[-1] <= 8:
            entry = self.entries[index]
            raise ValueError(
                f"{entry.path} (listed at {entry.source}): too short for the 3-channel feature "
                f"({scaled.shape[-1]} frames, need more than 8)"
            )
        return stack_deltas(scaled), int(self.entries[index].label)

    def verify_files(self) -> None:
        """Open every listed WAV's headers (:func:`check_wav`: unreadable, truncated, empty or
        at another sample rate) without decoding the audio; one ``ValueError`` naming each
        bad file and where it is listed. ``l2bn data --check`` calls it."""
        problems: list[str] = []
        for entry in self.entries:
            try:
                check_wav(entry.path, self.sample_rate, entry.source)
            except ValueError as err:
                problems.append(f"  - {err}")
        if problems:
            shown = "\n".join(problems[:5])
            more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise ValueError(
                f"{len(problems)} of the {len(self.entries)} audio files listed in "
                f"{self.csv_path} are unusable:\n{shown}{more}"
            )

    def build_cache(self) -> int:
        """Compute every missing cache entry now; returns the number of clips."""
        for index in range(len(self)):
            self.scaled_log_mel(index)
        return len(self)

    def __repr__(self) -> str:
        split = "train" if self.train else "evaluate"
        return f"{type(self).__name__}(root={str(self.root)!r}, split={split}, n={len(self)})"


@register_dataset(NAME, locate=locate)
def load_dcase2020_1a(
    root: str | os.PathLike[str] | None = None, train: bool = True, **kwargs
) -> Dcase2020Task1a:
    """Registry factory of ``dcase2020-1a`` (keyword arguments: see :class:`Dcase2020Task1a`)."""
    return Dcase2020Task1a(root, train, **kwargs)


register_augmentation("asc")(dcase_augment.random_time_crop)
register_augmentation("asc_specaugment")(dcase_augment.spec_augment_time_crop)
