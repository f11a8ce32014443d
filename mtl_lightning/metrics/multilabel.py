"""Multilabel metrics (torchmetrics state, NaN where undefined) and the constant-predictor baseline.

``f1_micro``, ``f1_macro`` and ``exact_match`` keep torchmetrics' ``MultilabelF1Score`` /
``MultilabelExactMatch`` states and updates (so DDP sync is built in; predictions thresholded at
0.5), but reduce them with the conventions of :mod:`mtl_lightning.metrics.confusion`: a label
that is neither in the targets nor in the predictions is left out of the macro average
(torchmetrics counts it as 0), and a value that cannot be computed (no sample; nothing positive
in targets or predictions) is NaN, not 0. A task keeps one set of per-label counts (its
``f1_macro`` is a :class:`SharedMultilabelF1` of its ``f1_micro``'s) and counts a batch once
(:func:`label_stats`, handed to both updates instead of torchmetrics' validated ones: the module
has checked the targets).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MultilabelExactMatch, MultilabelF1Score

from mtl_lightning.metrics.shared import SharedStates, shared_state


class LabelStats(NamedTuple):
    """A batch's per-label counts ``[L]`` (torchmetrics' stat scores) and exact matches."""

    tp: Tensor
    fp: Tensor
    tn: Tensor
    fn: Tensor
    #: rows with every label right
    exact: Tensor
    rows: int
    threshold: float


def label_stats(probs: Tensor, target: Tensor, threshold: float = 0.5) -> LabelStats:
    """Count a batch once for every multilabel metric: ``probs`` ``[N, L]`` in ``[0, 1]``
    (positive above ``threshold``, as torchmetrics) and ``target`` ``[N, L]`` of 0 and 1 only
    (the module has checked it; torchmetrics' validated updates would check it again).

    Example:
        >>> s = label_stats(torch.tensor([[0.9, 0.2], [0.8, 0.7]]), torch.tensor([[1, 0], [0, 1]]))
        >>> s.tp.tolist(), s.fp.tolist(), s.tn.tolist(), s.fn.tolist(), int(s.exact), s.rows
        ([1, 1], [1, 0], [0, 1], [0, 0], 1, 2)
    """
    preds, truth = probs > threshold, target == 1
    tp = (preds & truth).sum(dim=0)
    fp = preds.sum(dim=0) - tp
    fn = truth.sum(dim=0) - tp
    rows = target.shape[0]
    exact = (preds == truth).all(dim=1).sum()
    return LabelStats(tp, fp, rows - tp - fp - fn, fn, exact, rows, threshold)


def _check_stats(metric: Any, stats: LabelStats) -> None:
    if metric.multidim_average != "global" or metric.ignore_index is not None:
        raise ValueError("label_stats fit global metrics without ignore_index only")
    if stats.threshold != metric.threshold:
        raise ValueError(f"stats at threshold {stats.threshold}, metric at {metric.threshold}")


def _divide(num: Tensor, den: Tensor) -> Tensor:
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))


def multilabel_f1(tp: Tensor, fp: Tensor, fn: Tensor, average: str = "macro") -> Tensor:
    """F1 from per-label counts ``[L]``: ``"micro"`` (counts summed) or ``"macro"`` (the mean
    over the labels with a target or a prediction); NaN when no label has either.

    Example:
        >>> tp, fp, fn = torch.tensor([2, 0, 0]), torch.tensor([0, 1, 0]), torch.tensor([2, 0, 0])
        >>> multilabel_f1(tp, fp, fn, "micro"), multilabel_f1(tp, fp, fn, "macro")
        (tensor(0.5714), tensor(0.3333))
    """
    if average == "micro":
        return _divide(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum()).float()
    per_label = _divide(2 * tp, 2 * tp + fp + fn)
    present = ~torch.isnan(per_label)
    return _divide(per_label.nan_to_num(0.0).sum(), present.sum()).float()


class MultilabelF1(MultilabelF1Score):
    """Micro or macro F1 of sigmoid probabilities ``[N, L]`` vs 0/1 targets, threshold 0.5.

    Example:
        >>> m = MultilabelF1(num_labels=3, average="macro")
        >>> m.update(torch.tensor([[0.9, 0.2, 0.1], [0.8, 0.7, 0.1]]),
        ...          torch.tensor([[1, 0, 0], [0, 1, 0]]))
        >>> m.compute()  # labels 0 and 1 (2/3 and 1); label 2 never occurs: left out
        tensor(0.8333)
    """

    def __init__(self, num_labels: int, average: str = "macro", **kwargs: object) -> None:
        super().__init__(num_labels=num_labels, average=average, **kwargs)  # type: ignore[arg-type]

    def update(
        self,
        preds: Tensor | None = None,
        target: Tensor | None = None,
        stats: LabelStats | None = None,
    ) -> None:
        """Add a batch: ``preds`` and ``target`` (torchmetrics' validated update), or its
        :func:`label_stats`, counted once for several metrics."""
        if stats is None:
            if preds is None or target is None:
                raise ValueError("update needs preds and target, or stats")
            super().update(preds, target)
            return
        _check_stats(self, stats)
        self._update_state(stats.tp, stats.fp, stats.tn, stats.fn)

    def compute(self) -> Tensor:
        tp, fp, _, fn = self._final_state()
        return multilabel_f1(tp, fp, fn, str(self.average))


class SharedMultilabelF1(SharedStates, MultilabelF1):
    """:class:`MultilabelF1` (``average`` ``"micro"`` or ``"macro"``) of another one's counts:
    updating the source is enough.

    Example:
        >>> micro = MultilabelF1(num_labels=2, average="micro")
        >>> macro = SharedMultilabelF1(micro, average="macro")
        >>> micro.update(torch.tensor([[0.9, 0.2], [0.8, 0.7]]), torch.tensor([[1, 0], [0, 1]]))
        >>> micro.compute(), macro.compute()
        (tensor(0.8000), tensor(0.8333))
    """

    shared = ("tp", "fp", "tn", "fn")
    tp = shared_state("tp")
    fp = shared_state("fp")
    tn = shared_state("tn")
    fn = shared_state("fn")

    def __init__(self, source: MultilabelF1, average: str = "macro", **kwargs: Any) -> None:
        super().__init__(source, **kwargs)
        if average not in ("micro", "macro"):
            raise ValueError(f"average must be 'micro' or 'macro', got {average!r}")
        for name in ("num_labels", "threshold", "multidim_average", "ignore_index"):
            setattr(self, name, getattr(source, name))
        self.validate_args, self.zero_division = source.validate_args, source.zero_division
        self.average = average


class MultilabelExact(MultilabelExactMatch):
    """Fraction of samples with every label right (threshold 0.5); NaN with no sample.

    Example:
        >>> m = MultilabelExact(num_labels=2)
        >>> m.compute().isnan().item()
        True
        >>> m.update(torch.tensor([[0.9, 0.2], [0.8, 0.7]]), torch.tensor([[1, 0], [0, 1]]))
        >>> m.compute()
        tensor(0.5000)
    """

    def update(
        self,
        preds: Tensor | None = None,
        target: Tensor | None = None,
        stats: LabelStats | None = None,
    ) -> None:
        """Add a batch: ``preds`` and ``target`` (torchmetrics' validated update), or its
        :func:`label_stats`."""
        if stats is None:
            if preds is None or target is None:
                raise ValueError("update needs preds and target, or stats")
            super().update(preds, target)
            return
        _check_stats(self, stats)
        # in place, as torchmetrics' own update (without its module setattr)
        self.correct.add_(stats.exact)
        self.total.add_(stats.rows)

    def compute(self) -> Tensor:
        correct, total = self.correct.sum(), self.total.sum()
        return _divide(correct, total).float()


def constant_f1_macro(positives: Tensor, rows: Tensor) -> Tensor:
    """``f1_macro`` of the best constant predictor on labels with these training counts.

    For every label the best prediction that ignores the input is "always positive", with F1
    ``2p / (1 + p)`` (``p``: the label's training prevalence); always negative scores 0, or
    leaves the label out of the macro average when it is never positive. It is higher than the
    ``p`` expected of guessing each label at its prevalence, and a model that learned nothing
    but to say "yes" reaches it exactly, so a task is learned only when ``f1_macro`` beats it.
    NaN with no labelled training row.

    Example:
        >>> constant_f1_macro(torch.tensor([1, 3, 0]), torch.tensor(4))  # 2p/(1+p): 0.4, 6/7
        tensor(0.6286)
    """
    p = _divide(positives, rows.expand_as(positives))
    score = torch.where(p > 0, 2 * p / (1 + p), torch.full_like(p, float("nan")))
    present = ~torch.isnan(score)
    return _divide(score.nan_to_num(0.0).sum(), present.sum()).float()


class LabelCounts(Metric):
    """Per-label positive counts and the number of labelled rows, summed across DDP ranks;
    ``compute()`` gives :func:`constant_f1_macro`.

    Example:
        >>> m = LabelCounts(num_labels=2)
        >>> m.update(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        >>> m.positives.tolist(), int(m.rows), round(float(m.compute()), 4)
        ([2, 1], 2, 0.8333)
    """

    full_state_update = False
    positives: Tensor
    rows: Tensor

    def __init__(self, num_labels: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.num_labels = num_labels
        zeros = torch.zeros(num_labels, dtype=torch.long)
        self.add_state("positives", default=zeros, dist_reduce_fx="sum", persistent=True)
        self.add_state(
            "rows", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum", persistent=True
        )

    def update(self, target: Tensor) -> None:
        """Add labelled rows ``[N, L]`` of 0/1 (missing rows already removed)."""
        self.positives.add_(target.sum(dim=0).long())  # in place, as ``+=``
        self.rows.add_(target.shape[0])

    #: the baseline of given (e.g. rank-summed) counts
    baseline = staticmethod(constant_f1_macro)

    def compute(self) -> Tensor:
        return constant_f1_macro(self.positives, self.rows)
