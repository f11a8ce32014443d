"""Accuracy, balanced accuracy and macro F1 from one confusion-matrix state.

The three classification metrics logged for every task all derive from the per-class counts of
a ``K x K`` confusion matrix (rows: target, columns: prediction). Each stateful metric below keeps
that matrix (summed across DDP ranks, so synchronisation is exact) and updates it with a single
``bincount`` and no argument validation: the module has already checked the labels
(:func:`mtl_lightning.validation.check_batch`) and removed missing ones (``-100``). A task keeps
one matrix: its ``balanced_acc`` and ``f1`` are :class:`SharedConfusionBalancedAccuracy` and
:class:`SharedConfusionF1`, reading the matrix of its ``acc``
(:mod:`mtl_lightning.metrics.shared`). This is what makes per-step metric updates cheap (one
update per task); the results follow torchmetrics' conventions exactly
(``MulticlassAccuracy(average="micro")``, ``MulticlassRecall(average="macro")``,
``MulticlassF1Score(average="macro")``, ``zero_division=0``): a class that is neither in the
targets nor in the predictions is left out of the macro averages, one that is predicted but
absent from the targets counts with recall 0. One exception: with no sample at all every value
is NaN (torchmetrics says 0), so a task without labelled samples is never scored, nor weighted,
as if it were always wrong.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from mtl_lightning.metrics.shared import SharedStates, shared_state


def confusion_counts(preds: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """``K x K`` confusion matrix (row: target, column: prediction) of a batch.

    Args:
        preds: Logits or probabilities ``[N, K]`` (the arg-max is the prediction) or class
            indices ``[N]``.
        target: Class indices ``[N]`` in ``[0, K)``.
        num_classes: ``K``.

    Example:
        >>> confusion_counts(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 2)
        tensor([[1, 1],
                [0, 1]])
    """
    if preds.ndim == target.ndim + 1:
        preds = preds.argmax(dim=-1)
    # (a product is a new tensor: adding to it in place leaves the target alone)
    index = target.reshape(-1).long().mul(num_classes).add_(preds.reshape(-1).long())
    counts = torch.bincount(index, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes)


def _safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with 0 where ``den == 0`` (torchmetrics' ``zero_division=0``)."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))


def _per_class(confmat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class tp, fp, fn of a ``[..., K, K]`` confusion matrix (or a batch of them)."""
    tp = confmat.diagonal(dim1=-2, dim2=-1)
    return tp, confmat.sum(dim=-2) - tp, confmat.sum(dim=-1) - tp


def _nan_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with NaN where ``den == 0``: a value over no sample is undefined."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))


def _macro(score: Tensor, tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
    present = (tp + fp + fn) > 0  # classes absent from targets and predictions are ignored
    # no class present means no sample: NaN
    return _nan_divide((score * present).sum(-1), present.sum(-1))


def accuracy_from_confusion(confmat: Tensor) -> Tensor:
    """Fraction of correct predictions (micro accuracy); NaN with no samples.

    Example:
        >>> accuracy_from_confusion(torch.tensor([[3, 1], [0, 4]]))
        tensor(0.8750)
        >>> accuracy_from_confusion(torch.zeros(2, 2, dtype=torch.long))
        tensor(nan)
    """
    return _nan_divide(confmat.diagonal().sum(), confmat.sum()).float()


def balanced_accuracy_batched(confmats: Tensor) -> Tensor:
    """Balanced accuracy of each of a batch ``[B, K, K]`` of confusion matrices, in float64
    (used for bootstrap intervals: one matrix per resample); NaN for an empty matrix.

    Example:
        >>> balanced_accuracy_batched(torch.tensor([[[3, 1], [0, 4]], [[2, 0], [0, 2]]]))
        tensor([0.8750, 1.0000], dtype=torch.float64)
    """
    tp, fp, fn = _per_class(confmats)
    return _macro(_safe_divide(tp, tp + fn), tp, fp, fn)


def balanced_accuracy_from_confusion(confmat: Tensor) -> Tensor:
    """Macro-averaged recall: chance is ``1/K`` whatever the label imbalance; NaN with no
    samples.

    Example:
        >>> balanced_accuracy_from_confusion(torch.tensor([[3, 1], [0, 4]]))
        tensor(0.8750)
        >>> balanced_accuracy_from_confusion(torch.tensor([[9, 1], [1, 1]]))
        tensor(0.7000)
        >>> balanced_accuracy_from_confusion(torch.zeros(3, 3, dtype=torch.long))
        tensor(nan)
    """
    return balanced_accuracy_batched(confmat).float()


def f1_from_confusion(confmat: Tensor) -> Tensor:
    """Macro-averaged F1 score; NaN with no samples.

    Example:
        >>> f1_from_confusion(torch.tensor([[2, 0], [0, 2]]))
        tensor(1.)
    """
    tp, fp, fn = _per_class(confmat)
    return _macro(_safe_divide(2 * tp, 2 * tp + fp + fn), tp, fp, fn).float()


class _ConfusionMetric(Metric):
    """Base: a ``K x K`` confusion-matrix state summed across ranks; subclasses reduce it."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True
    confmat: Tensor

    def __init__(self, num_classes: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.num_classes = num_classes
        self.add_state(
            "confmat",
            default=torch.zeros(num_classes, num_classes, dtype=torch.long),
            dist_reduce_fx="sum",
        )

    def update(
        self,
        preds: Tensor | None = None,
        target: Tensor | None = None,
        counts: Tensor | None = None,
    ) -> None:
        """Add a batch: ``preds`` logits ``[N, K]`` or class indices ``[N]`` and ``target``
        ``[N]``; or the batch's ``counts`` (:func:`confusion_counts`), computed once for several
        metrics of the same predictions.

        Example:
            >>> m = ConfusionAccuracy(2)
            >>> m.update(counts=confusion_counts(torch.tensor([0, 1]), torch.tensor([0, 0]), 2))
            >>> m.compute()
            tensor(0.5000)
        """
        if counts is None:
            if preds is None or target is None:
                raise ValueError("update needs preds and target, or counts")
            counts = confusion_counts(preds, target, self.num_classes)
        elif counts.shape != (self.num_classes, self.num_classes):
            raise ValueError(
                f"counts must be {self.num_classes} x {self.num_classes}, got {list(counts.shape)}"
            )
        self.confmat.add_(counts)  # in place, as ``+=`` (but without a module setattr)


class ConfusionAccuracy(_ConfusionMetric):
    """Micro accuracy from a confusion-matrix state.

    Example:
        >>> m = ConfusionAccuracy(3)
        >>> m.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2]))
        >>> m.compute()
        tensor(0.7500)
    """

    def compute(self) -> Tensor:
        return accuracy_from_confusion(self.confmat)


class ConfusionBalancedAccuracy(_ConfusionMetric):
    """Balanced accuracy (macro recall) from a confusion-matrix state.

    Example:
        >>> m = ConfusionBalancedAccuracy(2)
        >>> m.update(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 1]))
        >>> m.compute()
        tensor(0.7500)
    """

    def compute(self) -> Tensor:
        return balanced_accuracy_from_confusion(self.confmat)


class ConfusionF1(_ConfusionMetric):
    """Macro F1 from a confusion-matrix state.

    Example:
        >>> m = ConfusionF1(2)
        >>> m.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
        >>> m.compute()
        tensor(1.)
    """

    def compute(self) -> Tensor:
        return f1_from_confusion(self.confmat)


class _SharedConfusion(SharedStates):
    """Base: a confusion metric reading its ``source``'s matrix (no state of its own)."""

    shared = ("confmat",)
    confmat = shared_state("confmat")

    def __init__(self, source: _ConfusionMetric, **kwargs: Any) -> None:
        super().__init__(source, **kwargs)
        self.num_classes = source.num_classes


class SharedConfusionBalancedAccuracy(_SharedConfusion, ConfusionBalancedAccuracy):
    """:class:`ConfusionBalancedAccuracy` of another confusion metric's matrix: updating the
    source is enough.

    Example:
        >>> acc = ConfusionAccuracy(2)
        >>> balanced = SharedConfusionBalancedAccuracy(acc)
        >>> acc.update(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 1]))
        >>> acc.compute(), balanced.compute()
        (tensor(0.7500), tensor(0.7500))
    """


class SharedConfusionF1(_SharedConfusion, ConfusionF1):
    """:class:`ConfusionF1` of another confusion metric's matrix: updating the source is enough.

    Example:
        >>> acc = ConfusionAccuracy(2)
        >>> f1 = SharedConfusionF1(acc)
        >>> acc.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
        >>> f1.compute()
        tensor(1.)
    """
