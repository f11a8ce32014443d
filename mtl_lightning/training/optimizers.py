"""The module's optimisation set-up as functions: which parameters the optimizer steps (in which
groups), the epoch-wise schedule fitted to the run, and the schedulers stepped by hand."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from torch import nn

from mtl_lightning.optim import fit_schedule_to_run

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = ["param_groups", "step_schedulers", "with_scheduler"]


def param_groups(
    parameters: Iterable[nn.Parameter],
    attackers: Iterable[nn.Parameter],
    strategy: Iterable[nn.Parameter],
) -> list[dict[str, Any]]:
    """The model's ``parameters`` but the ``attackers``' (they have their own optimizer) and the
    weighting ``strategy``'s, which form a second group, with ``weight_decay=0``, when there are
    any.

    Example:
        >>> import torch
        >>> a, b, c = (nn.Parameter(torch.zeros(1)) for _ in range(3))
        >>> groups = param_groups([a, b, c], attackers=[b], strategy=[c])
        >>> [len(g["params"]) for g in groups], groups[1]["weight_decay"]
        ([1, 1], 0.0)
        >>> len(param_groups([a, b], attackers=[], strategy=[]))
        1
    """
    strategy = list(strategy)
    skip = {id(p) for p in attackers} | {id(p) for p in strategy}
    model = [p for p in parameters if id(p) not in skip]
    groups: list[dict[str, Any]] = [{"params": model}]
    if strategy:
        groups.append({"params": strategy, "weight_decay": 0.0})
    return groups


def with_scheduler(
    optimizer: Any, scheduler_factory: Callable[[Any], Any] | None, trainer: pl.Trainer | None
) -> Any:
    """``optimizer`` alone without a ``scheduler_factory``; else Lightning's dict of the
    optimizer and its scheduler, stepped per epoch and fitted to the run's ``max_epochs``
    (``trainer`` None: outside a Trainer, a given ``T_max`` is needed)."""
    if scheduler_factory is None:
        return optimizer
    scheduler = scheduler_factory(optimizer)
    fit_schedule_to_run(scheduler, trainer.max_epochs if trainer is not None else None)
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
    }


def step_schedulers(schedulers: Any) -> None:
    """Step each scheduler of ``LightningModule.lr_schedulers()`` (one, a list, or None)."""
    for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
        if scheduler is not None:
            scheduler.step()
