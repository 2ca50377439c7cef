"""`l2bn data`: lists where datasets are, `--check NAME` fails when NAME is unavailable."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import pytest

from l2bn.cli import COMMANDS
from l2bn.data import command
from l2bn.data.synthetic import write_cifar_dataset, write_idx_dataset


def main(argv: Sequence[str]) -> int:
    """`l2bn data ...` through the subcommand's own configure/run (as l2bn.cli does)."""
    assert argv[0] == "data"
    parser = argparse.ArgumentParser(prog="l2bn data")
    command.configure(parser)
    return command.run(parser.parse_args(argv[1:]))


def test_the_cli_dispatches_data_to_this_module():
    assert COMMANDS["data"][0] == "l2bn.data.command"


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("L2BN_DATA", str(tmp_path / "store"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_idx_dataset(tmp_path / "store" / "mnist", train=10, test=10)
    return tmp_path / "store"


def test_listing_says_where_each_dataset_is(store, capsys):
    assert main(["data"]) == 0
    out = capsys.readouterr().out
    assert f"mnist: found in {store / 'mnist'}" in out
    assert "cifar10: not found" in out and "cifar-10-batches-py" in out
    assert str(store / "cifar100") in out  # where it looked


def test_check_available_and_missing(store, capsys):
    assert main(["data", "--check", "mnist"]) == 0
    assert "mnist [train]: 10 samples, 10 classes, 1x28x28" in capsys.readouterr().out
    assert main(["data", "--check", "cifar100"]) == 1
    assert "cifar100: unavailable" in capsys.readouterr().err
    write_cifar_dataset(store / "cifar100", "cifar100", per_file=5)
    assert main(["data", "--check", "cifar100"]) == 0
    assert main(["data", "--check", "svhn"]) == 2
    err = capsys.readouterr().err  # as argparse reports a bad argument: one line
    assert err.startswith("l2bn data: error: unknown dataset 'svhn'; valid names: "), err
    assert len(err.splitlines()) == 1


def test_download_offline_fails_with_a_message(store, capsys, monkeypatch):
    def offline(url, timeout):
        raise OSError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    assert main(["data", "--download", "mnist"]) == 0  # already present in $L2BN_DATA/mnist
    # an explicit root is used alone: the copy in $L2BN_DATA does not count for it
    assert main(["data", "--check", "mnist", "--root", str(store / "elsewhere")]) == 1
    assert f"the data root {store / 'elsewhere'} does not exist" in capsys.readouterr().err
    assert main(["data", "--download", "mnist", "--root", str(store / "elsewhere")]) == 1
    monkeypatch.setenv("L2BN_DATA", str(store / "empty"))
    assert main(["data", "--download", "mnist"]) == 1
    err = capsys.readouterr().err
    assert "download failed" in err and "yann.lecun.com" in err


def test_download_fetches_the_split_that_is_missing(tmp_path, monkeypatch, capsys):
    # A root holding only MNIST's test split: --download must fetch the training files
    # (not stop at the test split it finds, then fail on the missing training files).
    import dataclasses
    import io

    from l2bn.data import mnist as mnist_module
    from l2bn.data.download import md5_of

    source = write_idx_dataset(tmp_path / "source", train=6, test=4)
    files = {p.name: p.read_bytes() for p in source.iterdir()}
    sums = {name.removesuffix(".gz"): md5_of(source / name) for name in files}
    monkeypatch.setattr(mnist_module, "MNIST", dataclasses.replace(mnist_module.MNIST, md5=sums))
    requested: list[str] = []

    def serve(url, timeout):
        requested.append(url)
        return io.BytesIO(files[url.rsplit("/", 1)[1]])

    monkeypatch.setattr("urllib.request.urlopen", serve)
    root = tmp_path / "partial"
    root.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (root / name).write_bytes(files[name])
    assert main(["data", "--download", "mnist", "--root", str(root)]) == 0
    assert sorted(url.rsplit("/", 1)[1] for url in requested) == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]
    assert "mnist [train]: 6 samples" in capsys.readouterr().out


def test_help_says_an_explicit_root_is_used_alone():
    parser = argparse.ArgumentParser(prog="l2bn data")
    command.configure(parser)
    text = " ".join(parser.format_help().split())
    assert "used alone" in text and "look here first" not in text
    assert "$L2BN_DATA/NAME, $L2BN_DATA" in text and "~/.cache/l2bn/NAME" in text


@pytest.mark.parametrize(
    ("name", "downloadable"),
    [("cifar10", True), ("cifar100", True), ("imagenet", False), ("dcase2020-1a", False)],
)
def test_missing_data_names_both_spellings(store, capsys, name, downloadable):
    assert main(["data", "--check", name]) == 1
    err = capsys.readouterr().err
    assert "--data-root (command line) or root= (Python)" in err, err
    assert f"$L2BN_DATA/{name}" in err and "pass root" not in err and "as root" not in err
    assert (f"`l2bn data --download {name}` or download=True" in err) == downloadable, err
    # the reason is one line, after "NAME: unavailable"
    assert err.splitlines()[0] == f"{name}: unavailable" and len(err.splitlines()) == 2, err
    # an explicit root that lacks the files: the same hint
    assert main(["data", "--check", "mnist", "--root", str(store / "elsewhere")]) == 1
    err = capsys.readouterr().err
    assert "--data-root (command line) or root= (Python)" in err
    assert "`l2bn data --download mnist` or download=True" in err
    # the hint's --data-root works for l2bn data too
    assert main(["data", "--check", "mnist", "--data-root", str(store / "mnist")]) == 0


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_failed_download_says_how_to_place_the_files_and_leaves_no_empty_folder(
    name, tmp_path, monkeypatch, capsys
):
    import socket
    import urllib.error

    def offline(url, timeout):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr("urllib.request.urlopen", offline)
    monkeypatch.delenv("L2BN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the download folder's parent
    assert main(["data", "--download", name]) == 1
    err = capsys.readouterr().err
    assert "Name or service not known" in err
    # not the command that just failed: how to place the files by hand, and where
    assert "l2bn data --download" not in err and "download=True" not in err, err
    assert f"into {tmp_path / 'cache' / 'l2bn' / name}" in err
    expected = "cifar-10-python.tar.gz" if name == "cifar10" else "t10k-labels-idx1-ubyte.gz"
    assert expected in err and "https://" in err
    # the folders the download created are gone again (nothing was written in them) ...
    assert not (tmp_path / "cache").exists()
    # ... but a folder that existed is kept, and so is an explicit root
    root = tmp_path / "root"
    root.mkdir()
    assert main(["data", "--download", name, "--root", str(root)]) == 1
    assert root.is_dir() and f"into {root}" in capsys.readouterr().err
