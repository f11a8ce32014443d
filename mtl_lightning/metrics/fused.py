"""One update of every task's metric states per batch, instead of one ``update`` call per metric.

torchmetrics wraps each ``update`` (it counts the update, drops the cached value and sets the grad
mode around the call): on a model whose step takes a few milliseconds, a five-task batch's sixteen
wrapped calls cost about as much as the forward pass. Here the batch's additions are computed
together and added to the states with one ``torch._foreach_add_``, and each metric's update is
counted as its wrapper would (:func:`add_to_states`):

- the labelled-sample-weighted loss sums of every task's :class:`~mtl_lightning.metrics.LossMean`
  (:func:`add_loss_means`);
- the confusion matrices of the classification tasks, and their training-label counts, from one
  ``bincount`` over all of them (:class:`CountLayout`, :func:`classification_counts`).

The states end equal, bit for bit, to those of the metrics' own updates
(``tests/metrics/test_fused_metrics.py``); only the per-call overhead goes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics import Metric

from mtl_lightning.metrics.loss_mean import LossMean

__all__ = ["CountLayout", "add_loss_means", "add_to_states", "batch_mean", "classification_counts"]


def add_to_states(states: Sequence[tuple[Metric, str]], values: Sequence[Tensor]) -> None:
    """``metric.<name> += value`` for every ``(metric, name)`` of ``states``, in one
    ``torch._foreach_add_``; each metric's update is then counted once, as torchmetrics' update
    wrapper does (``_update_count`` up by one, the cached ``compute`` value dropped).

    Example:
        >>> from torchmetrics import SumMetric
        >>> a, b = SumMetric(), SumMetric()
        >>> add_to_states([(a, "sum_value"), (b, "sum_value")], [torch.tensor(2.0), torch.tensor(3.0)])
        >>> a.compute(), b.compute(), a.update_count
        (tensor(2.), tensor(3.), 1)
    """
    torch._foreach_add_([getattr(m, name) for m, name in states], list(values))
    # each metric once (by identity: a Metric's own hash reads its states)
    for metric in {id(m): m for m, _ in states}.values():
        # the wrapper's bookkeeping, without nn.Module.__setattr__
        metric.__dict__["_computed"] = None
        metric.__dict__["_update_count"] += 1


def add_loss_means(metrics: Sequence[LossMean], losses: Tensor, labelled: Tensor) -> bool:
    """Add each task's mean loss (``losses[i]``) weighted by its labelled samples
    (``labelled[i]``) to ``metrics[i]``, as ``metrics[i].update(losses[i], labelled[i])`` would.

    Returns False, adding nothing, where that would not be the same: a loss that is not finite
    (``MeanMetric`` warns and leaves it out) or states of different dtypes; the caller then
    takes each metric's own update. One host sync (the finiteness test).

    Example:
        >>> a, b = LossMean(), LossMean()
        >>> add_loss_means([a, b], torch.tensor([2.0, 4.0]), torch.tensor([3, 0]))
        True
        >>> a.compute(), b.compute()
        (tensor(2.), tensor(nan))
    """
    dtype = metrics[0].mean_value.dtype
    if any(m.mean_value.dtype != dtype or m.weight.dtype != dtype for m in metrics):
        return False
    if not bool(torch.isfinite(losses).all()):
        return False
    weights = labelled.to(dtype)
    sums = losses.to(dtype) * weights
    states = [(m, "mean_value") for m in metrics] + [(m, "weight") for m in metrics]
    add_to_states(states, [*sums.unbind(), *weights.unbind()])
    return True


def batch_mean(value: Tensor, weight: int, metric: LossMean) -> Tensor:
    """The batch value ``metric(value, weight)`` (``Metric.forward``) returns for one finite
    scalar: its mean over a fresh state, ``(value * weight) / weight`` in the state's dtype,
    bit for bit, without the forward's state save, reset, update and merge.

    Example:
        >>> m = LossMean()
        >>> v = torch.tensor(4.82)
        >>> bool(batch_mean(v, 48, m) == LossMean()(v, 48))
        True
    """
    return (value.to(metric.mean_value.dtype) * weight) / weight  # no per-step tensor


@dataclass(frozen=True)
class CountLayout:
    """Where, in one ``bincount`` of a batch, each classification task's ``K x K`` confusion
    matrix lies (row: target, column: prediction), then (``with_labels``) each task's ``K``
    label counts, which are its confusion matrix's row sums (``label_bins``: the label bin of
    each confusion bin); masked samples go to one last bin that is dropped.

    Example:
        >>> layout = CountLayout.build((2, 3), with_labels=True, device=torch.device("cpu"))
        >>> layout.lengths, layout.length
        ((4, 9, 2, 3), 18)
    """

    #: the number of classes of each task
    sizes: tuple[int, ...]
    with_labels: bool
    #: ``[C, 1]``: each task's number of classes, its confusion block's start, its label block's
    scale: Tensor
    confusion_start: Tensor
    #: ``[sum K^2]``: per confusion bin, the index of its row's label bin among the label bins
    label_bins: Tensor

    @classmethod
    def build(cls, sizes: Sequence[int], with_labels: bool, device: torch.device) -> CountLayout:
        """The layout of tasks with ``sizes`` classes, its index tensors on ``device``."""
        squares = [k * k for k in sizes]
        confusion = list(itertools.accumulate([0, *squares[:-1]]))
        labels = itertools.accumulate([0, *sizes[:-1]])
        rows = [
            start + row
            for k, start in zip(sizes, labels, strict=True)
            for row in range(k)
            for _ in range(k)
        ]

        def column(values: Sequence[int]) -> Tensor:
            return torch.tensor(values, dtype=torch.long, device=device).unsqueeze(1)

        bins = torch.tensor(rows, dtype=torch.long, device=device)
        return cls(tuple(sizes), with_labels, column(sizes), column(confusion), bins)

    @property
    def lengths(self) -> tuple[int, ...]:
        """The lengths of the blocks, in order."""
        squares = tuple(k * k for k in self.sizes)
        return squares + self.sizes if self.with_labels else squares

    @property
    def length(self) -> int:
        """The number of bins before the masked samples' bin."""
        return sum(self.lengths)


def classification_counts(
    layout: CountLayout, outputs: Sequence[Tensor], targets: Sequence[Tensor], masks: Tensor
) -> tuple[list[Tensor], list[Tensor]]:
    """Per classification task, the batch's ``K x K`` confusion counts of its labelled samples
    (``masks[i]``) and, with ``layout.with_labels``, their ``K`` label counts (else ``[]``),
    from one ``bincount``: what :func:`~mtl_lightning.metrics.confusion_counts` and a
    ``bincount`` of the labels give task by task.

    ``outputs[i]``: logits ``[N, K_i]`` (the arg-max is the prediction); ``targets[i]``: class
    indices ``[N]`` (masked entries may hold anything, e.g. ``-100``), in ``[0, K_i)`` where
    labelled (the task's loss has checked it).

    Example:
        >>> layout = CountLayout.build((2,), with_labels=True, device=torch.device("cpu"))
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
        >>> confusions, labels = classification_counts(
        ...     layout, [logits], [torch.tensor([0, 0, -100])], torch.tensor([[True, True, False]]))
        >>> confusions[0].tolist(), labels[0].tolist()
        ([[1, 1], [0, 0]], [2, 0])
    """
    preds = torch.stack([o.argmax(dim=-1).reshape(-1) for o in outputs])
    labels = torch.stack([t.reshape(-1).long() for t in targets])
    codes = labels * layout.scale + preds + layout.confusion_start
    codes = torch.where(masks, codes, layout.length)
    # the label bins stay empty here: they are filled with the confusion rows' sums
    counts = torch.bincount(codes.reshape(-1), minlength=layout.length + 1)
    if counts.numel() != layout.length + 1:  # the losses have checked the labels: a bug
        raise ValueError(
            f"a labelled class index is beyond its task's range (sizes {layout.sizes})"
        )
    if layout.with_labels:
        squares = layout.label_bins.numel()
        counts[squares:-1].index_add_(0, layout.label_bins, counts[:squares])
    blocks = counts[:-1].split(layout.lengths)
    n = len(layout.sizes)
    confusions = [b.view(k, k) for b, k in zip(blocks[:n], layout.sizes, strict=True)]
    return confusions, list(blocks[n:])
