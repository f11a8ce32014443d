"""GradNorm (Chen et al., 2018): weights that balance the tasks' gradient norms."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting.base import GradientLevel, GradientWeighting


def gradnorm_update(
    weights: Tensor,
    grad_norms: Tensor,
    losses: Tensor,
    initial_losses: Tensor,
    alpha: float = 1.5,
    lr: float = 0.025,
) -> Tensor:
    """One GradNorm step on the task weights; returns new weights summing to ``K``.

    With ``G_k = w_k ||g_k||``, ``G_bar = mean_k G_k`` and relative inverse training rates
    ``r_k = (L_k / L_k(0)) / mean_j (L_j / L_j(0))``, GradNorm descends
    ``L_grad = sum_k |G_k - G_bar r_k^alpha|`` in ``w`` (targets held constant), whose
    gradient is ``sign(G_k - target_k) ||g_k||``. The step is divided by the mean gradient
    norm so ``lr`` does not depend on the scale of the gradients; weights are then kept
    positive and renormalised to sum to ``K``.

    Example:
        >>> gradnorm_update(torch.ones(2), torch.tensor([1.0, 3.0]), torch.ones(2),
        ...                 torch.ones(2), lr=0.1)
        tensor([1.1053, 0.8947])
    """
    k = weights.numel()
    scaled = weights * grad_norms
    ratio = losses / initial_losses
    target = scaled.mean() * (ratio / ratio.mean()) ** alpha
    grad = torch.sign(scaled - target) * grad_norms / grad_norms.mean().clamp_min(1e-12)
    updated = (weights - lr * grad).clamp_min(1e-3)
    return k * updated / updated.sum()


class GradNorm(GradientWeighting):
    """GradNorm: tasks whose loss falls slowly get larger gradients, at the rate ``alpha``.

    The weights used at a step are those before that step's update; the first step records
    the initial losses ``L_k(0)``. Norms come from the per-task gradients the host computes
    (``level="shared"``: the trunk's parameters; ``"rep"``: the shared representation, a
    cheaper stand-in for the paper's last shared layer). Losses are averaged over DDP ranks by
    the host, so every rank holds the same weights.

    Args:
        alpha: Restoring-force strength (paper: 0.12 to 3; 1.5 is common).
        lr: Step size of the weights.
        level: Which gradients' norms are balanced.

    Example:
        >>> from mtl_lightning.tasks import TaskSpec
        >>> g = GradNorm(lr=0.1)
        >>> g.setup([TaskSpec("a", 2), TaskSpec("b", 2)])
        >>> g.gramian_weights(torch.diag(torch.tensor([1.0, 9.0])), torch.ones(2))
        tensor([1., 1.])
        >>> g.weights
        tensor([1.1053, 0.8947])
    """

    def __init__(
        self, alpha: float = 1.5, lr: float = 0.025, level: GradientLevel = "shared"
    ) -> None:
        super().__init__(level)
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.alpha = alpha
        self.lr = lr
        self.register_buffer("weights", torch.ones(0))
        self.register_buffer("initial_losses", torch.ones(0))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def setup(self, tasks: Sequence[TaskSpec]) -> None:
        k = sum(1 for t in tasks if not t.adversarial)
        self.weights = torch.ones(k)
        self.initial_losses = torch.ones(k)

    def gramian_weights(
        self, gramian: Tensor, losses: Tensor, jacobian: Tensor | None = None
    ) -> Tensor:
        used = self.weights.clone()
        if not self.training:
            return used
        losses = losses.to(self.weights)
        if not bool(self.initialised):
            self.initial_losses = losses.clamp_min(1e-12)
            self.initialised.fill_(True)
        norms = gramian.diagonal().clamp_min(0).sqrt().to(self.weights)
        self.weights = gradnorm_update(
            self.weights, norms, losses, self.initial_losses, self.alpha, self.lr
        )
        return used
