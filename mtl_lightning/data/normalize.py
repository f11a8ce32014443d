"""`FeatureNorm`: per-feature mean/std from training frames (global) or per speaker."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = ["FeatureNorm", "NormMode"]

NormMode = Literal["global", "per_speaker", "none"]
_EPS = 1e-5


def _moments(items: Sequence[Any]) -> tuple[Tensor, Tensor]:
    """Mean and std per feature row over all frames of ``items`` (each ``[F, T]``), in float64.

    Items that are not tensors are handles to stored features (``.load()``, ``.location``:
    :class:`~mtl_lightning.data.shards.ShardItem`): they are read one at a time in storage
    order and merged as they come (:func:`_streamed_moments`), so memory stays flat.
    """
    if not all(isinstance(x, Tensor) for x in items):
        return _streamed_moments(items)[None]
    frames = torch.cat([x.to(torch.float64) for x in items], dim=1)
    mean = frames.mean(dim=1)
    std = frames.var(dim=1, unbiased=False).sqrt().clamp_min(_EPS)
    return mean.to(torch.float32), std.to(torch.float32)


class _Moments:
    """Running per-row mean and sum of squared deviations of ``[F, T]`` items (float64), merged
    with Chan et al.'s pairwise update: equal to the two-pass result up to rounding."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, torch.zeros(0, dtype=torch.float64), None

    def add(self, x: Tensor) -> None:
        x = x.to(torch.float64)
        n, mu = x.shape[1], x.mean(dim=1)
        sq = ((x - mu[:, None]) ** 2).sum(dim=1)
        if self.m2 is None:
            self.count, self.mean, self.m2 = n, mu, sq
            return
        delta, total = mu - self.mean, self.count + n
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + sq + delta**2 * (self.count * n / total)
        self.count = total

    def result(self) -> tuple[Tensor, Tensor]:
        assert self.m2 is not None, "no items"
        std = (self.m2 / self.count).sqrt().clamp_min(_EPS)
        return self.mean.to(torch.float32), std.to(torch.float32)


def _streamed_moments(
    items: Sequence[Any], groups: Sequence[Hashable] | None = None
) -> dict[Hashable, tuple[Tensor, Tensor]]:
    """Mean and std per group (all items in group ``None`` without ``groups``), in one pass
    over the items in storage order (each chunk of a shard is then decoded once).

    Example:
        >>> x = [torch.tensor([[1.0, 2.0]]), torch.tensor([[4.0, 5.0, 6.0]])]
        >>> [t.tolist() for t in _streamed_moments(x)[None]] == [t.tolist() for t in _moments(x)]
        True
    """
    keys = list(groups) if groups is not None else [None] * len(items)
    order = range(len(items))
    if hasattr(items[0], "location"):
        order = sorted(order, key=lambda i: items[i].location)
    acc: dict[Hashable, _Moments] = {}
    for i in order:
        x = items[i] if isinstance(items[i], Tensor) else items[i].load()
        acc.setdefault(keys[i], _Moments()).add(x)
    return {k: a.result() for k, a in acc.items()}


def _speaker_moments(
    items: Sequence[Any], speakers: Sequence[str | None]
) -> dict[str, tuple[Tensor, Tensor]]:
    """:func:`_moments` of each speaker's items (rows without a speaker are left out); stored
    items in one pass for all speakers."""
    kept = [(x, s) for x, s in zip(items, speakers, strict=True) if s is not None]
    if not kept:
        return {}
    if not all(isinstance(x, Tensor) for x, _ in kept):
        found = _streamed_moments([x for x, _ in kept], [s for _, s in kept])
        return {str(s): m for s, m in found.items()}
    grouped: dict[str, list[Tensor]] = defaultdict(list)
    for x, s in kept:
        grouped[s].append(x)
    return {s: _moments(group) for s, group in grouped.items()}


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
            self.speakers = _speaker_moments([*train, *everything], [*train_speakers, *speakers])

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
        new = [(x, s) for x, s in zip(items, speakers, strict=True) if s not in self.speakers]
        self.speakers |= _speaker_moments([x for x, _ in new], [s for _, s in new])

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
