"""Batch augmentations of the acoustic recipe: random 400-frame crops and SpecAugment masks."""

from __future__ import annotations

import pytest
import torch

from l2bn.data import dcase_augment as aug


def ramp_batch(batch: int = 64, frames: int = 423) -> torch.Tensor:
    """Each value encodes its (clip, channel, band, frame) position: crops can be located."""
    frame = torch.arange(frames, dtype=torch.float64)
    band = torch.arange(128, dtype=torch.float64)[:, None] * 1000
    channel = torch.arange(3, dtype=torch.float64)[:, None, None] * 1e6
    clip = torch.arange(batch, dtype=torch.float64)[:, None, None, None] * 1e7
    return clip + channel + band + frame


def test_crop_takes_one_window_per_clip_and_varies() -> None:
    images = ramp_batch()
    out = aug.random_time_crop(images, torch.Generator().manual_seed(3))
    assert out.shape == (64, 3, 128, 400)
    starts = out[:, 0, 0, 0] - images[:, 0, 0, 0]
    for clip in range(64):
        s = int(starts[clip])
        assert torch.equal(out[clip], images[clip, :, :, s : s + 400])
    assert int(starts.min()) >= 0 and int(starts.max()) <= 22
    assert len(set(starts.tolist())) > 5


def test_crop_is_reproducible_and_seed_dependent() -> None:
    images = ramp_batch(8)
    a = aug.random_time_crop(images, torch.Generator().manual_seed(1))
    b = aug.random_time_crop(images, torch.Generator().manual_seed(1))
    c = aug.random_time_crop(images, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_crop_offsets_are_the_recipes_randint_0_to_t_minus_400() -> None:
    """McDonnell & Gao's and Hu et al.'s generators: ``np.random.randint(0, T - 400)``, the
    upper bound excluded (of 402 frames, offsets 0 and 1; of 423, 0 to 22)."""
    images = ramp_batch(1, frames=402)
    seen = {
        int(aug.random_time_crop(images, torch.Generator().manual_seed(s))[0, 0, 0, 0])
        for s in range(60)
    }
    assert seen == {0, 1}
    one_more = ramp_batch(1, frames=401)
    assert {
        int(aug.random_time_crop(one_more, torch.Generator().manual_seed(s))[0, 0, 0, 0])
        for s in range(20)
    } == {0}
    frames = torch.arange(423, dtype=torch.float32).expand(2000, 1, 1, 423)
    starts = aug.random_time_crop(frames, torch.Generator().manual_seed(5))[:, 0, 0, 0]
    assert set(starts.long().tolist()) == set(range(23))


def test_short_clips_are_not_cropped() -> None:
    images = torch.rand(2, 3, 128, 122)
    assert aug.random_time_crop(images, torch.Generator().manual_seed(0)) is images


def test_spec_augment_masks_one_band_and_one_span_per_channel() -> None:
    images = torch.rand(8, 3, 128, 423) + 1.0  # strictly positive: zeros are masks
    out = aug.spec_augment(images, torch.Generator().manual_seed(5))
    zero = out == 0
    kept = ~zero
    assert torch.equal(out[kept], images[kept])
    band_widths, span_widths = [], []
    for clip in range(8):
        for channel in range(3):
            mask = zero[clip, channel]
            full_bands = mask.all(dim=1)  # bands zeroed over all frames
            full_frames = mask.all(dim=0)
            band_widths.append(int(full_bands.sum()))
            span_widths.append(int(full_frames.sum()))
            # every zero lies in the masked band or the masked span
            assert torch.equal(mask, full_bands[:, None] | full_frames[None, :])
            for flags in (full_bands, full_frames):
                where = flags.nonzero().flatten()
                if where.numel():
                    assert int(where[-1] - where[0]) + 1 == where.numel()  # contiguous
    assert max(band_widths) < aug.MAX_FREQ_MASK and max(span_widths) < aug.MAX_TIME_MASK
    assert len(set(band_widths)) > 3 and len(set(span_widths)) > 3


def test_specaugment_then_crop_shape() -> None:
    out = aug.spec_augment_time_crop(torch.rand(2, 3, 128, 423), torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 128, 400)


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="bands, frames"):
        aug.random_time_crop(torch.rand(3, 128, 423), torch.Generator())
