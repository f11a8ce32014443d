"""`Adversary`: one adversarial task's attackers, its eraser and the trunk's objective."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_lightning.adversary.attackers import AttackerEnsemble
from mtl_lightning.adversary.config import AdversaryConfig
from mtl_lightning.adversary.erasure import LinearEraser, ReduceSum, _identity
from mtl_lightning.adversary.objectives import (
    class_mmd,
    confusion_objective,
    reversal_objective,
)
from mtl_lightning.tasks import TaskSpec

Gather = Callable[[Tensor], Tensor]


def _global_order(gathered: Tensor) -> Tensor:
    """``[world, B, ...]`` from an all-gather -> ``[world * B, ...]`` in the global batch's order:
    the training sampler gives rank ``r`` every ``world``-th sample, so the global batch
    interleaves the ranks (the attackers then see one process's batch, in its order).

    Example:
        >>> _global_order(torch.tensor([[0, 2, 4], [1, 3, 5]])).tolist()
        [0, 1, 2, 3, 4, 5]
    """
    return gathered.transpose(0, 1).flatten(0, 1)


def _labelled(
    z: Tensor,
    y: Tensor,
    mask: Tensor | None,
    gather: Gather | None,
    order: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    """The labelled samples of a batch; with ``gather``, of every rank's batch (``[world, B,
    ...]`` flattened by ``order``, masks included)."""
    if gather is not None:
        z, y = order(gather(z)), order(gather(y))
        mask = order(gather(mask)) if mask is not None else None
    return (z[mask], y[mask]) if mask is not None else (z, y)


class Adversary(nn.Module):
    """Judge and fight one adversarial task (see :class:`AdversaryConfig` for the settings).

    - :meth:`best_response` trains the attackers on the detached embedding (all ranks' samples
      under DDP, through ``gather``, so every rank's attackers stay identical);
    - :meth:`objective` is what the trunk minimises (times lambda);
    - :meth:`forward` erases the task's linear trace from the embedding (identity without
      ``erase``); :meth:`accumulate` and :meth:`end_epoch` fit the eraser;
    - :meth:`start_epoch` re-initialises one attacker every ``reinit_every_n_epochs`` epochs.

    Example:
        >>> adv = Adversary(TaskSpec("speaker", 4, role="adversarial"), 8, AdversaryConfig())
        >>> z, y = torch.randn(16, 8, requires_grad=True), torch.arange(16) % 4
        >>> adv.best_response(z, y).shape  # attackers x batch x classes
        torch.Size([3, 16, 4])
        >>> adv.objective(z, y).backward(); z.grad.shape
        torch.Size([16, 8])
    """

    def __init__(self, task: TaskSpec, width: int, config: AdversaryConfig) -> None:
        super().__init__()
        self.task, self.config = task, config
        self.kind = config.objective_for(task)
        self.attackers = AttackerEnsemble(
            width,
            task.size,
            config.attackers,
            config.steps,
            lr=1e-3 * config.lr_multiplier,
            optimizer=config.optimizer,
            memory=config.memory,
        )
        self.eraser = LinearEraser(width, task.size) if config.erase else None
        # the attacker with the best balanced accuracy at the last validation: it answers
        # for the task in forward() and predict
        self.register_buffer("best", torch.zeros((), dtype=torch.long))

    @property
    def num_attackers(self) -> int:
        return len(self.attackers.attackers)

    def set_base_lr(self, lr: float) -> None:
        """Set the attackers' learning rate from the model optimizer's."""
        self.attackers.set_lr(lr * self.config.lr_multiplier)

    def forward(self, embedding: Tensor) -> Tensor:
        return embedding if self.eraser is None else self.eraser(embedding)

    def accumulate(self, raw: Tensor, target: Tensor, mask: Tensor) -> None:
        """Add the labelled samples' (pre-erasure) embeddings to the eraser's statistics."""
        if self.eraser is not None:
            self.eraser.update(raw[mask], target[mask])

    def best_response(
        self,
        embedding: Tensor,
        target: Tensor,
        mask: Tensor | None = None,
        gather: Gather | None = None,
    ) -> Tensor:
        """Attackers' logits on this batch as it arrived (``[M, B, K]``, detached, eval mode),
        then ``steps`` updates on its labelled samples (all ranks' samples with ``gather``)."""
        with torch.no_grad():
            logits = self.attackers.frozen_logits(embedding.detach().float())
        z, y = _labelled(embedding.detach(), target, mask, gather, _global_order)
        if z.shape[0] >= 2:  # BatchNorm needs two samples
            self.attackers.best_response(z, y.long())
        return logits

    def logits(self, embedding: Tensor) -> Tensor:
        """Attackers' logits (eval mode, detached) for metrics and predictions."""
        with torch.no_grad():
            return self.attackers.frozen_logits(embedding.detach().float())

    def attacker_losses(self, logits: Tensor, target: Tensor) -> Tensor:
        """Each attacker's cross-entropy, ``[M]`` (labelled samples only in ``target``)."""
        m, b, k = logits.shape
        flat = F.cross_entropy(logits.reshape(m * b, k), target.long().repeat(m), reduction="none")
        return flat.view(m, b).mean(1)

    def objective(
        self,
        embedding: Tensor,
        target: Tensor,
        mask: Tensor | None = None,
        gather: Gather | None = None,
    ) -> Tensor:
        """The trunk's objective on the labelled samples (0, in the graph, with none).

        ``hsic`` is not a mean over samples: under DDP it is computed on every rank's samples,
        gathered *with* their gradients (``gather``), so that DDP's gradient mean equals one
        process's gradient on the global batch."""
        if self.kind != "hsic":  # a mean over samples: each rank's own
            gather = None
        # HSIC does not depend on the samples' order: rank order, no reordering
        embedding, target = _labelled(embedding, target, mask, gather, lambda t: t.flatten(0, 1))
        if embedding.shape[0] == 0:
            return embedding.sum() * 0.0
        if self.kind == "hsic":
            return class_mmd(embedding, target, self.task.size, self.config.bandwidths)
        logits = self.attackers.frozen_logits(embedding.float())
        if self.kind == "confusion":
            return confusion_objective(logits)
        return reversal_objective(logits, target.long())

    def start_epoch(self, epoch: int, seed: int) -> None:
        """Round-robin re-initialisation: at epochs ``N, 2N, ...`` attacker
        ``(epoch / N - 1) mod M`` is drawn afresh from ``seed`` and the epoch."""
        n = self.config.reinit_every_n_epochs
        if n > 0 and epoch > 0 and epoch % n == 0:
            index = (epoch // n - 1) % self.num_attackers
            self.attackers.reinitialise(index, seed * 1_000_003 + epoch * 101 + index)

    def end_epoch(self, reduce_sum: ReduceSum = _identity) -> None:
        """Refit the eraser on the epoch's statistics (summed over ranks by ``reduce_sum``)."""
        if self.eraser is not None:
            self.eraser.fit(reduce_sum)
