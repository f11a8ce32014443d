"""`AttackerEnsemble`: classifiers trained to their best response on the detached embedding."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_lightning.optim import fused_on_cpu


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

    :meth:`best_response` adds a detached batch to a memory of the latest ``memory`` samples
    and takes ``steps`` optimizer steps of every attacker on the whole memory (a weak, spread-out
    signal needs many samples per step: on 64-sample batches alone the attackers missed what a
    full-batch probe read at 0.98); the trunk never trains them, and their parameters do not require gradients
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
        memory: Samples kept for the steps (the latest batches'; ``0``: the current batch only).

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
        memory: int = 0,
    ) -> None:
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes
        self.hidden = [int(h) for h in hidden]
        self.steps = steps
        self.memory = memory
        self._memory_z = torch.zeros(0, in_features)
        self._memory_y = torch.zeros(0, dtype=torch.long)
        self.attackers = nn.ModuleList(attacker(in_features, num_classes, h) for h in self.hidden)
        self.attackers.requires_grad_(False)
        params = self.attackers.parameters()
        self.optimizer: torch.optim.Optimizer = fused_on_cpu(
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
        """Add ``(embedding, target)`` (detached, float32) to the memory and train every attacker
        ``steps`` times on it; return this batch's logits before the steps moved them, detached."""
        z = embedding.detach().float()
        with torch.no_grad():
            first_logits = self.frozen_logits(z)
        if self.memory > 0:
            keep = self.memory
            self._memory_z = torch.cat([self._memory_z.to(z.device), z])[-keep:]
            self._memory_y = torch.cat([self._memory_y.to(z.device), target.long()])[-keep:]
            z, target = self._memory_z, self._memory_y
        params = list(self.attackers.parameters())
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
                for p, g in zip(params, grads, strict=True):
                    p.grad = g
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        return first_logits

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
        return {
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "memory_z": self._memory_z.clone(),
            "memory_y": self._memory_y.clone(),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if "memory_z" in state:
            self._memory_z, self._memory_y = state["memory_z"].clone(), state["memory_y"].clone()
