"""Where datasets are looked for, and the error raised when they are not found.

An explicit ``root`` is used alone: the data must be there (in the folder or one of the
reader's sub-folders), or loading fails naming that folder and the files it lacks. Without
a root the search order is ``$L2BN_DATA/<name>`` and ``$L2BN_DATA``, then any
reader-specific system places (Debian's ``/usr/share/datasets/fashion-mnist``), then the
download cache ``$XDG_CACHE_HOME/l2bn/<name>`` (default ``~/.cache/l2bn/<name>``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

ENV_VAR = "L2BN_DATA"


def download_dir(name: str) -> Path:
    """Where ``download=True`` stores ``name`` when no root is given."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser() / name
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "l2bn" / name


def candidate_dirs(
    name: str, root: str | os.PathLike[str] | None, extra: Iterable[str | Path] = ()
) -> list[Path]:
    """The directories to search for dataset ``name``, in order, without duplicates:
    ``[root]`` alone when a root is given."""
    if root is not None:
        return [Path(root).expanduser()]
    dirs: list[Path] = []
    env = os.environ.get(ENV_VAR)
    if env:
        dirs += [Path(env).expanduser() / name, Path(env).expanduser()]
    dirs += [Path(p) for p in extra]
    dirs.append(download_dir(name))
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def find_dir(
    dirs: Sequence[Path], subdirs: Sequence[str], is_complete: Callable[[Path], bool]
) -> Path | None:
    """The first ``d / sub`` (``sub`` in ``subdirs``, "" meaning ``d``) that is complete."""
    for d in dirs:
        for sub in subdirs:
            path = d / sub if sub else d
            if path.is_dir() and is_complete(path):
                return path
    return None


def how_to_get(name: str, by_hand: str, *, downloadable: bool = False) -> str:
    """The remedy for a missing dataset ``name``, the same for every reader and in both
    spellings where they differ (the ``l2bn`` command's and Python's).

    ``by_hand`` says which files to get, from where, and into which folder ("... in a
    folder"); the rest says how to point at that folder and, for a ``downloadable`` dataset,
    how to fetch it.
    """
    text = (
        f"{by_hand}; give that folder as --data-root (command line) or root= (Python), or "
        f"make it $L2BN_DATA/{name}"
    )
    if downloadable:
        text += f"; or fetch it: `l2bn data --download {name}` or download=True"
    return text + "."


def not_found(what: str, dirs: Sequence[Path], how_to_get: str) -> FileNotFoundError:
    """A FileNotFoundError, one line: what was expected, every place looked, and a remedy."""
    looked = ", ".join(str(d) for d in dirs)
    return FileNotFoundError(f"{what} not found (looked in {looked}). {how_to_get}".rstrip())


def missing_in_root(
    what: str,
    root: str | os.PathLike[str],
    subdirs: Sequence[str],
    missing: Callable[[Path], list[str]],
    how_to_get: str = "",
) -> FileNotFoundError:
    """The error for an explicit ``root`` that does not hold the dataset: it names the
    folder (of ``root`` and its ``subdirs``) that comes closest and what it lacks."""
    root = Path(root).expanduser()
    if not root.is_dir():
        state = "is not a directory" if root.exists() else "does not exist"
        return FileNotFoundError(f"{what}: the data root {root} {state}. {how_to_get}".rstrip())
    folders = [root / sub if sub else root for sub in subdirs]
    folders = [folder for folder in folders if folder.is_dir()]
    closest = min(folders, key=lambda folder: len(missing(folder)))
    return FileNotFoundError(
        f"{what}: {closest} lacks {', '.join(missing(closest))} (an explicit data root is "
        f"used alone; without one the default places are searched). {how_to_get}".rstrip()
    )
