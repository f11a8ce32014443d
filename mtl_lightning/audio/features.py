"""Batched torch feature ops: Slaney mel filterbank, log-mel spectrogram and MFCC.

The conventions follow librosa's defaults (Slaney mel scale, Slaney area normalisation,
``power_to_db`` with ``amin=1e-10`` and ``top_db=80``, orthonormal DCT-II), so values agree
with ``librosa.feature.melspectrogram`` / ``librosa.feature.mfcc`` within float32 tolerance.
All ops accept a batch ``[B, samples]`` and run on whatever device the input lives on.
"""

from __future__ import annotations

import math

import torch

__all__ = ["hz_to_mel", "mel_to_hz", "mel_filterbank", "log_mel_spectrogram", "mfcc"]

_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """Slaney mel scale (linear below 1 kHz, logarithmic above).

    Example:
        >>> [round(v, 6) for v in hz_to_mel(torch.tensor([0.0, 1000.0])).tolist()]
        [0.0, 15.0]
    """
    hz = torch.as_tensor(hz, dtype=torch.float64)
    lin = hz / _F_SP
    log = _MIN_LOG_MEL + torch.log(hz.clamp_min(_MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return torch.where(hz >= _MIN_LOG_HZ, log, lin)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`hz_to_mel`.

    Example:
        >>> round(float(mel_to_hz(hz_to_mel(torch.tensor(3000.0)))), 6)
        3000.0
    """
    mel = torch.as_tensor(mel, dtype=torch.float64)
    lin = mel * _F_SP
    log = _MIN_LOG_HZ * torch.exp(_LOGSTEP * (mel.clamp_min(_MIN_LOG_MEL) - _MIN_LOG_MEL))
    return torch.where(mel >= _MIN_LOG_MEL, log, lin)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int = 64, f_min: float = 0.0, f_max: float | None = None
) -> torch.Tensor:
    """Triangular Slaney-normalised mel filters, shape ``[n_mels, n_fft // 2 + 1]`` (float32).

    Example:
        >>> mel_filterbank(16000, 400, n_mels=40).shape
        torch.Size([40, 201])
    """
    if f_max is None:
        f_max = sample_rate / 2.0
    if not 0.0 <= f_min < f_max <= sample_rate / 2.0:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2, got {f_min}, {f_max}")
    fft_freqs = torch.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(
        float(hz_to_mel(torch.tensor(f_min))),
        float(hz_to_mel(torch.tensor(f_max))),
        n_mels + 2,
        dtype=torch.float64,
    )
    mel_f = mel_to_hz(mels)
    fdiff = mel_f[1:] - mel_f[:-1]
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    return (weights * enorm[:, None]).to(torch.float32)


def _power_to_db(s: torch.Tensor, amin: float, top_db: float | None) -> torch.Tensor:
    db = 10.0 * torch.log10(s.clamp_min(amin))
    if top_db is not None:
        peak = db.amax(dim=(-2, -1), keepdim=True)
        db = torch.maximum(db, peak - top_db)
    return db


def log_mel_spectrogram(
    waveform: torch.Tensor,
    sample_rate: int,
    n_fft: int = 400,
    hop_length: int = 160,
    n_mels: int = 64,
    f_min: float = 0.0,
    f_max: float | None = None,
    amin: float = 1e-10,
    top_db: float | None = 80.0,
) -> torch.Tensor:
    """Log-mel power spectrogram in dB, ``[B, n_mels, frames]`` (or ``[n_mels, frames]`` for 1-D input).

    Centred Hann-windowed STFT with reflect padding (librosa's ``center=True`` default).

    Example:
        >>> x = torch.randn(2, 16000)
        >>> log_mel_spectrogram(x, 16000, n_mels=40).shape
        torch.Size([2, 40, 101])
    """
    squeeze = waveform.dim() == 1
    x = waveform.unsqueeze(0) if squeeze else waveform
    window = torch.hann_window(n_fft, periodic=True, dtype=x.dtype, device=x.device)
    spec = torch.stft(
        x, n_fft, hop_length, window=window, center=True, pad_mode="reflect", return_complex=True
    )
    power = spec.abs() ** 2
    fb = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max).to(device=x.device, dtype=x.dtype)
    out = _power_to_db(torch.matmul(fb, power), amin, top_db)
    return out.squeeze(0) if squeeze else out


def _dct_ortho(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    n = torch.arange(n_in, dtype=torch.float64)
    k = torch.arange(n_out, dtype=torch.float64)[:, None]
    basis = torch.cos(math.pi / n_in * (n + 0.5) * k) * math.sqrt(2.0 / n_in)
    basis[0] /= math.sqrt(2.0)
    return basis.to(dtype=dtype, device=device)


def mfcc(
    waveform: torch.Tensor, sample_rate: int, n_mfcc: int = 20, **mel_kwargs: object
) -> torch.Tensor:
    """MFCC: orthonormal DCT-II over the log-mel bands, ``[B, n_mfcc, frames]``.

    Example:
        >>> mfcc(torch.randn(16000), 16000, n_mfcc=13, n_mels=40).shape
        torch.Size([13, 101])
    """
    logmel = log_mel_spectrogram(waveform, sample_rate, **mel_kwargs)  # type: ignore[arg-type]
    basis = _dct_ortho(logmel.shape[-2], n_mfcc, logmel.dtype, logmel.device)
    return torch.matmul(basis, logmel)
