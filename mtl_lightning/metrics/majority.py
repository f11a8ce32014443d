"""Majority-class rate: the accuracy of always predicting the most frequent label."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


def majority_rate(counts: Tensor) -> Tensor:
    """Fraction of samples in the most frequent class; NaN when there are no samples.

    Example:
        >>> majority_rate(torch.tensor([2, 6, 2]))
        tensor(0.6000)
    """
    total = counts.sum()
    if total == 0:
        return torch.tensor(float("nan"))
    return counts.max().float() / total.float()


class ClassCounts(Metric):
    """Per-class label counts, summed across DDP ranks; ``compute()`` gives the majority rate.

    Example:
        >>> m = ClassCounts(num_classes=3)
        >>> m.update(torch.tensor([0, 1, 1, 1]))
        >>> m.compute()
        tensor(0.7500)
    """

    full_state_update = False
    counts: Tensor

    def __init__(self, num_classes: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.add_state(
            "counts",
            default=torch.zeros(num_classes, dtype=torch.long),
            dist_reduce_fx="sum",
            persistent=True,
        )

    def update(self, target: Tensor | None = None, counts: Tensor | None = None) -> None:
        """Add a batch of class indices ``target``, or its per-class ``counts`` (``[K]``, e.g.
        the row sums of the batch's confusion matrix)."""
        if counts is None:
            if target is None:
                raise ValueError("update needs target or counts")
            counts = torch.bincount(target.long().flatten(), minlength=self.num_classes)
        elif counts.shape != (self.num_classes,):
            raise ValueError(
                f"counts must have {self.num_classes} entries, got {list(counts.shape)}"
            )
        self.counts.add_(counts)  # in place, as ``+=`` (without its module setattr)

    def compute(self) -> Tensor:
        return majority_rate(self.counts)
