"""Labelled-sample counts read from a task's metric states, logged as ``{stage}/{task}/n``.

The count is the number of samples behind the task's logged metrics (the confusion matrix's
total, the regression metrics' ``total``, the multilabel exact match's rows), so it is exactly
what the metrics saw; it is summed over DDP ranks like the states themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanAbsoluteError, MeanSquaredError, Metric

from mtl_lightning.metrics.confusion import _ConfusionMetric
from mtl_lightning.metrics.multilabel import MultilabelExact


def labelled_count(collection: Mapping[str, Metric]) -> Tensor:
    """Labelled samples in a task's metric collection (:func:`task_metrics`), on this rank.

    Raises:
        TypeError: no member of ``collection`` keeps a sample count.

    Example:
        >>> from mtl_lightning.metrics import task_metrics
        >>> from mtl_lightning.tasks import TaskSpec
        >>> col = task_metrics(TaskSpec("a", 3))
        >>> int(labelled_count(col))
        0
        >>> col.update(torch.tensor([0, 2, 2]), torch.tensor([0, 1, 2]))
        >>> int(labelled_count(col))
        3
    """
    for metric in collection.values():
        if isinstance(metric, _ConfusionMetric):
            return metric.confmat.sum()
        if isinstance(metric, MultilabelExact):
            return metric.total.sum()
        if isinstance(metric, (MeanSquaredError, MeanAbsoluteError)):
            return metric.total.sum()
    raise TypeError(f"no sample count in the metrics {sorted(collection)}")


def labelled_counts(
    collections: Mapping[str, Mapping[str, Metric]], reduce_sum: Callable[[Tensor], Tensor]
) -> dict[str, int]:
    """Each task's :func:`labelled_count`, summed over ranks by ``reduce_sum`` (one call).

    Example:
        >>> from mtl_lightning.metrics import task_metrics
        >>> from mtl_lightning.tasks import TaskSpec
        >>> tasks = [TaskSpec("a", 2), TaskSpec("r", 1, kind="regression")]
        >>> cols = {t.name: task_metrics(t) for t in tasks}
        >>> cols["r"].update(torch.zeros(4), torch.ones(4))
        >>> labelled_counts(cols, lambda t: 2 * t)  # two ranks holding the same
        {'a': 0, 'r': 8}
    """
    if not collections:
        return {}
    local = torch.stack([labelled_count(c).to(torch.long) for c in collections.values()])
    summed = reduce_sum(local).tolist()
    return dict(zip(collections, (int(n) for n in summed), strict=True))


def log_labelled_counts(module: Any, stage: str) -> None:
    """Log ``{stage}/{task}/n`` for every task of a :class:`~mtl_lightning.MultiTaskModule`
    at the end of a stage's epoch (before its metrics are reset): the labelled samples behind
    the task's metrics (an attacker ensemble's: its first attacker's, as all see the same).
    A collective under DDP: every rank calls it, in the same order."""
    from mtl_lightning.callbacks.collective_order import log_replicated  # (import cycle)

    collections: dict[str, Mapping[str, Metric]] = {}
    for task in module.tasks:
        if task.name in module.adversaries:
            collections[task.name] = module.attacker_metrics.metrics[f"{stage}_stage"][task.name][0]
        else:
            collections[task.name] = module.stage_metrics[f"{stage}_metrics"][task.name]
    for name, n in labelled_counts(collections, module._reduce_sum).items():
        log_replicated(module, f"{stage}/{name}/n", float(n))
