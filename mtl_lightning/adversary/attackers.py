"""`AttackerEnsemble`: classifiers trained to their best response on the detached embedding."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def attacker(in_features: int, num_classes: int, hidden: int) -> nn.Sequential:
    """``BatchNorm1d(affine=False) -> Linear`` (``hidden=0``) or ``-> Linear -> ReLU -> Linear``.

    The non-affine BatchNorm standardises the embedding per dimension, so the attacker reads a
    direction the trunk has shrunk as well as any other (a probe standardises its inputs too).

    Example:
        >>> [type(m).__name__ for m in attacker(8, 3, 16)]
        ['BatchNorm1d', 'Linear', 'ReLU', 'Linear']
    """
    norm = nn.BatchNorm1d(in_features, affine=False)
    if hidden == 0:
        return nn.Sequential(norm, nn.Linear(in_features, num_classes))
    return nn.Sequential(
        norm, nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
    )


class AttackerEnsemble(nn.Module):
    """``M`` attackers of one task, trained by their own optimizer to their best response.

    :meth:`best_response` takes ``steps`` optimizer steps of every attacker on a detached
    embedding; the trunk never trains them, and their parameters do not require gradients
    (so no other optimizer, and no DDP gradient reducer, sees them). :meth:`reinitialise`
    draws attacker ``i`` afresh from a seed and clears its optimizer state. The optimizer's
    state travels with the module's ``state_dict`` (``_extra_state``), so checkpoints resume it.

    Args:
        in_features: Width of the embedding.
        num_classes: Classes of the task.
        hidden: Hidden width of each attacker (``0``: linear).
        steps: Optimizer steps per training batch.
        lr: Learning rate of the attackers' optimizer.
        optimizer: ``"adam"`` or ``"sgd"``.

    Example:
        >>> ens = AttackerEnsemble(8, 3, hidden=[0, 16], steps=2)
        >>> z, y = torch.randn(32, 8), torch.arange(32) % 3
        >>> ens.best_response(z, y).shape  # the logits before this batch's steps
        torch.Size([2, 32, 3])
        >>> ens(z).shape
        torch.Size([2, 32, 3])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (0, 128),
        steps: int = 5,
        lr: float = 5e-3,
        optimizer: str = "adam",
    ) -> None:
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes
        self.hidden = [int(h) for h in hidden]
        self.steps = steps
        self.attackers = nn.ModuleList(attacker(in_features, num_classes, h) for h in self.hidden)
        self.attackers.requires_grad_(False)
        params = self.attackers.parameters()
        self.optimizer: torch.optim.Optimizer = (
            torch.optim.SGD(params, lr=lr)
            if optimizer == "sgd"
            else torch.optim.Adam(params, lr=lr)
        )

    def set_lr(self, lr: float) -> None:
        """Set the attackers' learning rate (kept across checkpoints)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def forward(self, embedding: Tensor) -> Tensor:
        """Logits of every attacker, ``[M, batch, classes]`` (gradients reach the embedding)."""
        return torch.stack([a(embedding) for a in self.attackers])

    def frozen_logits(self, embedding: Tensor) -> Tensor:
        """:meth:`forward` in eval mode (BatchNorm on its running statistics), so the trunk's
        objective does not move the attackers' statistics; gradients reach the embedding only."""
        was = [a.training for a in self.attackers]
        self.attackers.eval()
        try:
            return self(embedding)
        finally:
            for a, mode in zip(self.attackers, was, strict=True):
                a.train(mode)

    @torch.enable_grad()
    def best_response(self, embedding: Tensor, target: Tensor) -> Tensor:
        """Train every attacker ``steps`` times on ``(embedding, target)`` (detached, float32);
        return the logits of the first pass (before this batch moved them), detached."""
        z = embedding.detach().float()
        params = list(self.attackers.parameters())
        first: Tensor | None = None
        with torch.autocast(device_type=z.device.type, enabled=False):
            for _ in range(self.steps):
                for p in params:
                    p.requires_grad_(True)
                try:
                    logits = self(z)
                    m, b, k = logits.shape
                    # the sum over attackers: each one's gradient is that of its own loss
                    loss = F.cross_entropy(logits.reshape(m * b, k), target.repeat(m)) * m
                    grads = torch.autograd.grad(loss, params)
                finally:
                    for p in params:
                        p.requires_grad_(False)
                if first is None:
                    first = logits.detach()
                for p, g in zip(params, grads, strict=True):
                    p.grad = g
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        assert first is not None
        return first

    def reinitialise(self, index: int, seed: int) -> None:
        """Draw attacker ``index`` afresh (from ``seed``, the same on every rank and device)
        and drop its optimizer state."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = attacker(self.in_features, self.num_classes, self.hidden[index])
        target = self.attackers[index]
        target.load_state_dict(fresh.state_dict())  # in place: the optimizer keeps its tensors
        for p in target.parameters():
            self.optimizer.state.pop(p, None)

    def get_extra_state(self) -> dict[str, Any]:
        # a copy: Optimizer.load_state_dict keeps the given tensors, and a state dict loaded
        # in memory must not share moments with the ensemble it came from
        return {"optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
