"""GradNorm (Chen et al., 2018): weights that balance the tasks' gradient norms."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting.base import GradientLevel, GradientWeighting, adam_step


def _active_mean(values: Tensor, active: Tensor) -> Tensor:
    return torch.where(active, values, 0.0).sum() / active.sum().clamp_min(1)


def _gradnorm_targets(
    scaled: Tensor, losses: Tensor, initial_losses: Tensor, alpha: float, active: Tensor
) -> Tensor:
    """``G_bar r_k^alpha``, both means taken over the active tasks."""
    ratio = losses / initial_losses
    return _active_mean(scaled, active) * (ratio / _active_mean(ratio, active)) ** alpha


def renormalise(updated: Tensor, weights: Tensor, active: Tensor) -> Tensor:
    """Floor ``updated`` at ``1e-3`` and scale the active tasks' weights so that, with the
    others' (unchanged) ``weights``, the sum is ``K``.

    Example:
        >>> renormalise(torch.tensor([3.0, 1.0, 5.0]), torch.ones(3),
        ...             torch.tensor([True, True, False]))
        tensor([1.5000, 0.5000, 1.0000])
    """
    updated = updated.clamp_min(1e-3)
    budget = weights.numel() - torch.where(active, 0.0, weights).sum()
    share = torch.where(active, updated, 0.0).sum().clamp_min(1e-12)
    return torch.where(active, budget * updated / share, weights)


def gradnorm_update(
    weights: Tensor,
    grad_norms: Tensor,
    losses: Tensor,
    initial_losses: Tensor,
    alpha: float = 1.5,
    lr: float = 0.025,
    active: Tensor | None = None,
) -> Tensor:
    """One step of GradNorm's ``"normalised"`` variant; returns new weights summing to ``K``.

    With ``G_k = w_k ||g_k||``, ``G_bar = mean_k G_k`` and relative inverse training rates
    ``r_k = (L_k / L_k(0)) / mean_j (L_j / L_j(0))``, GradNorm descends
    ``L_grad = sum_k |G_k - G_bar r_k^alpha|`` in ``w`` (targets held constant), whose
    gradient is ``sign(G_k - target_k) ||g_k||``. The step is divided by the mean gradient
    norm so ``lr`` does not depend on the scale of the gradients; weights are then kept
    positive and renormalised to sum to ``K`` (:func:`renormalise`). With ``active`` (a ``[K]``
    mask; default all), the means run over the active tasks and the others keep their weight.

    Example:
        >>> gradnorm_update(torch.ones(2), torch.tensor([1.0, 3.0]), torch.ones(2),
        ...                 torch.ones(2), lr=0.1)
        tensor([1.1053, 0.8947])
    """
    active = torch.ones_like(weights, dtype=torch.bool) if active is None else active
    scaled = weights * grad_norms
    target = _gradnorm_targets(scaled, losses, initial_losses, alpha, active)
    mean_norm = _active_mean(grad_norms, active).clamp_min(1e-12)
    grad = torch.sign(scaled - target) * grad_norms / mean_norm
    return renormalise(weights - lr * grad, weights, active)


def gradnorm_weight_gradient(
    weights: Tensor,
    grad_norms: Tensor,
    losses: Tensor,
    initial_losses: Tensor,
    alpha: float = 1.5,
    active: Tensor | None = None,
) -> Tensor:
    """Gradient in ``w`` of the paper's ``L_grad = sum_k |G_k - G_bar r_k^alpha|``.

    ``G_k = w_k ||g_k||`` (the norm of the gradient of ``w_k L_k``), ``G_bar = mean_k G_k``,
    ``r_k = (L_k / L_k(0)) / mean_j (L_j / L_j(0))``; the target ``G_bar r_k^alpha`` is held
    constant (Chen et al. 2018, eq. 2), so the gradient is ``sign(G_k - target_k) ||g_k||``.
    With ``active`` (default all), the sum and means run over the active tasks: the others'
    gradient is 0.

    Example:
        >>> gradnorm_weight_gradient(torch.ones(2), torch.tensor([1.0, 3.0]), torch.ones(2),
        ...                          torch.ones(2))
        tensor([-1.,  3.])
    """
    active = torch.ones_like(weights, dtype=torch.bool) if active is None else active
    scaled = weights * grad_norms
    target = _gradnorm_targets(scaled, losses, initial_losses, alpha, active)
    return torch.where(active, torch.sign(scaled - target) * grad_norms, 0.0)


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

    The weights used at a step are those before that step's update; ``L_k(0)`` is task ``k``'s
    loss at the first training step where it is not 0 (0: no labelled sample on any rank). A
    task that has no ``L_k(0)`` yet or a loss of 0 at this step is left out of the update: its
    weight (and Adam state) stays, and the means and the renormalisation run over the others, so
    the weights still sum to ``K``. LibMTL (``LibMTL/weighting/GradNorm.py``) differs: softmax-
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

    #: reads only the Gramian's diagonal (the gradient norms)
    needs_jacobian = False

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
        # per task: L_k(0) recorded (older checkpoints hold one scalar: _load_from_state_dict)
        self.register_buffer("initialised", torch.zeros(0, dtype=torch.bool))

    def setup(self, tasks: Sequence[TaskSpec]) -> None:
        k = sum(1 for t in tasks if not t.adversarial)
        self.weights = torch.ones(k)
        self.initial_losses = torch.ones(k)
        self.adam_m, self.adam_v = torch.zeros(k), torch.zeros(k)
        self.initialised = torch.zeros(k, dtype=torch.bool)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """A checkpoint's scalar ``initialised`` (one flag for all tasks) becomes per task; a
        task whose ``L_k(0)`` is the old ``1e-12`` floor (no labelled sample at the first step)
        is recorded afresh."""
        key = prefix + "initialised"
        flag, initial = state_dict.get(key), state_dict.get(prefix + "initial_losses")
        if flag is not None and flag.dim() == 0 and initial is not None:
            state_dict[key] = flag & (initial > 1e-12)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _paper_step(self, norms: Tensor, losses: Tensor, active: Tensor) -> Tensor:
        grad = gradnorm_weight_gradient(
            self.weights, norms, losses, self.initial_losses, self.alpha, active
        )
        self.adam_t += 1
        stepped, m, v = adam_step(
            self.weights, grad, (self.adam_m, self.adam_v), int(self.adam_t), self.lr
        )
        self.adam_m = torch.where(active, m, self.adam_m)
        self.adam_v = torch.where(active, v, self.adam_v)
        return renormalise(stepped, self.weights, active)

    def gramian_weights(
        self, gramian: Tensor, losses: Tensor, jacobian: Tensor | None = None
    ) -> Tensor:
        used = self.weights.clone()
        if not self.training:
            return used
        losses = losses.to(self.weights)
        fresh = ~self.initialised & (losses > 0)
        self.initial_losses = torch.where(fresh, losses, self.initial_losses)
        self.initialised = self.initialised | fresh
        active = self.initialised & (losses > 0)
        norms = gramian.diagonal().clamp_min(0).sqrt().to(self.weights)
        if self.variant == "paper":
            self.weights = self._paper_step(norms, losses, active)
        else:
            self.weights = gradnorm_update(
                self.weights, norms, losses, self.initial_losses, self.alpha, self.lr, active
            )
        return used
