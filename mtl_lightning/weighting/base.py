"""The weighting-strategy interface: per-task losses in, a total loss and its weights out."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, Literal, TypeVar

import torch
from torch import Tensor, nn

from mtl_lightning.tasks import TaskSpec

GradientLevel = Literal["shared", "rep"]
Number = TypeVar("Number", Tensor, float)


def _identity(tensor: Tensor) -> Tensor:
    return tensor


def adam_step(
    param: Number,
    grad: Number,
    moments: tuple[Number, Number],
    step: int,
    lr: float,
    weight_decay: float = 0.0,
) -> tuple[Number, Number, Number]:
    """One step of :class:`torch.optim.Adam` (L2 ``weight_decay``, betas 0.9/0.999, eps 1e-8).

    ``step`` counts from 1; returns the new parameter and first and second moments, so that
    strategies keep them in checkpointed buffers. Works elementwise on tensors and on Python
    floats alike (FAMO steps its few logits on the host).

    Example:
        >>> p, g = torch.tensor([1.0, -2.0]), torch.tensor([0.5, -3.0])
        >>> new, m, v = adam_step(p, g, (torch.zeros(2), torch.zeros(2)), 1, lr=0.1)
        >>> new  # the first step moves every coordinate by lr against its gradient's sign
        tensor([ 0.9000, -1.9000])
        >>> round(adam_step(1.0, 0.5, (0.0, 0.0), 1, lr=0.1)[0], 6)
        0.9
    """
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    grad = grad + weight_decay * param
    m = beta1 * moments[0] + (1 - beta1) * grad
    v = beta2 * moments[1] + (1 - beta2) * grad * grad
    m_hat, v_hat = m / (1 - beta1**step), v / (1 - beta2**step)
    return param - lr * m_hat / (v_hat**0.5 + eps), m, v


def rerun_losses(
    forward: Callable[[], Mapping[str, Tensor]],
    module: nn.Module,
    context: contextlib.AbstractContextManager[object] | None = None,
) -> dict[str, Tensor]:
    """``forward()``'s per-task losses, detached, computed as if it had not run.

    No gradients; inside ``context`` (the run's precision, e.g. autocast); the random state
    (CUDA's too) forked and ``module``'s buffers (BatchNorm statistics) restored afterwards,
    so the run continues as it would have. The host uses it to hand :meth:`WeightingStrategy.
    after_optimizer_step` the losses of the batch it just trained on.

    Example:
        >>> bn = nn.BatchNorm1d(2)
        >>> losses = rerun_losses(lambda: {"a": bn(torch.randn(4, 2)).pow(2).mean()}, bn)
        >>> float(bn.running_mean.abs().sum()), losses["a"].requires_grad
        (0.0, False)
    """
    device = next(iter(module.buffers()), torch.empty(0)).device
    saved = [b.clone() for b in module.buffers()]
    try:
        with (
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
            torch.no_grad(),
            context if context is not None else contextlib.nullcontext(),
        ):
            losses = {name: loss.detach() for name, loss in forward().items()}
    finally:
        with torch.no_grad():
            for buffer, value in zip(module.buffers(), saved, strict=True):
                buffer.copy_(value)
    return losses


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

    @property
    def last_weights(self) -> dict[str, float]:
        """The weights the last step applied, per task (``TaskSpec.weight`` included)."""
        pending = self.__dict__.pop("_pending_weights", None)
        if pending is not None:
            self.__dict__["_last_weights"] = pending()
        return self.__dict__.get("_last_weights", {})

    @last_weights.setter
    def last_weights(self, value: dict[str, float]) -> None:
        self.__dict__.pop("_pending_weights", None)
        self.__dict__["_last_weights"] = value

    def _weights_when_read(self, weights: Callable[[], dict[str, float]]) -> None:
        """Make :attr:`last_weights` ``weights()``, called only when it is read: the step's
        weights become Python numbers (a host copy) on the steps that log them, not on every
        step. ``weights`` must read tensors that later steps do not change in place.

        Example:
            >>> s = WeightingStrategy()
            >>> w = torch.tensor([0.25, 0.75])
            >>> s._weights_when_read(lambda: dict(zip("ab", w.tolist())))
            >>> s.last_weights
            {'a': 0.25, 'b': 0.75}
        """
        self.__dict__["_pending_weights"] = weights

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

    def after_optimizer_step(self, recompute: Callable[[], Mapping[str, Tensor]]) -> None:
        """Called by the host after every optimizer step of automatic optimisation (once per
        step under ``accumulate_grad_batches``, not per micro-batch), on every DDP rank.

        ``recompute()`` returns the per-task losses of the step's last (micro-)batch with the
        updated parameters: one extra forward pass, no gradients (:func:`rerun_losses`). Only
        strategies that need it call it (FAMO); the default does nothing.
        """

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
    update afterwards, scaled by ``TaskSpec.weight`` (see docs/weighting.md).
    """

    uses_gradients = True
    #: whether :meth:`gramian_weights` reads the Jacobian (``level="shared"``): the host hands
    #: it over only then (a copy of ``K x P`` values otherwise made on every step)
    needs_jacobian = True

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
