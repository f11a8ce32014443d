"""Multilabel metrics (torchmetrics state, NaN where undefined) and the constant-predictor baseline.

``f1_micro``, ``f1_macro`` and ``exact_match`` keep torchmetrics' ``MultilabelF1Score`` /
``MultilabelExactMatch`` states and updates (so DDP sync is built in; predictions thresholded at
0.5), but reduce them with the conventions of :mod:`mtl_lightning.metrics.confusion`: a label
that is neither in the targets nor in the predictions is left out of the macro average
(torchmetrics counts it as 0), and a value that cannot be computed (no sample; nothing positive
in targets or predictions) is NaN, not 0.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MultilabelExactMatch, MultilabelF1Score


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

    def compute(self) -> Tensor:
        tp, fp, _, fn = self._final_state()
        return multilabel_f1(tp, fp, fn, str(self.average))


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
        self.positives += target.sum(dim=0).long()
        self.rows += target.shape[0]

    #: the baseline of given (e.g. rank-summed) counts
    baseline = staticmethod(constant_f1_macro)

    def compute(self) -> Tensor:
        return constant_f1_macro(self.positives, self.rows)
