"""Per-task metric collections (torchmetrics, so DDP synchronisation is built in)."""

from __future__ import annotations

from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection

from mtl_lightning.metrics.confusion import (
    ConfusionAccuracy,
    ConfusionBalancedAccuracy,
    ConfusionF1,
)
from mtl_lightning.tasks import TaskSpec


def task_metrics(task: TaskSpec) -> MetricCollection:
    """Metrics logged for one task at every stage.

    Classification: ``acc`` (micro), ``balanced_acc`` (macro recall: chance is exactly ``1/K``
    whatever the label imbalance) and ``f1`` (macro), each from a confusion-matrix state
    (:mod:`mtl_lightning.metrics.confusion`: one ``bincount`` per update, no re-validation of
    labels the module has already checked; same values as torchmetrics' ``Multiclass*``
    metrics). Regression: ``mse`` and ``mae``.

    Example:
        >>> from mtl_lightning.tasks import TaskSpec
        >>> sorted(task_metrics(TaskSpec("emotion", 5)).keys())
        ['acc', 'balanced_acc', 'f1']
    """
    if task.is_classification:
        k = task.size
        return MetricCollection(
            {
                "acc": ConfusionAccuracy(k),
                "balanced_acc": ConfusionBalancedAccuracy(k),
                "f1": ConfusionF1(k),
            },
            compute_groups=False,  # members are logged one by one; keep their states separate
        )
    return MetricCollection(
        {"mse": MeanSquaredError(), "mae": MeanAbsoluteError()}, compute_groups=False
    )
