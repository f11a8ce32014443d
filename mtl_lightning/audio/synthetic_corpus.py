"""A small labelled speech-like corpus written as WAV/FLAC files plus a manifest CSV.

Each "speaker" has its own pitch and formant frequencies (a voiced harmonic source shaped by
Gaussian formant resonances); each "emotion" has its own pitch contour, syllable rate and
loudness. Used by the tests, the benchmark and the measured result of docs/audio.md; run
``python -m mtl_lightning.audio.synthetic_corpus DIR`` to write one.
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["EMOTIONS", "CorpusSpec", "synthesize_utterance", "write_corpus"]

#: (name, pitch contour in semitones over the utterance (start, end), vibrato depth in
#: semitones, syllables per second, loudness in dB)
EMOTIONS: tuple[tuple[str, tuple[float, float], float, float, float], ...] = (
    ("neutral", (0.0, -1.0), 0.0, 3.0, -6.0),
    ("happy", (2.0, 6.0), 1.0, 5.0, 0.0),
    ("sad", (-1.0, -5.0), 0.0, 1.8, -12.0),
    ("angry", (4.0, 2.0), 0.5, 6.5, 3.0),
)


@dataclass(frozen=True)
class CorpusSpec:
    """Size and format of a generated corpus.

    Args:
        speakers: Number of speakers (``spk00``, ``spk01``, ...).
        emotions: Number of emotions (the first ``emotions`` of :data:`EMOTIONS`).
        per_pair: Utterances per (speaker, emotion) pair.
        min_seconds: Shortest utterance.
        max_seconds: Longest utterance.
        sample_rates: File sample rates (resampling is exercised when they differ from the
            feature rate).
        formats: File formats (``wav``, ``flac``). Formats and rates vary independently: the
            utterances cycle through every (format, rate) pair, formats fastest, so every
            format is written at every rate once ``len(formats) * len(sample_rates)``
            utterances are written.
        stereo_every: Every n-th file is written as two channels (0: never).
        noise: Standard deviation of additive white noise (relative to full scale).
        seed: Seed of everything.
    """

    speakers: int = 6
    emotions: int = 4
    per_pair: int = 4
    min_seconds: float = 0.5
    max_seconds: float = 1.0
    sample_rates: tuple[int, ...] = (16000, 22050)
    formats: tuple[str, ...] = ("wav", "flac")
    stereo_every: int = 5
    noise: float = 0.01
    seed: int = 0


def _speaker_voice(rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """Base pitch (Hz) and three formant frequencies (Hz) of one speaker."""
    f0 = float(rng.uniform(90.0, 260.0))
    scale = float(rng.uniform(0.8, 1.25))
    formants = np.array([500.0, 1500.0, 2500.0]) * scale * rng.uniform(0.9, 1.1, size=3)
    return f0, formants


def synthesize_utterance(
    f0: float,
    formants: np.ndarray,
    emotion: int,
    seconds: float,
    sample_rate: int,
    rng: np.random.Generator,
    noise: float = 0.01,
) -> np.ndarray:
    """One voiced utterance: harmonics of a time-varying pitch, formant-shaped, syllable-gated.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = synthesize_utterance(120.0, np.array([500.0, 1500.0, 2500.0]), 1, 0.5, 16000, rng)
        >>> x.shape, x.dtype, bool(np.abs(x).max() <= 1.0)
        ((8000,), dtype('float32'), True)
    """
    _, (start, end), vibrato, rate, gain_db = EMOTIONS[emotion]
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    semitones = start + (end - start) * t / max(seconds, 1e-6)
    semitones = semitones + vibrato * np.sin(2 * math.pi * 5.5 * t)
    pitch = f0 * 2.0 ** (semitones / 12.0)
    phase = 2 * math.pi * np.cumsum(pitch) / sample_rate
    n_harmonics = int(min(4000.0, sample_rate / 2 - 200) // (f0 * 0.8))
    k = np.arange(1, n_harmonics + 1)[:, None]
    freqs = k * pitch[None, :]
    envelope = sum(
        np.exp(-0.5 * ((freqs - f) / (60.0 + 0.05 * f)) ** 2) * (0.8**i)
        for i, f in enumerate(formants)
    )
    envelope = envelope * (freqs < sample_rate / 2)
    voiced = (envelope * np.sin(k * phase[None, :])).sum(axis=0)
    voiced /= max(np.abs(voiced).max(), 1e-6)
    syllables = 0.5 - 0.5 * np.cos(2 * math.pi * rate * t + rng.uniform(0, 2 * math.pi))
    gain = 0.5 * 10.0 ** (gain_db / 20.0)
    x = gain * syllables * voiced + noise * rng.standard_normal(n)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def write_corpus(root: str | Path, spec: CorpusSpec | None = None) -> Path:
    """Write audio files under ``root/audio`` and ``root/manifest.csv``; returns the manifest.

    Manifest columns: ``path`` (relative to ``root``), ``emotion``, ``speaker``, ``gender``
    (an extra column the datamodule ignores).

    Example:
        >>> import tempfile
        >>> manifest = write_corpus(tempfile.mkdtemp(), CorpusSpec(speakers=2, emotions=2, per_pair=1))
        >>> manifest.read_text().splitlines()[:2]
        ['path,emotion,speaker,gender', 'audio/spk00/spk00_neutral_0.wav,neutral,spk00,f']
    """
    import soundfile as sf

    spec = spec or CorpusSpec()
    if not 2 <= spec.emotions <= len(EMOTIONS):
        raise ValueError(f"emotions must be in [2, {len(EMOTIONS)}], got {spec.emotions}")
    root = Path(root)
    rng = np.random.default_rng(spec.seed)
    voices = [_speaker_voice(rng) for _ in range(spec.speakers)]
    rows = []
    counter = 0
    for s, (f0, formants) in enumerate(voices):
        speaker = f"spk{s:02d}"
        (root / "audio" / speaker).mkdir(parents=True, exist_ok=True)
        for e in range(spec.emotions):
            for i in range(spec.per_pair):
                # every format at every rate: formats cycle fastest, rates once per cycle
                fmt = spec.formats[counter % len(spec.formats)]
                sr = spec.sample_rates[counter // len(spec.formats) % len(spec.sample_rates)]
                seconds = float(rng.uniform(spec.min_seconds, spec.max_seconds))
                x = synthesize_utterance(f0, formants, e, seconds, sr, rng, spec.noise)
                if spec.stereo_every and counter % spec.stereo_every == spec.stereo_every - 1:
                    x = np.stack([x, 0.9 * x], axis=1)
                relative = f"audio/{speaker}/{speaker}_{EMOTIONS[e][0]}_{i}.{fmt}"
                sf.write(root / relative, x, sr, subtype="PCM_16")
                rows.append([relative, EMOTIONS[e][0], speaker, "f" if f0 > 165 else "m"])
                counter += 1
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "emotion", "speaker", "gender"])
        writer.writerows(rows)
    return manifest


def main(argv: list[str] | None = None) -> None:
    """``python -m mtl_lightning.audio.synthetic_corpus DIR [--speakers N ...]``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root")
    parser.add_argument("--speakers", type=int, default=CorpusSpec.speakers)
    parser.add_argument("--emotions", type=int, default=CorpusSpec.emotions)
    parser.add_argument("--per-pair", type=int, default=CorpusSpec.per_pair)
    parser.add_argument("--seed", type=int, default=CorpusSpec.seed)
    args = parser.parse_args(argv)
    spec = CorpusSpec(
        speakers=args.speakers, emotions=args.emotions, per_pair=args.per_pair, seed=args.seed
    )
    print(write_corpus(args.root, spec))


if __name__ == "__main__":
    main()
