"""Decode an audio file to a mono float32 waveform at a target rate (soundfile + soxr)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["AudioDecodeError", "load_audio"]


class AudioDecodeError(ValueError):
    """A file that is missing, unreadable or empty; the message says which and why."""


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read WAV/FLAC/OGG with soundfile, mix down to mono, resample with soxr (``HQ``).

    Args:
        path: audio file.
        sample_rate: target rate in Hz.

    Returns:
        1-D float32 array.

    Raises:
        AudioDecodeError: missing file, unreadable data, or zero samples.
        ImportError: soundfile/soxr not installed (``pip install "mtl_lightning[audio]"``).

    Example:
        >>> load_audio("/no/such.wav", 16000)
        Traceback (most recent call last):
        ...
        mtl_lightning.audio.decode.AudioDecodeError: /no/such.wav: file not found
    """
    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(f"{path}: file not found")
    try:
        import soundfile as sf
        import soxr
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError('audio decoding needs: pip install "mtl_lightning[audio]"') from err
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises LibsndfileError / RuntimeError variants
        raise AudioDecodeError(f"{path}: unreadable audio ({err})") from err
    if data.shape[0] == 0:
        raise AudioDecodeError(f"{path}: empty audio (0 samples)")
    mono = data.mean(axis=1)
    if sr != sample_rate:
        mono = soxr.resample(mono, sr, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)
