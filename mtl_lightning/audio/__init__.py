"""Audio decoding (soundfile + soxr), torch log-mel / MFCC, on-disk feature cache."""

from mtl_lightning.audio.cache import FeatureCache
from mtl_lightning.audio.decode import AudioDecodeError, load_audio
from mtl_lightning.audio.features import (
    hz_to_mel,
    log_mel_spectrogram,
    mel_filterbank,
    mel_to_hz,
    mfcc,
)

__all__ = [
    "AudioDecodeError",
    "FeatureCache",
    "hz_to_mel",
    "load_audio",
    "log_mel_spectrogram",
    "mel_filterbank",
    "mel_to_hz",
    "mfcc",
]
