"""`LossMean`: torchmetrics' ``MeanMetric`` with a fast update for one finite scalar loss."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import MeanMetric


class LossMean(MeanMetric):
    """A weighted mean of per-batch losses: ``MeanMetric`` (same states, so checkpoints and DDP
    reduction are unchanged) whose update of one finite scalar with a number weight skips the
    general path's broadcasting and NaN handling (a third of its cost on a training step).
    Anything else, a NaN loss included (warned about and left out, as ``MeanMetric`` does),
    takes ``MeanMetric``'s own update.

    Example:
        >>> m = LossMean()
        >>> m.update(torch.tensor(2.0), 3)
        >>> m.update(torch.tensor(4.0), 1)
        >>> m.compute()
        tensor(2.5000)
    """

    def update(self, value: float | Tensor, weight: float | Tensor | None = None) -> None:
        if (
            isinstance(value, Tensor)
            and value.numel() == 1
            and isinstance(weight, (int, float))
            and math.isfinite(weight)
            and bool(torch.isfinite(value))
        ):
            # in place, as ``+=``, without its module setattr (a few us per call)
            self.mean_value.add_(value.reshape(()).to(self.mean_value.dtype) * weight)
            self.weight.add_(weight)
            return
        super().update(value, weight)
