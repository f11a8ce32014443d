"""`SyntheticSpeechDataModule`: seeded log-mel-like feature maps carrying emotion and speaker."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtl_lightning.data.base import TensorTaskDataset
from mtl_lightning.data.in_memory import InMemoryDataModule
from mtl_lightning.tasks import TaskSpec


def _bumps(generator: torch.Generator, n: int, n_bins: int, n_bumps: int) -> Tensor:
    """``n`` random smooth spectral envelopes (sums of Gaussian 'formants'), unit variance."""
    grid = torch.arange(n_bins, dtype=torch.float32)
    centres = torch.rand(n, n_bumps, 1, generator=generator) * n_bins
    widths = 1.5 + torch.rand(n, n_bumps, 1, generator=generator) * (n_bins / 8)
    heights = torch.randn(n, n_bumps, 1, generator=generator)
    env = (heights * torch.exp(-0.5 * ((grid - centres) / widths) ** 2)).sum(dim=1)
    env = env - env.mean(dim=1, keepdim=True)
    return env / env.std(dim=1, keepdim=True).clamp_min(1e-6)


def make_speech_features(
    emotion: Tensor,
    speaker: Tensor,
    num_emotions: int,
    num_speakers: int,
    n_mels: int = 40,
    frames: int = 64,
    emotion_strength: float = 1.5,
    speaker_strength: float = 4.0,
    noise: float = 1.0,
    seed: int = 0,
    sample_seed: int | None = None,
    speaker_region: float = 1.0,
) -> Tensor:
    """Feature maps ``[N, 1, n_mels, frames]`` for the given emotion and speaker labels.

    A speaker is a fixed spectral envelope (formant-like bumps), constant over time, in the top
    ``speaker_region`` fraction of the mel bins: strong and easy to learn. An emotion is a
    temporal modulation (its own rate) of its own band in the remaining bins, with a random phase
    per utterance. The two are separable, so a trunk can keep the emotion and drop the speaker;
    ``speaker_region=1`` lets the speaker envelope overlap the emotion bands everywhere. ``seed`` fixes the speakers' envelopes; ``sample_seed`` (default: ``seed``)
    the per-utterance phases and noise, so splits share speakers but not samples.

    Example:
        >>> x = make_speech_features(torch.tensor([0, 1]), torch.tensor([2, 2]), 5, 11, 8, 16)
        >>> x.shape
        torch.Size([2, 1, 8, 16])
    """
    if not 0.0 < speaker_region <= 1.0:
        raise ValueError(f"speaker_region must be in (0, 1], got {speaker_region}")
    split = n_mels - max(1, round(speaker_region * n_mels))  # first speaker bin
    speaker_env = torch.zeros(num_speakers, n_mels)
    speaker_env[:, split:] = _bumps(
        torch.Generator().manual_seed(seed), num_speakers, n_mels - split, n_bumps=3
    )
    emotion_bins = split if split >= num_emotions else n_mels
    g = torch.Generator().manual_seed(seed if sample_seed is None else sample_seed)
    mel = torch.arange(n_mels, dtype=torch.float32)
    centres = (torch.arange(num_emotions, dtype=torch.float32) + 0.5) * emotion_bins / num_emotions
    width = emotion_bins / (2.5 * num_emotions)
    band = torch.exp(-0.5 * ((mel - centres[:, None]) / width) ** 2)
    rates = torch.linspace(2.0, 2.0 + 1.5 * (num_emotions - 1), num_emotions)  # cycles/utterance
    n = emotion.shape[0]
    t = torch.arange(frames, dtype=torch.float32) / frames
    phase = torch.rand(n, 1, generator=g) * 2 * math.pi
    modulation = torch.sin(2 * math.pi * rates[emotion][:, None] * t + phase)  # [N, T]
    emo = band[emotion][:, :, None] * modulation[:, None, :] * math.sqrt(2.0)  # [N, F, T]
    spk = speaker_env[speaker][:, :, None].expand(-1, -1, frames)
    x = emotion_strength * emo + speaker_strength * spk
    x = x + noise * torch.randn(n, n_mels, frames, generator=g)
    return x.unsqueeze(1)


class SyntheticSpeechDataModule(InMemoryDataModule):
    """Emotion (main) + speaker (adversarial) classification on synthetic log-mel-like features.

    Every (speaker, emotion) pair has ``per_pair`` train utterances and ``per_pair_eval`` in each
    of val and test, so every speaker appears in every split and classes are balanced.

    Args:
        num_emotions: Emotion classes (main task).
        num_speakers: Speaker classes (adversarial task; set ``speaker_role="main"`` to learn it).
        n_mels: Mel bins of each feature map.
        frames: Frames of each feature map.
        emotion_strength: Amplitude of the emotion pattern.
        speaker_strength: Amplitude of the speaker envelope.
        noise: Standard deviation of the additive noise.
        speaker_region: Fraction of mel bins (from the top) holding the speaker envelope; the
            emotion bands fill the rest (1.0: speaker and emotion overlap everywhere).
        per_pair: Train utterances per (speaker, emotion) pair.
        per_pair_eval: Val and test utterances per pair.
        speaker_role: ``adversarial`` (default) or ``main``.
        speaker_adversary: ``reversal`` (gradient reversal, default) or ``confusion``.
        batch_size: Batch size of every loader.
        num_workers: Loader workers.
        seed: Seed of the generator; the same seed gives the same data.

    Example:
        >>> dm = SyntheticSpeechDataModule(per_pair=2, per_pair_eval=1)
        >>> [(t.name, t.size, t.role) for t in dm.tasks]
        [('emotion', 5, 'main'), ('speaker', 11, 'adversarial')]
        >>> dm.setup("fit"); len(dm.train_set), len(dm.val_set)
        (110, 55)
    """

    train_set: TensorTaskDataset | None
    val_set: TensorTaskDataset | None
    test_set: TensorTaskDataset | None

    def __init__(
        self,
        num_emotions: int = 5,
        num_speakers: int = 11,
        n_mels: int = 40,
        frames: int = 64,
        emotion_strength: float = 1.5,
        speaker_strength: float = 4.0,
        noise: float = 1.0,
        speaker_region: float = 1.0,
        per_pair: int = 40,
        per_pair_eval: int = 10,
        speaker_role: str = "adversarial",
        speaker_adversary: str = "reversal",
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if per_pair < 1 or per_pair_eval < 1:
            raise ValueError(
                f"per_pair and per_pair_eval must be >= 1, got {per_pair}, {per_pair_eval}"
            )
        self.save_hyperparameters()
        self._tasks = [
            TaskSpec("emotion", num_emotions),
            TaskSpec(
                "speaker",
                num_speakers,
                role=speaker_role,  # type: ignore[arg-type]
                adversary=speaker_adversary,  # type: ignore[arg-type]
            ),
        ]

    def _make_split(self, split: str, seed: int) -> TensorTaskDataset:
        h = self.hparams
        per_pair = h.per_pair if split == "train" else h.per_pair_eval
        emotion = torch.arange(h.num_emotions).repeat_interleave(per_pair).repeat(h.num_speakers)
        speaker = torch.arange(h.num_speakers).repeat_interleave(per_pair * h.num_emotions)
        features = make_speech_features(
            emotion,
            speaker,
            h.num_emotions,
            h.num_speakers,
            h.n_mels,
            h.frames,
            h.emotion_strength,
            h.speaker_strength,
            h.noise,
            seed=h.seed,
            sample_seed=seed,  # the split's own: the splits share speakers, not samples
            speaker_region=h.speaker_region,
        )
        return TensorTaskDataset(features, {"emotion": emotion, "speaker": speaker})
