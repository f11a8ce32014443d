"""`FeatureSpec`: which features to compute from one file (audio or precomputed), and how."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from mtl_lightning.audio.decode import AudioDecodeError, load_audio
from mtl_lightning.audio.egemaps import egemaps_lld
from mtl_lightning.audio.features import log_mel_spectrogram, mfcc

__all__ = ["PRECOMPUTED_SUFFIXES", "FeatureError", "FeatureKind", "FeatureSpec"]

FeatureKind = Literal["logmel", "mfcc", "egemaps"]
#: files with these suffixes hold features ``[n_features, frames]`` and are loaded as they are
PRECOMPUTED_SUFFIXES = (".npy", ".pt")
_VERSION = 1  # bump when the computation changes, so old cache entries are not reused


class FeatureError(AudioDecodeError):
    """A file whose features cannot be used (empty, not 2-D, NaN/inf values)."""


@dataclass(frozen=True)
class FeatureSpec:
    """Feature kind and parameters; :meth:`extract` turns one file into ``[n_features, frames]``.

    Args:
        kind: ``logmel`` (dB log-mel power), ``mfcc`` or ``egemaps`` (25 eGeMAPS v02
            low-level descriptors, 10 ms hop, needs the ``opensmile`` extra).
        sample_rate: Audio is resampled to this rate (soxr) before feature extraction.
        n_mels: Mel bands (``logmel``, and the bands under ``mfcc``).
        n_fft: FFT size = Hann window length, in samples.
        hop_length: Hop between frames, in samples.
        f_min: Lowest mel frequency (Hz).
        f_max: Highest mel frequency (Hz; ``None`` = Nyquist).
        n_mfcc: MFCC coefficients (``mfcc``).

    Files ending in ``.npy`` / ``.pt`` are precomputed features ``[n_features, frames]`` and
    are loaded instead of computed (checked for shape and finite values).

    Example:
        >>> spec = FeatureSpec("logmel", n_mels=40)
        >>> spec.n_features, spec.params()["kind"]
        (40, 'logmel')
    """

    kind: FeatureKind = "logmel"
    sample_rate: int = 16000
    n_mels: int = 64
    n_fft: int = 400
    hop_length: int = 160
    f_min: float = 0.0
    f_max: float | None = None
    n_mfcc: int = 20

    def __post_init__(self) -> None:
        if self.kind not in ("logmel", "mfcc", "egemaps"):
            raise ValueError(f"features must be logmel, mfcc or egemaps, got {self.kind!r}")
        if min(self.sample_rate, self.n_mels, self.n_fft, self.hop_length, self.n_mfcc) < 1:
            raise ValueError(f"feature sizes must be positive: {self}")

    @property
    def n_features(self) -> int:
        """Feature rows of computed features (precomputed files bring their own)."""
        return {"logmel": self.n_mels, "mfcc": self.n_mfcc, "egemaps": 25}[self.kind]

    @property
    def min_samples(self) -> int:
        """Shortest waveform (after resampling) a centred STFT can frame: ``n_fft // 2 + 1``."""
        return self.n_fft // 2 + 1

    def params(self) -> dict[str, object]:
        """What the cache key depends on (with a version of the computation)."""
        return {**asdict(self), "version": _VERSION}

    def extract(self, path: str | Path) -> torch.Tensor:
        """Features of one file, ``[n_features, frames]`` float32.

        Raises:
            AudioDecodeError: missing, unreadable or empty audio.
            FeatureError: unusable precomputed features, or audio shorter than
                :attr:`min_samples` (the STFT's reflect padding needs more samples).
        """
        path = Path(path)
        if path.suffix.lower() in PRECOMPUTED_SUFFIXES:
            return load_precomputed(path)
        waveform = load_audio(path, self.sample_rate)
        if self.kind != "egemaps" and waveform.shape[0] < self.min_samples:
            raise FeatureError(
                f"{path}: too short: {waveform.shape[0]} samples, need at least "
                f"{self.min_samples} for n_fft={self.n_fft} (at {self.sample_rate} Hz)"
            )
        if self.kind == "egemaps":
            features = egemaps_lld(waveform, self.sample_rate)
        else:
            x = torch.from_numpy(waveform)
            mel = {"n_fft": self.n_fft, "hop_length": self.hop_length, "f_min": self.f_min}
            mel |= {"f_max": self.f_max, "n_mels": self.n_mels}
            if self.kind == "logmel":
                features = log_mel_spectrogram(x, self.sample_rate, **mel)
            else:
                features = mfcc(x, self.sample_rate, n_mfcc=self.n_mfcc, **mel)
        return _checked(path, features.to(torch.float32).contiguous())


def load_precomputed(path: Path) -> torch.Tensor:
    """Load a ``.npy`` / ``.pt`` feature matrix ``[n_features, frames]`` and check it."""
    if not path.is_file():
        raise AudioDecodeError(f"{path}: file not found")
    try:
        if path.suffix.lower() == ".npy":
            value = torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float32))
        else:
            value = torch.load(path, weights_only=True)
    except Exception as err:  # numpy/torch raise several unrelated types for broken files
        raise FeatureError(f"{path}: unreadable features ({err})") from err
    if not isinstance(value, torch.Tensor):
        raise FeatureError(f"{path}: expected a tensor, got {type(value).__name__}")
    return _checked(path, value.to(torch.float32))


def _checked(path: Path, features: torch.Tensor) -> torch.Tensor:
    if features.dim() != 2:
        raise FeatureError(
            f"{path}: features must be [n_features, frames], got shape {list(features.shape)}"
        )
    if features.shape[1] == 0:
        raise FeatureError(f"{path}: empty features (0 frames)")
    bad = ~torch.isfinite(features)
    if bool(bad.any()):
        frames = bad.any(dim=0).nonzero().flatten().tolist()
        kinds = "NaN" if bool(torch.isnan(features).any()) else "inf"
        raise FeatureError(f"{path}: {kinds} in features at frame(s) {frames[:5]}")
    return features
