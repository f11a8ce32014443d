"""Per-task losses, labelled-sample masks and the (checkpointed) class weights of the losses."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_lightning.tasks import TaskSpec
from mtl_lightning.validation import IGNORE_INDEX, labelled_mask

__all__ = [
    "ClassWeights",
    "balanced_class_weights",
    "balanced_pos_weight",
    "labelled_masks",
    "task_loss",
]


def task_loss(
    task: TaskSpec,
    output: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    weight: Tensor | None = None,
) -> Tensor:
    """The task's loss over its labelled samples (``mask``; all when None).

    Classification: cross-entropy with ``weight`` (per class) and ``task.label_smoothing``;
    multilabel: binary cross-entropy with logits, ``weight`` its ``pos_weight`` (per label),
    the mean over labelled samples and labels; regression: mean squared error. ``weight``
    defaults to ``task.class_weights`` when that is a list. With no labelled sample the loss is
    exactly 0 (still in the graph, so every parameter gets a gradient, as DDP expects).

    Example:
        >>> t = TaskSpec("a", 3, class_weights=[1.0, 2.0, 1.0], label_smoothing=0.1)
        >>> logits, y = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), torch.tensor([0, 1])
        >>> expected = F.cross_entropy(logits, y, weight=torch.tensor([1.0, 2.0, 1.0]),
        ...                            label_smoothing=0.1)
        >>> bool(torch.isclose(task_loss(t, logits, y), expected))
        True
        >>> m, nan = TaskSpec("tags", 2, kind="multilabel"), float("nan")
        >>> round(float(task_loss(m, torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [nan, nan]]),
        ...                       torch.tensor([True, False]))), 4)  # log 2
        0.6931
    """
    if mask is not None and not bool(mask.all()):
        if not bool(mask.any()):
            return output.sum() * 0.0
        output, target = output[mask], target[mask]
    if weight is None and isinstance(task.class_weights, tuple):
        weight = torch.tensor(task.class_weights, device=output.device)
    elif weight is None and task.class_weights == "balanced":
        raise ValueError(
            f"task {task.name!r}: class_weights='balanced' are not resolved yet; they are "
            "computed from the training split when fitting starts (ClassWeights.resolve)"
        )
    # at least float32: under bf16-mixed the head's output is bf16, and casting the targets
    # (or weights) to it would round them to 8 significant bits (37.3 -> 37.25)
    dtype = torch.promote_types(output.dtype, torch.float32)
    if task.is_classification:
        if weight is None and not task.label_smoothing:
            return F.cross_entropy(output, target.long())
        return F.cross_entropy(
            output.to(dtype),
            target.long(),
            weight=weight.to(dtype) if weight is not None else None,
            label_smoothing=task.label_smoothing,
        )
    if task.is_multilabel:
        pos_weight = weight.to(dtype) if weight is not None else None
        return F.binary_cross_entropy_with_logits(
            output.to(dtype), target.to(dtype), pos_weight=pos_weight
        )
    return F.mse_loss(output.to(dtype), target.reshape(output.shape).to(dtype))


def labelled_masks(tasks: Sequence[TaskSpec], targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Per task, which samples carry a usable label (missing and ``only_when`` applied).

    Example:
        >>> tasks = [TaskSpec("seed", 2), TaskSpec("grade", 3, only_when={"seed": [1]})]
        >>> m = labelled_masks(tasks, {"seed": torch.tensor([0, 1, 1]),
        ...                            "grade": torch.tensor([2, 0, -100])})
        >>> m["grade"].tolist()
        [False, True, False]
    """
    base = {t.name: labelled_mask(t, targets[t.name]) for t in tasks}
    masks = dict(base)
    for task in tasks:
        for other, values in (task.only_when or {}).items():
            cond = targets[other]
            allowed = torch.tensor(values, device=cond.device, dtype=cond.dtype)
            masks[task.name] = masks[task.name] & base[other] & torch.isin(cond, allowed)
    return masks


def balanced_class_weights(task: TaskSpec, labels: Tensor) -> Tensor:
    """``n / (K * count_k)`` per class from the labelled training ``labels`` (``-100``: none).

    Raises:
        ValueError: naming the task and class when a class never occurs (it cannot be balanced).

    Example:
        >>> balanced_class_weights(TaskSpec("a", 3), torch.tensor([0, 0, 0, 1, 2, 2, -100]))
        tensor([0.6667, 2.0000, 1.0000], dtype=torch.float64)
    """
    labels = labels[labels != IGNORE_INDEX].long()
    counts = torch.bincount(labels, minlength=task.size)
    absent = (counts == 0).nonzero().flatten().tolist()
    if absent:
        raise ValueError(
            f"task {task.name!r}: class_weights='balanced' cannot weight class {absent[0]}: it "
            f"never occurs in the training split (class counts {counts.tolist()}); give "
            "class_weights as a list"
        )
    return labels.numel() / (task.size * counts.double())


def balanced_pos_weight(task: TaskSpec, labels: Tensor) -> Tensor:
    """BCE ``pos_weight`` per label: negatives / positives over the labelled training rows.

    Raises:
        ValueError: naming the task and label when a label is never (or always) positive.

    Example:
        >>> nan = float("nan")
        >>> y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [nan, nan]])
        >>> balanced_pos_weight(TaskSpec("tags", 2, kind="multilabel"), y)
        tensor([2.0000, 0.5000], dtype=torch.float64)
    """
    rows = labels[~torch.isnan(labels).any(dim=1)].double()
    positives, negatives = rows.sum(dim=0), rows.shape[0] - rows.sum(dim=0)
    for name, count in (("positive", positives), ("negative", negatives)):
        never = (count == 0).nonzero().flatten().tolist()
        if never:
            raise ValueError(
                f"task {task.name!r}: class_weights='balanced' cannot weight label {never[0]}: "
                f"it is never {name} in the training split ({rows.shape[0]} labelled rows, "
                f"positives per label {positives.long().tolist()}); give class_weights as a list"
            )
    return negatives / positives


def _sync_after_load(module: ClassWeights, incompatible_keys: object) -> None:
    module._sync_tasks()  # a module-level function (not a lambda): the model still pickles


class ClassWeights(nn.Module):
    """The loss weights of the tasks with ``class_weights``, one buffer each (checkpointed).

    A ``"balanced"`` task's buffer is NaN until :meth:`resolve` computes it from the training
    split; a checkpoint brings its resolved values back, so a resumed run, ``validate`` and
    ``test`` use the weights its fit started with. ``tasks`` is the host's task list: its
    ``"balanced"`` entries are replaced by specs carrying the resolved weights (after
    :meth:`resolve` and after a state dict is loaded), so code that computes a task's loss from
    its spec alone (:func:`task_loss`) uses the same weights.

    Example:
        >>> tasks = [TaskSpec("a", 2, class_weights="balanced")]
        >>> weights = ClassWeights(tasks)
        >>> weights.resolve({"a": torch.tensor([0, 0, 0, 1])})
        >>> weights.get("a"), tasks[0].class_weights
        (tensor([0.6667, 2.0000]), (0.6666666865348816, 2.0))
    """

    def __init__(self, tasks: list[TaskSpec]) -> None:
        super().__init__()
        self.tasks = tasks
        self.balanced = [t.name for t in tasks if t.class_weights == "balanced"]
        for t in tasks:
            if t.class_weights is not None:
                given = t.class_weights if isinstance(t.class_weights, tuple) else None
                value = torch.tensor(given) if given else torch.full((t.size,), float("nan"))
                self.register_buffer(t.name, value)
        self.register_load_state_dict_post_hook(_sync_after_load)

    def get(self, name: str) -> Tensor | None:
        """The task's weights (None for a task without ``class_weights``)."""
        return self._buffers.get(name)

    def unresolved(self) -> list[str]:
        """The ``"balanced"`` tasks whose weights are not computed yet."""
        return [n for n in self.balanced if bool(torch.isnan(self._buffers[n]).any())]

    def resolve(self, train_targets: Mapping[str, Tensor]) -> None:
        """Compute the unresolved ``"balanced"`` weights from the training split's labels."""
        specs = {t.name: t for t in self.tasks}
        for name in self.unresolved():
            task = specs[name]
            fit = balanced_pos_weight if task.is_multilabel else balanced_class_weights
            buffer = self._buffers[name]
            buffer.copy_(fit(task, train_targets[name].detach().cpu()).to(buffer))
        self._sync_tasks()

    def resolve_from(self, trainer: Any) -> None:
        """:meth:`resolve` from ``trainer.datamodule.train_set.targets`` (a tensor-backed
        datamodule such as one of :class:`~mtl_lightning.data.TensorTaskDataset` splits)."""
        missing = self.unresolved()
        if not missing:
            return
        data = getattr(trainer, "datamodule", None)
        targets = getattr(getattr(data, "train_set", None), "targets", None)
        if not isinstance(targets, Mapping) or any(n not in targets for n in missing):
            raise ValueError(
                f"task {missing[0]!r}: class_weights='balanced' needs the training labels, "
                f"read from datamodule.train_set.targets[{missing[0]!r}], which "
                f"{type(data).__name__} does not have; give class_weights as a list of floats"
            )
        self.resolve(targets)

    def _sync_tasks(self) -> None:
        unresolved = set(self.unresolved())
        for i, t in enumerate(self.tasks):
            if t.name in self.balanced and t.name not in unresolved:
                weights = tuple(self._buffers[t.name].tolist())
                self.tasks[i] = dataclasses.replace(t, class_weights=weights)
