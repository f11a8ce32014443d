"""The forward path. Its routing, as pure functions of the trunk and the heads: what the trunk
is given (its padding mask) and owes (its output contract), and which view of the embedding each
head sees (plain, reversed, detached); and one batch's forward pass with its task losses
(:func:`forward_losses`, on the host module)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mtl_lightning.losses import task_loss
from mtl_lightning.nn.contract import (
    TrunkContractError,
    check_trunk_output,
    narrow_embedding_warning,
    trunk_width,
)
from mtl_lightning.nn.contract import takes_mask as forward_takes_mask
from mtl_lightning.tasks import TaskSpec
from mtl_lightning.training.progress import StepOutputs
from mtl_lightning.validation import check_batch, unpack_batch

if TYPE_CHECKING:
    from mtl_lightning.module import MultiTaskModule

__all__ = ["forward_losses", "fully_labelled", "head_outputs", "inspect_trunk", "trunk_output"]


def inspect_trunk(trunk: nn.Module, tasks: Sequence[TaskSpec]) -> tuple[int, bool]:
    """The trunk's ``out_features`` and whether its ``forward`` takes a ``mask``; warns (at the
    caller of the module's ``__init__``) when the embedding is narrower than a main task needs.

    Example:
        >>> from mtl_lightning.nn import CNNTrunk
        >>> inspect_trunk(CNNTrunk(), [TaskSpec("a", 3)])
        (128, True)
    """
    width = trunk_width(trunk)
    narrow = narrow_embedding_warning(width, tasks)
    if narrow:
        warnings.warn(narrow, stacklevel=3)
    return width, forward_takes_mask(trunk)


def trunk_output(
    trunk: nn.Module,
    features: Tensor,
    mask: Tensor | None = None,
    *,
    takes_mask: bool,
    check: bool,
) -> Tensor:
    """The trunk's output; a padding ``mask`` goes to a trunk whose ``forward`` takes one
    (``takes_mask``), and a mask that pads nothing is dropped for one that does not. With
    ``check``, the output's contract (``[batch, out_features]``) is checked.

    Example:
        >>> import torch
        >>> trunk = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> trunk.out_features = 2
        >>> x = torch.zeros(3, 4)
        >>> trunk_output(trunk, x, torch.ones(3, 4, dtype=torch.bool), takes_mask=False,
        ...              check=True).shape
        torch.Size([3, 2])
        >>> padded = torch.tensor([[True, False]] * 3)
        >>> trunk_output(trunk, x, padded, takes_mask=False, check=False)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mtl_lightning.nn.contract.TrunkContractError: trunk Sequential takes no `mask`, ...
    """
    if mask is None:
        raw = trunk(features)
    elif takes_mask:
        raw = trunk(features, mask=mask)
    elif bool(mask.all()):  # nothing padded: the mask carries no information
        raw = trunk(features)
    else:
        raise TrunkContractError(
            f"trunk {type(trunk).__name__} takes no `mask`, but this batch pads "
            "variable-length inputs; give forward a `mask=None` keyword (True = real "
            "frame) or crop the inputs to a fixed length"
        )
    if check:
        check_trunk_output(trunk, features, raw)
    return raw


def head_outputs(
    tasks: Sequence[TaskSpec],
    heads: Mapping[str, nn.Module],
    embedding: Tensor,
    reversal: Callable[[Tensor], Tensor],
    skip: Collection[str] = (),
) -> dict[str, Tensor]:
    """The outputs of the heads of every task but those in ``skip`` (the attacker ensembles).

    A main task's head sees the embedding; a ``reversal`` adversary's, the embedding through
    ``reversal`` (gradient reversal); a ``confusion`` adversary's, the embedding detached (its
    own loss trains only the head).

    Example:
        >>> import torch
        >>> tasks = [TaskSpec("a", 2), TaskSpec("b", 2, role="adversarial")]
        >>> heads = {"a": nn.Identity(), "b": nn.Identity()}
        >>> embedding = torch.ones(1, 2, requires_grad=True)
        >>> out = head_outputs(tasks, heads, embedding, lambda e: -e)
        >>> out["a"].tolist(), out["b"].tolist()
        ([[1.0, 1.0]], [[-1.0, -1.0]])
        >>> list(head_outputs(tasks, heads, embedding, lambda e: -e, skip={"b"}))
        ['a']
    """
    adversarial = any(t.adversarial for t in tasks)
    reversed_embedding = reversal(embedding) if adversarial else embedding
    outputs = {}
    for t in tasks:
        if t.name in skip:
            continue
        if not t.adversarial:
            outputs[t.name] = heads[t.name](embedding)
        elif t.adversary == "confusion":
            outputs[t.name] = heads[t.name](embedding.detach())
        else:
            outputs[t.name] = heads[t.name](reversed_embedding)
    return outputs


def fully_labelled(masks: Mapping[str, Tensor]) -> dict[str, bool]:
    """Per task, whether its mask marks every sample of the batch labelled; one host sync
    for all the ``[N]`` masks (one per mask where their shapes differ).

    Example:
        >>> import torch
        >>> fully_labelled({"a": torch.tensor([True, True]), "b": torch.tensor([True, False])})
        {'a': True, 'b': False}
    """
    if len({m.shape for m in masks.values()}) != 1:
        return {name: bool(m.all()) for name, m in masks.items()}
    flags = torch.stack(list(masks.values())).all(dim=1).tolist()
    return dict(zip(masks, flags, strict=True))


def forward_losses(
    host: MultiTaskModule, batch: Any, batch_idx: int, train_adversaries: bool = False
) -> StepOutputs:
    """Check the batch, run trunk and heads, and compute every task's loss.

    With ``train_adversaries`` (a training step), the erasers accumulate this batch and the
    attackers take their best-response steps on it (after recording its logits)."""
    features, targets = unpack_batch(batch, batch_idx)
    if host.validate_inputs:
        check_batch(features, targets, host.tasks, batch_idx)
    masks = host.labelled_masks(targets)
    mask = batch.get("mask") if isinstance(batch, Mapping) else None
    raw = host.run_trunk(features, mask)
    embedding, erased_inputs = host._erase_batch(raw, targets, masks, train_adversaries)
    outputs = host._head_outputs(embedding)
    attacker_logits, objectives = host._attack_batch(
        embedding, erased_inputs, targets, masks, outputs, train_adversaries
    )
    # a task whose every sample is labelled takes its loss unmasked (the same value, without
    # a host sync per task: one for all here)
    full = fully_labelled(masks)
    losses = {
        t.name: task_loss(
            t,
            outputs[t.name],
            targets[t.name],
            None if full[t.name] else masks[t.name],
            host.class_weights.get(t.name),
        )  # fmt: skip
        for t in host.tasks
    }
    if train_adversaries:  # the training pass, on every rank: one collective under DDP
        host._progress.loss_scales = ddp_loss_scales(host, targets, masks)
    scales = host._progress.loss_scales if host.training else None  # re-runs reuse them
    local = None
    if scales is not None:
        local, losses = losses, {k: v * scales[k] for k, v in losses.items()}
    # the trunk's output: every trunk gradient (per task, on the manual path) is taken here
    return StepOutputs(
        features, targets, masks, raw, outputs, losses, attacker_logits, objectives, local
    )


def _denominator(task: TaskSpec, target: Tensor, mask: Tensor, weight: Tensor | None) -> Tensor:
    """What the task's mean loss divides by, up to a constant: its labelled samples, or the
    sum of their class weights (weighted cross-entropy)."""
    if weight is None and isinstance(task.class_weights, tuple):
        weight = torch.tensor(task.class_weights, device=target.device)
    if task.is_classification and weight is not None:
        return weight.to(torch.float32)[target[mask].long()].sum()
    return mask.sum().to(torch.float32)


def ddp_loss_scales(
    host: MultiTaskModule, targets: Mapping[str, Tensor], masks: Mapping[str, Tensor]
) -> dict[str, Tensor] | None:
    """Per task, ``world_size * local / global`` of its loss denominator; ``None`` in one process.

    DDP averages the ranks' gradients. With missing or conditional labels the ranks' batches
    hold different numbers of labelled samples, so the average of the ranks' means is not the
    mean over the global batch that one process computes; each rank's mean times this scale
    is (0 where the task has no labelled sample anywhere). Equal counts give exactly 1.
    """
    trainer = host._trainer
    if trainer is None or trainer.world_size == 1:
        return None
    local = torch.stack(
        [
            _denominator(t, targets[t.name], masks[t.name], host.class_weights.get(t.name))
            for t in host.tasks
        ]
    )
    total = host._reduce_sum(local.clone())
    ratio = torch.where(total > 0, local * trainer.world_size / total.clamp_min(1e-30), 0.0)
    return {t.name: ratio[i] for i, t in enumerate(host.tasks)}
