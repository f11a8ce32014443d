"""Dynamic Weight Average (Liu, Johns & Davison, 2019): weights from the rate of loss descent."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting.base import WeightingStrategy
from mtl_lightning.weighting.static import task_weights, weighted_sum


def dwa_weights(last: Tensor, before_last: Tensor, temperature: float = 2.0) -> Tensor:
    """``w_k = K softmax(r / T)_k`` with ``r_k = L_k(t-1) / L_k(t-2)`` (epoch-mean losses).

    A task whose loss fell less over the last epoch gets more weight. A task whose ratio is
    not finite (no loss in one of the two epochs: NaN) gets weight 1 and the others share the
    rest of ``K`` by the same softmax.

    Example:
        >>> dwa_weights(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 1.0]), temperature=1.0)
        tensor([0.7551, 1.2449])
        >>> dwa_weights(torch.tensor([1.0, 1.0, float("nan")]), torch.tensor([2.0, 1.0, 1.0]),
        ...             temperature=1.0)
        tensor([0.7551, 1.2449, 1.0000])
    """
    ratio = last / before_last
    known = torch.isfinite(ratio)
    weights = torch.ones_like(ratio)
    if bool(known.any()):
        weights[known] = int(known.sum()) * torch.softmax(ratio[known] / temperature, dim=0)
    return weights


class DynamicWeightAverage(WeightingStrategy):
    """DWA: per-epoch weights from the ratio of the last two epoch-mean training losses.

    Every weight is 1 for the first two epochs (no history yet). The host passes the
    epoch-mean losses reduced over DDP ranks, so every rank computes the same weights.
    A task with no loss for an epoch (NaN: no labelled sample) keeps its last two losses, so
    its rate; with fewer than two it has weight 1. Adversarial tasks keep their static weight.

    Args:
        temperature: Softmax temperature ``T``; larger is closer to uniform (paper: 2).

    Example:
        >>> from mtl_lightning.tasks import TaskSpec
        >>> tasks = [TaskSpec("a", 2), TaskSpec("b", 2)]
        >>> d = DynamicWeightAverage(temperature=1.0)
        >>> d.setup(tasks)
        >>> d.on_train_epoch_end({"a": 2.0, "b": 1.0})
        >>> d.on_train_epoch_end({"a": 1.0, "b": 1.0})
        >>> d.current_weights()
        {'a': 0.755081, 'b': 1.244919}
    """

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.names: list[str] = []
        self.register_buffer("history", torch.zeros(2, 0))  # rows: epoch t-2, epoch t-1
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))

    def setup(self, tasks: Sequence[TaskSpec]) -> None:
        self.names = [t.name for t in tasks if not t.adversarial]
        self.history = torch.zeros(2, len(self.names))

    def weights(self) -> Tensor:
        """The main tasks' weights for the current epoch."""
        if int(self.epochs_seen) < 2:
            return torch.ones(len(self.names))
        return dwa_weights(self.history[1], self.history[0], self.temperature)

    def current_weights(self) -> dict[str, float]:
        """The weights of the main tasks now, by name."""
        return {n: round(float(w), 6) for n, w in zip(self.names, self.weights(), strict=True)}

    def on_train_epoch_end(self, epoch_losses: Mapping[str, float]) -> None:
        if not self.training:
            return
        missing = [n for n in self.names if n not in epoch_losses]
        if missing:
            raise KeyError(f"DynamicWeightAverage: no epoch loss for task(s) {missing}")
        latest = torch.tensor([float(epoch_losses[n]) for n in self.names]).to(self.history)
        # a task without a loss this epoch (no labelled sample: NaN) keeps its last two losses,
        # so its rate, and so about its weight, until it has a loss again
        seen = torch.isfinite(latest)
        before = torch.where(seen, self.history[1], self.history[0])
        self.history = torch.stack([before, torch.where(seen, latest, self.history[1])])
        self.epochs_seen += 1

    def forward(self, losses: Mapping[str, Tensor], tasks: Sequence[TaskSpec]) -> Tensor:
        weights = task_weights(self.names, self.weights().tolist(), tasks)
        self.last_weights = weights
        return weighted_sum(losses, weights)
