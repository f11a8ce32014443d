"""`FeatureNorm`: per-feature mean/std from training frames (global) or per speaker."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = ["FeatureNorm", "NormMode"]

NormMode = Literal["global", "per_speaker", "none"]
_EPS = 1e-5


def _moments(items: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Mean and std per feature row over all frames of ``items`` (each ``[F, T]``), in float64."""
    frames = torch.cat([x.to(torch.float64) for x in items], dim=1)
    mean = frames.mean(dim=1)
    std = frames.var(dim=1, unbiased=False).sqrt().clamp_min(_EPS)
    return mean.to(torch.float32), std.to(torch.float32)


class FeatureNorm:
    """Standardise ``[F, T]`` features per feature row.

    ``global``: one mean/std from the training split's frames (the usual choice; no speaker
    information is removed). ``per_speaker``: each speaker's features are standardised with
    that speaker's own statistics (all of its utterances, including val/test ones). That alone
    removes much speaker information (pitch and formant offsets, loudness), so it is a useful
    *baseline* against which to judge a speaker adversary. ``none``: leave features as they are.

    Example:
        >>> norm = FeatureNorm("global")
        >>> norm.fit([torch.tensor([[1.0, 3.0], [0.0, 0.0]])], [None])
        >>> norm(torch.tensor([[3.0], [0.0]])).flatten().tolist()
        [1.0, 0.0]
    """

    def __init__(self, mode: NormMode = "global") -> None:
        if mode not in ("global", "per_speaker", "none"):
            raise ValueError(f"normalize must be global, per_speaker or none, got {mode!r}")
        self.mode = mode
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self.speakers: dict[str, tuple[Tensor, Tensor]] = {}

    def fit(
        self,
        train: Sequence[Tensor],
        train_speakers: Sequence[str | None],
        everything: Sequence[Tensor] = (),
        speakers: Sequence[str | None] = (),
    ) -> None:
        """Global statistics from ``train``; per-speaker ones from every utterance given."""
        if not train:
            raise ValueError("cannot compute normalisation statistics: the training split is empty")
        self.mean, self.std = _moments(train)
        if self.mode == "per_speaker":
            grouped: dict[str, list[Tensor]] = defaultdict(list)
            for x, s in zip([*train, *everything], [*train_speakers, *speakers], strict=True):
                if s is not None:
                    grouped[s].append(x)
            self.speakers = {s: _moments(items) for s, items in grouped.items()}

    @property
    def fitted(self) -> bool:
        """Whether statistics are there (from :meth:`fit` or :meth:`load_state_dict`)."""
        return self.mode == "none" or self.mean is not None

    def add_speakers(self, items: Sequence[Tensor], speakers: Sequence[str | None]) -> None:
        """``per_speaker``: statistics of the speakers that have none yet, from their ``items``.

        After :meth:`load_state_dict` (a checkpoint's statistics), new speakers are then
        standardised by their own statistics, as unseen val/test speakers were in training.
        """
        if self.mode != "per_speaker":
            return
        grouped: dict[str, list[Tensor]] = defaultdict(list)
        for x, s in zip(items, speakers, strict=True):
            if s is not None and s not in self.speakers:
                grouped[s].append(x)
        self.speakers |= {s: _moments(group) for s, group in grouped.items()}

    def __call__(self, x: Tensor, speaker: str | None = None) -> Tensor:
        if self.mode == "none":
            return x
        if self.mode == "per_speaker" and speaker in self.speakers:
            mean, std = self.speakers[speaker]
        elif self.mean is not None and self.std is not None:
            mean, std = self.mean, self.std
        else:
            raise RuntimeError(
                "FeatureNorm used before fit() or load_state_dict(): no training rows to compute "
                "normalisation statistics from; predict from a checkpoint (ckpt_path), whose "
                "statistics are restored, or with a datamodule that was set up for fitting"
            )
        if mean.shape[0] != x.shape[0]:
            raise ValueError(f"features have {x.shape[0]} rows, statistics {mean.shape[0]}")
        return (x - mean[:, None]) / std[:, None]

    def state_dict(self) -> dict[str, Any]:
        """Mode and statistics (tensors and plain types only: safe for ``weights_only`` loads)."""
        return {
            "mode": self.mode,
            "mean": self.mean,
            "std": self.std,
            "speakers": {s: [m, d] for s, (m, d) in self.speakers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the mode of the saved run wins)."""
        self.mode = state["mode"]
        self.mean, self.std = state["mean"], state["std"]
        self.speakers = {s: (m, d) for s, (m, d) in state["speakers"].items()}

    def to_json(self) -> dict[str, Any]:
        """Statistics as lists, for ``feature_stats.json`` in the run directory."""
        as_list = lambda t: None if t is None else [round(float(v), 6) for v in t]  # noqa: E731
        return {
            "mode": self.mode,
            "mean": as_list(self.mean),
            "std": as_list(self.std),
            "speakers": {
                s: {"mean": as_list(m), "std": as_list(d)} for s, (m, d) in self.speakers.items()
            },
        }
