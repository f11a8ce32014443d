"""The gradient path: one manual-optimisation step of a
:class:`~mtl_lightning.weighting.GradientWeighting` strategy, as named steps that a batch
enters once each, top to bottom (:meth:`GradientStep.run`):

1. :meth:`~GradientStep.task_rows`: this rank's per-task gradients of the shared embedding,
   the adversaries' objective and the heads' gradient;
2. :meth:`~GradientStep.reduce`: their means over DDP ranks in one all-reduce
   (:class:`~mtl_lightning.training.packing.ReducedGradients`);
3. :meth:`~GradientStep.culprit`: anything non-finite stops here, before the strategy's state
   sees it;
4. :meth:`~GradientStep.weights`: the strategy's weights and the trunk's update (its state is
   restored if that update turns out non-finite);
5. :meth:`~GradientStep.apply`: the gradients written, the optimizer stepped;
6. :meth:`~GradientStep.report`: the weights applied, the total and the metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mtl_lightning.nonfinite import finite_gradients
from mtl_lightning.training.diagnostics import log_cosines, task_gradients
from mtl_lightning.training.packing import (
    ReducedGradients,
    aggregated_tasks,
    flat_grad,
    reduce_gramian,
    reduce_jacobian,
    reduce_packed,
    trunk_jacobian,
    write_grads,
)
from mtl_lightning.training.progress import StepOutputs
from mtl_lightning.weighting import GradientWeighting

if TYPE_CHECKING:
    from mtl_lightning.module import MultiTaskModule

__all__ = ["GradientStep", "TaskRows", "Update", "batched_vjp", "gradient_parameters"]


@dataclass
class TaskRows:
    """One rank's gradients of its batch, before any reduction; each carries the loss scale.

    Attributes:
        rep: Per aggregated task ``k``: ``d(scale * w_k * loss_k) / d embedding``.
        extra: The trunk objectives added after aggregation (the adversaries'), or None.
        extra_rep: Its gradient of the embedding (``scale`` times), or None.
        heads: Flat gradient of every parameter outside the trunk: ``scale`` times that of
            ``sum_k w_k loss_k`` over every task (each head learns its own loss).
        losses: ``[K]`` the aggregated tasks' losses (detached, float).
    """

    rep: list[Tensor]
    extra: Tensor | None
    extra_rep: Tensor | None
    heads: Tensor
    losses: Tensor


@dataclass
class Update:
    """What a step writes: the strategy's weights, the trunk's and the heads' flat gradients
    (rank means), the strategy's state before it weighted (to restore) and the cosines."""

    weights: Tensor
    trunk: Tensor
    heads: Tensor
    snapshot: dict[str, Tensor] | None = None
    cosines: Tensor | None = None

    def finite(self) -> bool:
        return finite_gradients([self.trunk, self.heads])


def gradient_parameters(host: MultiTaskModule) -> tuple[list[Tensor], list[Tensor]]:
    """The trunk's trainable parameters and every other trainable one, listed once per
    training epoch (the host clears the list when an epoch starts, after the callbacks' hooks:
    a fine-tuning callback that (un)freezes layers there is seen) and again when one of them
    was frozen since. Walking every submodule, ~100 metric modules included, on each step
    cost as much as a small dense model's whole step."""
    cached = host._progress.parameters
    if cached is None or not all(p.requires_grad for group in cached for p in group):
        shared = [p for p in host.trunk.parameters() if p.requires_grad]
        ids = {id(p) for p in shared}
        others = [p for p in host.parameters() if p.requires_grad and id(p) not in ids]
        cached = host._progress.parameters = (shared, others)
        host._progress.batched_vjp = batched_vjp(host.trunk)
    return cached


def batched_vjp(trunk: nn.Module) -> bool:
    """Whether the ``K`` per-task products with the trunk's Jacobian (``level="shared"``) are
    taken in one vmapped backward pass rather than ``K`` passes: yes unless the trunk has a
    convolution. Measured on CPU (``docs/performance.md``): on the dense five-task trunk one
    pass cut the step from 1.37x to 1.28x torchjd's path (K=5); on the CNN, whose vmapped
    convolution backward is slower than separate passes, it raised it from 0.75x to 0.81x.

    Example:
        >>> batched_vjp(nn.Sequential(nn.Linear(4, 2), nn.ReLU())), batched_vjp(nn.Conv1d(1, 1, 3))
        (True, False)
    """
    return not any(isinstance(m, nn.modules.conv._ConvNd) for m in trunk.modules())


class GradientStep:
    """One step of the gradient path for ``host`` (built per batch, after its losses passed
    the non-finite check), ``scale`` being the AMP loss scale (1 without a GradScaler).

    Per-task gradients (of the trunk's parameters or of the shared representation) are
    averaged over DDP ranks *before* the strategy weights them; the trunk gets
    ``sum_k w_k g_k`` plus the adversaries' reversed gradient, each head the gradient of its
    own (statically weighted) loss; then the optimizer steps. The losses handed to the
    strategy are rank means too: a task with no labelled sample on any rank arrives as exactly
    0 on every rank, which the strategies read as absent (weight 0 or no update).

    Non-finite gradients never reach the strategy's state: the reduced Gramian (or Jacobian),
    losses and the heads' and adversaries' gradients are checked *before* the strategy is
    asked for weights, and a non-finite final update restores the state it had. Under a
    GradScaler (16-mixed) such a step goes to the scaler with infinite gradients, so it skips
    the step and lowers its scale; otherwise the host's ``nonfinite`` policy applies (raise,
    or skip and count).
    """

    def __init__(self, host: MultiTaskModule, scale: float) -> None:
        strategy = host.weighting
        assert isinstance(strategy, GradientWeighting)
        self.host, self.strategy, self.scale = host, strategy, scale
        # under a GradScaler overflow is routine: checked whatever the policy
        self.checking = host.nonfinite != "off" or scale != 1.0
        self.main = aggregated_tasks(host.tasks)
        self.adversaries = [t for t in host.tasks if t.adversarial]
        self.shared, self.others = gradient_parameters(host)
        self.optimizer = host.optimizers()

    def run(self, step: StepOutputs) -> Tensor | None:
        """The step; returns the objective whose gradient was applied (None: skipped)."""
        rows = self.task_rows(step)
        cos_due = self.host._grad_cos_due()
        with torch.autocast(device_type=step.embedding.device.type, enabled=False):
            reduced = self.reduce(step, rows)
            culprit = self.culprit(reduced)
            if culprit is not None:
                return self.skip(culprit)
            update = self.weights(step, rows, reduced)
            if cos_due:
                update.cosines = self.cosines(step, reduced)
        if self.checking and not update.finite():
            if update.snapshot is not None:  # the update is dropped: so is what it learned
                self.strategy.load_state_dict(update.snapshot)
            weights = update.weights.tolist()
            return self.skip(f"update of the parameters (strategy weights {weights})")
        self.apply(update)
        return self.report(step, rows, update.weights)

    # ------------------------------------------------------------------ the steps
    def task_rows(self, step: StepOutputs) -> TaskRows:
        """This rank's gradients: one backward pass to the embedding per aggregated task, one
        for the adversaries' objective, one through the heads."""
        emb, scale = step.embedding, self.scale
        rep = [
            torch.autograd.grad(scale * t.weight * step.losses[t.name], emb, retain_graph=True)[0]
            for t in self.main
        ]
        extra = self.extra_objective(step)
        extra_rep = (
            torch.autograd.grad(scale * extra, emb, retain_graph=True, allow_unused=True)[0]
            if extra is not None
            else None
        )
        head_total = torch.stack([t.weight * step.losses[t.name] for t in self.host.tasks]).sum()
        heads = flat_grad(scale * head_total, self.others) if self.others else emb.new_zeros(0)
        losses = torch.stack([step.losses[t.name].detach().float() for t in self.main])
        return TaskRows(rep, extra, extra_rep, heads, losses)

    def extra_objective(self, step: StepOutputs) -> Tensor | None:
        """The trunk objectives that are added after aggregation: adversaries (reversed)."""
        host = self.host
        terms = [
            t.weight * step.losses[t.name]
            for t in host.tasks
            if t.adversarial
            and t.adversary == "reversal"
            and t.weight > 0
            and t.name not in host.adversaries
        ]
        confusion = host.adversary_total(step, "train")
        if confusion is not None:
            terms.append(confusion)
        return torch.stack(terms).sum() if terms else None

    def reduce(self, step: StepOutputs, rows: TaskRows) -> ReducedGradients:
        """The rank means the strategy weighs, in one all-reduce: the Gramian of the
        embedding gradients (``level="rep"``) or the Jacobian of the trunk's parameters."""
        emb, scale, k = step.embedding, self.scale, len(self.main)
        if self.strategy.level == "rep":
            local = (
                torch.stack(rows.rep).flatten(1).float() / scale
                if k
                else emb.new_zeros(0, emb.numel()).float()
            )
            side = [rows.heads, rows.extra_rep if rows.extra_rep is not None else emb.new_zeros(0)]
            host = self.host
            world = host.trainer.world_size if host._trainer is not None else 1
            return reduce_gramian(local, rows.losses, side, host._reduce_mean, world)
        jac = (
            trunk_jacobian(emb, self.shared, rows.rep, self.host._progress.batched_vjp).float()
            if k
            else emb.new_zeros(0, sum(p.numel() for p in self.shared))
        )
        extra = (
            flat_grad(emb, self.shared, rows.extra_rep).float()
            if rows.extra_rep is not None
            else jac.new_zeros(jac.shape[1])
        )
        heads = rows.heads.float()
        return reduce_jacobian(jac, rows.losses, extra, heads, self.host._reduce_mean, scale)

    def culprit(self, reduced: ReducedGradients) -> str | None:
        """What is not finite (None: nothing, or not checking)."""
        return reduced.culprit([t.name for t in self.main]) if self.checking else None

    def weights(self, step: StepOutputs, rows: TaskRows, reduced: ReducedGradients) -> Update:
        """The strategy's weights (its state saved first, when checking) and the trunk's
        update ``sum_k w_k g_k`` plus the adversaries' gradient, as rank means."""
        strategy, emb, k = self.strategy, step.embedding, len(self.main)
        snapshot = (
            {n: v.clone() for n, v in strategy.state_dict().items()} if self.checking else None
        )
        if reduced.jacobian is not None:  # level "shared"
            jac = reduced.jacobian
            given = (
                (jac / self.scale if self.scale != 1.0 else jac)
                if strategy.needs_jacobian
                else None
            )
            weights = (
                strategy.gramian_weights(reduced.gramian, reduced.losses, given)
                if k
                else reduced.losses
            )
            assert reduced.extra is not None and reduced.heads is not None
            return Update(weights, jac.T @ weights.to(jac) + reduced.extra, reduced.heads, snapshot)
        weights = strategy.gramian_weights(reduced.gramian, reduced.losses) if k else reduced.losses
        rep_update = sum(
            (w * r for w, r in zip(weights.to(emb.dtype), rows.rep, strict=True)),
            torch.zeros_like(emb),
        )
        if rows.extra_rep is not None:
            rep_update = rep_update + rows.extra_rep
        trunk_local = flat_grad(emb, self.shared, rep_update)
        parts = [trunk_local.float(), rows.heads.float()]
        _, (trunk, heads) = reduce_packed(parts, self.host._reduce_mean)
        return Update(weights, trunk, heads, snapshot)

    def cosines(self, step: StepOutputs, reduced: ReducedGradients) -> Tensor:
        """The Gramian of every task's gradient, adversaries included: of the representation
        at ``level="rep"``, of the trunk's parameters at ``"shared"``."""
        host, scale = self.host, self.scale
        if reduced.rows is not None:  # level "rep"
            rows = reduced.rows
            if self.adversaries:
                adv = task_gradients(host, step, scale, self.adversaries, of_params=False)[1]
                rows = torch.cat([rows, torch.stack(adv).flatten(1).float() / scale])
            return host._reduce_mean(rows @ rows.T)
        assert reduced.jacobian is not None
        rows = reduced.jacobian / scale
        if self.adversaries:
            rows = torch.cat([rows, task_gradients(host, step, scale, self.adversaries)[0]])
        return rows @ rows.T

    def apply(self, update: Update) -> None:
        """Write the gradients, log the cosines, step the optimizer."""
        write_grads(self.shared, update.trunk)
        if self.others:
            write_grads(self.others, update.heads)
        if update.cosines is not None:
            names = [t.name for t in self.main + self.adversaries]
            log_cosines(self.host.log, names, update.cosines)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def report(self, step: StepOutputs, rows: TaskRows, weights: Tensor) -> Tensor:
        """Record and log the weights applied (times each ``TaskSpec.weight``; 1 for the
        adversaries), update the metrics; the total is the objective whose gradient was applied."""
        host = self.host
        applied = dict(zip([t.name for t in self.main], weights.tolist(), strict=True))
        self.strategy.last_weights = {
            t.name: round(applied.get(t.name, 0.0 if not t.adversarial else 1.0) * t.weight, 6)
            for t in host.tasks
        }
        host._log_weights()
        # the objective whose gradient was applied: TaskSpec weights included, as in last_weights
        total = sum(
            (w * t.weight * step.losses[t.name] for w, t in zip(weights, self.main, strict=True)),
            step.embedding.new_zeros(()),
        )
        if rows.extra is not None:
            total = total + rows.extra
        host.update_metrics("train", step, total.detach())
        return total.detach()

    def skip(self, what: str) -> None:
        """A non-finite step: the strategy has not been (or is no longer) updated by it."""
        if self.scale != 1.0:  # the GradScaler must see the overflow to skip and back off
            for p in self.shared + self.others:
                p.grad = torch.full_like(p, math.inf)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.host._nonfinite_policy(what)
        return None
