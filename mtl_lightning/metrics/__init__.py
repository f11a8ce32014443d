"""Metrics: per-task collections, confusion-matrix metrics and the majority-class baseline."""

from mtl_lightning.metrics.collection import task_metrics
from mtl_lightning.metrics.confusion import (
    ConfusionAccuracy,
    ConfusionBalancedAccuracy,
    ConfusionF1,
    accuracy_from_confusion,
    balanced_accuracy_batched,
    balanced_accuracy_from_confusion,
    confusion_counts,
    f1_from_confusion,
)
from mtl_lightning.metrics.loss_mean import LossMean
from mtl_lightning.metrics.majority import ClassCounts, majority_rate

__all__ = [
    "ClassCounts",
    "ConfusionAccuracy",
    "ConfusionBalancedAccuracy",
    "ConfusionF1",
    "LossMean",
    "accuracy_from_confusion",
    "balanced_accuracy_batched",
    "balanced_accuracy_from_confusion",
    "confusion_counts",
    "f1_from_confusion",
    "majority_rate",
    "task_metrics",
]
