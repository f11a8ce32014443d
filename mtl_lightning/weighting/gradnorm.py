"""GradNorm (Chen et al., 2018): weights that balance the tasks' gradient norms."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting.base import GradientLevel, GradientWeighting, adam_step


def gradnorm_update(
    weights: Tensor,
    grad_norms: Tensor,
    losses: Tensor,
    initial_losses: Tensor,
    alpha: float = 1.5,
    lr: float = 0.025,
) -> Tensor:
    """One step of GradNorm's ``"normalised"`` variant; returns new weights summing to ``K``.

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


def gradnorm_weight_gradient(
    weights: Tensor, grad_norms: Tensor, losses: Tensor, initial_losses: Tensor, alpha: float = 1.5
) -> Tensor:
    """Gradient in ``w`` of the paper's ``L_grad = sum_k |G_k - G_bar r_k^alpha|``.

    ``G_k = w_k ||g_k||`` (the norm of the gradient of ``w_k L_k``), ``G_bar = mean_k G_k``,
    ``r_k = (L_k / L_k(0)) / mean_j (L_j / L_j(0))``; the target ``G_bar r_k^alpha`` is held
    constant (Chen et al. 2018, eq. 2), so the gradient is ``sign(G_k - target_k) ||g_k||``.

    Example:
        >>> gradnorm_weight_gradient(torch.ones(2), torch.tensor([1.0, 3.0]), torch.ones(2),
        ...                          torch.ones(2))
        tensor([-1.,  3.])
    """
    scaled = weights * grad_norms
    ratio = losses / initial_losses
    target = scaled.mean() * (ratio / ratio.mean()) ** alpha
    return torch.sign(scaled - target) * grad_norms


GradNormVariant = Literal["paper", "normalised"]


class GradNorm(GradientWeighting):
    """GradNorm: tasks whose loss falls slowly get larger gradients, at the rate ``alpha``.

    Two variants of the weight update, both with weights summing to ``K`` (the number of main
    tasks) and floored at ``1e-3``:

    * ``variant="paper"`` (default; Chen et al. 2018, Algorithm 1): learnable weights ``w_k``
      take an Adam step (learning rate ``lr``, state in checkpointed buffers) along
      :func:`gradnorm_weight_gradient`, the gradient of ``L_grad`` in ``w`` only, and are then
      renormalised to sum to ``K``.
    * ``variant="normalised"``: :func:`gradnorm_update`, a plain step along the same gradient
      divided by the mean gradient norm (so ``lr`` does not depend on the gradients' scale).

    The weights used at a step are those before that step's update; ``L_k(0)`` are the first
    training step's losses. LibMTL (``LibMTL/weighting/GradNorm.py``) differs: softmax-
    parameterised weights, ``L(0)`` from the first epoch's mean, equal weights in that epoch.

    The norms ``||g_k||`` come from the per-task gradients the host computes. ``level="shared"``:
    all the trunk's trainable parameters (the paper uses the last shared layer's). ``"rep"``:
    the gradient of ``w_k L_k`` with respect to the whole batch's shared representation
    ``[B, D]``, its Frobenius norm ``sqrt(sum_b ||dL_k/dz_b||^2)``; LibMTL sums over the batch
    first, ``||sum_b dL_k/dz_b||`` (the gradient of a bias added to the representation). This
    project keeps the former because the same Gramian feeds every gradient strategy. Losses and
    Gramians are averaged over DDP ranks by the host, so every rank holds the same weights.

    Args:
        alpha: Restoring-force strength (paper: 0.12 to 3; 1.5 is common).
        lr: Step size of the weights (Adam's for ``"paper"``).
        level: Which gradients' norms are balanced.
        variant: ``"paper"`` or ``"normalised"`` (above).

    Raises:
        ValueError: ``lr`` is not positive, or ``variant`` or ``level`` is unknown.

    Example:
        >>> from mtl_lightning.tasks import TaskSpec
        >>> g = GradNorm(lr=0.1)
        >>> g.setup([TaskSpec("a", 2), TaskSpec("b", 2)])
        >>> g.gramian_weights(torch.diag(torch.tensor([1.0, 9.0])), torch.ones(2))
        tensor([1., 1.])
        >>> g.weights  # Adam's first step: lr against the sign of (-1, 3), then sum 2
        tensor([1.1000, 0.9000])
    """

    def __init__(
        self,
        alpha: float = 1.5,
        lr: float = 0.025,
        level: GradientLevel = "shared",
        variant: GradNormVariant = "paper",
    ) -> None:
        super().__init__(level)
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if variant not in ("paper", "normalised"):
            raise ValueError(f"variant must be 'paper' or 'normalised', got {variant!r}")
        self.alpha = alpha
        self.lr = lr
        self.variant: GradNormVariant = variant
        for name in ("weights", "initial_losses", "adam_m", "adam_v"):
            self.register_buffer(name, torch.ones(0))
        self.register_buffer("adam_t", torch.zeros((), dtype=torch.long))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def setup(self, tasks: Sequence[TaskSpec]) -> None:
        k = sum(1 for t in tasks if not t.adversarial)
        self.weights = torch.ones(k)
        self.initial_losses = torch.ones(k)
        self.adam_m, self.adam_v = torch.zeros(k), torch.zeros(k)

    def _paper_step(self, norms: Tensor, losses: Tensor) -> Tensor:
        grad = gradnorm_weight_gradient(
            self.weights, norms, losses, self.initial_losses, self.alpha
        )
        self.adam_t += 1
        stepped, self.adam_m, self.adam_v = adam_step(
            self.weights, grad, (self.adam_m, self.adam_v), int(self.adam_t), self.lr
        )
        stepped = stepped.clamp_min(1e-3)
        return stepped.numel() * stepped / stepped.sum()

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
        if self.variant == "paper":
            self.weights = self._paper_step(norms, losses)
        else:
            self.weights = gradnorm_update(
                self.weights, norms, losses, self.initial_losses, self.alpha, self.lr
            )
        return used
