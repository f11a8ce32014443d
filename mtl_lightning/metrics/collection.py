"""Per-task metric collections (torchmetrics, so DDP synchronisation is built in)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchmetrics import MeanAbsoluteError, MeanSquaredError, Metric, MetricCollection

from mtl_lightning.metrics.confusion import (
    ConfusionAccuracy,
    SharedConfusionBalancedAccuracy,
    SharedConfusionF1,
    confusion_counts,
)
from mtl_lightning.metrics.majority import ClassCounts, majority_rate
from mtl_lightning.metrics.multilabel import (
    LabelCounts,
    MultilabelExact,
    MultilabelF1,
    SharedMultilabelF1,
    label_stats,
)
from mtl_lightning.metrics.shared import SharedStates
from mtl_lightning.tasks import TaskKind, TaskSpec

#: the metric keys logged as ``{stage}/{task}/{key}`` for each task kind (besides ``loss``)
METRIC_KEYS: dict[TaskKind, tuple[str, ...]] = {
    "classification": ("acc", "balanced_acc", "f1"),
    "regression": ("mse", "mae"),
    "multilabel": ("f1_micro", "f1_macro", "exact_match"),
}


def task_metrics(task: TaskSpec) -> MetricCollection:
    """Metrics logged for one task at every stage (keys: :data:`METRIC_KEYS`).

    Classification: ``acc`` (micro), ``balanced_acc`` (macro recall: chance is exactly ``1/K``
    whatever the label imbalance) and ``f1`` (macro), all from the one confusion-matrix state of
    ``acc`` (:mod:`mtl_lightning.metrics.confusion`: one ``bincount`` per update, no
    re-validation of labels the module has already checked; same values as torchmetrics'
    ``Multiclass*`` metrics). Regression: ``mse`` and ``mae``. Multilabel: ``f1_micro`` and
    ``f1_macro`` (from the per-label counts of ``f1_micro``) and ``exact_match``
    (:mod:`mtl_lightning.metrics.multilabel`, threshold 0.5 on the sigmoid). The shared members
    (:mod:`mtl_lightning.metrics.shared`) are not updated: :func:`update_task_metrics` updates
    the members that own a state.

    Example:
        >>> from mtl_lightning.tasks import TaskSpec
        >>> sorted(task_metrics(TaskSpec("emotion", 5)).keys())
        ['acc', 'balanced_acc', 'f1']
        >>> sorted(task_metrics(TaskSpec("tags", 4, kind="multilabel")).keys())
        ['exact_match', 'f1_macro', 'f1_micro']
    """
    k = task.size
    if task.is_classification:
        acc = ConfusionAccuracy(k)
        members: dict[str, Metric] = {
            "acc": acc,
            "balanced_acc": SharedConfusionBalancedAccuracy(acc),
            "f1": SharedConfusionF1(acc),
        }
    elif task.is_multilabel:
        micro = MultilabelF1(k, average="micro")
        members = {
            "f1_micro": micro,
            "f1_macro": SharedMultilabelF1(micro, average="macro"),
            "exact_match": MultilabelExact(k),
        }
    else:
        members = {"mse": MeanSquaredError(), "mae": MeanAbsoluteError()}
    # members are logged one by one: no torchmetrics compute groups (states shared by hand)
    return MetricCollection(members, compute_groups=False)


def training_counts(task: TaskSpec) -> Metric | None:
    """The training-label counts behind a task's baselines: :class:`ClassCounts`
    (classification), :class:`LabelCounts` (multilabel) or None (regression)."""
    if task.is_classification:
        return ClassCounts(task.size)
    return LabelCounts(task.size) if task.is_multilabel else None


def update_task_metrics(
    task: TaskSpec,
    collection: MetricCollection,
    output: Tensor,
    target: Tensor,
    counts: Metric | None = None,
) -> None:
    """Add a batch of labelled samples (head ``output``, ``target``) to the task's metrics,
    and to its training-label ``counts`` when given (training steps)."""
    output = output.detach()
    if task.is_classification:
        # one confusion matrix per batch: the state of acc (read by balanced_acc and f1) and,
        # by its row sums, the training label counts
        confmat = confusion_counts(output, target, task.size)
        _update_owners(collection, counts=confmat)
        if counts is not None:
            counts.update(counts=confmat.sum(dim=1))
        return
    # in at least float32, as the loss (bf16 would round the targets)
    dtype = torch.promote_types(output.dtype, torch.float32)
    if task.is_multilabel:
        _update_owners(collection, stats=label_stats(torch.sigmoid(output.to(dtype)), target))
        if counts is not None:
            counts.update(target)
        return
    collection.update(output.to(dtype), target.reshape(output.shape).to(dtype))


def _update_owners(collection: MetricCollection, **batch: object) -> None:
    """Update the members that own a state with the batch's counts (the others read them)."""
    for metric in collection.values():
        if not isinstance(metric, SharedStates):
            metric.update(**batch)


def task_baselines(
    task: TaskSpec, counts: Metric | None, reduce_sum: Callable[[Tensor], Tensor]
) -> dict[str, float]:
    """The baselines logged as ``{stage}/{task}/{key}``, from the training-label ``counts``
    summed over DDP ranks by ``reduce_sum``.

    Classification: ``chance`` (``1/K``) and, once training labels were counted, ``majority``
    (the majority class's rate). Multilabel: ``baseline``, the ``f1_macro`` of the best constant
    predictor (:func:`~mtl_lightning.metrics.multilabel.constant_f1_macro`), once counted.

    Example:
        >>> counts = ClassCounts(3); counts.update(torch.tensor([0, 1, 1, 1]))
        >>> task_baselines(TaskSpec("a", 3), counts, lambda t: t)
        {'chance': 0.3333333333333333, 'majority': 0.75}
    """
    values: dict[str, float] = {}
    if task.is_classification:
        values["chance"] = task.chance
    if isinstance(counts, ClassCounts):
        value, key = majority_rate(reduce_sum(counts.counts.clone())), "majority"
    elif isinstance(counts, LabelCounts):
        summed = reduce_sum(torch.cat([counts.positives, counts.rows[None]]))
        value, key = LabelCounts.baseline(summed[:-1], summed[-1]), "baseline"
    else:
        return values
    if not torch.isnan(value):
        values[key] = float(value)
    return values
