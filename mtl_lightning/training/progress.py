"""What a step carries: the forward pass's outputs (:class:`StepOutputs`) and the host's
per-step counters (:class:`StepState`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

__all__ = ["StepOutputs", "StepState"]


@dataclass
class StepOutputs:
    """What one forward pass produced: the inputs, the shared embedding (the trunk's output,
    before any eraser: every trunk gradient is taken there), heads and losses."""

    features: Tensor
    targets: Mapping[str, Tensor]
    masks: dict[str, Tensor]
    embedding: Tensor
    outputs: dict[str, Tensor]
    losses: dict[str, Tensor]
    #: per attacker-ensemble adversary: every attacker's (detached) logits, ``[M, B, K]``
    attacker_logits: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    #: per attacker-ensemble adversary: the trunk's objective (in the graph, lambda not applied)
    objectives: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    #: under DDP in training: each task's mean over this rank's labelled samples, where
    #: ``losses`` holds this rank's share of the global mean (:func:`~.forward.ddp_loss_scales`)
    local_losses: dict[str, Tensor] | None = None

    @property
    def mean_losses(self) -> dict[str, Tensor]:
        """Each task's mean over this batch's labelled samples (what the metrics average)."""
        return self.losses if self.local_losses is None else self.local_losses


@dataclass
class StepState:
    """The training step the host is in: plain Python state, not checkpointed.

    Example:
        >>> state = StepState()
        >>> state.start_batch({"features": None}, 3)
        >>> state.batch_idx, state.skip_step
        (3, False)
    """

    #: index of the current training batch (-1 before the first)
    batch_idx: int = -1
    #: the current training batch: kept for naming the task behind a non-finite gradient and
    #: for the strategies that run it again after the optimizer step (FAMO)
    last_batch: Any = None
    #: 1-based number of the current training step, as the loggers count steps
    step_number: int = 0
    #: set by a skipped step; ``on_before_optimizer_step`` drops its gradients
    skip_step: bool = False
    #: the DDP loss scales of the current training batch, reused when it is run again
    loss_scales: dict[str, Tensor] | None = None
    #: the gradient path's (trunk, other) trainable parameters, listed once per training epoch
    parameters: tuple[list[Tensor], list[Tensor]] | None = None
    #: whether the gradient path takes the trunk's per-task products in one vmapped pass
    #: (:func:`~mtl_lightning.training.aggregated.batched_vjp`), set with ``parameters``
    batched_vjp: bool = False

    def start_batch(self, batch: Any, batch_idx: int) -> None:
        """Record the training batch the step runs on."""
        self.batch_idx, self.last_batch = batch_idx, batch
