"""FAMO (Liu et al., 2023): fast adaptive multitask optimisation with one backward pass."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting.base import WeightingStrategy
from mtl_lightning.weighting.static import weighted_sum


def famo_weights(logits: Tensor, losses: Tensor, min_losses: Tensor, eps: float = 1e-8) -> Tensor:
    """Gradient weights of FAMO's objective ``sum_k z_k log(L_k - m_k) / c``, summed to ``K``.

    ``z = softmax(logits)`` and ``c = sum_k z_k / (L_k - m_k)``: the objective's gradient is
    ``sum_k w_k grad L_k`` with ``w_k = z_k / (c (L_k - m_k))``, which sum to 1; here they are
    scaled by ``K`` so the plain sum's learning rate carries over.

    Example:
        >>> famo_weights(torch.zeros(2), torch.tensor([1.0, 3.0]), torch.zeros(2))
        tensor([1.5000, 0.5000])
    """
    z = torch.softmax(logits, dim=0)
    gaps = losses - min_losses + eps
    raw = z / gaps
    return losses.numel() * raw / raw.sum()


def famo_logit_gradient(
    logits: Tensor, previous: Tensor, current: Tensor, min_losses: Tensor, eps: float = 1e-8
) -> Tensor:
    """Gradient for FAMO's task logits: ``J_softmax(logits)^T (log gap_prev - log gap_now)``.

    Descending it raises the weight of tasks whose (log) loss fell the least.

    Example:
        >>> g = famo_logit_gradient(torch.zeros(2), torch.tensor([1.0, 1.0]),
        ...                         torch.tensor([0.5, 1.0]), torch.zeros(2))
        >>> [round(v, 4) for v in g.tolist()]
        [0.1733, -0.1733]
    """
    delta = torch.log(previous - min_losses + eps) - torch.log(current - min_losses + eps)
    z = torch.softmax(logits, dim=0)
    # Jacobian of softmax is diag(z) - z z^T (symmetric)
    return z * delta - z * (z @ delta)


class FAMO(WeightingStrategy):
    """FAMO: task logits nudged each step so that every task's log-loss falls at a similar rate.

    One backward pass per step. The logits take an Adam step (with weight decay ``gamma``)
    along :func:`famo_logit_gradient` of the change in the losses between consecutive
    training steps. Unlike the reference code, which runs an extra forward pass on the same
    batch after the update, the "after" loss here is the next step's loss (on the next
    batch): cheaper, noisier, same fixed point. Losses entering the update are averaged over
    DDP ranks, so all ranks keep identical logits; the weights multiply the local losses, so
    DDP's gradient averaging is exact. Adversarial tasks keep their static weight.

    Args:
        lr: Adam learning rate of the task logits (paper: 0.025).
        gamma: Weight decay of the logits (paper: 0.01).
        min_losses: Known lower bound of each loss, by task (default 0).

    Example:
        >>> from mtl_lightning.tasks import TaskSpec
        >>> tasks = [TaskSpec("a", 2), TaskSpec("b", 2)]
        >>> f = FAMO()
        >>> f.setup(tasks)
        >>> _ = f({"a": torch.tensor(1.0), "b": torch.tensor(3.0)}, tasks)
        >>> f.last_weights
        {'a': 1.5, 'b': 0.5}
    """

    def __init__(
        self, lr: float = 0.025, gamma: float = 0.01, min_losses: Mapping[str, float] | None = None
    ) -> None:
        super().__init__()
        self.lr = lr
        self.gamma = gamma
        self.min_loss_overrides = dict(min_losses or {})
        self.names: list[str] = []
        for name in ("logits", "min_losses", "previous", "adam_m", "adam_v"):
            self.register_buffer(name, torch.zeros(0))
        self.register_buffer("adam_t", torch.zeros((), dtype=torch.long))
        self.register_buffer("has_previous", torch.zeros((), dtype=torch.bool))

    def setup(self, tasks: Sequence[TaskSpec]) -> None:
        self.names = [t.name for t in tasks if not t.adversarial]
        unknown = set(self.min_loss_overrides) - set(self.names)
        if unknown:
            raise ValueError(f"FAMO min_losses name unknown main tasks: {sorted(unknown)}")
        k = len(self.names)
        for name in ("logits", "previous", "adam_m", "adam_v"):
            setattr(self, name, torch.zeros(k))
        self.min_losses = torch.tensor([self.min_loss_overrides.get(n, 0.0) for n in self.names])

    def _adam_step(self, grad: Tensor) -> None:
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        grad = grad + self.gamma * self.logits  # Adam with L2 weight decay, as in the reference
        self.adam_t += 1
        t = int(self.adam_t)
        self.adam_m = beta1 * self.adam_m + (1 - beta1) * grad
        self.adam_v = beta2 * self.adam_v + (1 - beta2) * grad * grad
        m_hat = self.adam_m / (1 - beta1**t)
        v_hat = self.adam_v / (1 - beta2**t)
        self.logits = self.logits - self.lr * m_hat / (v_hat.sqrt() + eps)

    def forward(self, losses: Mapping[str, Tensor], tasks: Sequence[TaskSpec]) -> Tensor:
        current = torch.stack([losses[n].detach().float() for n in self.names])
        if self.training:
            current = self.reduce_mean(current).to(self.logits)
            if not bool(torch.isfinite(current).all()):
                raise FloatingPointError(f"FAMO: non-finite task losses {current.tolist()}")
            if bool(self.has_previous):
                grad = famo_logit_gradient(self.logits, self.previous, current, self.min_losses)
                self._adam_step(grad)
            self.previous = current
            self.has_previous.fill_(True)
        weights_now = famo_weights(self.logits, current.to(self.logits), self.min_losses)
        dynamic = dict(zip(self.names, weights_now.tolist(), strict=True))
        weights = {t.name: dynamic.get(t.name, 1.0) * t.weight for t in tasks}
        self.last_weights = {n: round(w, 6) for n, w in weights.items()}
        if not all(math.isfinite(w) for w in weights.values()):
            raise FloatingPointError(f"FAMO: non-finite weights {weights}")
        return weighted_sum(losses, weights)
