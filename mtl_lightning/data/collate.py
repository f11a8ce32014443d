"""A batch of an in-memory dataset from one index per tensor, instead of one sample at a time.

A ``DataLoader`` fetches a batch as ``[dataset[i] for i in indices]`` and collates it with
``default_collate``: for a ``TensorTaskDataset`` of five tasks and batch 64 that is 384 tensor
indexings and six stacks, about 1 ms on the dense five-task model, whose whole training step
takes 4 ms. The loader asks a dataset with ``__getitems__`` for the batch's samples at once
instead; :class:`StackedSamples` answers with the samples (any ``collate_fn`` can read them one by
one) and :func:`collate_samples` takes the batch they make in one indexing per tensor, equal to
``default_collate``'s in values, dtypes and shapes (``tests/data/test_collate.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, overload

import torch
from torch import Tensor
from torch.utils.data import default_collate

__all__ = ["StackedSamples", "collate_samples"]


class StackedSamples(Sequence[dict[str, Any]]):
    """The samples ``indices`` of a dataset of ``features`` and per-task ``targets`` tensors,
    as a ``DataLoader`` hands them to its ``collate_fn``: a sequence of the per-sample dicts
    (built when read), and :meth:`batch`, what ``default_collate`` makes of them.

    Example:
        >>> x, y = torch.arange(6.0).reshape(3, 2), {"a": torch.tensor([0, 1, 0])}
        >>> samples = StackedSamples(x, y, [2, 0])
        >>> len(samples), samples[0]["targets"]["a"].item()
        (2, 0)
        >>> samples.batch()["features"].tolist()
        [[4.0, 5.0], [0.0, 1.0]]
    """

    def __init__(
        self, features: Tensor, targets: Mapping[str, Tensor], indices: Sequence[int]
    ) -> None:
        self.features = features
        self.targets = targets
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        index = self.indices[i]
        return {
            "features": self.features[index],
            "targets": {name: y[index] for name, y in self.targets.items()},
        }

    def batch(self) -> dict[str, Any]:
        """``{"features": [B, ...], "targets": {task: [B, ...]}}``: one ``index_select`` per
        tensor (its rows, in the order of ``indices``)."""
        index = torch.as_tensor(self.indices, dtype=torch.long)
        if self.features.device != index.device:
            index = index.to(self.features.device)
        return {
            "features": self.features.index_select(0, index),
            "targets": {
                name: y.index_select(0, index.to(y.device)) for name, y in self.targets.items()
            },
        }


def collate_samples(samples: Sequence[Any]) -> Any:
    """The batch of :class:`StackedSamples` in one indexing per tensor; anything else through
    ``default_collate``. The ``collate_fn`` of the package's loaders.

    Example:
        >>> samples = StackedSamples(torch.zeros(4, 3), {"a": torch.tensor([0, 1, 1, 0])}, [3, 1])
        >>> collate_samples(samples)["targets"]["a"].tolist()
        [0, 1]
        >>> collate_samples([{"x": torch.tensor(1)}, {"x": torch.tensor(2)}])["x"].tolist()
        [1, 2]
    """
    if isinstance(samples, StackedSamples):
        return samples.batch()
    return default_collate(samples)
