"""Log-mel features of the acoustic recipe (paper section 4.2) against a numpy/scipy reference.

The reference below is written independently of ``l2bn.data.dcase_features``: explicit
framing with numpy's reflect padding, scipy's periodic Hann window, ``numpy.fft.rfft``, a
mel filterbank built band by band from the HTK formula, and deltas from the regression
formula evaluated frame by frame.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from l2bn.data import dcase_features as feats

SR = 44100


def sweep(seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    """A logarithmic sine sweep 50 Hz -> 16 kHz plus faint noise (no band is silent)."""
    t = np.arange(round(seconds * sr)) / sr
    signal = 0.5 * scipy.signal.chirp(t, f0=50.0, t1=t[-1], f1=16000.0, method="logarithmic")
    return signal + 1e-3 * np.random.default_rng(seed).standard_normal(t.size)


def htk_mel(hz: float) -> float:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def htk_hz(mel: float) -> float:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def reference_filterbank(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    top = htk_mel(sr / 2.0)
    edges = [htk_hz(top * i / (n_mels + 1)) for i in range(n_mels + 2)]
    bins = [k * sr / n_fft for k in range(n_fft // 2 + 1)]
    bank = np.zeros((n_mels, len(bins)))
    for band in range(n_mels):
        lo, mid, hi = edges[band], edges[band + 1], edges[band + 2]
        for k, f in enumerate(bins):
            if lo < f <= mid:
                bank[band, k] = (f - lo) / (mid - lo)
            elif mid < f < hi:
                bank[band, k] = (hi - f) / (hi - mid)
    return bank


def reference_log_mel(signal: np.ndarray, sr: int = SR) -> np.ndarray:
    n_fft, hop = 2048, 1024
    signal = signal[: 10 * sr]
    padded = np.pad(signal, n_fft // 2, mode="reflect")
    window = scipy.signal.get_window("hann", n_fft, fftbins=True)
    count = 1 + signal.size // hop
    power = np.empty((n_fft // 2 + 1, count))
    for t in range(count):
        frame = padded[t * hop : t * hop + n_fft] * window
        power[:, t] = np.abs(np.fft.rfft(frame)) ** 2
    return np.log(reference_filterbank(sr, n_fft, 128) @ power + 1e-8)


def reference_deltas(x: np.ndarray) -> np.ndarray:
    out = np.empty((*x.shape[:-1], x.shape[-1] - 4))
    for t in range(2, x.shape[-1] - 2):
        num = sum(n * (x[..., t + n] - x[..., t - n]) for n in (1, 2))
        out[..., t - 2] = num / (2 * (1**2 + 2**2))
    return out


@pytest.fixture(scope="module")
def ten_seconds() -> np.ndarray:
    return sweep(10.5)  # longer than 10 s: the recipe keeps only the first 10 s


@pytest.fixture(scope="module")
def reference(ten_seconds: np.ndarray) -> np.ndarray:
    return reference_log_mel(ten_seconds)


def test_ten_seconds_give_128_by_431(ten_seconds: np.ndarray) -> None:
    from l2bn.data.dcase import log_mel  # the public name

    out = log_mel(torch.from_numpy(ten_seconds), sample_rate=SR)
    assert out.shape == (128, 431)
    assert feats.num_frames(441000) == 431


def test_log_mel_matches_numpy_reference_float64(
    ten_seconds: np.ndarray, reference: np.ndarray
) -> None:
    out = feats.log_mel(torch.from_numpy(ten_seconds), sample_rate=SR)
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), reference, rtol=0, atol=1e-7)
    # the sweep moves: the loudest band rises over time
    loudest = reference.argmax(axis=0)
    assert loudest[400] > loudest[30] + 40


def test_log_mel_float32_close_to_reference(ten_seconds: np.ndarray, reference: np.ndarray) -> None:
    out = feats.log_mel(torch.from_numpy(ten_seconds).float(), sample_rate=SR)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.double().numpy(), reference, rtol=0, atol=2e-3)


def test_filterbank_matches_reference() -> None:
    ours = feats.mel_filterbank(SR, 2048, 128).numpy()
    np.testing.assert_allclose(ours, reference_filterbank(SR, 2048, 128), rtol=0, atol=1e-12)
    assert ours.max() <= 1.0 and (ours.sum(axis=1) > 0).all()


def test_stereo_is_averaged_to_mono() -> None:
    left, right = sweep(2.0, seed=1), sweep(2.0, seed=2)
    stereo = feats.log_mel(torch.from_numpy(np.stack([left, right])), sample_rate=SR)
    mono = reference_log_mel((left + right) / 2)
    np.testing.assert_allclose(stereo.numpy(), mono, rtol=0, atol=1e-7)


def test_full_feature_scaling_and_deltas(ten_seconds: np.ndarray, reference: np.ndarray) -> None:
    out = feats.clip_features(torch.from_numpy(ten_seconds), sample_rate=SR)
    assert out.shape == (3, 128, 423) == (3, 128, feats.expected_frames())
    scaled = (reference - reference.min()) / (reference.max() - reference.min())
    first = reference_deltas(scaled)
    second = reference_deltas(first)
    expected = np.stack([scaled[:, 4:-4], first[:, 2:-2], second])
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-8)
    assert float(out[0].min()) >= 0.0 and float(out[0].max()) <= 1.0


def test_deltas_of_a_ramp_are_its_slope() -> None:
    ramp = torch.arange(20, dtype=torch.float64) * 0.25
    assert torch.allclose(feats.deltas(ramp), torch.full((16,), 0.25, dtype=torch.float64))


def test_constant_clip_scales_to_zeros() -> None:
    assert torch.equal(feats.min_max_scale(torch.full((4, 9), 3.0)), torch.zeros(4, 9))


def test_short_and_bad_waveforms_are_rejected() -> None:
    with pytest.raises(ValueError, match="samples"):
        feats.log_mel(torch.zeros(1000, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        feats.log_mel(torch.zeros(1, 2, 5000))
    with pytest.raises(TypeError, match="floating"):
        feats.log_mel(torch.zeros(5000, dtype=torch.int16))
    with pytest.raises(ValueError, match="8 frames"):
        feats.stack_deltas(torch.zeros(128, 8))
