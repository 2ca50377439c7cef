"""Fetch dataset files over HTTP(S): short timeout, MD5 check, atomic write, safe untar."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

DEFAULT_TIMEOUT = 15.0


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(
    filename: str,
    mirrors: Sequence[str],
    dest_dir: Path,
    md5: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download ``filename`` from the first mirror that answers into ``dest_dir``.

    The file is written to ``<name>.<pid>.part`` and renamed only once complete (and, with
    ``md5``, verified). Raises ConnectionError naming every URL tried when none works.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / filename
    failures: list[str] = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename
        partial = target.with_name(f"{target.name}.{os.getpid()}.part")
        try:
            with (
                urllib.request.urlopen(url, timeout=timeout) as response,
                open(partial, "wb") as out,
            ):
                shutil.copyfileobj(response, out)
            if md5 is not None and (actual := md5_of(partial)) != md5:
                failures.append(f"  - {url}: checksum mismatch (md5 {actual}, expected {md5})")
                continue
            os.replace(partial, target)
            return target
        except (urllib.error.URLError, OSError, ValueError) as err:
            failures.append(f"  - {url}: {getattr(err, 'reason', err)}")
        finally:
            partial.unlink(missing_ok=True)
    raise ConnectionError(
        f"could not download {filename} (offline or blocked?). Tried:\n" + "\n".join(failures)
    )


@contextlib.contextmanager
def removed_if_left_empty(folder: Path) -> Iterator[None]:
    """On an exception, remove ``folder`` and the parents it lacked on entry (those a
    download creates) as far as they are still empty; a folder that existed is kept, and
    so is one holding anything (a file downloaded before the failure)."""
    created: list[Path] = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        created.append(path)
    try:
        yield
    except BaseException:
        for path in created:  # deepest first
            try:
                path.rmdir()
            except OSError:  # not empty (or gone): keep it and its parents
                break
        raise


def by_hand(what: str, dest: Path) -> str:
    """The hint after a failed download: place the files by hand (never: download again)."""
    return (
        f"To place it by hand: {what} into {dest}, or into a folder given as --data-root "
        "(command line) or root= (Python)."
    )


def extract_tar(archive: Path, dest_dir: Path) -> None:
    """Extract ``archive`` into ``dest_dir``, refusing members that would escape it."""
    dest = dest_dir.resolve()
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                target = (dest / member.name).resolve()
                if not (target == dest or dest in target.parents) or member.issym():
                    raise ValueError(f"{archive}: unsafe member {member.name!r}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # Python without extraction filters; members were checked above
                tar.extractall(dest, members=members)
    except tarfile.TarError as err:
        raise ValueError(f"{archive}: corrupted archive ({err})") from err
