"""`ImageDataset` (decoded images, normalised when read, augmented in training) and the
epoch-tagged sampler that makes the augmentation a function of ``(seed, epoch, sample)``.

Training augmentation draws from torch's global RNG (torchvision's random transforms do), so by
itself it would depend on which worker reads a sample, and a resumed run would draw other
crops than the original did. Here the training sampler yields ``(index, epoch)`` pairs and each
sample is augmented under its own seed, :func:`sample_seed`, inside
:func:`torch.random.fork_rng`: the same sample in the same epoch gets the same augmentation
with 0 or 8 workers, one process or two, uninterrupted or resumed, and the global RNG (dropout)
is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mtl_lightning.data.base import ResumableSampler

__all__ = ["EpochTaggedSampler", "ImageDataset", "sample_seed"]

Augment = Callable[[Tensor], Tensor]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` (distinct for distinct inputs).

    Example:
        >>> sample_seed(0, 0, 1) != sample_seed(0, 1, 0), sample_seed(3, 2, 1) == sample_seed(3, 2, 1)
        (True, True)
    """
    return ((seed * 1_000_003 + epoch) * 1_000_000_007 + index) % (2**63 - 1)


class EpochTaggedSampler(ResumableSampler):
    """A :class:`ResumableSampler` that yields ``(index, epoch)``: same order, same shards.

    Example:
        >>> s = EpochTaggedSampler(range(4), seed=1); s.set_epoch(2)
        >>> plain = ResumableSampler(range(4), seed=1); plain.set_epoch(2)
        >>> [i for i, _ in s] == list(plain), {e for _, e in s}
        (True, {2})
    """

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = int(self.epoch)
        return ((int(i), epoch) for i in super().__iter__())


class ImageDataset(Dataset):
    """``uint8`` images ``[C, H, W]`` with per-task labels; items are normalised float images.

    Items are ``{"features": [C, H, W] float32, "targets": {task: label}, "index": row}``,
    ``features = (image / 255 - mean) / std``. With ``augment`` (training), a key
    ``(index, epoch)`` (from :class:`EpochTaggedSampler`) augments the ``uint8`` image under
    :func:`sample_seed`; a plain ``index`` is never augmented (evaluation, predict).

    Example:
        >>> images = [torch.full((1, 2, 2), 255, dtype=torch.uint8)]
        >>> ds = ImageDataset(images, {"a": torch.tensor([1])}, [7], mean=[0.5], std=[0.5])
        >>> item = ds[0]; item["features"].flatten().tolist(), item["targets"]["a"].item(), item["index"]
        ([1.0, 1.0, 1.0, 1.0], 1, 7)
    """

    def __init__(
        self,
        images: Sequence[Tensor],
        targets: Mapping[str, Tensor],
        rows: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        augment: Augment | None = None,
        seed: int = 0,
    ) -> None:
        for name, y in targets.items():
            if y.shape[0] != len(images):
                raise ValueError(f"task {name!r}: {y.shape[0]} labels for {len(images)} images")
        self.images = list(images)
        self.targets = dict(targets)
        self.rows = list(rows)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, None)
        image = self.images[index]
        if self.augment is not None and epoch is not None:
            image = self._augmented(image, index, epoch)
        x = (image.to(torch.float32) / 255.0 - self.mean) / self.std
        return {
            "features": x,
            "targets": {t: y[index] for t, y in self.targets.items()},
            "index": self.rows[index],
        }

    def _augmented(self, image: Tensor, index: int, epoch: int) -> Tensor:
        assert self.augment is not None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            out = self.augment(image)
        if not isinstance(out, Tensor) or out.shape != image.shape or out.dtype != image.dtype:
            got = (
                f"{out.dtype} {list(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
            )
            raise ValueError(
                f"augment must return the image as it got it ({image.dtype} "
                f"{list(image.shape)}, i.e. [channels, image_size, image_size]); got {got} "
                f"for row {self.rows[index]}: resize or crop back to image_size"
            )
        return out
