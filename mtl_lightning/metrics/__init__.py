"""Metrics: per-task collections (one state per task, shared by its logged metrics),
confusion-matrix and multilabel metrics, and the baselines."""

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
    SharedConfusionBalancedAccuracy,
    SharedConfusionF1,
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
    LabelStats,
    MultilabelExact,
    MultilabelF1,
    SharedMultilabelF1,
    constant_f1_macro,
    label_stats,
    multilabel_f1,
)
from mtl_lightning.metrics.shared import SharedStates

__all__ = [
    "METRIC_KEYS",
    "ClassCounts",
    "ConfusionAccuracy",
    "ConfusionBalancedAccuracy",
    "ConfusionF1",
    "LabelCounts",
    "LabelStats",
    "LossMean",
    "MultilabelExact",
    "MultilabelF1",
    "SharedConfusionBalancedAccuracy",
    "SharedConfusionF1",
    "SharedMultilabelF1",
    "SharedStates",
    "accuracy_from_confusion",
    "balanced_accuracy_batched",
    "balanced_accuracy_from_confusion",
    "confusion_counts",
    "constant_f1_macro",
    "f1_from_confusion",
    "label_stats",
    "labelled_count",
    "labelled_counts",
    "majority_rate",
    "multilabel_f1",
    "task_baselines",
    "task_metrics",
    "training_counts",
    "update_task_metrics",
]
