"""The weighting-strategy interface: per-task losses in, a total loss and its weights out."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from mtl_lightning.tasks import TaskSpec

GradientLevel = Literal["shared", "rep"]


def _identity(tensor: Tensor) -> Tensor:
    return tensor


class WeightingStrategy(nn.Module):
    """Turns per-task losses into one total and reports the weights it applied.

    A strategy never reads attributes of the model that hosts it; everything it needs is
    passed in: the losses each step, the synced epoch-mean training losses
    (:meth:`on_train_epoch_end`) and the synced validation metrics (:meth:`on_validation_end`).
    Stateful strategies keep their state in buffers or parameters so it checkpoints through
    ``state_dict``; state is updated only while the strategy is in training mode.

    Subclasses implement :meth:`forward` and set :attr:`last_weights`.
    """

    #: ``True`` for strategies that need per-task gradients (:class:`GradientWeighting`).
    uses_gradients: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.last_weights: dict[str, float] = {}
        self._reduce_mean: Callable[[Tensor], Tensor] = _identity

    def setup(self, tasks: Sequence[TaskSpec]) -> None:
        """Called once by the host with the task list, before training."""

    def set_reducer(self, reduce_mean: Callable[[Tensor], Tensor]) -> None:
        """Install the host's mean-over-DDP-ranks function (identity in one process).

        Strategies whose state is updated from the losses (FAMO) use it so every rank holds
        the same state; the losses they weight stay local so DDP's gradient averaging is exact.
        """
        self._reduce_mean = reduce_mean

    def reduce_mean(self, tensor: Tensor) -> Tensor:
        """Mean of ``tensor`` over DDP ranks, through the reducer the host installed."""
        return self._reduce_mean(tensor)

    def forward(
        self, losses: Mapping[str, Tensor], tasks: Sequence[TaskSpec]
    ) -> Tensor:  # pragma: no cover - abstract
        """Total loss from ``losses`` (keyed by task name); ``tasks`` as the host has them now."""
        raise NotImplementedError

    def on_train_epoch_end(self, epoch_losses: Mapping[str, float]) -> None:
        """Epoch-mean training loss per task, already reduced over DDP ranks."""

    def on_validation_end(self, metrics: Mapping[str, Mapping[str, float]]) -> None:
        """``{task: {metric: value}}`` at the end of a validation epoch, reduced over ranks."""


class GradientWeighting(WeightingStrategy):
    """A strategy that weights the per-task gradients of the shared parameters.

    The host computes the per-task gradients of the shared trunk (``level="shared"``: the
    trunk's parameters, one backward pass per task; ``level="rep"``: the shared
    representation, nearly free), averages them over DDP ranks, and hands their Gramian
    ``G[i, j] = <g_i, g_j>`` to :meth:`gramian_weights`. The trunk's update is
    ``sum_i w_i g_i``; each head gets the ordinary gradient of its own loss.
    Adversarial tasks are not aggregated: their reversed gradient is added to the trunk's
    update afterwards, scaled by ``TaskSpec.weight`` (see the README).
    """

    uses_gradients = True

    def __init__(self, level: GradientLevel = "shared") -> None:
        super().__init__()
        if level not in ("shared", "rep"):
            raise ValueError(f"level must be 'shared' or 'rep', got {level!r}")
        self.level: GradientLevel = level

    def forward(self, losses: Mapping[str, Tensor], tasks: Sequence[TaskSpec]) -> Tensor:
        """The static-weight sum: the total reported for validation and testing."""
        return torch.stack([t.weight * losses[t.name] for t in tasks]).sum()

    def gramian_weights(
        self, gramian: Tensor, losses: Tensor, jacobian: Tensor | None = None
    ) -> Tensor:  # pragma: no cover - abstract
        """Weights (shape ``[K]``) of the ``K`` task gradients, from their ``[K, K]`` Gramian.

        ``losses`` are the ``K`` detached task losses (reduced over ranks); ``jacobian`` is the
        ``[K, P]`` matrix of gradients when ``level="shared"`` (``None`` for ``"rep"``).
        """
        raise NotImplementedError
