"""FAMO (Liu et al., 2023): fast adaptive multitask optimisation with one backward pass."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting.base import WeightingStrategy, adam_step


def famo_weights(logits: Tensor, losses: Tensor, min_losses: Tensor, eps: float = 1e-8) -> Tensor:
    """Gradient weights of FAMO's objective ``sum_k z_k log(L_k - m_k) / c`` over the present
    tasks, summed to their number.

    A task is present when ``L_k > m_k``; one at or below its bound (a task with no labelled
    sample has ``L_k = 0``) gets weight 0 and the objective is taken over the others:
    ``z = softmax(logits)``, ``c = sum_k z_k / (L_k - m_k)`` and ``w_k = z_k / (c (L_k - m_k))``,
    which sum to 1, scaled by the number of present tasks so the plain sum's learning rate
    carries over (``K`` when every task is labelled).

    Example:
        >>> famo_weights(torch.zeros(2), torch.tensor([1.0, 3.0]), torch.zeros(2))
        tensor([1.5000, 0.5000])
        >>> famo_weights(torch.zeros(3), torch.tensor([1.0, 0.0, 3.0]), torch.zeros(3))
        tensor([1.5000, 0.0000, 0.5000])
    """
    present = losses > min_losses
    z = torch.softmax(logits, dim=0)
    raw = torch.where(present, z / (losses - min_losses + eps), 0.0)
    return present.sum() * raw / raw.sum().clamp_min(torch.finfo(raw.dtype).tiny)


def famo_logit_gradient(
    logits: Tensor, previous: Tensor, current: Tensor, min_losses: Tensor, eps: float = 1e-8
) -> Tensor:
    """Gradient for FAMO's task logits: ``J_softmax(logits)^T (log gap_prev - log gap_now)``.

    Descending it raises the weight of tasks whose (log) loss fell the least. Only tasks above
    their bound both before and after the step take part (``keep``): the softmax and its
    Jacobian are those of the kept tasks' logits, and every other task's gradient is 0.

    Example:
        >>> g = famo_logit_gradient(torch.zeros(2), torch.tensor([1.0, 1.0]),
        ...                         torch.tensor([0.5, 1.0]), torch.zeros(2))
        >>> [round(v, 4) for v in g.tolist()]
        [0.1733, -0.1733]
        >>> g = famo_logit_gradient(torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]),
        ...                         torch.tensor([0.5, 0.0, 1.0]), torch.zeros(3))
        >>> [round(v, 4) for v in g.tolist()]  # the unlabelled task is not pushed
        [0.1733, 0.0, -0.1733]
    """
    keep = (previous > min_losses) & (current > min_losses)
    delta = torch.log(previous - min_losses + eps) - torch.log(current - min_losses + eps)
    delta = torch.where(keep, delta, 0.0)
    z = torch.softmax(logits, dim=0) * keep
    z = z / z.sum().clamp_min(torch.finfo(z.dtype).tiny)
    # Jacobian of softmax is diag(z) - z z^T (symmetric)
    return z * delta - z * (z @ delta)


FamoUpdate = Literal["same_batch", "next_batch"]


class FAMO(WeightingStrategy):
    """FAMO: task logits nudged each step so that every task's log-loss falls at a similar rate.

    The weights are :func:`famo_weights` of the current losses (one backward pass). After each
    optimizer step the logits take an Adam step (L2 weight decay ``gamma``) along
    :func:`famo_logit_gradient` of the change in the log-losses over that step:

    * ``update="same_batch"`` (default; the paper's Algorithm 1 and the official code): the
      losses of the batch just trained on, before the step and recomputed after it (the host's
      :meth:`~WeightingStrategy.after_optimizer_step`). Costs one extra forward pass (no
      backward) per optimizer step.
    * ``update="next_batch"``: the "after" losses are those of the next step's batch: no extra
      forward, but the change then includes the difference between two batches, so with
      mini-batches the logits do not settle where the paper's do.

    Under ``accumulate_grad_batches > 1`` the update runs once per optimizer step, from the last
    micro-batch (its losses before the step, and after it). Losses entering the update are
    averaged over DDP ranks, so all ranks keep identical logits; the weights multiply the local
    losses, so DDP's gradient averaging is exact. A non-finite recomputed loss (a step that
    diverged) leaves the logits as they were; the host's ``nonfinite`` policy then meets it at
    the next step. Adversarial tasks keep their static weight.

    A task at or below its bound (no labelled sample on any rank: rank-mean loss 0) gets weight
    0 and the others' weights sum to their number; a step where it is absent before or after
    leaves its logit and Adam moments as they were (the others' update is the same as without
    it).

    Args:
        lr: Adam learning rate of the task logits (official code: ``w_lr = 0.025``).
        gamma: Weight decay of the logits. The official runs (github.com/Cranial-XIX/FAMO,
            ``experiments/{nyuv2,celeba,quantum_chemistry}/run.sh``) use 0.001; Cityscapes and
            Metaworld MT10 use 0.01, the default of its ``famo.py``.
        min_losses: Known lower bound of each loss, by task (default 0).
        update: ``"same_batch"`` or ``"next_batch"`` (above).

    Raises:
        ValueError: ``update`` is not one of the two, or ``min_losses`` names an unknown task.

    Example:
        >>> from mtl_lightning.tasks import TaskSpec
        >>> tasks = [TaskSpec("a", 2), TaskSpec("b", 2)]
        >>> f = FAMO()
        >>> f.setup(tasks)
        >>> _ = f({"a": torch.tensor(1.0), "b": torch.tensor(3.0)}, tasks)
        >>> f.last_weights
        {'a': 1.5, 'b': 0.5}
        >>> # after the optimizer step: a fell by half on the same batch, b did not move
        >>> f.after_optimizer_step(lambda: {"a": torch.tensor(0.5), "b": torch.tensor(3.0)})
        >>> [round(v, 4) for v in torch.softmax(f.logits, 0).tolist()]
        [0.4875, 0.5125]
    """

    def __init__(
        self,
        lr: float = 0.025,
        gamma: float = 0.001,
        min_losses: Mapping[str, float] | None = None,
        update: FamoUpdate = "same_batch",
    ) -> None:
        super().__init__()
        if update not in ("same_batch", "next_batch"):
            raise ValueError(f"update must be 'same_batch' or 'next_batch', got {update!r}")
        self.lr = lr
        self.gamma = gamma
        self.update: FamoUpdate = update
        self.min_loss_overrides = dict(min_losses or {})
        self.names: list[str] = []
        for name in ("logits", "min_losses", "previous", "adam_m", "adam_v"):
            self.register_buffer(name, torch.zeros(0))
        self.register_buffer("adam_t", torch.zeros((), dtype=torch.long))
        # previous: the (rank-mean) losses of the last training forward, before a step
        self.register_buffer("has_previous", torch.zeros((), dtype=torch.bool))
        # next_batch: an optimizer step has run since `previous` was recorded
        self.register_buffer("stepped", torch.zeros((), dtype=torch.bool))

    def setup(self, tasks: Sequence[TaskSpec]) -> None:
        self.names = [t.name for t in tasks if not t.adversarial]
        unknown = set(self.min_loss_overrides) - set(self.names)
        if unknown:
            raise ValueError(
                f"FAMO min_losses: unknown main task(s) {sorted(unknown)}; "
                f"the main tasks are {self.names}"
            )
        k = len(self.names)
        for name in ("logits", "previous", "adam_m", "adam_v"):
            setattr(self, name, torch.zeros(k))
        self.min_losses = torch.tensor([self.min_loss_overrides.get(n, 0.0) for n in self.names])

    def _update_logits(self, before: Tensor, after: Tensor) -> None:
        grad = famo_logit_gradient(self.logits, before, after, self.min_losses)
        self.adam_t += 1
        stepped = adam_step(
            self.logits, grad, (self.adam_m, self.adam_v), int(self.adam_t), self.lr, self.gamma
        )
        # a task absent before or after the step: logit and moments as they were
        keep = (before > self.min_losses) & (after > self.min_losses)
        old = (self.logits, self.adam_m, self.adam_v)
        self.logits, self.adam_m, self.adam_v = (
            torch.where(keep, new, was) for new, was in zip(stepped, old, strict=True)
        )

    def after_optimizer_step(self, recompute: Callable[[], Mapping[str, Tensor]]) -> None:
        if not self.training or not bool(self.has_previous):
            return
        if self.update == "next_batch":
            self.stepped.fill_(True)
            return
        recomputed = recompute()
        after = torch.stack([recomputed[n].float() for n in self.names])
        after = self.reduce_mean(after).to(self.logits)
        if bool(torch.isfinite(after).all()):
            self._update_logits(self.previous, after)
        self.has_previous.fill_(False)

    def forward(self, losses: Mapping[str, Tensor], tasks: Sequence[TaskSpec]) -> Tensor:
        current = torch.stack([losses[n].detach().float() for n in self.names])
        if self.training:
            current = self.reduce_mean(current).to(self.logits)
            # one host sync for the finite check and the two flags
            finite, stepped, has_previous = torch.stack(
                [torch.isfinite(current).all(), self.stepped, self.has_previous]
            ).tolist()
            if not finite:
                raise FloatingPointError(f"FAMO: non-finite task losses {current.tolist()}")
            if stepped and has_previous:  # next_batch, after a step
                self._update_logits(self.previous, current)
            self.previous = current
            self.has_previous.fill_(True)
            self.stepped.fill_(False)
        dynamic = famo_weights(self.logits, current.to(self.logits), self.min_losses)
        specs = tuple(tasks)
        if not bool(torch.isfinite(dynamic).all()):
            raise FloatingPointError(f"FAMO: non-finite weights {self._weights(dynamic, specs)}")
        self._weights_when_read(lambda: self._weights(dynamic, specs))
        return self._weighted_total(losses, specs, dynamic)

    def _weights(self, dynamic: Tensor, tasks: Sequence[TaskSpec]) -> dict[str, float]:
        """Per task: its FAMO weight (1 for the adversaries) times its ``TaskSpec.weight``."""
        values = dict(zip(self.names, dynamic.tolist(), strict=True))
        return {t.name: round(values.get(t.name, 1.0) * t.weight, 6) for t in tasks}

    def _weighted_total(
        self, losses: Mapping[str, Tensor], tasks: Sequence[TaskSpec], dynamic: Tensor
    ) -> Tensor:
        """``sum_k w_k L_k`` in the order of ``tasks``, the weights kept on the device: the main
        tasks' ``dynamic[i] * TaskSpec.weight``, the adversaries' ``TaskSpec.weight``."""
        plain = [t.name for t in tasks] == self.names and all(t.weight == 1.0 for t in tasks)
        if plain and len({losses[n].dtype for n in self.names}) == 1:
            stacked = torch.stack([losses[n] for n in self.names])
            # the same products and sum as the loop below, in two operations
            return (stacked * dynamic.to(stacked.dtype)).sum()
        index = {n: i for i, n in enumerate(self.names)}
        terms = []
        for task in tasks:
            loss = losses[task.name]
            if task.name in index:
                loss = loss * dynamic[index[task.name]].to(loss.dtype)
            terms.append(loss if task.weight == 1.0 else task.weight * loss)
        return torch.stack(terms).sum()
