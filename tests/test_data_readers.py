"""Dataset readers on tiny files in the real formats, the real Fashion-MNIST, clear errors."""

from __future__ import annotations

import dataclasses
import gzip
import io
import pickle
from pathlib import Path

import pytest
import torch

import l2bn.data as data
from l2bn.data import mnist as mnist_module
from l2bn.data.download import md5_of
from l2bn.data.idx import parse_idx, read_idx
from l2bn.data.synthetic import (
    synthetic_images,
    write_cifar_dataset,
    write_idx,
    write_idx_dataset,
    write_image_folder,
)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No $L2BN_DATA, and a download cache inside tmp_path."""
    monkeypatch.delenv("L2BN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def normalized(images_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    mean_t = torch.tensor(mean).view(-1, 1, 1)
    std_t = torch.tensor(std).view(-1, 1, 1)
    return (images_uint8.double() / 255 - mean_t) / std_t


# --- IDX (MNIST / Fashion-MNIST) -------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_reader_reads_what_was_written(tmp_path, gz, name):
    write_idx_dataset(tmp_path, train=30, test=12, gz=gz, seed=3)
    expected_images, expected_labels = synthetic_images(30, 10, (1, 28, 28), seed=4)
    train = data.load_dataset(name, root=tmp_path, train=True)
    test = data.load_dataset(name, root=tmp_path, train=False)
    assert (len(train), len(test)) == (30, 12)
    assert train.images.dtype == torch.uint8 and train.images.shape == (30, 1, 28, 28)
    assert torch.equal(train.images, expected_images)
    assert torch.equal(train.labels, expected_labels)
    assert train.labels.dtype == torch.int64
    assert (train.num_classes, train.in_channels, train.image_size) == (10, 1, 28)
    image, label = train[5]
    assert image.dtype == torch.float32 and image.shape == (1, 28, 28)
    assert label == int(expected_labels[5]) and isinstance(label, int)
    reference = normalized(expected_images[5], train.mean, train.std)
    assert torch.allclose(image.double(), reference, atol=1e-5)


def test_idx_reader_finds_torchvision_layout_and_env_var(tmp_path, monkeypatch):
    write_idx_dataset(tmp_path / "mnist" / "MNIST" / "raw", train=10, test=10)
    monkeypatch.setenv("L2BN_DATA", str(tmp_path))
    assert len(data.load_dataset("mnist")) == 10
    assert data.locate_dataset("mnist") == tmp_path / "mnist" / "MNIST" / "raw"


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.float32])
def test_idx_round_trip_of_multibyte_big_endian_types(tmp_path, dtype):
    values = (torch.arange(24) * 1000 - 7000).reshape(2, 3, 4).to(dtype)
    if dtype == torch.uint8:
        values = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "values.idx", values)
    raw = path.read_bytes()
    assert raw[2] in (0x08, 0x0B, 0x0C, 0x0D) and raw[3] == 3
    assert torch.equal(read_idx(path), values)


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    write_idx_dataset(tmp_path, train=10, test=10, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated") as err:
        data.load_dataset("mnist", root=tmp_path)
    assert str(path) in str(err.value)


def test_truncated_gzip_is_a_clear_error(tmp_path):
    write_idx_dataset(tmp_path, train=10, test=10, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(ValueError, match="gzip"):
        data.load_dataset("mnist", root=tmp_path)


def test_wrong_magic_number_is_a_clear_error(tmp_path):
    write_idx_dataset(tmp_path, train=10, test=10, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    payload = bytearray(gzip.decompress(path.read_bytes()))
    payload[0] = 0x1F
    path.write_bytes(gzip.compress(bytes(payload)))
    with pytest.raises(ValueError, match="magic number"):
        data.load_dataset("mnist", root=tmp_path)
    with pytest.raises(ValueError, match="type code"):
        parse_idx(bytes([0, 0, 0x07, 1, 0, 0, 0, 0]))


def test_label_count_mismatch_is_a_clear_error(tmp_path):
    write_idx_dataset(tmp_path, train=10, test=10, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", torch.zeros(9, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"10 images .* 9 labels"):
        data.load_dataset("mnist", root=tmp_path)


def test_missing_mnist_names_every_place_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("L2BN_DATA", str(tmp_path / "store"))
    with pytest.raises(FileNotFoundError) as err:
        data.load_dataset("mnist")
    message = str(err.value)
    for place in (tmp_path / "store" / "mnist", tmp_path / "store"):
        assert str(place) in message
    assert "train-images-idx3-ubyte" in message and "l2bn data --download mnist" in message


def test_an_explicit_root_is_used_alone(tmp_path, monkeypatch):
    # complete data in $L2BN_DATA must not stand in for an empty or incomplete explicit root
    monkeypatch.setenv("L2BN_DATA", str(tmp_path / "store"))
    write_idx_dataset(tmp_path / "store" / "mnist", train=10, test=10)
    with pytest.raises(FileNotFoundError) as err:
        data.load_dataset("mnist", root=tmp_path / "nowhere")
    assert f"the data root {tmp_path / 'nowhere'} does not exist" in str(err.value)
    assert str(tmp_path / "store") not in str(err.value).split(". ")[0]

    only_train = tmp_path / "only-train"
    write_idx_dataset(only_train, train=10, test=10)
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        next(only_train.glob(stem + "*")).unlink()
    assert len(data.load_dataset("mnist", root=only_train, train=True)) == 10
    with pytest.raises(FileNotFoundError) as err:
        data.load_dataset("mnist", root=only_train, train=False)
    first = str(err.value).split(". ")[0]
    assert f"{only_train} lacks t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte" in first
    assert "train-images" not in first


def _drop_split(folder: Path, train: bool) -> None:
    for stem in mnist_module.SPLIT_STEMS[train]:
        next(folder.glob(stem + "*")).unlink()


def test_both_idx_splits_come_from_one_copy(tmp_path, monkeypatch):
    # $L2BN_DATA holds only a (different) training split; the system copy holds both: the
    # test split must not be taken from the system copy to go with the other training split
    store = tmp_path / "store" / "fashion-mnist"
    write_idx_dataset(store, train=10, test=10)
    _drop_split(store, train=False)
    system = write_idx_dataset(tmp_path / "system", train=30, test=12)
    spec = dataclasses.replace(mnist_module.FASHION_MNIST, system_dirs=(str(system),))
    monkeypatch.setattr(mnist_module, "FASHION_MNIST", spec)
    monkeypatch.setenv("L2BN_DATA", str(tmp_path / "store"))
    train = data.load_dataset("fashion-mnist", train=True)
    assert len(train) == 10 and Path(train.source).parent == store
    for load in (
        lambda: data.load_dataset("fashion-mnist", train=False),
        lambda: data.locate_dataset("fashion-mnist"),
    ):
        with pytest.raises(FileNotFoundError) as err:
            load()
        message = str(err.value)
        assert f"{store} lacks t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]" in message
        assert "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz" in message  # what it has
        assert f"the test split is in {system}" in message


def test_both_idx_splits_come_from_one_folder_of_a_root(tmp_path):
    root = write_idx_dataset(tmp_path / "root", train=10, test=10)
    _drop_split(root, train=False)
    write_idx_dataset(root / "raw", train=30, test=12)
    _drop_split(root / "raw", train=True)
    assert len(data.load_dataset("mnist", root=root, train=True)) == 10
    with pytest.raises(FileNotFoundError) as err:
        data.load_dataset("mnist", root=root, train=False)
    assert f"{root} lacks t10k-images-idx3-ubyte[.gz]" in str(err.value)
    assert f"the test split is in {root / 'raw'}" in str(err.value)


def test_download_completes_the_copy_in_use(tmp_path, monkeypatch):
    # root/raw holds the training split: the test split is fetched into root/raw, where the
    # training split is read from, not into root (which would then hold a second copy)
    source = write_idx_dataset(tmp_path / "source", train=6, test=4)
    files = {p.name: p.read_bytes() for p in source.iterdir()}
    sums = {name.removesuffix(".gz"): md5_of(source / name) for name in files}
    monkeypatch.setattr(mnist_module, "MNIST", dataclasses.replace(mnist_module.MNIST, md5=sums))
    monkeypatch.setattr(
        "urllib.request.urlopen", lambda url, timeout: io.BytesIO(files[url.rsplit("/", 1)[1]])
    )
    root = tmp_path / "root"
    write_idx_dataset(root / "raw", train=6, test=4)
    _drop_split(root / "raw", train=False)
    test = data.load_dataset("mnist", root=root, train=False, download=True)
    assert len(test) == 4 and Path(test.source).parent == root / "raw"
    assert sorted(p.name for p in root.iterdir()) == ["raw"]
    assert data.locate_dataset("mnist", root) == root / "raw"


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    spec = dataclasses.replace(mnist_module.FASHION_MNIST, system_dirs=())
    monkeypatch.setattr(mnist_module, "FASHION_MNIST", spec)
    with pytest.raises(FileNotFoundError) as err:
        data.load_dataset("fashion-mnist", root=tmp_path / "empty")
    assert "apt-get install dataset-fashion-mnist" in str(err.value)
    assert "L2BN_DATA" in str(err.value)


def test_download_offline_is_a_clear_error(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise OSError("network is unreachable")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(ConnectionError, match="could not download") as err:
        data.load_dataset("mnist", root=tmp_path / "dl", download=True)
    assert "ossci-datasets" in str(err.value)
    assert not list((tmp_path / "dl").glob("*.part"))


@pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason=f"Fashion-MNIST not installed in {FASHION_DIR}"
)
def test_real_fashion_mnist():
    train = data.load_dataset("fashion-mnist", train=True)
    test = data.load_dataset("fashion-mnist", train=False)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.labels.shape == (60000,) and test.labels.shape == (10000,)
    assert int(train.labels.min()) == 0 and int(train.labels.max()) == 9
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert train.classes[0] == "T-shirt/top" and len(train.classes) == 10
    # the normalization constants are those of the training images
    pixels = train.images.double() / 255
    assert abs(pixels.mean().item() - train.mean[0]) < 1e-3
    assert abs(pixels.std().item() - train.std[0]) < 1e-3


# --- CIFAR -----------------------------------------------------------------------------


def test_cifar10_pickles(tmp_path):
    folder = write_cifar_dataset(tmp_path, "cifar10", per_file=8, seed=2)
    train = data.load_dataset("cifar10", root=tmp_path)
    test = data.load_dataset("cifar10", root=folder, train=False)
    assert (len(train), len(test)) == (40, 8)
    assert train.images.shape == (40, 3, 32, 32) and train.in_channels == 3
    first_images, first_labels = synthetic_images(8, 10, (3, 32, 32), seed=2)
    assert torch.equal(train.images[:8], first_images)
    assert torch.equal(train.labels[:8], first_labels)
    assert train.classes == [f"class{k}" for k in range(10)]
    image, _ = test[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32


def test_cifar100_fine_and_coarse_labels(tmp_path):
    write_cifar_dataset(tmp_path, "cifar100", per_file=30, seed=1)
    fine = data.load_dataset("cifar100", root=tmp_path)
    coarse = data.load_dataset("cifar100", root=tmp_path, coarse=True)
    assert fine.num_classes == 100 and coarse.num_classes == 20
    assert torch.equal(coarse.labels, fine.labels % 20)
    assert fine.classes[7] == "fine7" and coarse.classes[3] == "coarse3"


def test_truncated_pickle_is_a_clear_error(tmp_path):
    folder = write_cifar_dataset(tmp_path, "cifar10", per_file=4)
    path = folder / "data_batch_3"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="malformed") as err:
        data.load_dataset("cifar10", root=tmp_path)
    assert "data_batch_3" in str(err.value)


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_pickle_with_foreign_code_is_refused(tmp_path):
    folder = write_cifar_dataset(tmp_path, "cifar100", per_file=4)
    with open(folder / "train", "wb") as f:
        pickle.dump({b"data": _Exploit(tmp_path / "pwned")}, f)
    with pytest.raises(ValueError, match="not allowed"):
        data.load_dataset("cifar100", root=tmp_path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("bad", [1.7, 2.0, True, "3"])
def test_non_integer_cifar_label_is_a_clear_error(tmp_path, bad):
    """A label that is not an integer is refused, naming the file, never truncated."""
    folder = write_cifar_dataset(tmp_path, "cifar10", per_file=4)
    path = folder / "data_batch_2"
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch[b"labels"][1] = bad
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    with pytest.raises(ValueError, match="list of ints") as err:
        data.load_dataset("cifar10", root=tmp_path)
    assert "data_batch_2" in str(err.value) and repr(bad) in str(err.value)


def test_numpy_integer_cifar_labels_are_read(tmp_path):
    import numpy as np

    folder = write_cifar_dataset(tmp_path, "cifar10", per_file=4)
    path = folder / "data_batch_1"
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    expected = list(batch[b"labels"])
    batch[b"labels"] = [np.int64(v) for v in expected]
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    train = data.load_dataset("cifar10", root=tmp_path)
    assert train.labels[:4].tolist() == expected


def test_pickle_missing_key_is_a_clear_error(tmp_path):
    folder = write_cifar_dataset(tmp_path, "cifar100", per_file=4)
    with open(folder / "test", "wb") as f:
        pickle.dump({b"data": b"", b"labels": []}, f)
    with pytest.raises(ValueError, match="fine_labels"):
        data.load_dataset("cifar100", root=tmp_path, train=False)


def test_missing_cifar_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        data.load_dataset("cifar100", root=tmp_path)
    assert str(tmp_path) in str(err.value) and "cifar-100-python" in str(err.value)


# --- image folders ---------------------------------------------------------------------


def test_image_folder_png_pixels_and_labels(tmp_path):
    write_image_folder(tmp_path, num_classes=3, per_class=2, size=(12, 10), ext="png", seed=5)
    train = data.load_dataset("imagefolder", root=tmp_path)
    val = data.load_dataset("imagefolder", root=tmp_path, train=False)
    assert (len(train), len(val)) == (6, 6)
    assert train.classes == ["class_000", "class_001", "class_002"]
    assert train.image_size == (12, 10) and train.in_channels == 3
    images, labels = synthetic_images(6, 3, (3, 12, 10), seed=5)
    # files are sorted by class folder then name; find each written image back
    for i in range(len(train)):
        image, label = train[i]
        path = Path(train.samples[i][0])
        written = int(path.stem.split("_")[1])
        assert label == int(labels[written])
        expected = normalized(images[written], train.mean, train.std)
        assert torch.allclose(image.double(), expected, atol=1e-5)


def test_image_folder_jpeg_with_fixed_size(tmp_path):
    write_image_folder(tmp_path, num_classes=2, per_class=3, size=(20, 30), ext="JPEG")
    dataset = data.load_dataset("imagefolder", root=tmp_path, image_size=16, resize=18)
    image, label = dataset[0]
    assert image.shape == (3, 16, 16) and dataset.image_size == 16 and label == 0
    imagenet = data.load_dataset("imagenet", root=tmp_path, train=False)
    assert imagenet[0][0].shape == (3, 224, 224) and imagenet.image_size == 224
    assert imagenet.read_full(0).shape == (3, 20, 30)


def test_image_folder_errors(tmp_path):
    write_image_folder(tmp_path, num_classes=2, per_class=1, splits=("train",))
    with pytest.raises(FileNotFoundError, match="val"):
        data.load_dataset("imagefolder", root=tmp_path, train=False)
    (tmp_path / "val" / "unknown_class").mkdir(parents=True)
    (tmp_path / "train" / "class_000" / "img_0000.png").rename(
        tmp_path / "val" / "unknown_class" / "x.png"
    )
    with pytest.raises(ValueError, match="unknown_class"):
        data.load_dataset("imagefolder", root=tmp_path, train=False)
    flat = tmp_path / "flat"  # ImageNet's raw validation set: images not sorted by class
    write_image_folder(flat, num_classes=2, per_class=1, splits=("train", "val"))
    for class_dir in list((flat / "val").iterdir()):
        for image in class_dir.iterdir():
            image.rename(flat / "val" / f"loose_{image.name}")
        class_dir.rmdir()
    with pytest.raises(
        ValueError, match=r"loose_img_000\d\.png.*: sort them into one folder per class"
    ):
        data.load_dataset("imagefolder", root=flat, train=False)
    broken = tmp_path / "broken"
    write_image_folder(broken, num_classes=1, per_class=1, splits=("train",))
    (broken / "train" / "class_000" / "img_0000.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot decode"):
        data.load_dataset("imagefolder", root=broken)[0]


def test_hidden_folders_and_files_are_neither_classes_nor_images(tmp_path):
    # Jupyter's .ipynb_checkpoints/ sorts first: as a class it would shift every label by 1
    write_image_folder(tmp_path, num_classes=2, per_class=2, size=(8, 8), ext="png", seed=1)
    image_bytes = (tmp_path / "train" / "class_001" / "img_0000.png").read_bytes()
    for split in ("train", "val"):
        (tmp_path / split / ".ipynb_checkpoints").mkdir()
        (tmp_path / split / ".ipynb_checkpoints" / "img-checkpoint.png").write_bytes(image_bytes)
    (tmp_path / "train" / "class_001" / "._img_0000.png").write_bytes(b"AppleDouble junk")
    for train in (True, False):
        dataset = data.load_dataset("imagefolder", root=tmp_path, train=train)
        assert dataset.classes == ["class_000", "class_001"] and dataset.num_classes == 2
        assert len(dataset) == 4 and sorted(dataset.labels.tolist()) == [0, 0, 1, 1]
        for path, label in dataset.samples:
            assert Path(path).parent.name == dataset.classes[label]
            assert not Path(path).name.startswith(".")


@pytest.mark.parametrize("change", ["val lacks a class", "val has an extra class"])
def test_train_and_val_must_have_the_same_class_folders(tmp_path, change):
    write_image_folder(tmp_path, num_classes=3, per_class=1, size=(8, 8), ext="png")
    if change == "val lacks a class":
        for image in (tmp_path / "val" / "class_001").iterdir():
            image.unlink()
        (tmp_path / "val" / "class_001").rmdir()
        expected = f"{tmp_path / 'val'} lacks class folder 'class_001' of {tmp_path / 'train'}"
    else:
        (tmp_path / "val" / "class_003").mkdir()
        moved = next((tmp_path / "val" / "class_000").iterdir())
        moved.rename(tmp_path / "val" / "class_003" / moved.name)
        expected = f"{tmp_path / 'val'} has class folder 'class_003' that {tmp_path / 'train'}"
    assert len(data.load_dataset("imagefolder", root=tmp_path, train=True)) == 3
    with pytest.raises(ValueError, match="must have the same class folders") as err:
        data.load_dataset("imagefolder", root=tmp_path, train=False)
    assert expected in str(err.value)


# --- registry --------------------------------------------------------------------------


def test_registry_names_and_unknown_name():
    names = data.list_datasets()
    for name in ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder", "imagenet"):
        assert name in names
    with pytest.raises(ValueError, match=r"unknown dataset 'svhn'.*cifar10.*mnist"):
        data.load_dataset("svhn")


def test_register_a_new_dataset(tmp_path):
    @data.register_dataset("tiny-test-set")
    def tiny(root=None, train=True, count=4):
        images, labels = synthetic_images(count, 2, (1, 4, 4))
        return data.InMemoryImageDataset(images, labels, ["a", "b"], (0.5,), (0.25,))

    dataset = data.load_dataset("tiny-test-set", count=6)
    assert len(dataset) == 6 and data.locate_dataset("tiny-test-set") is None
    with pytest.raises(ValueError, match="already registered"):
        data.register_dataset("tiny-test-set")(lambda root=None, train=True: None)


def test_absent_optional_module_is_tolerated(monkeypatch):
    from l2bn.data import registry

    monkeypatch.setattr(registry, "OPTIONAL_MODULES", ("l2bn.data.no_such_plugin",))
    monkeypatch.setattr(registry, "_optional_loaded", False)
    assert "mnist" in data.list_datasets()


def test_unknown_option_names_the_dataset(tmp_path):
    write_idx_dataset(tmp_path, train=4, test=4)
    with pytest.raises(TypeError, match="'mnist' got an option it does not accept"):
        data.load_dataset("mnist", root=tmp_path, image_size=32)


def test_in_memory_dataset_follows_its_device(tmp_path):
    write_idx_dataset(tmp_path, train=8, test=4)
    dataset = data.load_dataset("mnist", root=tmp_path).to("cpu")
    images, labels = dataset.get_batch(torch.tensor([3, 1]))
    assert (
        images.device == dataset.images.device
        and labels.tolist() == dataset.labels[[3, 1]].tolist()
    )
