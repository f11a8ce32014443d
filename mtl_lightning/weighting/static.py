"""Static per-task weights: ``total = sum_k w_k * loss_k`` (the default)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting.base import WeightingStrategy


def weighted_sum(losses: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """Weighted sum of the losses, in the order of ``weights``.

    Example:
        >>> import torch
        >>> weighted_sum({"a": torch.tensor(2.0), "b": torch.tensor(4.0)}, {"a": 1.0, "b": 0.5})
        tensor(4.)
    """
    # a weight of exactly 1 multiplies by nothing (the same value, one op less per task)
    return torch.stack([losses[n] if w == 1.0 else w * losses[n] for n, w in weights.items()]).sum()


def task_weights(
    names: Sequence[str],
    dynamic: Sequence[float],
    tasks: Sequence[TaskSpec],
    digits: int | None = None,
) -> dict[str, float]:
    """Per task of ``tasks``, in their order: the strategy's weight (``dynamic``, in the order
    of ``names``; 1 for a task not among them, an adversary) times its ``TaskSpec.weight``,
    rounded to ``digits`` when given.

    Example:
        >>> tasks = [TaskSpec("a", 2), TaskSpec("s", 4, weight=0.5, role="adversarial")]
        >>> task_weights(["a"], [1.25], tasks)
        {'a': 1.25, 's': 0.5}
    """
    values = dict(zip(names, dynamic, strict=True))
    weights = {t.name: values.get(t.name, 1.0) * t.weight for t in tasks}
    if digits is None:
        return weights
    return {name: round(weight, digits) for name, weight in weights.items()}


class StaticWeighting(WeightingStrategy):
    """Fixed weights; tasks not named in ``weights`` use their ``TaskSpec.weight``.

    Args:
        weights: optional per-task overrides, e.g. ``{"speaker": 0.5}``.

    Example:
        >>> import torch
        >>> from mtl_lightning.tasks import TaskSpec
        >>> tasks = [TaskSpec("a", 2), TaskSpec("b", 3)]
        >>> s = StaticWeighting({"b": 0.5})
        >>> s.setup(tasks)
        >>> s({"a": torch.tensor(2.0), "b": torch.tensor(4.0)}, tasks)
        tensor(4.)
        >>> s.last_weights
        {'a': 1.0, 'b': 0.5}
    """

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.overrides = dict(weights or {})

    def setup(self, tasks: Sequence[TaskSpec]) -> None:
        unknown = set(self.overrides) - {t.name for t in tasks}
        if unknown:
            raise ValueError(f"weights name unknown tasks: {sorted(unknown)}")

    def forward(self, losses: Mapping[str, Tensor], tasks: Sequence[TaskSpec]) -> Tensor:
        # read TaskSpec weights each step: `compare` zeroes the weights of inactive tasks
        weights = {t.name: float(self.overrides.get(t.name, t.weight)) for t in tasks}
        self.last_weights = weights
        return weighted_sum(losses, weights)
