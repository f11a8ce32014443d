"""Torch log-mel / MFCC against librosa's reference implementation."""

import numpy as np
import pytest
import torch

from mtl_lightning.audio import log_mel_spectrogram, mel_filterbank, mfcc

librosa = pytest.importorskip("librosa")


@pytest.mark.parametrize(
    "sr,n_fft,n_mels,fmin,fmax", [(16000, 400, 64, 0.0, None), (22050, 512, 40, 50.0, 8000.0)]
)
def test_mel_filterbank_matches_librosa(sr, n_fft, n_mels, fmin, fmax):
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    ours = mel_filterbank(sr, n_fft, n_mels, fmin, fmax).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6)


def _tone(sr: int = 16000) -> np.ndarray:
    t = np.arange(sr // 2) / sr
    rng = np.random.default_rng(0)
    return (0.5 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size)).astype(
        np.float32
    )


def test_log_mel_matches_librosa():
    y = _tone()
    s = librosa.feature.melspectrogram(
        y=y, sr=16000, n_fft=400, hop_length=160, n_mels=64, power=2.0, pad_mode="reflect"
    )
    ref = librosa.power_to_db(s, ref=1.0, amin=1e-10, top_db=80.0)
    ours = log_mel_spectrogram(
        torch.from_numpy(y), 16000, n_fft=400, hop_length=160, n_mels=64
    ).numpy()
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-2)  # dB, float32 STFT


def test_mfcc_matches_librosa():
    y = _tone()
    ref = librosa.feature.mfcc(
        y=y, sr=16000, n_mfcc=13, n_fft=400, hop_length=160, n_mels=40, pad_mode="reflect"
    )
    ours = mfcc(torch.from_numpy(y), 16000, n_mfcc=13, n_fft=400, hop_length=160, n_mels=40).numpy()
    np.testing.assert_allclose(ours, ref, atol=5e-2)  # coefficients of dB values, float32


def test_batched_equals_single():
    y = torch.from_numpy(np.stack([_tone(), _tone()[::-1].copy()]))
    batch = log_mel_spectrogram(y, 16000)
    torch.testing.assert_close(batch[1], log_mel_spectrogram(y[1], 16000))


def _tone_then_silence(sr: int) -> np.ndarray:
    """A loud tone, then near silence: more than 80 dB apart, so ``top_db`` clips."""
    t = np.arange(sr) / sr
    rng = np.random.default_rng(1)
    y = 0.8 * np.sin(2 * np.pi * 440 * t) * (t < 0.5) + 1e-6 * rng.standard_normal(t.size)
    return y.astype(np.float32)


NON_DEFAULT = {"n_fft": 1024, "hop_length": 256, "n_mels": 48, "fmin": 60.0, "fmax": 7000.0}
OURS = {"n_fft": 1024, "hop_length": 256, "n_mels": 48, "f_min": 60.0, "f_max": 7000.0}


def test_log_mel_matches_librosa_with_other_parameters_and_the_top_db_clip():
    sr, y = 22050, _tone_then_silence(22050)
    s = librosa.feature.melspectrogram(y=y, sr=sr, power=2.0, pad_mode="reflect", **NON_DEFAULT)
    ref = librosa.power_to_db(s, ref=1.0, amin=1e-10, top_db=80.0)
    ours = log_mel_spectrogram(torch.from_numpy(y), sr, **OURS).numpy()
    assert ours.shape == ref.shape == (48, 87)
    clipped = ref <= ref.max() - 80.0 + 1e-3
    assert 0.3 < clipped.mean() < 0.95  # the clip is reached, and not everywhere
    assert np.array_equal(ours <= ours.max() - 80.0 + 1e-3, clipped)
    np.testing.assert_allclose(ours, ref, atol=1e-2)  # measured max error: 6e-4 dB


def test_mfcc_matches_librosa_with_other_parameters_and_the_top_db_clip():
    sr, y = 22050, _tone_then_silence(22050)
    ref = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=20, pad_mode="reflect", **NON_DEFAULT)
    ours = mfcc(torch.from_numpy(y), sr, n_mfcc=20, **OURS).numpy()
    assert ours.shape == ref.shape == (20, 87)
    np.testing.assert_allclose(ours, ref, atol=5e-2)  # measured max error: 3e-4
