"""Dynamic weights inversely proportional to each task's validation metric."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtl_lightning.metrics.collection import METRIC_KEYS
from mtl_lightning.tasks import TaskKind, TaskSpec
from mtl_lightning.weighting.base import WeightingStrategy
from mtl_lightning.weighting.static import task_weights, weighted_sum

#: metrics for which a higher value is better; anything else (loss, mse, mae) is lower-is-better
HIGHER_IS_BETTER = frozenset({"acc", "balanced_acc", "f1", "f1_micro", "f1_macro", "exact_match"})


def check_metric_keys(owner: str, keys: Mapping[TaskKind, str], tasks: Sequence[TaskSpec]) -> None:
    """Raise ``ValueError`` when the metric chosen for a kind of ``tasks`` is not logged
    for it, naming the metric, the tasks and the metrics each task kind has (``loss`` always).

    Example:
        >>> check_metric_keys("W", {"classification": "bal_acc"}, [TaskSpec("a", 2)])
        Traceback (most recent call last):
        ...
        ValueError: W: metric 'bal_acc' is not logged for classification task(s) ['a']; the metrics are: classification: acc, balanced_acc, f1, loss; regression: mse, mae, loss; multilabel: f1_micro, f1_macro, exact_match, loss
    """
    for kind, key in keys.items():
        names = [t.name for t in tasks if t.kind == kind]
        if names and key not in (*METRIC_KEYS[kind], "loss"):
            known = "; ".join(f"{k}: {', '.join((*v, 'loss'))}" for k, v in METRIC_KEYS.items())
            raise ValueError(
                f"{owner}: metric {key!r} is not logged for {kind} task(s) {names}; "
                f"the metrics are: {known}"
            )


def floored_weights(raw: Tensor, total: float, floor: float) -> Tensor:
    """Weights ``∝ raw`` summing to ``total``, none below ``floor``.

    Weights that would fall below the floor are fixed at it and the others rescaled (still
    ``∝ raw``) to keep the sum, repeatedly until none is below (at most ``K`` rounds).

    Example:
        >>> floored_weights(torch.tensor([1.0, 1e-4]), total=2.0, floor=0.05)
        tensor([1.9500, 0.0500])
    """
    k = raw.numel()
    if floor * k > total:
        raise ValueError(f"a floor of {floor} for {k} weights exceeds their sum {total}")
    fixed = torch.zeros(k, dtype=torch.bool, device=raw.device)
    weights = total * raw / raw.sum()
    for _ in range(k):
        below = (weights < floor) & ~fixed
        if not bool(below.any()):
            break
        fixed |= below
        free = raw.masked_fill(fixed, 0.0)
        budget = total - floor * int(fixed.sum())
        spread = budget * free / free.sum() if bool((free > 0).any()) else free
        weights = torch.where(fixed, torch.full_like(raw, floor), spread)
    return weights


def inverse_metric_weights(
    values: Tensor,
    higher_is_better: bool,
    floor: float = 0.05,
    eps: float = 1e-6,
    previous: Tensor | None = None,
) -> Tensor:
    """Weights summing to ``K``: ``∝ 1 / value`` (higher-is-better) or ``∝ value`` (lower).

    No weight is below ``floor`` (a fraction of the mean weight, 1.0): weights that would be
    are fixed at the floor and the others rescaled to keep the sum ``K``, so no task vanishes.
    A task whose value is not finite (NaN: e.g. no labelled validation sample) keeps its
    ``previous`` weight (default 1); the others share the rest of ``K``.

    Example:
        >>> inverse_metric_weights(torch.tensor([0.9, 0.3]), higher_is_better=True)
        tensor([0.5000, 1.5000])
        >>> inverse_metric_weights(torch.tensor([1.0, 3.0]), higher_is_better=False)
        tensor([0.5000, 1.5000])
        >>> inverse_metric_weights(torch.tensor([0.9, 0.3, float("nan")]), higher_is_better=True)
        tensor([0.5000, 1.5000, 1.0000])
    """
    k = values.numel()
    previous = torch.ones(k) if previous is None else previous.to(torch.float32).clone()
    weights = previous.to(values.device, torch.float32)
    known = torch.isfinite(values)
    if not bool(known.any()):
        return weights
    v = values[known].float()
    raw = 1.0 / v.clamp_min(eps) if higher_is_better else v.clamp_min(eps)
    budget = k - float(weights[~known].sum())
    # previous weights are never below the floor, so the known tasks' share covers theirs
    floor = min(floor, budget / int(known.sum()))
    weights[known] = floored_weights(raw, budget, floor) if floor > 0 else budget * raw / raw.sum()
    return weights


class InverseMetricWeighting(WeightingStrategy):
    """Weights updated at each validation end from the synced ``val/{task}/{metric}`` values.

    A task that is already good gets less weight: ``w_k ∝ 1 / metric_k`` for higher-is-better
    metrics (accuracy), ``w_k ∝ metric_k`` for lower-is-better ones (loss, mse). The new
    weights are normalised to sum to the number of weighted tasks, floored (none below
    ``floor``; the others rescaled to keep the sum), and blended with the old ones:
    ``w ← smoothing * w_old + (1 - smoothing) * w_new``. Before the first validation every
    task has weight 1. A task whose value is NaN (e.g. a regression task without labelled
    validation samples) keeps its weight. Adversarial tasks keep their static weight.

    Args:
        metric: Metric key for classification tasks (``acc``, ``balanced_acc``, ``f1``, ``loss``).
        regression_metric: Metric key for regression tasks (``mse``, ``mae``, ``loss``).
        multilabel_metric: Metric key for multilabel tasks (``f1_macro``, ``f1_micro``,
            ``exact_match``, ``loss``).

    Raises:
        ValueError: at :meth:`setup` (when the model is built), for a metric key that the
            tasks of its kind do not have, or keys of opposite directions for mixed tasks.
        smoothing: Weight of the previous weights in the update (0: use the new ones as is).
        floor: Minimum weight as a fraction of the mean weight (1.0).

    Example:
        >>> from mtl_lightning.tasks import TaskSpec
        >>> tasks = [TaskSpec("a", 2), TaskSpec("b", 2)]
        >>> w = InverseMetricWeighting(metric="acc", smoothing=0.0)
        >>> w.setup(tasks)
        >>> w.on_validation_end({"a": {"acc": 0.9}, "b": {"acc": 0.3}})
        >>> w.current_weights()
        {'a': 0.5, 'b': 1.5}
    """

    def __init__(
        self,
        metric: str = "balanced_acc",
        regression_metric: str = "mse",
        smoothing: float = 0.5,
        floor: float = 0.05,
        multilabel_metric: str = "f1_macro",
    ) -> None:
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        if not 0.0 <= floor < 1.0:
            raise ValueError(f"floor must be in [0, 1), got {floor}")
        self.metric = metric
        self.regression_metric = regression_metric
        self.multilabel_metric = multilabel_metric
        self.smoothing = smoothing
        self.floor = floor
        self.names: list[str] = []
        self.task_keys: dict[str, str] = {}
        self.register_buffer("weights", torch.ones(0))

    def setup(self, tasks: Sequence[TaskSpec]) -> None:
        main = [t for t in tasks if not t.adversarial]
        self.names = [t.name for t in main]
        keys: dict[TaskKind, str] = {
            "classification": self.metric,
            "regression": self.regression_metric,
            "multilabel": self.multilabel_metric,
        }
        check_metric_keys(type(self).__name__, keys, main)
        used = {t.kind: keys[t.kind] for t in main}
        if len({k in HIGHER_IS_BETTER for k in used.values()}) > 1:
            raise ValueError(
                f"the metrics {used} point in different directions; mixed tasks need "
                "lower-is-better metrics only (e.g. 'loss') or higher-is-better ones only"
            )
        self.task_keys = {t.name: keys[t.kind] for t in main}
        self.weights = torch.ones(len(self.names))

    def current_weights(self) -> dict[str, float]:
        """The weights of the main tasks now, by name."""
        return {n: round(float(w), 6) for n, w in zip(self.names, self.weights, strict=True)}

    def on_validation_end(self, metrics: Mapping[str, Mapping[str, float]]) -> None:
        if not self.names:
            return
        values = []
        for name in self.names:
            key = self.task_keys[name]
            if name not in metrics or key not in metrics[name]:
                raise KeyError(
                    f"InverseMetricWeighting: no validation value {key!r} for task {name!r}; "
                    f"available: {sorted(metrics.get(name, {}))}"
                )
            values.append(float(metrics[name][key]))
        higher = self.task_keys[self.names[0]] in HIGHER_IS_BETTER
        # a task without a finite value (no labelled validation sample) keeps its weight
        new = inverse_metric_weights(
            torch.tensor(values), higher, self.floor, previous=self.weights
        )
        self.weights = self.smoothing * self.weights + (1 - self.smoothing) * new.to(self.weights)

    def forward(self, losses: Mapping[str, Tensor], tasks: Sequence[TaskSpec]) -> Tensor:
        # a TaskSpec weight of 0 (compare's inactive tasks) stays 0
        weights = task_weights(self.names, self.weights.tolist(), tasks)
        self.last_weights = weights
        return weighted_sum(losses, weights)
