"""FAMO (Liu et al., 2023): fast adaptive multitask optimisation with one backward pass."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting.base import WeightingStrategy, adam_step
from mtl_lightning.weighting.static import task_weights


def _softmax(values: Sequence[float]) -> list[float]:
    top = max(values, default=0.0)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def famo_weight_values(
    logits: Sequence[float],
    losses: Sequence[float],
    min_losses: Sequence[float],
    eps: float = 1e-8,
) -> list[float]:
    """:func:`famo_weights` on Python numbers (float64), as :class:`FAMO` computes them on
    the host: ``K`` numbers take microseconds there, against some 25 tensor operations.

    Example:
        >>> famo_weight_values([0.0, 0.0], [1.0, 3.0], [0.0, 0.0], eps=0.0)
        [1.5, 0.5]
    """
    present = [loss > low for loss, low in zip(losses, min_losses, strict=True)]
    raw = [
        z / (loss - low + eps) if here else 0.0
        for z, loss, low, here in zip(_softmax(logits), losses, min_losses, present, strict=True)
    ]
    total = sum(raw)
    return [sum(present) * r / total if total > 0 else 0.0 for r in raw]


def famo_weights(logits: Tensor, losses: Tensor, min_losses: Tensor, eps: float = 1e-8) -> Tensor:
    """Gradient weights of FAMO's objective ``sum_k z_k log(L_k - m_k) / c`` over the present
    tasks, summed to their number.

    A task is present when ``L_k > m_k``; one at or below its bound (a task with no labelled
    sample has ``L_k = 0``) gets weight 0 and the objective is taken over the others:
    ``z = softmax(logits)``, ``c = sum_k z_k / (L_k - m_k)`` and ``w_k = z_k / (c (L_k - m_k))``,
    which sum to 1, scaled by the number of present tasks so the plain sum's learning rate
    carries over (``K`` when every task is labelled). Computed in float64 on the host
    (:func:`famo_weight_values`), returned in ``logits``' dtype and device.

    Example:
        >>> famo_weights(torch.zeros(2), torch.tensor([1.0, 3.0]), torch.zeros(2))
        tensor([1.5000, 0.5000])
        >>> famo_weights(torch.zeros(3), torch.tensor([1.0, 0.0, 3.0]), torch.zeros(3))
        tensor([1.5000, 0.0000, 0.5000])
    """
    values = famo_weight_values(logits.tolist(), losses.tolist(), min_losses.tolist(), eps)
    return torch.tensor(values, dtype=logits.dtype, device=logits.device)


def famo_logit_gradient_values(
    logits: Sequence[float],
    previous: Sequence[float],
    current: Sequence[float],
    min_losses: Sequence[float],
    eps: float = 1e-8,
) -> list[float]:
    """:func:`famo_logit_gradient` on Python numbers (float64), as :class:`FAMO` computes it.

    Example:
        >>> [round(g, 4) for g in famo_logit_gradient_values([0.0, 0.0], [1.0, 1.0],
        ...                                                  [0.5, 1.0], [0.0, 0.0])]
        [0.1733, -0.1733]
    """
    keep = [
        before > low and after > low
        for before, after, low in zip(previous, current, min_losses, strict=True)
    ]
    delta = [
        math.log(before - low + eps) - math.log(after - low + eps) if kept else 0.0
        for before, after, low, kept in zip(previous, current, min_losses, keep, strict=True)
    ]
    z = [p if kept else 0.0 for p, kept in zip(_softmax(logits), keep, strict=True)]
    total = sum(z)
    z = [p / total if total > 0 else 0.0 for p in z]
    # Jacobian of softmax is diag(z) - z z^T (symmetric)
    mean = sum(p * d for p, d in zip(z, delta, strict=True))
    return [p * d - p * mean for p, d in zip(z, delta, strict=True)]


def famo_logit_gradient(
    logits: Tensor, previous: Tensor, current: Tensor, min_losses: Tensor, eps: float = 1e-8
) -> Tensor:
    """Gradient for FAMO's task logits: ``J_softmax(logits)^T (log gap_prev - log gap_now)``.

    Descending it raises the weight of tasks whose (log) loss fell the least. Only tasks above
    their bound both before and after the step take part (``keep``): the softmax and its
    Jacobian are those of the kept tasks' logits, and every other task's gradient is 0.
    Computed in float64 on the host (:func:`famo_logit_gradient_values`), returned in
    ``logits``' dtype and device.

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
    values = famo_logit_gradient_values(
        logits.tolist(), previous.tolist(), current.tolist(), min_losses.tolist(), eps
    )
    return torch.tensor(values, dtype=logits.dtype, device=logits.device)


FamoUpdate = Literal["same_batch", "next_batch"]


class _Update(NamedTuple):
    """New logits and Adam moments, at Adam step ``adam_t``."""

    logits: list[float]
    adam_m: list[float]
    adam_v: list[float]
    adam_t: int


class _HostState(NamedTuple):
    """FAMO's losses and state as Python numbers, read in one host copy."""

    losses: list[float]
    min_losses: list[float]
    previous: list[float]
    logits: list[float]
    adam_m: list[float]
    adam_v: list[float]
    adam_t: int
    stepped: bool
    has_previous: bool


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
    the next step. Adversarial tasks keep their static weight. The update and the weights are
    arithmetic on ``K`` numbers: each step copies the losses and the state to the host once
    and computes them there in float64 (a few microseconds, where some 70 tensor operations
    took half a millisecond on the dense model); the state stays in float32 buffers.

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

    def _read(self, losses: Tensor) -> _HostState:
        """``losses`` (in the logits' dtype) and the state as Python numbers: one copy of the
        vectors to the host (one device sync), the flags read after it."""
        k = len(self.names)
        rows = (losses, self.min_losses, self.previous, self.logits, self.adam_m, self.adam_v)
        flat = torch.cat(rows).tolist()
        parts = [flat[i * k : (i + 1) * k] for i in range(len(rows))]
        flags = int(self.adam_t), bool(self.stepped), bool(self.has_previous)
        return _HostState(*parts, *flags)

    def _adam_update(self, state: _HostState, after: list[float]) -> _Update:
        """One Adam step of the logits from ``state.previous`` to ``after``."""
        low = state.min_losses
        grad = famo_logit_gradient_values(state.logits, state.previous, after, low)
        t = state.adam_t + 1
        logits, m, v = list(state.logits), list(state.adam_m), list(state.adam_v)
        for i, (before, now) in enumerate(zip(state.previous, after, strict=True)):
            if before > low[i] and now > low[i]:  # else absent: logit and moments as they were
                step = adam_step(logits[i], grad[i], (m[i], v[i]), t, self.lr, self.gamma)
                logits[i], m[i], v[i] = step
        return _Update(logits, m, v, t)

    def _write(self, update: _Update | None, weights: list[float] | None = None) -> Tensor:
        """``update`` written to the buffers and ``weights`` put on the device (returned), in
        one copy from the host."""
        values = (update.logits + update.adam_m + update.adam_v if update else []) + (weights or [])
        new = torch.tensor(values, dtype=self.logits.dtype, device=self.logits.device)
        if update is None:
            return new
        k = len(update.logits)
        for i, buffer in enumerate((self.logits, self.adam_m, self.adam_v)):
            buffer.copy_(new[i * k : (i + 1) * k])
        self.adam_t.fill_(update.adam_t)
        return new[3 * k :]

    def after_optimizer_step(self, recompute: Callable[[], Mapping[str, Tensor]]) -> None:
        if not self.training:
            return
        if self.update == "next_batch":  # read only with has_previous, at the next forward
            self.stepped.fill_(True)
            return
        if not bool(self.has_previous):
            return
        recomputed = recompute()
        after = torch.stack([recomputed[n].float() for n in self.names])
        state = self._read(self.reduce_mean(after).to(self.logits))
        if all(map(math.isfinite, state.losses)):
            self._write(self._adam_update(state, state.losses))
        self.has_previous.fill_(False)

    def forward(self, losses: Mapping[str, Tensor], tasks: Sequence[TaskSpec]) -> Tensor:
        stacked = torch.stack([losses[n] for n in self.names])
        current = stacked.detach().float()
        if self.training:
            current = self.reduce_mean(current)
        state = self._read(current.to(self.logits))
        logits, update = state.logits, None
        if self.training:
            if not all(map(math.isfinite, state.losses)):
                raise FloatingPointError(f"FAMO: non-finite task losses {state.losses}")
            if state.stepped and state.has_previous:  # next_batch, after a step
                update = self._adam_update(state, state.losses)
                logits = update.logits
            self.previous.copy_(current)
            if not state.has_previous:
                self.has_previous.fill_(True)
            if state.stepped:
                self.stepped.fill_(False)
        dynamic = famo_weight_values(logits, state.losses, state.min_losses)
        on_device = self._write(update, dynamic)
        specs = tuple(tasks)
        if not all(map(math.isfinite, dynamic)):
            raise FloatingPointError(f"FAMO: non-finite weights {self._weights(dynamic, specs)}")
        self._weights_when_read(lambda: self._weights(dynamic, specs))
        return self._weighted_total(losses, specs, on_device, stacked)

    def _weights(self, dynamic: Sequence[float], tasks: Sequence[TaskSpec]) -> dict[str, float]:
        """Per task: its FAMO weight (1 for the adversaries) times its ``TaskSpec.weight``."""
        return task_weights(self.names, dynamic, tasks, digits=6)

    def _weighted_total(
        self,
        losses: Mapping[str, Tensor],
        tasks: Sequence[TaskSpec],
        dynamic: Tensor,
        stacked: Tensor,
    ) -> Tensor:
        """``sum_k w_k L_k`` in the order of ``tasks``, the weights kept on the device: the main
        tasks' ``dynamic[i] * TaskSpec.weight``, the adversaries' ``TaskSpec.weight``.
        ``stacked`` holds the main tasks' losses, in the order of :attr:`names`."""
        plain = [t.name for t in tasks] == self.names and all(t.weight == 1.0 for t in tasks)
        if plain and all(losses[n].dtype == stacked.dtype for n in self.names):
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
