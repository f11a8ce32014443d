"""`UtteranceDataset` (variable-length features, cropped or whole), `pad_collate` (padding and
masks), and the split datasets of :class:`~mtl_lightning.data.audio.AudioFeatureDataModule`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from mtl_lightning.data.image_sets import sample_seed
from mtl_lightning.data.normalize import FeatureNorm
from mtl_lightning.data.vocab import LabelVocab

__all__ = [
    "UtteranceDataset",
    "build_datasets",
    "check_crop_frames",
    "crop_or_pad",
    "pad_collate",
    "split_members",
]

SPLITS = ("train", "val", "test")


def check_crop_frames(crop_frames: int | None) -> None:
    """A ``ValueError`` unless ``crop_frames`` is ``None`` (whole utterances) or >= 1."""
    if crop_frames is not None and crop_frames < 1:
        raise ValueError(f"crop_frames must be >= 1 or None, got {crop_frames}")


def crop_or_pad(x: Tensor, frames: int, start: int | None = None) -> Tensor:
    """``x[..., start:start+frames]`` (centre crop when ``start`` is None), zero-padded at the end.

    Example:
        >>> crop_or_pad(torch.arange(5.0)[None], 3).tolist(), crop_or_pad(torch.ones(1, 2), 3).tolist()
        ([[1.0, 2.0, 3.0]], [[1.0, 1.0, 0.0]])
    """
    length = x.shape[-1]
    if length < frames:
        return F.pad(x, (0, frames - length))
    if start is None:
        start = (length - frames) // 2
    return x[..., start : start + frames]


class UtteranceDataset(Dataset):
    """Features ``[F, T_i]`` of utterances with per-task labels, normalised when read.

    Items are ``{"features": [1, F, T], "targets": {task: label}, "index": row}``. With
    ``crop_frames`` every item has ``T = crop_frames``: the centre, or in ``train`` with a key
    ``(index, epoch)`` (from :class:`~mtl_lightning.data.image_sets.EpochTaggedSampler`) a
    random window drawn from :func:`~mtl_lightning.data.image_sets.sample_seed` ``(seed,
    epoch, index)``, so a sample's crop is the same with any number of workers or processes and
    in a resumed run, and the global RNG is not touched. Shorter utterances are zero-padded,
    i.e. padded with the mean after normalisation. Without ``crop_frames``, items keep their
    length and :func:`pad_collate` pads batches.
    Targets are looked up at read time, so re-encoding labels (a checkpoint's vocabulary)
    after construction takes effect.

    Example:
        >>> ds = UtteranceDataset([torch.zeros(4, 7)], {"a": torch.tensor([1])}, FeatureNorm("none"),
        ...                       [None], [12], crop_frames=5)
        >>> item = ds[0]; item["features"].shape, item["targets"]["a"].item(), item["index"]
        (torch.Size([1, 4, 5]), 1, 12)
    """

    def __init__(
        self,
        features: Sequence[Tensor],
        targets: Mapping[str, Tensor],
        norm: FeatureNorm,
        speakers: Sequence[str | None],
        rows: Sequence[int],
        crop_frames: int | None = None,
        train: bool = False,
        seed: int = 0,
    ) -> None:
        self.seed = seed
        self.features = list(features)
        self.targets = dict(targets)
        self.norm = norm
        self.speakers = list(speakers)
        self.rows = list(rows)
        self.crop_frames = crop_frames
        self.train = train

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, None)
        x = self.features[index]
        if not isinstance(x, Tensor):  # a handle to stored features (streaming): read them
            x = x.load()
        x = self.norm(x, self.speakers[index])
        if self.crop_frames is not None:
            start = None
            if self.train and epoch is not None and x.shape[-1] > self.crop_frames:
                g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
                start = int(torch.randint(0, x.shape[-1] - self.crop_frames + 1, (), generator=g))
            x = crop_or_pad(x, self.crop_frames, start)
        return {
            "features": x.unsqueeze(0),
            "targets": {t: y[index] for t, y in self.targets.items()},
            "index": self.rows[index],
        }


def pad_collate(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack items, zero-padding features to the longest; ``mask[b, t]`` is True on real frames.

    Example:
        >>> items = [{"features": torch.ones(1, 2, n), "targets": {"a": torch.tensor(0)}, "index": n}
        ...          for n in (3, 5)]
        >>> batch = pad_collate(items)
        >>> batch["features"].shape, batch["mask"].sum(1).tolist(), batch["index"].tolist()
        (torch.Size([2, 1, 2, 5]), [3, 5], [3, 5])
    """
    lengths = torch.tensor([item["features"].shape[-1] for item in items])
    longest = int(lengths.max())
    features = torch.stack([crop_or_pad(item["features"], longest) for item in items])
    tasks = items[0]["targets"].keys()
    return {
        "features": features,
        "targets": {t: torch.stack([item["targets"][t] for item in items]) for t in tasks},
        "mask": torch.arange(longest)[None, :] < lengths[:, None],
        "index": torch.tensor([item["index"] for item in items]),
    }


def split_members(names: Sequence[str], features: Sequence[Tensor | None]) -> dict[str, list[int]]:
    """The rows of each split (``train``, ``val``, ``test``) that have features.

    Example:
        >>> split_members(["train", "val", "train", "test"], [torch.zeros(1), None, torch.zeros(1), None])
        {'train': [0, 2], 'val': [], 'test': []}
    """
    return {
        s: [i for i, n in enumerate(names) if n == s and features[i] is not None] for s in SPLITS
    }


def build_datasets(
    features: Sequence[Tensor | None],
    labels: Mapping[str, Sequence[str | None]],
    vocab: LabelVocab,
    norm: FeatureNorm,
    speakers: Sequence[str | None],
    members: Mapping[str, list[int]],
    crop_frames: int | None,
    unknown: Literal["raise", "missing"] = "raise",
    order: Callable[[int], Any] | None = None,
    seed: int = 0,
) -> dict[str, UtteranceDataset]:
    """One dataset per split in ``members`` and ``all`` (every member row); rows in row order,
    or sorted by ``order(row)`` (streaming: by storage location, so that reading a split in
    order reads each chunk once); labels encoded with ``vocab`` (``unknown`` as in
    :meth:`LabelVocab.encode`), random crops in ``train`` only."""
    datasets = {}
    splits = [*members.items(), ("all", sorted(sum(members.values(), [])))]
    for name, rows in splits:
        idx = rows if order is None else sorted(rows, key=order)
        datasets[name] = UtteranceDataset(
            [features[i] for i in idx],  # type: ignore[misc]
            {t: vocab.encode(t, [labels[t][i] for i in idx], unknown) for t in labels},
            norm,
            [speakers[i] for i in idx],
            idx,
            crop_frames=crop_frames,
            train=name == "train",
            seed=seed,
        )
    return datasets
