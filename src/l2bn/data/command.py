"""``l2bn data``: where each dataset was found, or how to get it.

``l2bn data`` lists every registered dataset with its folder (or the error saying where
it looked and how to get it) and always exits 0. ``l2bn data --check NAME`` reads both
splits of NAME (a dataset read lazily that has ``verify_files()``, such as DCASE, also checks
every file with it: DCASE opens each WAV's headers) and exits 1 if that fails. ``l2bn data
--download NAME`` fetches MNIST, Fashion-MNIST, CIFAR-10 or CIFAR-100 when the network allows
(checksums verified).
"""

from __future__ import annotations

import argparse
import sys
import time

DOWNLOADABLE = ("fashion-mnist", "mnist", "cifar10", "cifar100")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        "--data-root",  # the spelling of l2bn train and compare (and of the data hints)
        dest="root",
        default=None,
        help="the dataset's folder, used alone (--download: download into it); without it "
        "NAME is searched in $L2BN_DATA/NAME, $L2BN_DATA, system folders and the download "
        "cache ~/.cache/l2bn/NAME",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--check", metavar="NAME", help="read both splits of NAME; exit 1 if unavailable"
    )
    group.add_argument(
        "--download",
        metavar="NAME",
        choices=DOWNLOADABLE,
        help=f"download one of: {', '.join(DOWNLOADABLE)}",
    )


def _describe(dataset) -> str:
    size = dataset.image_size
    size_text = f"{size}x{size}" if isinstance(size, int) else "x".join(map(str, size))
    return (
        f"{len(dataset)} samples, {dataset.num_classes} classes, {dataset.in_channels}x{size_text}"
    )


def _check(name: str, root: str | None) -> int:
    from l2bn.data import load_dataset

    try:
        for train in (True, False):
            start = time.perf_counter()
            dataset = load_dataset(name, root=root, train=train)
            verify_files = getattr(dataset, "verify_files", None)
            if verify_files is not None:  # files read lazily: open each one now
                verify_files()
            took = time.perf_counter() - start
            split = "train" if train else "test"
            print(f"{name} [{split}]: {_describe(dataset)} (read in {took:.2f} s)")
    except BrokenPipeError:  # stdout closed (a ConnectionError too): not the dataset's fault
        raise
    except (FileNotFoundError, ValueError, ConnectionError, ModuleNotFoundError) as err:
        print(f"{name}: unavailable\n{err}", file=sys.stderr)
        return 1
    return 0


def _download(name: str, root: str | None) -> int:
    from l2bn.data import load_dataset, locate_dataset

    try:
        print(f"{name}: already present in {locate_dataset(name, root)}")
        return 0
    except FileNotFoundError:
        pass
    try:
        # Both splits: a folder that holds one of them still lacks the other's files.
        for train in (True, False):
            load_dataset(name, root=root, train=train, download=True)
    except (ConnectionError, ValueError, FileNotFoundError) as err:
        print(f"{name}: download failed\n{err}", file=sys.stderr)
        return 1
    print(f"{name}: downloaded to {locate_dataset(name, root)}")
    return _check(name, root)


def _list(root: str | None) -> int:
    from l2bn.data import list_datasets, locate_dataset

    for name in list_datasets():
        try:
            folder = locate_dataset(name, root)
        except FileNotFoundError as err:
            print(
                f"{name}: not found\n" + "\n".join(f"    {line}" for line in str(err).splitlines())
            )
            continue
        if folder is None:
            print(f"{name}: no quick location check; run `l2bn data --check {name}`")
        else:
            print(f"{name}: found in {folder}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.check:
        from l2bn.data import list_datasets

        if args.check.lower() not in list_datasets():
            valid = ", ".join(list_datasets())
            print(
                f"l2bn data: error: unknown dataset {args.check!r}; valid names: {valid}",
                file=sys.stderr,
            )
            return 2
        return _check(args.check, args.root)
    if args.download:
        return _download(args.download, args.root)
    return _list(args.root)
