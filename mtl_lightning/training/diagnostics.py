"""What a training step reports beside its losses: the cosines between the tasks' gradients of
the trunk (and when they are due), the task weights a strategy applied, and each task's
chance and majority baselines."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mtl_lightning.callbacks.collective_order import log_replicated
from mtl_lightning.metrics import task_baselines
from mtl_lightning.metrics.labelled import log_labelled_counts
from mtl_lightning.tasks import TaskSpec
from mtl_lightning.training.packing import aggregated_tasks, cosine_matrix, flat_grad, gram_matrix
from mtl_lightning.training.progress import StepOutputs

if TYPE_CHECKING:
    from mtl_lightning.module import MultiTaskModule

__all__ = [
    "cosine_tasks",
    "grad_cos_due",
    "log_baselines",
    "log_cosines",
    "log_grad_cos",
    "log_weights",
    "task_gradients",
]

#: ``LightningModule.log``
LogFn = Callable[..., Any]


def grad_cos_due(every_n_steps: int, step_number: int) -> bool:
    """Whether step ``step_number`` (1-based, counted as the logger counts steps) measures the
    gradient cosines: every ``every_n_steps``-th step (0: never), so that a multiple of
    ``log_every_n_steps`` is written at the step it was measured on.

    Example:
        >>> [s for s in range(1, 10) if grad_cos_due(4, s)], grad_cos_due(0, 4)
        ([4, 8], False)
    """
    return every_n_steps > 0 and step_number % every_n_steps == 0


def cosine_tasks(tasks: Sequence[TaskSpec]) -> list[TaskSpec]:
    """The tasks whose gradients the cosines compare: the aggregated main tasks, then the
    adversaries.

    Example:
        >>> tasks = [TaskSpec("s", 3, role="adversarial"), TaskSpec("a", 2), TaskSpec("b", 2)]
        >>> [t.name for t in cosine_tasks(tasks)]
        ['a', 'b', 's']
    """
    return aggregated_tasks(tasks) + [t for t in tasks if t.adversarial]


def task_gradients(
    host: MultiTaskModule,
    step: StepOutputs,
    scale: float = 1.0,
    tasks: Sequence[TaskSpec] | None = None,
    of_params: bool = True,
) -> tuple[Tensor, list[Tensor], list[nn.Parameter]]:
    """Per-task gradients of the trunk's parameters (``[T, P]``, reduced over ranks and
    divided by ``scale``; ``[T, 0]`` with ``of_params=False``, which skips those backward
    passes), the per-task gradients of the embedding (local, still carrying ``scale``), and
    the trunk parameters, in order.

    Tasks (by default): :func:`cosine_tasks`; a reversal adversary enters with its reversed
    gradient, a confusion adversary with that of its ``lambda``-scaled confusion loss (the
    head sees a detached embedding, so its own loss has none), an attacker ensemble with that
    of its ``lambda``-scaled trunk objective."""
    shared = [p for p in host.trunk.parameters() if p.requires_grad]
    if tasks is None:
        tasks = cosine_tasks(host.tasks)
    confusion = host.confusion_losses(step.embedding)
    strength = host.reversal.lambda_.to(step.embedding.dtype)

    def trunk_objective(t: TaskSpec) -> Tensor:
        if t.name in step.objectives:
            return strength * t.weight * step.objectives[t.name]
        if t.name in confusion:
            return strength * t.weight * confusion[t.name]
        return t.weight * step.losses[t.name]

    rep_rows = [
        torch.autograd.grad(scale * trunk_objective(t), step.embedding, retain_graph=True)[0]
        for t in tasks
    ]
    if not of_params or not rep_rows:
        return step.embedding.new_zeros(len(rep_rows), 0).float(), rep_rows, shared
    rows = torch.stack([flat_grad(step.embedding, shared, r) for r in rep_rows])
    return host._reduce_mean(rows.float()) / scale, rep_rows, shared


def log_grad_cos(host: MultiTaskModule, rows: Tensor) -> None:
    """Log the cosines between the rows of :func:`task_gradients` (its default tasks)."""
    names = [t.name for t in cosine_tasks(host.tasks)]
    log_cosines(host.log, names, gram_matrix(rows))  # not in bf16 under bf16-mixed


def log_cosines(log: LogFn, names: Sequence[str], gramian: Tensor) -> None:
    """Log ``train/grad_cos/{a}__{b}`` for every pair of ``names`` from their ``gramian``;
    a zero gradient (lambda = 0) has no direction: no value.

    Example:
        >>> logged = {}
        >>> log_cosines(lambda tag, v, **kw: logged.update({tag: round(v, 4)}), ["a", "b", "c"],
        ...             torch.tensor([[1.0, -1.0, 0.0], [-1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]))
        >>> logged
        {'train/grad_cos/a__b': -0.7071}
    """
    cos = cosine_matrix(gramian.float())
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            value = float(cos[i, j])
            if math.isfinite(value):
                log(f"train/grad_cos/{a}__{names[j]}", value, on_step=True, on_epoch=False)


def log_weights(log: LogFn, weights: Mapping[str, float]) -> None:
    """Log the weights the strategy applied as ``train/weight/{task}``."""
    for name, weight in weights.items():
        log(f"train/weight/{name}", float(weight), on_step=True, on_epoch=False)


def log_baselines(host: MultiTaskModule, stage: str) -> None:
    """Log each task's baselines (``{stage}/{task}/chance|majority|baseline``) from the
    training-label counts summed over DDP ranks, and the labelled counts ``{stage}/{task}/n``
    (before the metrics reset). Collectives: every rank calls it, in the same order."""
    for task in host.tasks:
        held = task.name in host.train_class_counts
        counts = host.train_class_counts[task.name] if held else None
        for key, value in task_baselines(task, counts, host._reduce_sum).items():
            log_replicated(host, f"{stage}/{task.name}/{key}", value)
    log_labelled_counts(host, stage)
