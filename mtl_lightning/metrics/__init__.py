"""Metrics: per-task collections, confusion-matrix and multilabel metrics, and the baselines."""

from mtl_lightning.metrics.collection import (
    METRIC_KEYS,
    task_baselines,
    task_metrics,
    training_counts,
    update_task_metrics,
)
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
from mtl_lightning.metrics.labelled import labelled_count, labelled_counts
from mtl_lightning.metrics.loss_mean import LossMean
from mtl_lightning.metrics.majority import ClassCounts, majority_rate
from mtl_lightning.metrics.multilabel import (
    LabelCounts,
    MultilabelExact,
    MultilabelF1,
    constant_f1_macro,
    multilabel_f1,
)

__all__ = [
    "METRIC_KEYS",
    "ClassCounts",
    "ConfusionAccuracy",
    "ConfusionBalancedAccuracy",
    "ConfusionF1",
    "LabelCounts",
    "LossMean",
    "MultilabelExact",
    "MultilabelF1",
    "accuracy_from_confusion",
    "balanced_accuracy_batched",
    "balanced_accuracy_from_confusion",
    "confusion_counts",
    "constant_f1_macro",
    "f1_from_confusion",
    "labelled_count",
    "labelled_counts",
    "majority_rate",
    "multilabel_f1",
    "task_baselines",
    "task_metrics",
    "training_counts",
    "update_task_metrics",
]
