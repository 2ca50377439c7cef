"""DCASE 2020 task 1a reader on small folders in the official layout written by the tests."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from l2bn.data import command, dcase, dcase_features
from l2bn.data.registry import get_augmentation, list_datasets, load_dataset

SR = 44100
CLASSES = dcase.CLASSES


def synthetic_clip(label: int, seconds: float, seed: int, sr: int = SR) -> np.ndarray:
    """A class-dependent tone pair plus noise, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sr)) / sr
    base = 110.0 * 2 ** (label / 2.0)
    tone = 0.3 * np.sin(2 * np.pi * base * t) + 0.2 * np.sin(2 * np.pi * 3.1 * base * t)
    return (tone + 0.05 * rng.standard_normal(t.size)).clip(-1, 1)


def write_layout(
    root: Path,
    clips_per_class: dict[bool, int],
    seconds: float = 2.0,
    classes: tuple[str, ...] = CLASSES,
) -> Path:
    """Official layout: audio/*.wav (16-bit PCM) + evaluation_setup/fold1_{train,evaluate}.csv."""
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "evaluation_setup").mkdir(exist_ok=True)
    for train, count in clips_per_class.items():
        rows = ["filename\tscene_label"]
        for label, scene in enumerate(classes):
            for k in range(count):
                segment = 1000 + k + (0 if train else 500)
                name = f"audio/{scene}-lisbon-{segment}-{40000 + k}-a.wav"
                seed = 7 * label + k + (0 if train else 1000)
                soundfile.write(
                    root / name, synthetic_clip(label, seconds, seed), SR, subtype="PCM_16"
                )
                rows.append(f"{name}\t{scene}")
        csv = "fold1_train.csv" if train else "fold1_evaluate.csv"
        (root / "evaluation_setup" / csv).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return write_layout(tmp_path / "dcase", {True: 1, False: 1}, seconds=1.0)


def test_registered_and_items_have_the_recipe_shape(layout: Path, tmp_path: Path) -> None:
    assert "dcase2020-1a" in list_datasets()
    train = load_dataset("dcase2020-1a", root=layout, train=True)
    test = load_dataset("dcase2020-1a", root=layout, train=False)
    assert len(train) == len(test) == 10
    assert (train.num_classes, train.in_channels, train.image_size) == (10, 3, (128, 423))
    assert train.classes == sorted(train.classes) == list(CLASSES)
    assert len(train.mean) == len(train.std) == 3
    frames = dcase_features.feature_frames(SR)  # 1 s clips: 1 + 44100 // 1024 - 8 = 36
    for index in (0, 9):
        features, label = train[index]
        assert features.dtype == torch.float32 and features.shape == (3, 128, frames)
        assert label == index
        waveform = torch.from_numpy(soundfile.read(train.files[index], dtype="float64")[0])
        expected = dcase_features.clip_features(waveform, SR).float()
        assert torch.allclose(features, expected, atol=1e-6)
    assert test.files[0].name.startswith("airport-lisbon-1500")


def test_feature_cache_is_reused_and_invalidated(layout: Path, monkeypatch) -> None:
    data = dcase.Dcase2020Task1a(layout, train=True)
    first, _ = data[3]
    cached = data.cache.entry_path(data.files[3])
    assert cached.is_file() and dcase_features.RECIPE in str(cached)

    def no_audio(*args, **kwargs):
        raise AssertionError("the WAV was read although its features are cached")

    monkeypatch.setattr(dcase, "read_wav", no_audio)
    again, _ = dcase.Dcase2020Task1a(layout, train=True)[3]
    assert torch.equal(first, again)
    monkeypatch.undo()

    # rewriting the WAV (new content, new mtime) invalidates the entry
    soundfile.write(data.files[3], synthetic_clip(0, 1.0, seed=99), SR, subtype="PCM_16")
    stat = data.files[3].stat()
    os.utime(data.files[3], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed, _ = dcase.Dcase2020Task1a(layout, train=True)[3]
    assert not torch.equal(first, changed)

    # a corrupted cache file is recomputed, not fatal
    cached.write_bytes(b"not a torch file")
    recomputed, _ = dcase.Dcase2020Task1a(layout, train=True)[3]
    assert torch.equal(recomputed, changed)


def test_cache_can_be_disabled_or_moved(layout: Path, tmp_path: Path) -> None:
    off = dcase.Dcase2020Task1a(layout, train=False, cache=False)
    off[0]
    assert not off.cache.entry_path(off.files[0]).exists()
    moved = dcase.Dcase2020Task1a(layout, train=False, cache_dir=tmp_path / "elsewhere")
    moved[0]
    tag = moved.recipe.tag
    assert (tmp_path / "elsewhere" / tag / "audio" / (off.files[0].stem + ".pt")).is_file()


def test_missing_root_says_where_it_looked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("L2BN_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="evaluation_setup") as info:
        dcase.Dcase2020Task1a(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)


def test_root_from_environment(layout: Path, monkeypatch) -> None:
    monkeypatch.setenv("L2BN_DATA", str(layout.parent))
    (layout.parent / "dcase2020-1a").symlink_to(layout)
    assert len(dcase.Dcase2020Task1a(None, train=False)) == 10


def _write_csv(root: Path, text: str, split: str = "fold1_train.csv") -> Path:
    path = root / "evaluation_setup" / split
    path.write_text(text, encoding="utf-8")
    return path


def test_missing_list_names_the_file(layout: Path) -> None:
    (layout / "evaluation_setup" / "fold1_evaluate.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"fold1_evaluate\.csv"):
        dcase.Dcase2020Task1a(layout, train=False)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("", "empty file"),
        ("file\tlabel\naudio/x.wav\tbus\n", r"fold1_train.csv:1: expected a tab-separated header"),
        ("filename\tscene_label\naudio/x.wav\n", r"fold1_train.csv:2: expected 2"),
        ("filename\tscene_label\naudio/x.wav\tbus\naudio/y.wav\tbeach\n", r"csv:3.*'beach'"),
        ("filename\tscene_label\naudio/x.mp3\tbus\n", r"csv:2.*\.wav"),
        ("filename\tscene_label\n\n", "no clips"),
    ],
)
def test_malformed_rows_name_file_and_line(layout: Path, text: str, pattern: str) -> None:
    path = _write_csv(layout, text)
    with pytest.raises(ValueError, match=pattern) as info:
        dcase.Dcase2020Task1a(layout, train=True)
    assert str(path) in str(info.value)


def test_extra_columns_trailing_tabs_and_crlf_are_accepted(layout: Path) -> None:
    rows = ["scene_label\tfilename\tidentifier"]
    rows += [f"{scene}\taudio/{scene}-lisbon-1000-40000-a.wav\tlisbon-1000\t" for scene in CLASSES]
    _write_csv(layout, "\r\n".join(rows) + "\r\n")
    data = dcase.Dcase2020Task1a(layout, train=True)
    assert data.labels.tolist() == list(range(10))


def test_missing_audio_names_file_and_line(layout: Path) -> None:
    victim = layout / "audio" / "park-lisbon-1000-40000-a.wav"
    victim.unlink()
    with pytest.raises(FileNotFoundError) as info:
        dcase.Dcase2020Task1a(layout, train=True)
    message = str(info.value)
    assert str(victim) in message and "fold1_train.csv:6" in message


def test_malformed_audio_names_the_file(layout: Path) -> None:
    victim = layout / "audio" / "bus-lisbon-1000-40000-a.wav"
    victim.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    data = dcase.Dcase2020Task1a(layout, train=True, cache=False)
    with pytest.raises(ValueError, match="cannot read the audio file") as info:
        data[1]
    assert str(victim) in str(info.value) and "fold1_train.csv:3" in str(info.value)


def test_wrong_sample_rate_and_empty_audio(layout: Path) -> None:
    metro = layout / "audio" / "metro-lisbon-1000-40000-a.wav"
    soundfile.write(metro, synthetic_clip(2, 1.0, 0, sr=22050), 22050, subtype="PCM_16")
    tram = layout / "audio" / "tram-lisbon-1000-40000-a.wav"
    soundfile.write(tram, np.zeros(0), SR, subtype="PCM_16")
    data = dcase.Dcase2020Task1a(layout, train=True, cache=False)
    with pytest.raises(ValueError, match="22050 Hz, expected 44100") as info:
        data[2]
    assert str(metro) in str(info.value)
    with pytest.raises(ValueError, match="no samples") as info:
        data[9]
    assert str(tram) in str(info.value)


def test_too_short_audio_names_the_file(layout: Path) -> None:
    park = layout / "audio" / "park-lisbon-1000-40000-a.wav"
    soundfile.write(park, synthetic_clip(4, 0.01, 0), SR, subtype="PCM_16")
    with pytest.raises(ValueError, match="samples") as info:
        dcase.Dcase2020Task1a(layout, train=True, cache=False)[4]
    assert str(park) in str(info.value)


def test_truncated_audio_is_an_error_not_a_shorter_clip(layout: Path) -> None:
    # The header declares 1 s of audio, the file holds half of it (an interrupted copy or
    # download): libsndfile reads the half there is, which must not pass for a short clip.
    park = layout / "audio" / "park-lisbon-1000-40000-a.wav"
    whole = park.read_bytes()
    park.write_bytes(whole[: len(whole) // 2])
    data = dcase.Dcase2020Task1a(layout, train=True, cache=False)
    with pytest.raises(ValueError, match="truncated") as info:
        data[4]
    assert str(park) in str(info.value)
    data[3]  # the intact files still read
    # A RIFF size field left unset by a streaming writer (0xFFFFFFFF) is not a truncation.
    streamed = bytearray(whole)
    data_at = streamed.index(b"data") + 4
    streamed[data_at : data_at + 4] = b"\xff\xff\xff\xff"
    park.write_bytes(bytes(streamed))
    assert data[4][0].shape[-1] == dcase_features.feature_frames(SR)


def _data_check(root: Path) -> int:
    """``l2bn data --check dcase2020-1a --root ROOT`` through the subcommand's parser."""
    parser = argparse.ArgumentParser(prog="l2bn data")
    command.configure(parser)
    return command.run(parser.parse_args(["--check", "dcase2020-1a", "--root", str(root)]))


def test_data_check_opens_every_wav_without_decoding(layout: Path, monkeypatch, capsys) -> None:
    def no_decoding(*args, **kwargs):
        raise AssertionError("the check decoded audio; it reads headers only")

    monkeypatch.setattr(soundfile, "read", no_decoding)
    assert _data_check(layout) == 0
    park = layout / "audio" / "park-lisbon-1000-40000-a.wav"
    park.write_bytes(park.read_bytes()[:3000])  # an interrupted copy
    bus = layout / "audio" / "bus-lisbon-1000-40000-a.wav"
    bus.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    capsys.readouterr()
    assert _data_check(layout) == 1
    err = capsys.readouterr().err
    assert "dcase2020-1a: unavailable" in err and "2 of the 10 audio files" in err
    assert f"{park} (listed at {layout / 'evaluation_setup' / 'fold1_train.csv'}:6)" in err
    assert f"{bus} (listed at {layout / 'evaluation_setup' / 'fold1_train.csv'}:3)" in err
    assert "truncated audio file" in err and "cannot read the audio file" in err


def test_augmentations_are_registered(layout: Path) -> None:
    batch = torch.rand(2, 3, 128, 423)
    crop = get_augmentation("asc")
    assert crop(batch, torch.Generator().manual_seed(0)).shape == (2, 3, 128, 400)
    masked = get_augmentation("asc_specaugment")(batch, torch.Generator().manual_seed(0))
    assert masked.shape == (2, 3, 128, 400)


def test_in_memory_keeps_features_after_the_first_read(layout: Path, monkeypatch) -> None:
    data = dcase.Dcase2020Task1a(layout, train=False, cache=False, in_memory=True)
    first, _ = data[5]

    def no_reads(*args, **kwargs):
        raise AssertionError("read again although held in memory")

    monkeypatch.setattr(dcase, "read_wav", no_reads)
    again, label = data[5]
    assert torch.equal(first, again) and label == 5
