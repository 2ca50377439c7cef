"""The DCASE feature cache keys on every parameter of the features (duration, sample rate,
the recipe) and on the WAV itself (path, size, time): a dataset built with one configuration
or from one root never returns features cached for another, in either order, and entries of
the previous key scheme are not reused."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import soundfile
import torch

from l2bn.data import dcase, dcase_features
from test_dcase_reader import SR, synthetic_clip, write_layout


def _reference(root: Path, **kwargs) -> torch.Tensor:
    return dcase.Dcase2020Task1a(root, train=True, cache=False, **kwargs)[0][0]


@pytest.mark.parametrize("order", [(1.0, 2.5), (2.5, 1.0)])
def test_durations_read_in_either_order_match_the_uncached_features(
    tmp_path: Path, order: tuple[float, float], monkeypatch
) -> None:
    root = write_layout(tmp_path / "dcase", {True: 1}, seconds=3.0)
    expected = {d: _reference(root, duration=d) for d in order}
    assert expected[1.0].shape != expected[2.5].shape
    for duration in order:  # the first fills the cache, the second must not reuse it
        got = dcase.Dcase2020Task1a(root, train=True, duration=duration)[0][0]
        assert torch.equal(got, expected[duration]), duration

    # each configuration kept its own entry: both are now read without touching the audio
    def no_audio(*args, **kwargs):
        raise AssertionError("the WAV was read although its features are cached")

    monkeypatch.setattr(dcase, "read_wav", no_audio)
    for duration in order:
        got = dcase.Dcase2020Task1a(root, train=True, duration=duration)[0][0]
        assert torch.equal(got, expected[duration]), duration


def _same_size_layouts(tmp_path: Path) -> tuple[Path, Path]:
    """Two roots with the same file names, sizes and mtimes: 1 s at 44.1 kHz, 2 s at 22.05 kHz."""
    roots = []
    for name, sr, seconds in (("a", SR, 1.0), ("b", SR // 2, 2.0)):
        root = write_layout(tmp_path / name, {True: 1}, seconds=0.1)
        for wav in (root / "audio").glob("*.wav"):
            soundfile.write(wav, synthetic_clip(3, seconds, 5, sr=sr), sr, subtype="PCM_16")
            os.utime(wav, ns=(10**18, 10**18))
        roots.append(root)
    wav_a, wav_b = (sorted((r / "audio").glob("*.wav"))[0] for r in roots)
    assert wav_a.stat().st_size == wav_b.stat().st_size
    return roots[0], roots[1]


@pytest.mark.parametrize("first", ["a", "b"])
def test_sample_rates_sharing_a_cache_dir_match_the_uncached_features(
    tmp_path: Path, first: str
) -> None:
    root_a, root_b = _same_size_layouts(tmp_path)
    rates = {"a": (root_a, SR), "b": (root_b, SR // 2)}
    expected = {
        key: _reference(root, sample_rate=sr, duration=2.0) for key, (root, sr) in rates.items()
    }
    cache_dir = tmp_path / "shared-cache"
    for key in (first, "b" if first == "a" else "a"):
        root, sr = rates[key]
        data = dcase.Dcase2020Task1a(
            root, train=True, sample_rate=sr, duration=2.0, cache_dir=cache_dir
        )
        assert torch.equal(data[0][0], expected[key]), key


@pytest.mark.parametrize("first", [0, 1])
def test_two_roots_sharing_a_cache_dir_each_get_their_own_features(
    tmp_path: Path, first: int
) -> None:
    # same settings, same file names, sizes and times, different audio: the second root
    # must not be given the features cached for the first
    roots = []
    for name, seed in (("a", 5), ("b", 6)):
        root = write_layout(tmp_path / name, {True: 1}, seconds=0.1)
        for wav in (root / "audio").glob("*.wav"):
            soundfile.write(wav, synthetic_clip(3, 1.0, seed), SR, subtype="PCM_16")
            os.utime(wav, ns=(10**18, 10**18))
        roots.append(root)
    expected = [_reference(root) for root in roots]
    assert not torch.equal(expected[0], expected[1])
    cache_dir = tmp_path / "shared-cache"
    for index in (first, 1 - first, first):
        got = dcase.Dcase2020Task1a(roots[index], train=True, cache_dir=cache_dir)[0][0]
        assert torch.equal(got, expected[index]), index


def test_cached_features_do_not_hide_a_sample_rate_mismatch(tmp_path: Path) -> None:
    root = write_layout(tmp_path / "dcase", {True: 1}, seconds=1.0)
    dcase.Dcase2020Task1a(root, train=True)[0]  # caches the 44.1 kHz features
    with pytest.raises(ValueError, match="sample rate 44100 Hz, expected 22050 Hz"):
        dcase.Dcase2020Task1a(root, train=True, sample_rate=22050)[0]


def test_an_entry_of_another_configuration_is_not_returned(tmp_path: Path) -> None:
    root = write_layout(tmp_path / "dcase", {True: 1}, seconds=3.0)
    short = dcase.Dcase2020Task1a(root, train=True, duration=1.0)
    short[0]
    long = dcase.Dcase2020Task1a(root, train=True, duration=2.5)
    target = long.cache.entry_path(long.files[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    source = short.cache.entry_path(short.files[0])
    if source != target:  # put the 1 s entry where the 2.5 s dataset looks
        shutil.copyfile(source, target)
    assert torch.equal(long[0][0], _reference(root, duration=2.5))


def test_entries_of_the_previous_key_scheme_are_not_reused(tmp_path: Path) -> None:
    root = write_layout(tmp_path / "dcase", {True: 1}, seconds=1.0)
    data = dcase.Dcase2020Task1a(root, train=True)
    wav = data.files[0]
    stat = wav.stat()
    old = {
        "recipe": dcase_features.RECIPE,
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "log_mel": torch.zeros(128, 44),
    }
    relative = wav.relative_to(root).with_suffix(".pt")
    old_path = root / "l2bn_cache" / dcase_features.RECIPE / relative  # the old default
    for path in {old_path, data.cache.entry_path(wav)}:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(old, path)
    got = dcase.Dcase2020Task1a(root, train=True)[0][0]
    assert torch.equal(got, _reference(root))


def test_the_recipe_identifies_every_parameter() -> None:
    base = dcase_features.FeatureRecipe()
    assert base == dcase_features.FeatureRecipe(44100, 10)  # normalized: int, float
    assert base.tag == dcase_features.FeatureRecipe(44100, 10).tag
    others = [dcase_features.FeatureRecipe(duration=3.0), dcase_features.FeatureRecipe(22050)]
    tags = {base.tag, *(r.tag for r in others)}
    assert len(tags) == 3 and all(dcase_features.RECIPE in t for t in tags)
    params = base.params()
    for name in ("sample_rate", "duration", "n_fft", "hop_length", "n_mels", "f_max", "version"):
        assert name in params
    assert params["f_max"] == 22050.0
    with pytest.raises(ValueError, match="duration"):
        dcase_features.FeatureRecipe(duration=0.0)
