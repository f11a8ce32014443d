"""Per-task metric collections (torchmetrics, so DDP synchronisation is built in)."""

from __future__ import annotations

from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassRecall

from mtl_lightning.tasks import TaskSpec


def task_metrics(task: TaskSpec) -> MetricCollection:
    """Metrics logged for one task at every stage.

    Classification: ``acc`` (micro), ``balanced_acc`` (macro recall: chance is exactly ``1/K``
    whatever the label imbalance) and ``f1`` (macro). Regression: ``mse`` and ``mae``.

    Example:
        >>> from mtl_lightning.tasks import TaskSpec
        >>> sorted(task_metrics(TaskSpec("emotion", 5)).keys())
        ['acc', 'balanced_acc', 'f1']
    """
    if task.is_classification:
        k = task.size
        return MetricCollection(
            {
                "acc": MulticlassAccuracy(k, average="micro"),
                "balanced_acc": MulticlassRecall(k, average="macro"),
                "f1": MulticlassF1Score(k, average="macro"),
            },
            compute_groups=False,  # members are logged one by one; keep their states separate
        )
    return MetricCollection(
        {"mse": MeanSquaredError(), "mae": MeanAbsoluteError()}, compute_groups=False
    )
