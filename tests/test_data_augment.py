"""Augmentations (tensor ops, seeded), mixup, label smoothing and the soft cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import l2bn.data as data
from l2bn.data.targets import sample_beta
from l2bn.data.transforms import (
    pad_random_crop,
    random_flip,
    random_resized_crop_box,
    resize_center_crop,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(size: int = 32, count: int = 16, channels: int = 3) -> torch.Tensor:
    return torch.randn(count, channels, size, size, generator=gen(0))


@pytest.mark.parametrize("size", [32, 28])
def test_cifar_augmentation_keeps_shape_and_is_reproducible(size):
    images = batch(size)
    augment = data.get_augmentation("cifar")
    out1 = augment(images, gen(1))
    out2 = augment(images, gen(1))
    out3 = augment(images, gen(2))
    assert out1.shape == images.shape and out1.dtype == images.dtype
    assert torch.equal(out1, out2)
    assert not torch.equal(out1, out3)
    changed = [not torch.equal(a, b) for a, b in zip(out1, images, strict=True)]
    assert sum(changed) >= len(images) // 2  # crops and flips really move pixels
    assert torch.equal(augment(images, gen(1), train=False), images)  # no eval change


def test_pad_random_crop_is_a_window_of_the_zero_padded_image():
    images = batch(10, count=12)
    out = pad_random_crop(images, 4, gen(3))
    padded = F.pad(images, (4, 4, 4, 4))
    offsets = set()
    for image, source in zip(out, padded, strict=True):
        matches = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(image, source[:, dy : dy + 10, dx : dx + 10])
        ]
        assert matches, "each output must be a 10x10 window of the padded image"
        offsets.add(matches[0])
    assert len(offsets) > 3  # offsets vary across the batch


def test_flip_mirrors_exactly_the_chosen_images():
    images = batch(6, count=20)
    flipped = random_flip(images, gen(4))
    is_flipped = [torch.equal(f, i.flip(-1)) for f, i in zip(flipped, images, strict=True)]
    is_same = [torch.equal(f, i) for f, i in zip(flipped, images, strict=True)]
    assert all(a != b for a, b in zip(is_flipped, is_same, strict=True))
    assert 0 < sum(is_flipped) < 20
    assert torch.equal(random_flip(images, gen(0), p=1.0), images.flip(-1))


def test_imagenet_augmentation_shapes_and_eval_view():
    augment = data.get_augmentation("imagenet")
    image = torch.randn(1, 3, 300, 400, generator=gen(0))
    out = augment(image, gen(5))
    assert out.shape == (1, 3, 224, 224)
    assert torch.equal(out, augment(image, gen(5)))
    assert not torch.equal(out, augment(image, gen(6)))
    evaluated = augment(image, None, train=False)
    assert evaluated.shape == (1, 3, 224, 224)
    assert torch.allclose(evaluated, resize_center_crop(image, 256, 224))
    # a constant image stays constant under crops and resizing
    constant = torch.full((2, 3, 64, 80), 0.25)
    assert torch.allclose(augment(constant, gen(1)), torch.full((2, 3, 224, 224), 0.25))


def test_random_resized_crop_boxes_stay_inside_and_respect_bounds():
    generator = gen(8)
    areas = []
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(60, 90, generator)
        assert top >= 0 and left >= 0 and h > 0 and w > 0
        assert top + h <= 60 and left + w <= 90
        areas.append(h * w / (60 * 90))
    assert min(areas) >= 0.07 and max(areas) <= 1.0
    assert max(areas) - min(areas) > 0.5  # the scale really varies


def test_register_augmentation_and_unknown_name():
    @data.register_augmentation("test-negate")
    def negate(images, generator):
        return -images

    dataset_images = batch(4, count=3)
    assert torch.equal(data.get_augmentation("test-negate")(dataset_images, None), -dataset_images)
    assert "test-negate" in data.list_augmentations()
    with pytest.raises(ValueError, match="valid names"):
        data.get_augmentation("nope")


def test_mixup_targets_sum_to_one_and_match_the_images():
    images = batch(4, count=8)
    labels = torch.tensor([5, 1, 7, 3, 0, 6, 2, 4])  # one class per sample: targets reveal pairs
    mixed, targets = data.mixup(images, labels, num_classes=8, alpha=0.5, generator=gen(11))
    assert targets.shape == (8, 8) and mixed.shape == images.shape
    assert torch.allclose(targets.sum(1), torch.ones(8))
    own = targets[torch.arange(8), labels]  # lam, or 1 for a sample paired with itself
    mixed_rows = own[own < 1 - 1e-6]
    assert mixed_rows.numel() > 0 and torch.allclose(
        mixed_rows, mixed_rows[0].expand_as(mixed_rows)
    )
    lam = float(mixed_rows[0])
    assert 0.0 <= lam <= 1.0
    partners = 0
    for i in range(8):
        other = targets[i].clone()
        other[labels[i]] = 0
        if float(other.sum()) == 0:  # paired with itself
            assert torch.allclose(mixed[i], images[i], atol=1e-6)
            continue
        j = int((labels == int(other.argmax())).nonzero())
        assert torch.allclose(mixed[i], lam * images[i] + (1 - lam) * images[j], atol=1e-5)
        partners += 1
    assert partners > 0
    again = data.mixup(images, labels, 8, 0.5, gen(11))
    assert torch.equal(again[0], mixed) and torch.equal(again[1], targets)
    plain_images, one_hot = data.mixup(images, labels, 8, alpha=0.0, generator=gen(11))
    assert torch.equal(plain_images, images) and torch.equal(one_hot, F.one_hot(labels, 8).float())


def test_mixup_per_sample_draws_one_lambda_per_sample():
    """The acoustic recipes' generators mix with np.random.beta(alpha, alpha, batch_size):
    each sample its own lambda (``per_sample=True``), images and targets alike."""
    count = 16
    images = batch(4, count=count)
    labels = torch.arange(count)  # one class per sample: targets reveal pairs and lambdas
    mixed, targets = data.mixup(images, labels, count, 0.4, gen(21), per_sample=True)
    assert torch.allclose(targets.sum(1), torch.ones(count))
    lams = []
    for i in range(count):
        other = targets[i].clone()
        other[i] = 0
        if float(other.sum()) == 0:  # paired with itself
            assert torch.allclose(mixed[i], images[i], atol=1e-6)
            continue
        lam, j = float(targets[i, i]), int(other.argmax())
        assert torch.allclose(mixed[i], lam * images[i] + (1 - lam) * images[j], atol=1e-5)
        lams.append(lam)
    assert len(lams) > 2 and len({round(v, 6) for v in lams}) == len(lams)
    again = data.mixup(images, labels, count, 0.4, gen(21), per_sample=True)
    assert torch.equal(again[0], mixed) and torch.equal(again[1], targets)


def test_asc_presets_mix_with_one_lambda_per_clip():
    from l2bn.experiments.presets import load_preset
    from l2bn.experiments.train import _train_batch_inputs

    for name in ("asc-resnet17", "asc-fcnn", "asc-fsfcnn"):
        config = load_preset(name)
        _, targets = _train_batch_inputs(batch(2, count=12), torch.arange(12), config, 12, gen(22))
        own = targets.diagonal()
        mixed_rows = own[own < 1 - 1e-6]
        assert len(set(mixed_rows.tolist())) == mixed_rows.numel() > 2, name
    regnet = load_preset("cifar100-regnet").replace(label_smoothing=0.0)
    _, targets = _train_batch_inputs(batch(2, count=12), torch.arange(12), regnet, 12, gen(22))
    own = targets.diagonal()
    assert len(set(own[own < 1 - 1e-6].tolist())) == 1  # Zhang et al., pycls: one per batch


def test_beta_sampler_moments():
    generator = gen(12)
    draws = torch.tensor([sample_beta(0.5, 0.5, generator) for _ in range(3000)])
    assert draws.min() >= 0 and draws.max() <= 1
    assert abs(draws.mean().item() - 0.5) < 0.03
    assert abs(draws.var().item() - 0.125) < 0.015  # Beta(a, a) variance 1 / (4 (2a + 1))


def test_smoothing_and_soft_cross_entropy():
    labels = torch.tensor([2, 0, 1])
    smooth = data.smooth_targets(labels, 4, 0.1)
    assert torch.allclose(smooth.sum(1), torch.ones(3))
    assert torch.allclose(smooth[0], torch.tensor([0.025, 0.025, 0.925, 0.025]))
    logits = torch.randn(3, 4, generator=gen(13))
    expected = F.cross_entropy(logits, labels, label_smoothing=0.1)
    assert torch.allclose(data.soft_cross_entropy(logits, smooth), expected, atol=1e-6)
    hard = data.soft_cross_entropy(logits, F.one_hot(labels, 4).float())
    assert torch.allclose(hard, F.cross_entropy(logits, labels), atol=1e-6)
    # smoothing mixed targets = mixing smoothed targets; still sums to one
    _, mixed = data.mixup(torch.randn(3, 1, 2, 2), labels, 4, 0.5, gen(14))
    assert torch.allclose(data.smooth_targets(mixed, 4, 0.1).sum(1), torch.ones(3))
    with pytest.raises(ValueError, match="smoothing"):
        data.smooth_targets(labels, 4, 1.5)
    with pytest.raises(ValueError, match="labels must lie"):
        data.smooth_targets(torch.tensor([4]), 4, 0.1)
