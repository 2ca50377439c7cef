"""download=True with a fake network: checksums, atomic writes, safe archive extraction."""

from __future__ import annotations

import dataclasses
import io
import tarfile

import pytest
import torch

import l2bn.data as data
from l2bn.data import cifar as cifar_module
from l2bn.data import mnist as mnist_module
from l2bn.data.download import extract_tar, md5_of
from l2bn.data.synthetic import write_cifar_dataset, write_idx_dataset


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    monkeypatch.delenv("L2BN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def serve(monkeypatch, files: dict[str, bytes]) -> list[str]:
    """Answer urlopen from ``files`` (by file name); return the URLs requested."""
    requested: list[str] = []

    def fake_urlopen(url, timeout):
        requested.append(url)
        name = url.rsplit("/", 1)[1]
        if name not in files:
            raise OSError(f"404 {name}")
        return io.BytesIO(files[name])

    monkeypatch.setattr("urllib.request.urlopen", fake_urlopen)
    return requested


def test_idx_download_checks_md5_and_reads_the_files(tmp_path, monkeypatch):
    source = write_idx_dataset(tmp_path / "source", train=12, test=6)
    files = {p.name: p.read_bytes() for p in source.iterdir()}
    serve(monkeypatch, files)
    # the real checksums do not match the synthetic files: every mirror is rejected
    with pytest.raises(ConnectionError, match="checksum mismatch"):
        data.load_dataset("mnist", root=tmp_path / "bad", download=True)
    assert not any((tmp_path / "bad").glob("*-idx3-ubyte.gz"))
    sums = {name.removesuffix(".gz"): md5_of(source / name) for name in files}
    monkeypatch.setattr(mnist_module, "MNIST", dataclasses.replace(mnist_module.MNIST, md5=sums))
    dataset = data.load_dataset("mnist", root=tmp_path / "good", download=True)
    assert len(dataset) == 12 and sorted(p.name for p in (tmp_path / "good").iterdir()) == sorted(
        files
    )


def test_idx_download_defaults_to_the_cache_folder(tmp_path, monkeypatch):
    source = write_idx_dataset(tmp_path / "source", train=5, test=5)
    files = {p.name: p.read_bytes() for p in source.iterdir()}
    sums = {name.removesuffix(".gz"): md5_of(source / name) for name in files}
    spec = dataclasses.replace(mnist_module.FASHION_MNIST, md5=sums, system_dirs=())
    monkeypatch.setattr(mnist_module, "FASHION_MNIST", spec)
    requested = serve(monkeypatch, files)
    dataset = data.load_dataset("fashion-mnist", train=False, download=True)
    assert len(dataset) == 5 and len(requested) == 4
    cached = tmp_path / "cache" / "l2bn" / "fashion-mnist"
    assert data.locate_dataset("fashion-mnist") == cached
    data.load_dataset("fashion-mnist", download=True)  # found now: no new request
    assert len(requested) == 4


def test_cifar_download_extracts_the_archive(tmp_path, monkeypatch):
    folder = write_cifar_dataset(tmp_path / "source", "cifar10", per_file=4)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(buffer.getvalue())
    spec = dataclasses.replace(cifar_module.CIFAR10, archive_md5=md5_of(archive))
    monkeypatch.setattr(cifar_module, "CIFAR10", spec)
    requested = serve(monkeypatch, {archive.name: archive.read_bytes()})
    dataset = data.load_dataset("cifar10", root=tmp_path / "dl", download=True)
    assert len(dataset) == 20 and requested[0].startswith("https://www.cs.toronto.edu/")
    assert (tmp_path / "dl" / "cifar-10-batches-py" / "test_batch").is_file()
    assert not (tmp_path / "dl" / archive.name).exists()
    assert torch.equal(dataset.images, data.load_dataset("cifar10", root=folder).images)


def test_unsafe_archive_is_refused(tmp_path):
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(ValueError, match="unsafe member"):
        extract_tar(evil, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b not really")
    with pytest.raises(ValueError, match="corrupted archive"):
        extract_tar(broken, tmp_path / "out")
