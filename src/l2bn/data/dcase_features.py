"""Log-mel features of the acoustic-scene recipes (paper section 4.2), computed with torch.

The recipe of McDonnell & Gao (ICASSP 2020), reused by Hu et al. (DCASE 2020) and by the
paper's authors for Table 6:

1. :func:`log_mel`: mono, the first 10 s at 44.1 kHz, 2048-point FFT with a periodic Hann
   window, centered frames (reflect padding, librosa's classic default), hop 1024, power
   spectrogram, 128 HTK mel bands from 0 Hz to sr/2 without filter normalization, then
   ``log(x + 1e-8)``. 10 s give ``1 + 441000 // 1024 = 431`` frames.
2. :func:`min_max_scale`: per clip, to [0, 1].
3. :func:`stack_deltas`: the scaled log-mel, its deltas and its delta-deltas as 3 channels.
   Deltas are the regression deltas of HTK with a window of N = 2 frames, computed on valid
   frames only (no padding): ``d[t] = (x[t+1] - x[t-1]) / 10 + (x[t+2] - x[t-2]) / 5``, so
   each delta loses 2 frames at each end. The static channel is trimmed by 4 frames and
   the delta channel by 2 at each end so that the three align: ``T -> T - 8`` frames
   (431 -> 423 for a 10 s clip).

Everything runs on the waveform's device; float64 input is processed in float64, other
floating input in float32.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import torch
from torch import Tensor

SAMPLE_RATE = 44100
DURATION = 10.0
N_FFT = 2048
HOP_LENGTH = 1024
N_MELS = 128
LOG_OFFSET = 1e-8
DELTA_WIDTH = 2
TRIM = 2 * DELTA_WIDTH  # frames lost at each end by delta-deltas
RECIPE = "logmel128-htk-fft2048-hop1024-minmax-v1"
"""Version tag of steps 1-2 (what the disk cache stores); change it when they change."""


def hz_to_mel(hz: Tensor) -> Tensor:
    """HTK mel scale: ``2595 * log10(1 + f / 700)``."""
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: Tensor) -> Tensor:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (torch.pow(10.0, mel / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def _cpu_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float
) -> Tensor:
    bin_hz = torch.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1, dtype=torch.float64)
    low, high = hz_to_mel(torch.tensor([f_min, f_max], dtype=torch.float64))
    edges_hz = mel_to_hz(torch.linspace(float(low), float(high), n_mels + 2, dtype=torch.float64))
    left, center, right = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bin_hz - left) / (center - left)
    falling = (right - bin_hz) / (right - center)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


def mel_filterbank(
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    n_mels: int = N_MELS,
    f_min: float = 0.0,
    f_max: float | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """Triangular HTK mel filters ``(n_mels, n_fft // 2 + 1)``, peak 1, no area normalization.

    Band edges are ``n_mels + 2`` points equally spaced on the HTK mel scale between
    ``f_min`` and ``f_max`` (default ``sample_rate / 2``), as librosa's
    ``filters.mel(htk=True, norm=None)``. Low bands narrower than an FFT bin may be empty.
    """
    f_max = sample_rate / 2.0 if f_max is None else float(f_max)
    if not 0.0 <= f_min < f_max <= sample_rate / 2.0:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got {f_min}, {f_max}")
    bank = _cpu_filterbank(int(sample_rate), int(n_fft), int(n_mels), float(f_min), f_max)
    return bank.to(device=device, dtype=dtype, copy=True)


def clip_samples(sample_rate: int = SAMPLE_RATE, duration: float = DURATION) -> int:
    """Samples in ``duration`` seconds (441,000 for 10 s at 44.1 kHz)."""
    return round(duration * sample_rate)


def num_frames(num_samples: int, hop_length: int = HOP_LENGTH) -> int:
    """Frames of a centered STFT: ``1 + num_samples // hop_length``."""
    return 1 + num_samples // hop_length


def feature_frames(num_samples: int) -> int:
    """Time frames of the stacked 3-channel feature of ``num_samples`` samples."""
    return num_frames(num_samples) - 2 * TRIM


def _compute_dtype(waveform: Tensor) -> torch.dtype:
    return torch.float64 if waveform.dtype == torch.float64 else torch.float32


def to_mono(waveform: Tensor) -> Tensor:
    """``(samples,)`` stays; ``(channels, samples)`` is averaged over channels."""
    if not isinstance(waveform, Tensor):
        raise TypeError(f"waveform must be a torch.Tensor, got {type(waveform).__name__}")
    if waveform.dim() == 2:
        return waveform.mean(dim=0)
    if waveform.dim() != 1:
        raise ValueError(
            f"waveform must be (samples,) or (channels, samples), got shape {tuple(waveform.shape)}"
        )
    return waveform


def log_mel(
    waveform: Tensor, sample_rate: int = SAMPLE_RATE, duration: float | None = DURATION
) -> Tensor:
    """Log-mel spectrogram ``(128, frames)`` of the recipe, before scaling and deltas.

    ``waveform``: ``(samples,)`` or ``(channels, samples)`` (averaged to mono); only the first
    ``duration`` seconds are used (10 s -> 431 frames at 44.1 kHz; None keeps everything).
    Returns ``log(mel_power + 1e-8)``, float64 for float64 input, float32 otherwise.
    """
    mono = to_mono(waveform)
    if not mono.is_floating_point():
        raise TypeError(f"waveform must be floating point, got {mono.dtype}")
    if duration is not None:
        mono = mono[: clip_samples(sample_rate, duration)]
    if mono.numel() <= N_FFT // 2:
        raise ValueError(
            f"waveform has {mono.numel()} samples; a centered {N_FFT}-point STFT needs "
            f"more than {N_FFT // 2}"
        )
    dtype = _compute_dtype(mono)
    mono = mono.to(dtype)
    window = torch.hann_window(N_FFT, periodic=True, dtype=dtype, device=mono.device)
    spectrum = torch.stft(
        mono,
        n_fft=N_FFT,
        hop_length=HOP_LENGTH,
        window=window,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    power = spectrum.real.square() + spectrum.imag.square()
    bank = mel_filterbank(sample_rate, dtype=dtype, device=mono.device)
    return torch.log(bank @ power + LOG_OFFSET)


def min_max_scale(features: Tensor) -> Tensor:
    """Scale one clip's features to [0, 1] (a constant clip becomes all zeros)."""
    low, high = features.min(), features.max()
    span = high - low
    if float(span) == 0.0:
        return torch.zeros_like(features)
    return (features - low) / span


def deltas(features: Tensor) -> Tensor:
    """HTK regression deltas over the last axis (N = 2), valid frames only: ``T -> T - 4``.

    ``d[t] = sum_{n=1..2} n (x[t+n] - x[t-n]) / (2 (1^2 + 2^2))``
    ``     = (x[t+1] - x[t-1]) / 10 + (x[t+2] - x[t-2]) / 5``.
    """
    if features.shape[-1] <= 2 * DELTA_WIDTH:
        raise ValueError(f"deltas need more than 4 frames, got {features.shape[-1]}")
    near = features[..., 3:-1] - features[..., 1:-3]
    far = features[..., 4:] - features[..., :-4]
    return near / 10.0 + far / 5.0


def stack_deltas(scaled: Tensor) -> Tensor:
    """``(bands, T)`` -> ``(3, bands, T - 8)``: static, delta, delta-delta, time-aligned."""
    if scaled.shape[-1] <= 2 * TRIM:
        raise ValueError(f"the 3-channel feature needs more than 8 frames, got {scaled.shape[-1]}")
    first = deltas(scaled)
    second = deltas(first)
    return torch.stack(
        (scaled[..., TRIM:-TRIM], first[..., DELTA_WIDTH:-DELTA_WIDTH], second), dim=-3
    )


def scaled_log_mel(
    waveform: Tensor, sample_rate: int = SAMPLE_RATE, duration: float | None = DURATION
) -> Tensor:
    """Steps 1-2: :func:`log_mel` then per-clip :func:`min_max_scale` (what the cache stores)."""
    return min_max_scale(log_mel(waveform, sample_rate, duration))


def clip_features(
    waveform: Tensor, sample_rate: int = SAMPLE_RATE, duration: float | None = DURATION
) -> Tensor:
    """The full input of the acoustic models: ``(3, 128, frames - 8)`` (423 frames for 10 s)."""
    return stack_deltas(scaled_log_mel(waveform, sample_rate, duration))


def expected_frames(sample_rate: int = SAMPLE_RATE, duration: float = DURATION) -> int:
    """Frames of the 3-channel feature of a full clip (423 for 10 s at 44.1 kHz)."""
    return feature_frames(clip_samples(sample_rate, duration))


@dataclass(frozen=True)
class FeatureRecipe:
    """Everything that determines the scaled log-mel of a clip (steps 1-2, what the disk cache
    stores): the one place that says what identifies a cache entry.

    ``sample_rate`` and ``duration`` are the dataset's; the other fields are the module's
    constants (not settable, since :func:`scaled_log_mel` does not take them) and the recipe's
    version tag :data:`RECIPE`, recorded so that changing any of them changes the key.
    :meth:`params` is stored in each cache entry and must match in full for the entry to be
    used; :attr:`tag` (version, sample rate, duration and a digest of :meth:`params`) names
    the configuration's cache folder.
    """

    sample_rate: int = SAMPLE_RATE
    duration: float | None = DURATION
    n_fft: int = field(default=N_FFT, init=False)
    hop_length: int = field(default=HOP_LENGTH, init=False)
    n_mels: int = field(default=N_MELS, init=False)
    f_min: float = field(default=0.0, init=False)
    f_max: float = field(default=0.0, init=False)  # sample_rate / 2, set below
    log_offset: float = field(default=LOG_OFFSET, init=False)
    center: bool = field(default=True, init=False)
    pad_mode: str = field(default="reflect", init=False)
    scaling: str = field(default="minmax", init=False)
    dtype: str = field(default="float32", init=False)  # what the cache stores
    version: str = field(default=RECIPE, init=False)

    def __post_init__(self) -> None:
        sample_rate = int(self.sample_rate)
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        duration = None if self.duration is None else float(self.duration)
        if duration is not None and not duration > 0.0:
            raise ValueError(f"duration must be positive (or None), got {self.duration}")
        object.__setattr__(self, "sample_rate", sample_rate)
        object.__setattr__(self, "duration", duration)
        object.__setattr__(self, "f_max", sample_rate / 2.0)

    def params(self) -> dict[str, int | float | str | bool | None]:
        """Every field, as plain values (stored in cache entries and compared on load)."""
        return asdict(self)

    @property
    def digest(self) -> str:
        """A stable hash of :meth:`params` (16 hex digits)."""
        text = json.dumps(self.params(), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    @property
    def tag(self) -> str:
        """Folder name of this configuration's cache entries, e.g.
        ``logmel128-...-v1-sr44100-10s-<digest>``."""
        span = "full" if self.duration is None else f"{self.duration:g}s"
        return f"{self.version}-sr{self.sample_rate}-{span}-{self.digest}"

    def compute(self, waveform: Tensor) -> Tensor:
        """The scaled log-mel ``(128, frames)`` of ``waveform`` (sampled at ``sample_rate``)
        under this recipe, as stored in the cache."""
        features = scaled_log_mel(waveform, self.sample_rate, self.duration)
        return features.to(getattr(torch, self.dtype))
