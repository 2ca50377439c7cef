"""build_loader: determinism per (seed, epoch, rank), subsets, sharding, both paths."""

from __future__ import annotations

import pytest
import torch

import l2bn.data as data
from l2bn.data.sampling import fixed_subset, shard
from l2bn.data.synthetic import synthetic_images, write_image_folder


def tiny_dataset(count: int = 50, num_classes: int = 5, size: int = 8) -> data.InMemoryImageDataset:
    images, labels = synthetic_images(count, num_classes, (1, size, size), seed=7)
    # make every image unique so batches can be traced back to indices
    images[:, 0, 0, 0] = torch.arange(count, dtype=torch.uint8)
    classes = [str(k) for k in range(num_classes)]
    return data.InMemoryImageDataset(images, labels, classes, (0.5,), (0.5,))


def collect(loader) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(loader)
    assert len(batches) == len(loader)
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def traced_indices(images: torch.Tensor, dataset) -> torch.Tensor:
    """Dataset indices of un-augmented batch images (pixel (0, 0) encodes the index)."""
    value = images[:, 0, 0, 0] * dataset.std[0] + dataset.mean[0]
    return torch.round(value * 255).long()


@pytest.mark.parametrize("augment", ["none", "cifar"])
def test_same_seed_and_epoch_give_identical_batches(augment):
    dataset = tiny_dataset()
    kwargs = dict(batch_size=8, train=True, seed=121, epoch=3, augment=augment)
    first = list(data.build_loader(dataset, **kwargs))
    second = list(data.build_loader(dataset, **kwargs))  # a fresh loader, as after a resume
    assert len(first) == len(second) == 7
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert x1.dtype == torch.float32 and y1.dtype == torch.int64


def test_epoch_and_seed_change_the_order():
    dataset = tiny_dataset()
    orders = {}
    for seed, epoch in [(1, 0), (1, 1), (2, 0)]:
        images, _ = collect(
            data.build_loader(dataset, batch_size=8, train=True, seed=seed, epoch=epoch)
        )
        orders[seed, epoch] = traced_indices(images, dataset)
    for order in orders.values():
        assert sorted(order.tolist()) == list(range(50))  # a permutation of the dataset
    assert not torch.equal(orders[1, 0], orders[1, 1])
    assert not torch.equal(orders[1, 0], orders[2, 0])


def test_set_epoch_matches_a_new_loader():
    dataset = tiny_dataset()
    loader = data.build_loader(dataset, batch_size=16, train=True, seed=5, augment="cifar")
    loader.set_epoch(4)
    moved = collect(loader)
    fresh = collect(
        data.build_loader(dataset, batch_size=16, train=True, seed=5, epoch=4, augment="cifar")
    )
    assert torch.equal(moved[0], fresh[0]) and torch.equal(moved[1], fresh[1])


def test_eval_keeps_dataset_order_and_labels_match():
    dataset = tiny_dataset()
    images, labels = collect(
        data.build_loader(dataset, batch_size=16, train=False, seed=0, augment="cifar")
    )
    assert torch.equal(traced_indices(images, dataset), torch.arange(50))
    assert torch.equal(labels, dataset.labels)
    assert torch.allclose(images[3], dataset[3][0])


def test_length_and_drop_last():
    dataset = tiny_dataset()
    assert len(data.build_loader(dataset, batch_size=8, train=True, seed=0)) == 7
    loader = data.build_loader(dataset, batch_size=8, train=True, seed=0, drop_last=True)
    assert len(loader) == 6
    assert all(x.shape[0] == 8 for x, _ in loader)


def test_subset_is_fixed_stratified_and_seed_independent():
    dataset = tiny_dataset(count=100, num_classes=5)
    seen = []
    for seed in (0, 1):
        _, labels = collect(
            data.build_loader(dataset, batch_size=7, train=True, seed=seed, subset=20)
        )
        images, _ = collect(
            data.build_loader(dataset, batch_size=7, train=True, seed=seed, subset=20)
        )
        seen.append(sorted(traced_indices(images, dataset).tolist()))
        assert torch.bincount(labels, minlength=5).tolist() == [4] * 5
    assert seen[0] == seen[1] and len(set(seen[0])) == 20
    plain = fixed_subset(100, 20)
    assert torch.equal(plain, fixed_subset(100, 20)) and plain.unique().numel() == 20
    with pytest.raises(ValueError, match="larger than the dataset"):
        data.build_loader(dataset, batch_size=4, train=True, seed=0, subset=101)


@pytest.mark.parametrize("count", [48, 50])
def test_training_shards_cover_everything_with_equal_sizes(count):
    dataset = tiny_dataset(count=count)
    shards = []
    for rank in range(4):
        loader = data.build_loader(
            dataset,
            batch_size=5,
            train=True,
            seed=3,
            epoch=1,
            num_replicas=4,
            rank=rank,
            augment="cifar",
        )
        shards.append(loader.indices.tolist())
        images, _ = collect(loader)
        assert images.shape[0] == loader.num_samples
    assert len({len(s) for s in shards}) == 1  # equal sizes: DDP ranks stay in step
    union = [i for s in shards for i in s]
    assert set(union) == set(range(count))
    if count % 4 == 0:
        assert len(union) == count  # disjoint
    else:
        assert len(union) == count + (4 - count % 4)  # wrapped padding only


@pytest.mark.parametrize("subset", [None, 29])
def test_padding_marks_the_repeats_of_training_shards(subset):
    # 50 samples (or a subset of 29) over 4 ranks: 2 (3) repeats pad the ranks to 13 (8)
    dataset = tiny_dataset(count=50)
    counted = []
    for rank in range(4):
        loader = data.build_loader(
            dataset, batch_size=5, train=True, seed=3, num_replicas=4, rank=rank, subset=subset
        )
        batches = [i for i, _ in enumerate(collect(loader)[0].split(5))]
        marks = torch.cat([loader.padding(b) for b in batches])
        assert marks.shape == (loader.num_samples,)
        counted += loader.indices[~marks].tolist()
    assert sorted(counted) == sorted(loader.base_indices.tolist())  # each sample once
    assert len(counted) == (subset or 50)
    single = data.build_loader(dataset, batch_size=5, train=True, seed=3)
    assert not any(bool(single.padding(b).any()) for b in range(len(single)))


def test_evaluation_shards_are_disjoint_and_covering():
    dataset = tiny_dataset(count=50)
    parts = [
        data.build_loader(dataset, batch_size=5, train=False, seed=0, num_replicas=3, rank=r)
        for r in range(3)
    ]
    union = sorted(i for p in parts for i in p.indices.tolist())
    assert union == list(range(50))
    with pytest.raises(ValueError, match="rank"):
        data.build_loader(dataset, batch_size=5, train=False, seed=0, num_replicas=3, rank=3)
    assert shard(torch.arange(5), 1, 0, pad=True).tolist() == list(range(5))


def test_bad_arguments_are_clear_errors():
    dataset = tiny_dataset()
    with pytest.raises(ValueError, match="batch_size"):
        data.build_loader(dataset, batch_size=0, train=True, seed=0)
    with pytest.raises(ValueError, match=r"unknown augmentation 'jitter'.*cifar.*none"):
        data.build_loader(dataset, batch_size=4, train=True, seed=0, augment="jitter")
    with pytest.raises(TypeError, match="seed"):
        data.build_loader(dataset, batch_size=4, train=True, seed=1.5)


def test_lazy_image_folder_path_is_deterministic_across_workers(tmp_path):
    write_image_folder(tmp_path, num_classes=3, per_class=4, size=(14, 18), ext="png")
    dataset = data.load_dataset("imagefolder", root=tmp_path, image_size=12)
    kwargs = dict(batch_size=5, train=True, seed=9, epoch=2, augment="cifar")
    single = list(data.build_loader(dataset, **kwargs))
    again = list(data.build_loader(dataset, **kwargs))
    workers = list(data.build_loader(dataset, num_workers=2, **kwargs))
    assert [x.shape for x, _ in single] == [(5, 3, 12, 12), (5, 3, 12, 12), (2, 3, 12, 12)]
    for (x1, y1), (x2, y2), (x3, y3) in zip(single, again, workers, strict=True):
        assert torch.equal(x1, x2) and torch.equal(x1, x3)
        assert torch.equal(y1, y2) and torch.equal(y1, y3) and y1.dtype == torch.int64
    other_epoch = list(data.build_loader(dataset, **{**kwargs, "epoch": 3}))
    assert not torch.equal(
        torch.cat([y for _, y in single]), torch.cat([y for _, y in other_epoch])
    )


def test_lazy_images_of_different_sizes_need_a_fixed_size(tmp_path):
    write_image_folder(tmp_path / "a", num_classes=1, per_class=2, size=8, splits=("train",))
    write_image_folder(tmp_path / "b", num_classes=1, per_class=1, size=9, splits=("train",))
    (tmp_path / "b" / "train" / "class_000" / "img_0000.png").rename(
        tmp_path / "a" / "train" / "class_000" / "other.png"
    )
    dataset = data.load_dataset("imagefolder", root=tmp_path / "a")
    with pytest.raises(ValueError, match="image_size"):
        list(data.build_loader(dataset, batch_size=3, train=False, seed=0))
    resized = data.load_dataset("imagefolder", root=tmp_path / "a", image_size=8)
    images, _ = collect(data.build_loader(resized, batch_size=3, train=False, seed=0))
    assert images.shape == (3, 3, 8, 8)


def test_imagenet_augmentation_reads_full_images(tmp_path):
    write_image_folder(tmp_path, num_classes=2, per_class=2, size=(40, 60), ext="png")
    dataset = data.load_dataset("imagenet", root=tmp_path)
    train_batches = list(
        data.build_loader(dataset, batch_size=4, train=True, seed=1, augment="imagenet")
    )
    eval_images, _ = collect(
        data.build_loader(dataset, batch_size=4, train=False, seed=1, augment="imagenet")
    )
    assert train_batches[0][0].shape == (4, 3, 224, 224)
    # evaluation view of the "imagenet" augmentation = the dataset's own 256/224 view
    assert torch.allclose(eval_images[0], dataset[0][0], atol=1e-5)


def test_shard_slots_pad_by_wrapping_like_distributed_sampler():
    from l2bn.data.sampling import shard_slots

    assert shard_slots(10, 4, 3, pad=True).tolist() == [3, 7, 11]  # slot 11 = sample 1
    assert shard_slots(10, 4, 3, pad=False).tolist() == [3, 7]
    order = torch.tensor([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    assert shard(order, 4, 3, pad=True).tolist() == [6, 2, 8]
