"""Decoding WAV/FLAC, mono mix-down, resampling and bad files."""

import numpy as np
import pytest
import soundfile as sf

from mtl_lightning.audio.decode import AudioDecodeError, load_audio


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg"])
def test_decode_stereo_resampled(tmp_path, ext):
    sr = 22050
    t = np.arange(sr // 2) / sr
    tone = 0.4 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / f"a.{ext}"
    sf.write(path, np.stack([tone, tone], axis=1), sr)
    y = load_audio(path, 16000)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(y.size - 8000) <= 1  # ogg: Vorbis keeps the frame count
    spectrum = np.abs(np.fft.rfft(y))
    peak_hz = np.argmax(spectrum) * 16000 / y.size
    assert abs(peak_hz - 440) < 4


def test_empty_and_unreadable(tmp_path):
    empty = tmp_path / "e.wav"
    sf.write(empty, np.zeros((0,), dtype=np.float32), 16000)
    with pytest.raises(AudioDecodeError, match="empty"):
        load_audio(empty, 16000)
    junk = tmp_path / "j.wav"
    junk.write_bytes(b"not audio at all")
    with pytest.raises(AudioDecodeError, match="unreadable"):
        load_audio(junk, 16000)
    with pytest.raises(AudioDecodeError, match="not found"):
        load_audio(tmp_path / "missing.wav", 16000)
