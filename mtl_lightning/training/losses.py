"""Pure loss math of a training step beyond the per-task losses: the confusion adversaries'
term and the lambda-scaled trunk objectives.

The per-task losses and labelled-sample masks (:func:`~mtl_lightning.losses.task_loss`,
:func:`~mtl_lightning.losses.labelled_masks`) live in :mod:`mtl_lightning.losses`, beside the
class weights they use.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import torch
from torch import Tensor, nn

from mtl_lightning.tasks import TaskSpec

__all__ = ["confusion_losses", "scaled_objective", "uniform_cross_entropy"]


def uniform_cross_entropy(logits: Tensor) -> Tensor:
    """Mean cross-entropy between softmax(logits) and the uniform distribution over classes.

    Example:
        >>> import math
        >>> round(float(uniform_cross_entropy(torch.zeros(4, 5))), 4) == round(math.log(5), 4)
        True
    """
    return -torch.log_softmax(logits, dim=-1).mean(dim=-1).mean()


def confusion_losses(
    tasks: Sequence[TaskSpec],
    heads: Mapping[str, nn.Module],
    embedding: Tensor,
    ensembles: Collection[str] = (),
) -> dict[str, Tensor]:
    """For each confusion adversary (but the attacker ``ensembles``):
    ``CE(frozen_head(embedding), uniform) - log K`` (>= 0).

    The head's parameters are detached, so this term trains only the trunk: it is smallest
    when the head cannot tell the classes apart from the embedding.

    Example:
        >>> tasks = [TaskSpec("a", 2), TaskSpec("s", 3, role="adversarial", adversary="confusion")]
        >>> heads = {"s": nn.Linear(4, 3)}
        >>> _ = nn.init.zeros_(heads["s"].weight), nn.init.zeros_(heads["s"].bias)
        >>> losses = confusion_losses(tasks, heads, torch.ones(2, 4))  # uniform: CE = log 3
        >>> {n: round(float(v), 6) for n, v in losses.items()}
        {'s': 0.0}
    """
    losses = {}
    for t in tasks:
        if t.adversarial and t.adversary == "confusion" and t.name not in ensembles:
            head = heads[t.name]
            frozen = {k: v.detach() for k, v in head.named_parameters()}
            logits = torch.func.functional_call(head, frozen, (embedding,))
            losses[t.name] = uniform_cross_entropy(logits) - math.log(t.size)
    return losses


def scaled_objective(
    tasks: Sequence[TaskSpec], values: Mapping[str, Tensor], strength: Tensor
) -> Tensor:
    """``strength * sum_k w_k value_k`` over ``values`` (by task name), ``w_k`` each task's
    ``TaskSpec.weight``: the adversaries' trunk objectives, scaled by the reversal lambda.

    Example:
        >>> tasks = [TaskSpec("s", 3, role="adversarial", weight=0.5)]
        >>> scaled_objective(tasks, {"s": torch.tensor(2.0)}, torch.tensor(3.0))
        tensor(3.)
    """
    weights = {t.name: t.weight for t in tasks}
    return strength * sum(weights[n] * v for n, v in values.items())
