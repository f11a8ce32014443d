"""Batch checks that turn bad input into errors naming the task, sample and value at fault."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtl_lightning.tasks import TaskSpec

_MAX_LISTED = 10

#: a missing class label (PyTorch's ``ignore_index`` convention); NaN marks a missing regression target
IGNORE_INDEX = -100


class BatchError(ValueError):
    """A batch does not match the model's declared tasks or contains invalid values."""


def _listed(values: Sequence[object]) -> str:
    head = ", ".join(str(v) for v in values[:_MAX_LISTED])
    more = len(values) - _MAX_LISTED
    return f"[{head}{f', ... ({more} more)' if more > 0 else ''}]"


def unpack_batch(batch: object, batch_idx: int = 0) -> tuple[Tensor, Mapping[str, Tensor]]:
    """Split a ``{"features": x, "targets": {task: y}}`` batch, checking its structure."""
    if not isinstance(batch, Mapping) or "features" not in batch or "targets" not in batch:
        got = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise BatchError(
            f"batch {batch_idx}: expected a mapping with keys 'features' and 'targets' "
            f"({{task: labels}}), got {got}"
        )
    features, targets = batch["features"], batch["targets"]
    if not isinstance(features, Tensor):
        raise BatchError(f"batch {batch_idx}: 'features' must be a tensor, got {type(features)}")
    if not isinstance(targets, Mapping):
        raise BatchError(f"batch {batch_idx}: 'targets' must map task name -> labels")
    return features, targets


def check_batch(
    features: Tensor, targets: Mapping[str, Tensor], tasks: Sequence[TaskSpec], batch_idx: int = 0
) -> None:
    """Raise :class:`BatchError` if the batch does not fit the declared tasks.

    Checks: every declared task has labels and no undeclared task does; features are finite;
    class labels are integers in ``[0, K)`` or ``-100`` (missing); regression targets are
    shaped ``[batch, size]`` (or ``[batch]`` when ``size == 1``), finite or NaN (missing), never
    infinite; multilabel targets are float ``[batch, size]`` rows of 0./1. or all NaN (missing);
    label counts match the batch size.

    Example:
        >>> from mtl_lightning.tasks import TaskSpec
        >>> check_batch(torch.zeros(2, 3), {"a": torch.tensor([0, 5])}, [TaskSpec("a", 3)], 7)
        Traceback (most recent call last):
        ...
        mtl_lightning.validation.BatchError: batch 7, task 'a': labels must be in [0, 3); found 5 at sample(s) [1] (-100 marks a missing label)
    """
    names = [t.name for t in tasks]
    unknown = sorted(set(targets) - set(names))
    if unknown:
        raise BatchError(
            f"batch {batch_idx}: labels for unknown task(s) {unknown}; the model's tasks are {names}"
        )
    missing = [n for n in names if n not in targets]
    if missing:
        raise BatchError(
            f"batch {batch_idx}: no labels for declared task(s) {missing}; "
            f"the batch has labels for {sorted(targets)}"
        )
    if _valid_features_and_classes(features, targets, tasks):
        # features and class labels shown valid at once: the other kinds' checks remain
        tasks = [t for t in tasks if not t.is_classification]
    else:
        _check_features(features, batch_idx)
    batch_size = features.shape[0]
    for task in tasks:
        y = targets[task.name]
        where = f"batch {batch_idx}, task {task.name!r}"
        if not isinstance(y, Tensor):
            raise BatchError(f"{where}: labels must be a tensor, got {type(y).__name__}")
        if y.shape[0] != batch_size:
            raise BatchError(f"{where}: {y.shape[0]} labels for {batch_size} samples")
        if task.is_classification:
            _check_classes(y, task, where)
        elif task.is_multilabel:
            _check_multilabel(y, task, where)
        else:
            _check_regression(y, task, where)


@functools.lru_cache(maxsize=64)
def _class_counts(sizes: tuple[int, ...], device: torch.device) -> Tensor:
    """``[C, 1]``: the number of classes of each classification task, on ``device``."""
    return torch.tensor(sizes, device=device).unsqueeze(1)


def _valid_features_and_classes(
    features: Tensor, targets: Mapping[str, Tensor], tasks: Sequence[TaskSpec]
) -> bool:
    """Whether the features are finite and every classification task's labels are in
    ``[0, K)`` or missing, from one reduction over all of them and one host sync. False when
    that cannot be shown (a problem, or labels that cannot be stacked: other shapes or dtypes):
    the checks one by one then find it and say where."""
    labels = [targets[t.name] for t in tasks if t.is_classification]
    if not _stackable(labels, features.shape[0]):
        return False
    # a finite sum means every element is finite (NaN/inf propagate); an overflow goes the
    # elementwise way
    flags = [torch.isfinite(features.sum())]
    if labels:
        y = torch.stack(labels)
        sizes = _class_counts(tuple(t.size for t in tasks if t.is_classification), y.device)
        flags.append((((y >= 0) & (y < sizes)) | (y == IGNORE_INDEX)).all())
    return bool(torch.stack(flags).all())


def _stackable(labels: Sequence[object], n: int) -> bool:
    """Whether ``labels`` are ``[n]`` integer tensors of one dtype (``torch.stack`` takes them)."""
    if not all(isinstance(y, Tensor) and y.shape == (n,) for y in labels):
        return False
    dtypes = {y.dtype for y in labels}  # type: ignore[union-attr]
    if len(dtypes) > 1:
        return False
    dtype = dtypes.pop() if dtypes else torch.long
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def _check_features(features: Tensor, batch_idx: int) -> None:
    """Raise naming the samples whose features are NaN or infinite."""
    # one reduction on the fast path: a finite sum means every element is finite (NaN/inf
    # propagate); only a non-finite sum (possibly a finite overflow) needs the elementwise test
    finite = torch.isfinite(features) if not bool(torch.isfinite(features.sum())) else None
    if finite is not None and not bool(finite.all()):
        bad = (~finite).reshape(features.shape[0], -1).any(dim=1).nonzero().flatten().tolist()
        kinds = []
        if bool(torch.isnan(features).any()):
            kinds.append("NaN")
        if bool(torch.isinf(features).any()):
            kinds.append("inf")
        raise BatchError(
            f"batch {batch_idx}: features contain {'/'.join(kinds)} at sample(s) {_listed(bad)}"
        )


def _check_classes(y: Tensor, task: TaskSpec, where: str) -> None:
    if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise BatchError(
            f"{where}: class labels must be a 1-D integer tensor, got shape {list(y.shape)} "
            f"dtype {y.dtype}"
        )
    if y.numel():  # fast path: one reduction shows every label in [0, K)
        low, high = torch.aminmax(y)
        if int(low) >= 0 and int(high) < task.size:
            return
    bad = (((y < 0) | (y >= task.size)) & (y != IGNORE_INDEX)).nonzero().flatten()
    if bad.numel():
        values = sorted(set(y[bad].tolist()))
        raise BatchError(
            f"{where}: labels must be in [0, {task.size}); found {_listed(values)[1:-1]} "
            f"at sample(s) {_listed(bad.tolist())}"
            f" ({IGNORE_INDEX} marks a missing label)"
        )


def _check_regression(y: Tensor, task: TaskSpec, where: str) -> None:
    expected = [[y.shape[0], task.size]] + ([[y.shape[0]]] if task.size == 1 else [])
    if list(y.shape) not in expected or not y.is_floating_point():
        raise BatchError(
            f"{where}: regression targets must be a float tensor of shape {expected[0]}, "
            f"got shape {list(y.shape)} dtype {y.dtype}"
        )
    infinite = torch.isinf(y).reshape(y.shape[0], -1).any(dim=1)
    if bool(infinite.any()):
        raise BatchError(
            f"{where}: targets contain inf at sample(s) {_listed(infinite.nonzero().flatten().tolist())}"
            " (NaN marks a missing target; inf is never valid)"
        )


def multilabel_problem(y: Tensor, size: int, unit: str = "sample") -> str | None:
    """Why ``y`` is not a float ``[N, size]`` tensor of 0./1. (an all-NaN row for a missing
    sample), or None; ``unit`` names the rows (``sample`` in a batch, ``row`` in a split).

    Example:
        >>> nan = float("nan")
        >>> multilabel_problem(torch.tensor([[1.0, nan], [nan, nan]]), 2)
        "a sample's labels must be all 0./1. or all NaN (a missing sample); partly NaN at sample(s) [0]"
        >>> multilabel_problem(torch.tensor([[1.0, 0.0], [nan, nan]]), 2) is None
        True
    """
    if list(y.shape) != [y.shape[0], size] or not y.is_floating_point():
        return (
            f"multilabel targets must be a float tensor of shape [{y.shape[0]}, {size}] "
            f"holding 0./1., got shape {list(y.shape)} dtype {y.dtype}"
        )
    missing = torch.isnan(y)
    partial = missing.any(dim=1) & ~missing.all(dim=1)
    if bool(partial.any()):
        return (
            f"a {unit}'s labels must be all 0./1. or all NaN (a missing sample); "
            f"partly NaN at {unit}(s) {_listed(partial.nonzero().flatten().tolist())}"
        )
    bad = ~missing & (y != 0) & (y != 1)
    if bool(bad.any()):
        rows = bad.any(dim=1).nonzero().flatten().tolist()
        values = sorted(set(y[bad].tolist()))
        return (
            f"multilabel targets must be 0. or 1.; found {_listed(values)[1:-1]} "
            f"at {unit}(s) {_listed(rows)}"
        )
    return None


def _check_multilabel(y: Tensor, task: TaskSpec, where: str) -> None:
    problem = multilabel_problem(y, task.size)
    if problem is not None:
        raise BatchError(f"{where}: {problem}")


def labelled_mask(task: TaskSpec, target: Tensor) -> Tensor:
    """Boolean ``[batch]`` mask of the samples that carry a label for ``task``.

    A multilabel sample is labelled when none of its labels is NaN.

    Example:
        >>> labelled_mask(TaskSpec("a", 3), torch.tensor([0, -100, 2]))
        tensor([ True, False,  True])
        >>> labelled_mask(TaskSpec("tags", 2, kind="multilabel"),
        ...               torch.tensor([[0.0, 1.0], [float("nan"), float("nan")]]))
        tensor([ True, False])
    """
    if task.is_classification:
        return target != IGNORE_INDEX
    return ~torch.isnan(target.reshape(target.shape[0], -1)).any(dim=1)
